"""The bridge driver's `-o` options (Docker's names) and their validation."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnet.cnm.errors import InvalidParameter

NAME = "com.docker.network.bridge.name"
MTU = "com.docker.network.driver.mtu"
ICC = "com.docker.network.bridge.enable_icc"
MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
KNOWN = frozenset({NAME, MTU, ICC, MASQUERADE})

IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")


def _bool(key: str, value: str) -> bool:
    v = str(value).lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise InvalidParameter(f'invalid value "{value}" for option {key}: want true or false')


@dataclass(frozen=True)
class BridgeOptions:
    bridge_name: str | None
    mtu: int | None
    icc: bool
    masquerade: bool

    @classmethod
    def parse(cls, options: dict[str, str]) -> BridgeOptions:
        unknown = sorted(set(options) - KNOWN)
        if unknown:
            raise InvalidParameter(f"unknown bridge driver option: {unknown[0]}")
        name = options.get(NAME) or None
        if name is not None and (not IFNAME_RE.match(name) or name in (".", "..")):
            raise InvalidParameter(
                f'invalid bridge name "{name}": 1-15 characters of [a-zA-Z0-9_.-]'
            )
        mtu = None
        if options.get(MTU):
            try:
                mtu = int(options[MTU])
            except ValueError:
                raise InvalidParameter(f'invalid MTU "{options[MTU]}"') from None
            if not 68 <= mtu <= 65535:
                raise InvalidParameter(f"invalid MTU {mtu}: must be between 68 and 65535")
        return cls(
            bridge_name=name,
            mtu=mtu,
            icc=_bool(ICC, options.get(ICC, "true")),
            masquerade=_bool(MASQUERADE, options.get(MASQUERADE, "true")),
        )
