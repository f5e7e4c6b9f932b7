"""The overlay driver's `-o` options (Docker's names) and their validation."""

from __future__ import annotations

from dataclasses import dataclass

from cnet.cnm.errors import InvalidParameter

VXLAN_PORT = "com.docker.network.driver.overlay.vxlan_port"
MTU = "com.docker.network.driver.mtu"
# The VNI asked for. The controller validates it against its own range (VNIs from 4096),
# reserves it in the cluster store and hands it to the driver as driver_state["vni"].
VXLANID_LIST = "com.docker.network.driver.overlay.vxlanid_list"
ENCRYPTED = "encrypted"
KNOWN = frozenset({VXLAN_PORT, MTU, VXLANID_LIST, ENCRYPTED})

DEFAULT_PORT = 4789  # IANA's VXLAN port, Docker's default
MAX_VNI = (1 << 24) - 1


def _int(key: str, value: str, what: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidParameter(f'invalid {what} "{value}" (option {key})') from None
    if not low <= n <= high:
        raise InvalidParameter(f"invalid {what} {n}: must be between {low} and {high}")
    return n


@dataclass(frozen=True)
class OverlayOptions:
    port: int
    mtu: int | None  # None: the underlay's MTU minus the VXLAN overhead
    vni: int | None  # asked for; the driver uses the one in driver_state (the controller's)
    encrypted: bool  # asked for; refused by the driver (no IPsec data plane)

    @classmethod
    def parse(cls, options: dict[str, str]) -> OverlayOptions:
        unknown = sorted(set(options) - KNOWN)
        if unknown:
            raise InvalidParameter(f"unknown overlay driver option: {unknown[0]}")
        port = DEFAULT_PORT
        if options.get(VXLAN_PORT):
            port = _int(VXLAN_PORT, options[VXLAN_PORT], "VXLAN port", 1, 65535)
        mtu = None
        if options.get(MTU):
            mtu = _int(MTU, options[MTU], "MTU", 68, 65535)
        vni = None
        if options.get(VXLANID_LIST):
            value = options[VXLANID_LIST]
            if not (value.isascii() and value.isdigit()):  # one VNI, in decimal
                raise InvalidParameter(f'invalid VNI "{value}" (option {VXLANID_LIST}): '
                                       "a decimal integer")
            vni = _int(VXLANID_LIST, value, "VNI", 1, MAX_VNI)
        # Docker: `-o encrypted` with any value, even empty, asks for encryption
        return cls(port=port, mtu=mtu, vni=vni, encrypted=ENCRYPTED in options)
