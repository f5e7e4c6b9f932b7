"""What the macvlan and ipvlan drivers share: endpoints that are links stacked on a host
interface (the *parent*), each born inside its sandbox with its final name and MAC.

A network holds no kernel object of its own, except what the user asked for: an 802.1q
sub-interface when the parent is spelled IFACE.VLAN and does not exist yet (removed with
the last network using it), and for macvlan a host-side interface (see the macvlan
driver). Both carry the daemon's alias, so cleanup finds them.

The parent is watched, not trusted: when it goes away the kernel deletes every link
stacked on it, in every namespace. The network then reports it (`status()`: inspect's
Status and `cnet info`'s warnings), and once the parent is back the endpoints' links are
made again, with their addresses and default routes: at daemon start (`restore`), or at
the next join on the network (`_heal`, which notices that the parent's ifindex changed).
"""

from __future__ import annotations

import logging

from cnet.cnm.driverapi import Driver, JoinInfo
from cnet.cnm.errors import Conflict, FeatureMissing, InvalidParameter
from cnet.cnm.model import Endpoint, Network
from cnet.cnm.osl.kernel import Kernel
from cnet.cnm.osl.netlink import LinkState
from cnet.drivers.macvlan.options import ParentOptions

log = logging.getLogger(__name__)

# daemon id -> network id -> the network, for every macvlan and ipvlan network of that
# daemon: parent conflicts are across both drivers (a parent takes one kind of children).
_PARENT_USERS: dict[str, dict[str, Network]] = {}

NO_8021Q = ('parent "{parent}" needs an 802.1q VLAN sub-interface (VLAN {vid} on {base}) '
            "and this kernel lacks 802.1q VLAN support")


class ParentLinkDriver(Driver):
    """Base of drivers whose endpoints are `kind` links on a parent interface."""

    kind = ""  # the link kind, also the kernel feature name probed ("macvlan", "ipvlan")
    scope = "local"
    mode_option = ""  # the -o option naming the mode

    def __init__(self, ctx):
        super().__init__(ctx)
        self._parent_index: dict[str, int | None] = {}  # network id -> parent ifindex seen
        self._joined: dict[str, dict[str, Endpoint]] = {}  # network id -> its joined endpoints

    @property
    def kernel(self) -> Kernel:
        return self.ctx.netlink  # type: ignore[return-value]

    # -- hooks for the concrete drivers -------------------------------------------------
    def parse(self, options: dict[str, str]) -> ParentOptions:
        raise NotImplementedError

    def create_link(self, network: Network, endpoint: Endpoint, opts: ParentOptions,
                    parent: int, sandbox_key: str, ifname: str) -> None:
        """Make the endpoint's link on `parent`, born in `sandbox_key` as `ifname`."""
        raise NotImplementedError

    def join_info(self, network: Network, endpoint: Endpoint, opts: ParentOptions,
                  sandbox_key: str, ifname: str) -> JoinInfo:
        """The gateways: the network's (the physical router) unless it is internal."""
        if network.internal:
            return JoinInfo(ifname=ifname)
        pool4, pool6 = network.pool(False), network.pool(True)
        return JoinInfo(ifname=ifname,
                        gateway4=pool4.gateway if pool4 and endpoint.ipv4 else None,
                        gateway6=pool6.gateway if pool6 and endpoint.ipv6 else None)

    def network_extras(self, network: Network, opts: ParentOptions, parent: int) -> None:
        """Kernel objects of the network itself on `parent` (made or remade, idempotent)."""

    def remove_extras(self, network: Network, opts: ParentOptions) -> None:
        pass

    def endpoint_joined(self, network: Network, endpoint: Endpoint,
                        opts: ParentOptions) -> None:
        """After the endpoint's link exists (join, heal, restore)."""

    def endpoint_leaving(self, network: Network, endpoint: Endpoint,
                         opts: ParentOptions) -> None:
        pass

    # -- parent checks --------------------------------------------------------------------
    def _users(self) -> dict[str, Network]:
        return _PARENT_USERS.setdefault(self.ctx.daemon_id, {})

    def _our_vlans(self) -> set[str]:
        return {n.driver_state["parent"] for n in self._users().values()
                if n.driver_state.get("vlan_created")}

    def _check_feature(self) -> None:
        if not self.kernel.has_link_feature(self.kind):
            raise FeatureMissing(f"{self.kind} networks need the kernel's {self.kind} link "
                                 f"type, which this kernel lacks (see cnet info)")

    def _check_parent_link(self, state: LinkState) -> None:
        """Refuse a parent that something else uses in a way that excludes us."""
        name = state.ifname
        if name == "lo":
            raise InvalidParameter('parent interface "lo" is the loopback')
        ours = state.alias and state.alias.startswith(f"cnet:{self.ctx.daemon_id}:")
        if ours and name not in self._our_vlans():
            what = {"bridge": "the bridge of a cnet bridge network",
                    "veth": "a cnet endpoint's interface",
                    "macvlan": "a cnet macvlan host interface",
                    "vxlan": "a cnet overlay's VXLAN device"}.get(state.kind or "",
                                                                   "an interface cnet made")
            raise Conflict(f'parent interface "{name}" is {what}: use the interface that '
                           "connects the host to the physical network")
        if state.master is not None:
            master = self.kernel.host.link_state(index=state.master)
            raise Conflict(f'parent interface "{name}" is a port of '
                           f'"{master.ifname if master else state.master}": '
                           f"a {self.kind} parent cannot be a bridge or bond port")

    def _check_sharing(self, network: Network, opts: ParentOptions) -> None:
        """Networks on the same parent: one kind of children; passthru takes it alone;
        ipvlan's mode belongs to the parent. (Overlapping subnets the IPAM refuses.)"""
        for other in self._users().values():
            if other.id == network.id or other.driver_state.get("parent") != opts.parent:
                continue
            if other.driver != self.name:
                raise Conflict(f'parent interface "{opts.parent}" is used by {other.driver} '
                               f'network "{other.name}": a parent takes macvlan or ipvlan '
                               "links, not both")
            other_mode = self.parse(other.options).mode
            if "passthru" in (opts.mode, other_mode):
                raise Conflict(f'parent interface "{opts.parent}" is used by macvlan network '
                               f'"{other.name}": a passthru network needs the parent alone')
            if self.kind == "ipvlan" and other_mode != opts.mode:
                raise Conflict(f'parent interface "{opts.parent}" is used by ipvlan network '
                               f'"{other.name}" in mode {other_mode}: one mode per parent')

    # -- networks -------------------------------------------------------------------------
    def validate(self, network: Network) -> None:
        opts = self.parse(network.options)
        self._check_feature()
        assert opts.parent is not None
        network.driver_state["parent"] = opts.parent
        network.driver_state.pop("vlan_created", None)
        state = self.kernel.host.link_state(opts.parent)
        if state is None:
            vlan = opts.vlan
            if vlan is None:
                raise InvalidParameter(f'parent interface "{opts.parent}" does not exist')
            base, vid = vlan
            if not self.kernel.has_link_feature("802.1q"):
                raise FeatureMissing(NO_8021Q.format(parent=opts.parent, vid=vid, base=base))
            base_state = self.kernel.host.link_state(base)
            if base_state is None:
                raise InvalidParameter(f'parent interface "{base}" (of {opts.parent}) '
                                       "does not exist")
            self._check_parent_link(base_state)
            network.driver_state["vlan_create"] = True  # create_network makes it
        else:
            network.driver_state.pop("vlan_create", None)
            self._check_parent_link(state)
            if opts.parent in self._our_vlans():  # made for another network: shared, the
                network.driver_state["vlan_created"] = True  # last one removes it
        self._check_sharing(network, opts)

    def create_network(self, network: Network) -> None:
        opts = self.parse(network.options)
        host = self.kernel.host
        made_vlan = False
        if network.driver_state.pop("vlan_create", False):
            base, vid = opts.vlan  # type: ignore[misc]
            base_idx = host.index(base)
            if base_idx is None:
                raise InvalidParameter(f'parent interface "{base}" does not exist')
            host.create_vlan(opts.parent, base_idx, vid,  # type: ignore[arg-type]
                             self.ctx.alias(network.id))
            network.driver_state["vlan_created"] = made_vlan = True
        try:
            parent = host.index(opts.parent)  # type: ignore[arg-type]
            if parent is None:
                raise InvalidParameter(f'parent interface "{opts.parent}" does not exist')
            self.network_extras(network, opts, parent)
        except BaseException:
            if made_vlan:
                host.delete_link(opts.parent)  # type: ignore[arg-type]
            raise
        self._parent_index[network.id] = parent
        self._users()[network.id] = network

    def delete_network(self, network: Network) -> None:
        opts = self.parse(network.options)
        errors: list[Exception] = []
        try:
            self.remove_extras(network, opts)
        except Exception as exc:  # best effort: the rest still goes
            errors.append(exc)
        self._users().pop(network.id, None)
        self._parent_index.pop(network.id, None)
        self._joined.pop(network.id, None)
        parent = network.driver_state.get("parent")
        if network.driver_state.get("vlan_created") and not any(
                n.driver_state.get("parent") == parent for n in self._users().values()):
            try:
                self.kernel.host.delete_link(parent)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def owned_links(self, network: Network, endpoints: list[Endpoint]) -> set[str]:
        names = set()
        if network.driver_state.get("vlan_created"):
            names.add(network.driver_state["parent"])
        host_if = self.parse(network.options).host_interface
        if host_if:
            names.add(host_if)
        return names

    def status(self, network: Network) -> dict[str, str]:
        parent = network.driver_state.get("parent", "")
        state = self.kernel.host.link_state(parent) if parent else None
        if state is None:
            n = len(self._joined.get(network.id, {}))
            return {"Parent": parent, "ParentState": "missing",
                    "Warning": f'network "{network.name}": parent interface "{parent}" is '
                               f"missing; its {n} joined endpoint(s) have no interface until "
                               "it is back (remade at the next connect to the network or "
                               "daemon start)"}
        out = {"Parent": parent,
               "ParentState": "up" if state.up and state.carrier else
               ("no-carrier" if state.up else "down")}
        if not state.up:
            out["Warning"] = (f'network "{network.name}": parent interface "{parent}" '
                              "is down")
        elif state.index != self._parent_index.get(network.id, state.index):
            out["ParentState"] = "returned"
            out["Warning"] = (f'network "{network.name}": parent interface "{parent}" came '
                              "back; endpoints are remade at the next connect to the network "
                              "or daemon start")
        return out

    # -- endpoints ------------------------------------------------------------------------
    def create_endpoint(self, network: Network, endpoint: Endpoint) -> None:
        opts = self.parse(network.options)
        if opts.mode == "passthru" and self._joined.get(network.id):
            raise Conflict(f'network "{network.name}" is in macvlan passthru mode and already '
                           "has an endpoint: passthru allows one")

    def _parent(self, network: Network, opts: ParentOptions) -> int:
        """The parent's ifindex now; heals the network first if the parent came back."""
        state = self.kernel.host.link_state(opts.parent)
        if state is None:
            self._parent_index[network.id] = None
            raise Conflict(f'parent interface "{opts.parent}" of network "{network.name}" is '
                           "missing: connect again once it is back")
        if self._parent_index.get(network.id, state.index) != state.index:
            self._heal(network, opts, state.index)
        self._parent_index[network.id] = state.index
        return state.index

    def join(self, network: Network, endpoint: Endpoint, sandbox_key: str,
             ifname: str) -> JoinInfo:
        opts = self.parse(network.options)
        if opts.mode == "passthru" and any(
                e.id != endpoint.id for e in self._joined.get(network.id, {}).values()):
            raise Conflict(f'network "{network.name}" is in macvlan passthru mode and already '
                           "has an endpoint: passthru allows one")
        parent = self._parent(network, opts)
        self.create_link(network, endpoint, opts, parent, sandbox_key, ifname)
        if sandbox_key == self.kernel.host_netns_path:
            # dockerd's join: it moves and configures the link itself; never remade here
            endpoint.driver_state.update(sandbox_key=None, ifname=None)
        else:
            endpoint.driver_state.update(sandbox_key=sandbox_key, ifname=ifname)
        try:
            info = self.join_info(network, endpoint, opts, sandbox_key, ifname)
            self.endpoint_joined(network, endpoint, opts)
        except BaseException:
            self.kernel.sandbox(sandbox_key).delete_link(ifname)
            raise
        self._joined.setdefault(network.id, {})[endpoint.id] = endpoint
        return info

    def leave(self, network: Network, endpoint: Endpoint) -> None:
        opts = self.parse(network.options)
        self._joined.get(network.id, {}).pop(endpoint.id, None)
        key = endpoint.driver_state.pop("sandbox_key", None)
        ifname = endpoint.driver_state.pop("ifname", None)
        errors: list[Exception] = []
        try:
            self.endpoint_leaving(network, endpoint, opts)
        except Exception as exc:
            errors.append(exc)
        # The link dies with its sandbox anyway; a namespace gone first is no error.
        if key and ifname and self.kernel.is_namespace_file(key):
            self.kernel.sandbox(key).delete_link(ifname)
        if errors:
            raise errors[0]

    def _make_again(self, network: Network, endpoint: Endpoint, opts: ParentOptions,
                    parent: int) -> bool:
        """Remake one joined endpoint's link if it is gone; True when it was remade."""
        key = endpoint.driver_state.get("sandbox_key")
        ifname = endpoint.driver_state.get("ifname")
        if not key or not ifname or not self.kernel.is_namespace_file(key):
            return False
        nl = self.kernel.sandbox(key)
        state = nl.link_state(ifname)
        if state is not None and state.kind == self.kind:
            return False
        if state is not None:
            nl.delete_link(ifname)
        self.create_link(network, endpoint, opts, parent, key, ifname)
        self.endpoint_joined(network, endpoint, opts)
        return True

    def _heal(self, network: Network, opts: ParentOptions, parent: int) -> None:
        """The parent came back (a new ifindex): remake the network's kernel objects and
        each joined endpoint's link, with its addresses and the default route it gave."""
        log.info("parent %s of network %s is back: remaking its endpoints",
                 opts.parent, network.name)
        self.network_extras(network, opts, parent)
        for endpoint in list(self._joined.get(network.id, {}).values()):
            try:
                if not self._make_again(network, endpoint, opts, parent):
                    continue
                key, ifname = endpoint.driver_state["sandbox_key"], endpoint.driver_state["ifname"]
                self.kernel.configure_interface(
                    key, ifname, [a for a in (endpoint.ipv4, endpoint.ipv6) if a])
                nl = self.kernel.sandbox(key)
                idx = nl.index(ifname)
                for gw, v6 in ((endpoint.gateway4, False), (endpoint.gateway6, True)):
                    if gw and not nl.has_default_route(v6):
                        nl.add_default_route(gw, idx)
            except Exception:
                log.exception("could not remake endpoint %s of network %s",
                              endpoint.id[:12], network.name)

    # -- restart --------------------------------------------------------------------------
    def restore(self, network: Network, joined: list[tuple[Endpoint, str]]) -> list[str]:
        opts = self.parse(network.options)
        host = self.kernel.host
        self._users()[network.id] = network
        self._joined[network.id] = {e.id: e for e, _ in joined}
        for endpoint, key in joined:
            if key is None:  # joined for dockerd: its link is dockerd's business
                continue
            endpoint.driver_state.setdefault("sandbox_key", key)
            if endpoint.ifname:
                endpoint.driver_state.setdefault("ifname", endpoint.ifname)
        state = host.link_state(opts.parent)  # type: ignore[arg-type]
        if state is None and network.driver_state.get("vlan_created"):
            base, vid = opts.vlan  # type: ignore[misc]
            base_idx = host.index(base)
            if base_idx is not None and self.kernel.has_link_feature("802.1q"):
                host.create_vlan(opts.parent, base_idx, vid,  # type: ignore[arg-type]
                                 self.ctx.alias(network.id))
                state = host.link_state(opts.parent)  # type: ignore[arg-type]
        if state is None:
            self._parent_index[network.id] = None
            log.warning("network %s: parent interface %s is missing; its %d joined "
                        "endpoint(s) stay without interface until it is back",
                        network.name, opts.parent, len(joined))
            return []
        self._parent_index[network.id] = state.index
        self.network_extras(network, opts, state.index)
        recreated = []
        for endpoint, _key in joined:
            try:
                if self._make_again(network, endpoint, opts, state.index):
                    recreated.append(endpoint.id)
                else:
                    self.endpoint_joined(network, endpoint, opts)
            except Exception:
                log.exception("could not remake endpoint %s of network %s",
                              endpoint.id[:12], network.name)
        return recreated
