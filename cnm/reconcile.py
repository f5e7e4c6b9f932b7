"""Daemon start: load the store, then make the kernel match it.

The kernel is a cache of the store. Missing objects are recreated, objects that
carry this daemon's mark (interface alias `cnet:<daemon-id>:...`, a namespace
file under the exec root, the `inet cnet` table) but are unknown are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cnet.cnm.controller import Controller
from cnet.cnm.model import Endpoint, Network, Sandbox
from cnet.cnm.osl import namespaces
from cnet.cnm.osl.netlink import links_with_alias_prefix
from cnet.cnm.store import Txn

log = logging.getLogger(__name__)


def load(ctl: Controller, global_networks: Iterable[Network] = ()) -> None:
    """Fill the controller's tables and the IPAM allocators from the store (and the
    cluster store's networks, read first: this node's endpoints may sit on them)."""
    for net in [*global_networks,
                *(Network.from_record(r) for r in ctl.store.list("network/").values())]:
        ctl.networks[net.id] = net
        ctl.ipam.register(net.id, net.pools)
    stale = Txn()
    gone: set[str] = set()  # runtimes' namespaces that vanished while cnetd was down
    for key, rec in ctl.store.list("sandbox/").items():
        sb = Sandbox.from_record(rec)
        if sb.external and not namespaces.is_nsfs(sb.key):
            log.info("sandbox %s: its namespace %s is gone: forgetting it", sb.name, sb.key)
            gone.add(sb.id)
            stale.deletes.append(key)
            continue
        ctl.sandboxes[sb.id] = sb
    for key, rec in ctl.store.list("endpoint/").items():
        ep = Endpoint.from_record(rec)
        if ep.network_id not in ctl.networks or ep.sandbox_id in gone:
            stale.deletes.append(key)
            continue
        ctl.endpoints[ep.id] = ep
        for cidr in (ep.ipv4, ep.ipv6):
            if cidr:
                ctl.ipam.allocate(ep.network_id, 6 if ":" in cidr else 4, cidr.split("/")[0])
    for key, rec in ctl.store.list("ipam/").items():  # local scope only
        if rec.get("endpoint") not in ctl.endpoints:
            stale.deletes.append(key)
    for sb in ctl.sandboxes.values():
        sb.endpoints = [e for e in sb.endpoints if e in ctl.endpoints]
    for ep in ctl.endpoints.values():
        if ep.sandbox_id and ep.sandbox_id not in ctl.sandboxes:  # its sandbox went
            ep.sandbox_id = ep.ifname = None
            stale.puts[f"endpoint/{ep.id}"] = ep.to_record()
    if stale.deletes or stale.puts:
        log.warning("dropping %d stale store records", len(stale.deletes) + len(stale.puts))
        ctl.store.commit(stale)


def _drop_trace_tables() -> None:
    """Marking tables of a `cnet trace` that a crash interrupted (best effort)."""
    from cnet.ingress.nftrace import delete_stale_tables

    try:
        if delete_stale_tables():
            log.info("removed the nftables tables of an interrupted trace")
    except Exception as exc:
        log.warning("could not look for stale trace tables: %s", exc)


def reconcile(ctl: Controller) -> None:
    """Make the kernel match the loaded state; best effort, errors are logged."""
    kernel = ctl.kernel
    kernel.prepare()
    for sb in ctl.sandboxes.values():
        if not sb.external and not namespaces.is_netns(sb.key):
            log.info("recreating namespace of sandbox %s", sb.name)
            namespaces.remove(sb.key)
            kernel.create_netns(sb.key)
    ctl.firewall.reset(
        r for r in (ctl.driver(n).firewall_rules(n) for n in ctl.networks.values()) if r
    )
    _drop_trace_tables()
    owned: set[str] = set()
    for net in ctl.networks.values():
        eps = ctl.network_endpoints(net.id)
        joined: list[tuple[Endpoint, str | None]] = [
            (e, ctl.sandboxes[e.sandbox_id].key) for e in eps if e.sandbox_id]
        joined += [(e, None) for e in eps
                   if not e.sandbox_id and e.driver_state.get("external_sandbox")]
        try:
            for ep_id in ctl.driver(net).restore(net, joined):
                ep = ctl.endpoints[ep_id]
                sb = ctl.sandboxes[ep.sandbox_id or ""]
                if ep.ifname:
                    kernel.configure_interface(sb.key, ep.ifname,
                                               [a for a in (ep.ipv4, ep.ipv6) if a])
        except Exception:
            log.exception("could not restore network %s", net.name)
        owned |= ctl.driver(net).owned_links(net, eps)
    # After the drivers' restore: a driver may keep namespaces of its own (overlays).
    known_keys = {sb.key for sb in ctl.sandboxes.values()}
    for net in ctl.networks.values():
        known_keys |= ctl.driver(net).owned_netns(net)
    for path in kernel.list_netns():
        if path not in known_keys:
            log.info("removing unknown namespace %s", path)
            kernel.remove_netns(path)
    for sb in ctl.sandboxes.values():
        try:
            ctl._apply_routes(sb, force=True)
        except Exception:
            log.exception("could not restore routes of sandbox %s", sb.name)
    for link in links_with_alias_prefix(kernel.host, f"cnet:{ctl.daemon_id}:"):
        if link.ifname not in owned:
            log.info("removing unknown interface %s", link.ifname)
            kernel.host.delete_link(link.ifname)


def cleanup(ctl: Controller) -> list[str]:
    """Remove every kernel object this daemon owns (cnetd --cleanup). Returns errors."""
    errors: list[str] = []
    kernel = ctl.kernel
    for path in kernel.list_netns():
        try:
            kernel.remove_netns(path, vxlan_first=True)
        except Exception as exc:
            errors.append(f"{path}: {exc}")
    for link in links_with_alias_prefix(kernel.host, f"cnet:{ctl.daemon_id}:"):
        try:
            kernel.host.delete_link(link.ifname)
        except Exception as exc:
            errors.append(f"{link.ifname}: {exc}")
    try:
        ctl.firewall.delete_table()
    except Exception as exc:
        errors.append(f"nftables: {exc}")
    _drop_trace_tables()
    try:
        namespaces.remove_dir_mount(kernel.netns_dir)
    except Exception as exc:
        errors.append(f"{kernel.netns_dir}: {exc}")
    return errors
