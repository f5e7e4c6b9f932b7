"""The `-o` options of the macvlan and ipvlan drivers (Docker's names) and their validation."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnet.cnm.errors import InvalidParameter

PARENT = "parent"
MACVLAN_MODE = "macvlan_mode"
IPVLAN_MODE = "ipvlan_mode"
IPVLAN_FLAG = "ipvlan_flag"
# cnet's own (Docker has none): a macvlan in the daemon's namespace on the same parent,
# through which the host reaches its own macvlan containers.
HOST_INTERFACE = "cnet.macvlan.host_interface"

MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
IPVLAN_MODES = ("l2", "l3", "l3s")

MACVLAN_KNOWN = frozenset({PARENT, MACVLAN_MODE, HOST_INTERFACE})
IPVLAN_KNOWN = frozenset({PARENT, IPVLAN_MODE, IPVLAN_FLAG})

IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
VLAN_RE = re.compile(r"^(?P<base>.+)\.(?P<vid>[0-9]{1,4})$")


def check_ifname(value: str, what: str) -> str:
    if not IFNAME_RE.match(value) or value in (".", ".."):
        raise InvalidParameter(f'invalid {what} "{value}": 1-15 characters of [a-zA-Z0-9_.-]')
    return value


@dataclass(frozen=True)
class ParentOptions:
    """What both drivers take: the parent interface and the link mode."""

    parent: str | None
    mode: str
    host_interface: str | None = None

    @property
    def vlan(self) -> tuple[str, int] | None:
        """(base interface, VLAN id) when the parent is spelled IFACE.VLAN (Docker's way of
        asking for an 802.1q sub-interface, made when it does not exist)."""
        m = VLAN_RE.match(self.parent or "")
        if not m:
            return None
        vid = int(m.group("vid"))
        if not 1 <= vid <= 4094:
            raise InvalidParameter(f'invalid VLAN id {vid} in parent "{self.parent}": '
                                   "must be between 1 and 4094")
        return m.group("base"), vid


def _common(driver: str, options: dict[str, str], known: frozenset[str]) -> str | None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidParameter(f"unknown {driver} driver option: {unknown[0]}")
    parent = options.get(PARENT) or None
    if parent is None:
        raise InvalidParameter(f"{driver} networks need a parent interface: "
                               "-o parent=IFACE (the host's link to the physical network)")
    return check_ifname(parent, "parent interface")


def _mode(options: dict[str, str], key: str, default: str, modes) -> str:
    """The driver's mode option (`macvlan_mode`, `ipvlan_mode`), checked."""
    mode = options.get(key) or default
    if mode not in modes:
        raise InvalidParameter(f'invalid {key} "{mode}": want one of ' + ", ".join(modes))
    return mode


def parse_macvlan(options: dict[str, str]) -> ParentOptions:
    parent = _common("macvlan", options, MACVLAN_KNOWN)
    mode = _mode(options, MACVLAN_MODE, "bridge", MACVLAN_MODES)
    host_if = options.get(HOST_INTERFACE) or None
    if host_if is not None:
        check_ifname(host_if, f"{HOST_INTERFACE} name")
        if mode in ("private", "passthru"):
            raise InvalidParameter(f"{HOST_INTERFACE} needs macvlan_mode bridge or vepa: "
                                   f"in {mode} mode the host interface could not reach "
                                   "the containers")
        if host_if == parent:
            raise InvalidParameter(f"{HOST_INTERFACE} must not be the parent itself")
    opts = ParentOptions(parent, mode, host_if)
    opts.vlan  # noqa: B018 - validates the VLAN id
    return opts


def parse_ipvlan(options: dict[str, str]) -> ParentOptions:
    parent = _common("ipvlan", options, IPVLAN_KNOWN)
    mode = _mode(options, IPVLAN_MODE, "l2", IPVLAN_MODES)
    flag = options.get(IPVLAN_FLAG) or "bridge"
    if flag != "bridge":
        raise InvalidParameter(f'ipvlan_flag "{flag}" is not supported (only bridge)')
    opts = ParentOptions(parent, mode)
    opts.vlan  # noqa: B018 - validates the VLAN id
    return opts
