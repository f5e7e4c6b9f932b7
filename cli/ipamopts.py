"""Turn `network create`'s --subnet/--gateway/--ip-range/--aux-address into IPAM configs.

Same rules and messages as docker's createIPAMConfig: each gateway, range and aux
address goes to the subnet that contains it (so the n-th --gateway normally pairs
with the n-th --subnet), at most one gateway and one range per subnet, and no more
gateways or ranges than subnets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from cnet.cli.common import fail

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str) -> Net:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        fail(f"invalid CIDR address: {text}")


def _containing(subnets: Sequence[Net], item: str, kind: str) -> int:
    """Index of the subnet containing address or range `item`."""
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        fail(f"invalid {kind}: {item}")
    for i, subnet in enumerate(subnets):
        if net.version == subnet.version and net.subnet_of(subnet):  # type: ignore[arg-type]
            return i
    fail(f"no matching subnet for {kind} {item}")


def ipam_configs(
    subnets: Sequence[str],
    gateways: Sequence[str] = (),
    ip_ranges: Sequence[str] = (),
    aux_addresses: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The IPAM "Config" list; only keys the user gave are present."""
    aux_addresses = aux_addresses or {}
    if len(subnets) < len(ip_ranges) or len(subnets) < len(gateways):
        fail("every ip-range or gateway must have a corresponding subnet")
    parsed = [_network(s) for s in subnets]
    for i, a in enumerate(parsed):
        if any(a.overlaps(b) for b in parsed[:i] if a.version == b.version):  # type: ignore[arg-type]
            fail("multiple overlapping subnet configuration is not supported")
    configs: list[dict[str, Any]] = [{"Subnet": s} for s in subnets]

    for ip_range in ip_ranges:
        config = configs[_containing(parsed, ip_range, "range")]
        if "IPRange" in config:
            fail(
                f"cannot configure multiple ranges ({ip_range}, {config['IPRange']}) "
                f"on the same subnet ({config['Subnet']})"
            )
        config["IPRange"] = ip_range
    for gateway in gateways:
        _check_address(gateway, "gateway")
        config = configs[_containing(parsed, gateway, "gateway")]
        if "Gateway" in config:
            fail(
                f"cannot configure multiple gateways ({gateway}, {config['Gateway']}) "
                f"for the same subnet ({config['Subnet']})"
            )
        config["Gateway"] = gateway
    for name, address in aux_addresses.items():
        _check_address(address, "aux-address")
        config = configs[_containing(parsed, address, "aux-address")]
        config.setdefault("AuxiliaryAddresses", {})[name] = address
    return configs


def _check_address(text: str, kind: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        fail(f"invalid {kind}: {text} is not an IP address")
