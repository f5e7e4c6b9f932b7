"""Which kernel networking features this machine has, probed for real.

Link kinds are probed by creating one inside a throwaway namespace (the only
reliable answer: modules may be built in, loadable, or absent). ESP has no link
to create, so it is looked up among the kernel's symbols.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from cnet.cnm.osl import namespaces
from cnet.cnm.osl.netlink import KernelError, Netlink


@dataclass(frozen=True)
class Feature:
    name: str
    present: bool
    disables: str  # what is unavailable when it is missing


# (feature name, link kind, extra attributes, needs a parent link, what it disables)
_LINK_PROBES = [
    ("bridge", "bridge", {}, False, "bridge networks"),
    ("veth", "veth", {"peer": "cnetprobe1"}, False, "every endpoint of bridge networks"),
    ("vxlan", "vxlan", {"vxlan_id": 4242, "vxlan_port": 4789}, False, "overlay networks"),
    ("macvlan", "macvlan", {"macvlan_mode": "bridge"}, True, "macvlan networks"),
    ("802.1q", "vlan", {"vlan_id": 10}, True, "VLAN sub-interfaces as parents (eth0.10)"),
    ("ipvlan", "ipvlan", {"ipvlan_mode": 0}, True, "ipvlan networks"),
]


def _kernel_has_symbol(*names: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            wanted = set(names)
            return any(line.rstrip().rsplit(" ", 1)[-1] in wanted for line in f)
    except OSError:
        return False


def probe(scratch_dir: str, nftables_ok: bool) -> list[Feature]:
    """Probe inside a namespace made under `scratch_dir` and removed afterwards."""
    path = os.path.join(scratch_dir, f"probe-{secrets.token_hex(4)}")
    namespaces.create(path)
    results: list[Feature] = []
    try:
        nl = Netlink(path)
        try:
            nl.create_bridge("cnetparent", alias="probe")  # parent for stacked kinds
            parent = nl.index("cnetparent")
            for name, kind, extra, needs_parent, disables in _LINK_PROBES:
                kwargs = dict(extra)
                if needs_parent:
                    kwargs["link"] = parent
                results.append(Feature(name, _try_link(nl, kind, kwargs), disables))
        finally:
            nl.close()
    finally:
        namespaces.remove(path)
    results.append(Feature("nftables", nftables_ok, "network isolation, NAT and published ports"))
    results.append(Feature("esp", _kernel_has_symbol("esp_input", "esp4_init"),
                           "encrypted overlay networks (-o encrypted)"))
    return results


def _try_link(nl: Netlink, kind: str, kwargs: dict) -> bool:
    ifname = "cnetprobe0"
    try:
        nl.add_link(ifname, kind, **kwargs)
    except KernelError:
        return False
    nl.delete_link(ifname)
    return True


def probe_link_feature(scratch_dir: str, name: str) -> bool:
    """Probe one link feature of _LINK_PROBES by name ("802.1q", "ipvlan", "macvlan"...)
    in a namespace of its own (made under `scratch_dir`, removed afterwards)."""
    entry = next((p for p in _LINK_PROBES if p[0] == name), None)
    if entry is None:
        raise ValueError(f"unknown link feature {name!r}")
    _, kind, extra, needs_parent, _ = entry
    path = os.path.join(scratch_dir, f"probe-{secrets.token_hex(4)}")
    namespaces.create(path)
    try:
        nl = Netlink(path)
        try:
            kwargs = dict(extra)
            if needs_parent:
                nl.create_bridge("cnetparent", alias="probe")
                kwargs["link"] = nl.index("cnetparent")
            return _try_link(nl, kind, kwargs)
        finally:
            nl.close()
    finally:
        namespaces.remove(path)
