"""Containers: a CNM sandbox (same id) plus a runc container supervised by a shim.

cnet plays containerd's and dockerd's part: it prepares the bundle (overlay
rootfs, /etc files, OCI spec), starts a shim that runs runc and keeps stdio and
the exit status, watches the shim, and applies restart policies. State changes
run on the daemon's kernel worker; waiting (stop timeouts, wait, logs) does not.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from typing import Any

from cnet.cnm import ids
from cnet.cnm.controller import Controller
from cnet.cnm.errors import CnetError, Conflict, InvalidParameter, NotFound
from cnet.cnm.timefmt import epoch as _epoch
from cnet.cnm.timefmt import now
from cnet.cnm.undo import Undo
from cnet.runtime import etcfiles, restart, rootfs, shimclient
from cnet.runtime.monitor import ShimMonitor
from cnet.runtime.spec import (
    DEFAULT_PATH,
    Mount,
    ProcessSpec,
    Resources,
    build_spec,
    capabilities,
)

log = logging.getLogger(__name__)
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15,
           "STOP": 19, "CONT": 18}


def signal_number(sig: str | int | None) -> int:
    if sig is None or sig == "":
        return 9
    text = str(sig).upper().removeprefix("SIG")
    if text.isdigit() and 0 < int(text) < 65:
        return int(text)
    if text in SIGNALS:
        return SIGNALS[text]
    raise InvalidParameter(f'invalid signal "{sig}"')


class Paths:
    """Where a container's pieces live."""

    def __init__(self, data_root: str, exec_root: str, cid: str):
        self.data = os.path.join(data_root, "containers", cid)
        self.bundle = os.path.join(exec_root, "containers", cid)
        self.rootfs = os.path.join(self.bundle, "rootfs")
        self.state = os.path.join(self.bundle, "state")
        self.layer = os.path.join(self.data, "layer")
        self.etc = os.path.join(self.data, "etc")
        self.log = os.path.join(self.data, f"{cid}-json.log")


class ContainerManager:
    def __init__(self, ctl: Controller, worker, images, volumes, ports, *, data_root: str,
                 exec_root: str, dns: list[str] | None = None,
                 log_max_bytes: int = 10 << 20):
        self.ctl = ctl
        self.worker = worker
        self.images = images
        self.volumes = volumes
        self.ports = ports
        self.data_root = data_root
        self.exec_root = exec_root
        self.runc_root = os.path.join(exec_root, "runc")
        self.dns = list(dns or [])
        self.log_max_bytes = log_max_bytes
        self.containers: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._delays: dict[str, float] = {}
        self.last_exit: dict[str, int] = {}  # survives --rm removal, for `wait`
        self._timers: dict[str, threading.Timer] = {}
        self.monitor = ShimMonitor(lambda cid: self.worker.submit(self._on_exit, cid))
        if images is not None:
            images.set_users(self._image_users)
        if volumes is not None:
            volumes.set_users(self._volume_users)

    # -- lookups --------------------------------------------------------------------
    def get(self, ref: str) -> dict:
        return ids.resolve("container", ref.lstrip("/"), self.containers.values(),
                           lambda c: (c["Id"], c["Name"]))

    def paths(self, c: dict) -> Paths:
        return Paths(self.data_root, self.exec_root, c["Id"])

    def _image_users(self, image_id: str) -> list[str]:
        return [c["Name"] for c in list(self.containers.values()) if c["Image"] == image_id]

    def _volume_users(self, name: str) -> list[str]:
        return [c["Name"] for c in list(self.containers.values())
                if any(m["Type"] == "volume" and m["Source"] == name
                       for m in c["HostConfig"]["Mounts"])]

    def _save(self, c: dict) -> None:
        self.ctl.store.put(f"container/{c['Id']}", c)

    def _set_state(self, c: dict, **fields: Any) -> None:
        with self._cond:
            c["State"].update(fields)
            self._cond.notify_all()
        self._save(c)

    # -- create -----------------------------------------------------------------------
    def create(self, body: dict, name: str | None) -> dict:
        """POST /containers/create: validate everything, then sandbox + networks + record."""
        if name:
            ids.check_name("container", name.lstrip("/"))
            name = name.lstrip("/")
            if any(c["Name"] == name for c in self.containers.values()):
                raise Conflict(f'Conflict. The container name "/{name}" is already in use')
        image = self.images.resolve(body.get("Image") or "")
        icfg = image.get("Config") or {}
        host = dict(body.get("HostConfig") or {})
        entrypoint = body.get("Entrypoint")
        cmd = body.get("Cmd")
        if entrypoint is None:
            entrypoint = icfg.get("Entrypoint") or []
            cmd = cmd or icfg.get("Cmd") or []
        elif not cmd:
            cmd = []
        if not (list(entrypoint or []) + list(cmd or [])):
            raise InvalidParameter("no command specified")
        policy = host.get("RestartPolicy") or {"Name": "no"}
        if (policy.get("Name") or "no") not in ("no", "always", "unless-stopped",
                                                  "on-failure"):
            raise InvalidParameter(f'invalid restart policy "{policy.get("Name")}"')
        if host.get("AutoRemove") and policy.get("Name") not in (None, "", "no"):
            raise InvalidParameter("conflicting options: --restart and --rm")
        if host.get("Memory") is not None and int(host["Memory"]) < 6 * (1 << 20) and \
                int(host["Memory"]) != 0:
            raise InvalidParameter("minimum memory limit allowed is 6MB")
        capabilities(host.get("CapAdd") or [], host.get("CapDrop") or [])
        mounts = [self._check_mount(m) for m in host.get("Mounts") or []]
        cid = ids.new_id()
        name = name or self._random_name()
        networking = body.get("NetworkingConfig") or {}
        endpoints = dict(networking.get("EndpointsConfig") or {})
        mode = host.get("NetworkMode") or (next(iter(endpoints)) if endpoints else "bridge")
        endpoints = self._by_network_id(mode, endpoints)  # NotFound early
        exposed = dict(icfg.get("ExposedPorts") or {})
        exposed.update(body.get("ExposedPorts") or {})
        for key in host.get("PortBindings") or {}:
            exposed.setdefault(key, {})
        if self.ports is not None:
            self.ports.validate(host.get("PortBindings") or {})
        env = list(icfg.get("Env") or [])
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, f"PATH={DEFAULT_PATH}")
        env += list(body.get("Env") or [])
        c = {
            "Id": cid,
            "Name": name,
            "Created": now(),
            "Image": image["Id"],
            "Config": {
                "Hostname": body.get("Hostname") or cid[:12],
                "Env": env,
                "Cmd": list(cmd or []),
                "Entrypoint": list(entrypoint or []),
                "WorkingDir": body.get("WorkingDir") or icfg.get("WorkingDir") or "/",
                "Image": body.get("Image"),
                "Tty": bool(body.get("Tty")),
                "OpenStdin": bool(body.get("OpenStdin")),
                "ExposedPorts": exposed,
                "Labels": dict(body.get("Labels") or {}),
                "User": body.get("User") or icfg.get("User") or "",
            },
            "HostConfig": {
                "NetworkMode": mode,
                "RestartPolicy": {"Name": policy.get("Name") or "no",
                                  "MaximumRetryCount": int(policy.get("MaximumRetryCount")
                                                           or 0)},
                "AutoRemove": bool(host.get("AutoRemove")),
                "Memory": int(host.get("Memory") or 0),
                "NanoCpus": int(host.get("NanoCpus") or 0),
                "PidsLimit": int(host.get("PidsLimit") or 0),
                "PortBindings": host.get("PortBindings") or {},
                "PublishAllPorts": bool(host.get("PublishAllPorts")),
                "Mounts": mounts,
                "ReadonlyRootfs": bool(host.get("ReadonlyRootfs")),
                "CapAdd": list(host.get("CapAdd") or []),
                "CapDrop": list(host.get("CapDrop") or []),
                "Dns": list(host.get("Dns") or []),
            },
            "Networks": endpoints,
            "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0,
                      "StartedAt": "0001-01-01T00:00:00Z",
                      "FinishedAt": "0001-01-01T00:00:00Z", "Error": ""},
            "RestartCount": 0,
            "StoppedByUser": False,
            "StartedBefore": False,
            "Ports": {},
        }
        with Undo() as undo:
            for m in mounts:
                if m["Type"] == "volume" and not self._volume_exists(m["Source"]):
                    self.volumes.create(m["Source"])
                    undo.push(self.volumes.remove, m["Source"])
            for net in endpoints:
                if self.ctl.network(net).driver == "host":
                    raise InvalidParameter("--network host is not supported yet")
            sb = self.ctl.create_sandbox(name, {"cnet.container": cid}, sandbox_id=cid)
            undo.push(self.ctl.delete_sandbox, sb.id, True)
            self._save(c)
        self.containers[cid] = c
        return c

    def _by_network_id(self, mode: str, endpoints: dict) -> dict:
        """The configured networks keyed by network id, `mode` (NetworkMode) first if the
        endpoint configs do not name it: a user may give a name, an id or an id prefix,
        and a later connect/disconnect another of them. One network named twice is bad
        input."""
        mode_id = self.ctl.network(mode).id
        out: dict[str, dict] = {}
        for ref, cfg in endpoints.items():
            net = self.ctl.network(ref)
            if net.id in out:
                raise InvalidParameter(f"network {net.name} is given more than once")
            out[net.id] = cfg
        return out if mode_id in out else {mode_id: {}, **out}

    def _stored_network(self, key: str):
        """The network a key of `c["Networks"]` stands for, or None (a deleted network).
        Keys are network ids; an older version's record holds what the user typed: a name,
        or an id prefix as `network ls` shows it (12 digits or more). A shorter prefix is
        not taken: such a key is the name of a deleted network that happens to be hex
        ("db", "cafe"), not a reference to whichever network's id starts so."""
        return ids.resolve_stored(key, self.ctl.networks.values(), lambda n: (n.id, n.name))

    def _network_key(self, c: dict, net) -> str | None:
        """The key of `c["Networks"]` that stands for network `net`: its id, or in a record
        of an older version (keyed as the user typed it) the name or an id prefix."""
        if net.id in c["Networks"]:
            return net.id
        for key in c["Networks"]:
            found = self._stored_network(key)
            if found is not None and found.id == net.id:
                return key
        return None

    def _normalise(self, c: dict) -> None:
        """An older version's record: its networks keyed by id where they resolve exactly
        (`_stored_network`; order kept; a network it holds twice, once by name and once by
        id, is kept once). Any other key is kept as it is and logged: a deleted network,
        which start reports and `network disconnect` drops."""
        nets: dict[str, dict] = {}
        for key, cfg in (c.get("Networks") or {}).items():
            net = self._stored_network(key)
            if net is not None:
                key = net.id
            else:
                log.warning("container %s: network %s not found (kept as is)",
                            c.get("Name"), key)
            nets.setdefault(key, cfg)
        c["Networks"] = nets

    def dns_info(self, sandbox_id: str) -> tuple[list[str], list[str]] | None:
        """For the embedded DNS: a container's extra names (short id, hostname) and its
        own upstream servers (--dns); None for a sandbox that is not a container."""
        c = self.containers.get(sandbox_id)
        if c is None:
            return None
        return [c["Id"][:12], c["Config"]["Hostname"]], list(c["HostConfig"]["Dns"])

    def _volume_exists(self, name: str) -> bool:
        try:
            self.volumes.get(name)
            return True
        except NotFound:
            return False

    def _check_mount(self, m: dict) -> dict:
        kind = m.get("Type") or "volume"
        target = m.get("Target") or ""
        if not target.startswith("/"):
            raise InvalidParameter(f'invalid mount target "{target}": must be absolute')
        source = m.get("Source") or ""
        if kind == "bind":
            if not os.path.exists(source):
                raise InvalidParameter(f"bind source path does not exist: {source}")
        elif kind == "volume":
            source = source or secrets.token_hex(32)
            ids.check_name("volume", source)
        else:
            raise InvalidParameter(f'invalid mount type "{kind}"')
        return {"Type": kind, "Source": source, "Target": target,
                "ReadOnly": bool(m.get("ReadOnly"))}

    def _random_name(self) -> str:
        adjectives = ("brave", "calm", "eager", "fancy", "happy", "jolly", "keen", "lucid")
        nouns = ("turing", "hopper", "lovelace", "ritchie", "thompson", "kernighan", "cerf")
        while True:
            name = (f"{secrets.choice(adjectives)}_{secrets.choice(nouns)}"
                    f"{secrets.randbelow(100)}")
            if not any(c["Name"] == name for c in self.containers.values()):
                return name

    # -- start --------------------------------------------------------------------------
    def start(self, ref: str, hold: bool = False) -> dict:
        """Start a container; with `hold` its process is created but waits for
        `release()` (so an attaching client misses none of its first output)."""
        c = self.get(ref)
        if c["State"]["Running"]:
            return c  # docker: starting a running container is a no-op
        timer = self._timers.pop(c["Id"], None)
        if timer:
            timer.cancel()
        p = self.paths(c)
        sb = self.ctl.sandbox(c["Id"])
        with Undo() as undo:
            for key, cfg in c["Networks"].items():
                net = self._stored_network(key)
                if net is None:
                    raise NotFound(f"network {key} not found")  # Docker's words
                self._connect(c, net.id, cfg, undo)
            image = self.images.resolve(c["Image"])
            rootfs.mount(self.images.layer_dirs(image), p.layer, p.rootfs)
            undo.push(rootfs.unmount, p.rootfs)
            spec = self._spec(c, p, sb)
            with open(os.path.join(p.bundle, "config.json"), "w") as f:
                json.dump(spec, f)
            target = self._ipv4(c)
            if self.ports is not None and target is None:
                # Docker: no endpoint with external connectivity (none, macvlan, only
                # internal networks): the container starts without its bindings; a later
                # connect to a bridge network publishes them (_follow_ports).
                c["Ports"] = {}
            elif self.ports is not None:
                c["Ports"] = self.ports.publish(c["Id"], target, c["HostConfig"],
                                                c["Config"]["ExposedPorts"])
                undo.push(self.ports.release, c["Id"])
            shutil.rmtree(p.state, ignore_errors=True)
            os.makedirs(p.state)
            try:
                started = shimclient.start_shim(
                    c["Id"], p.bundle, self.runc_root, p.state, p.log,
                    tty=c["Config"]["Tty"], stdin=c["Config"]["OpenStdin"],
                    log_max_bytes=self.log_max_bytes, start=not hold)
            except shimclient.ShimError as exc:
                self._set_state(c, Status="created" if not c["StartedBefore"] else "exited",
                                Error=str(exc), ExitCode=127 if "not found" in str(exc)
                                else 126 if "permission" in str(exc) else 128)
                raise InvalidParameter(f"failed to start container: {exc}") from None
        c["StartedBefore"] = True
        c["StoppedByUser"] = False
        self._set_state(c, Status="running", Running=True, Pid=started["pid"], ExitCode=0,
                        StartedAt=now(), Error="")
        self.monitor.watch(c["Id"], started["shim_pid"])
        return c

    def release(self, ref: str) -> None:
        """Let a held container's process run (runc start)."""
        c = self.get(ref)
        res = self._runc("start", c["Id"])
        if res.returncode != 0:
            raise CnetError(f"start failed: {res.stderr.strip()}")

    def _ipv4(self, c: dict) -> str | None:
        sb = self.ctl.sandbox(c["Id"])
        for ep_id in sb.endpoints:
            ep = self.ctl.endpoints[ep_id]
            net = self.ctl.networks[ep.network_id]
            if ep.ipv4 and net.driver == "bridge" and not net.internal:
                return ep.ipv4.split("/")[0]
        return None

    def _spec(self, c: dict, p: Paths, sb) -> dict:
        cfg, host = c["Config"], c["HostConfig"]
        addrs, names = [], [c["Name"]]
        for ep_id in sb.endpoints:
            ep = self.ctl.endpoints[ep_id]
            addrs += [a.split("/")[0] for a in (ep.ipv4, ep.ipv6) if a]
            names += [a for a in ep.aliases if a not in names]
        servers, search = etcfiles.host_resolv()
        if any(n is not None and n.user_defined
               for n in map(self._stored_network, c["Networks"])):
            # The embedded resolver answers (and forwards to --dns / the daemon's / the
            # host's servers); ndots:0 so single names are tried as they are first.
            servers, options = ["127.0.0.11"], ["ndots:0"]
        else:
            servers, options = host["Dns"] or self.dns or servers, []
        files = etcfiles.write_all(
            p.etc, hostname=cfg["Hostname"], addresses=addrs, names=names,
            nameservers=servers, search=search, options=options)
        mounts = [Mount(target, source) for target, source in files.items()]
        for m in host["Mounts"]:
            source = (self.volumes.mountpoint(m["Source"]) if m["Type"] == "volume"
                      else m["Source"])
            mounts.append(Mount(m["Target"], source, m["ReadOnly"]))
        uid, gid = _user(cfg["User"], p.rootfs)
        process = ProcessSpec(
            args=cfg["Entrypoint"] + cfg["Cmd"], env=cfg["Env"], cwd=cfg["WorkingDir"],
            terminal=cfg["Tty"], uid=uid, gid=gid,
            caps=capabilities(host["CapAdd"], host["CapDrop"]))
        resources = Resources(memory=host["Memory"] or None,
                              cpus=host["NanoCpus"] / 1e9 if host["NanoCpus"] else None,
                              pids=host["PidsLimit"] or None)
        return build_spec(process=process, rootfs=p.rootfs, readonly=host["ReadonlyRootfs"],
                          hostname=cfg["Hostname"], netns=sb.key, mounts=mounts,
                          resources=resources,
                          cgroups_path=f"{cgroup_parent(self.ctl.daemon_id)}/{c['Id']}")

    # -- exit, restart -----------------------------------------------------------------------
    def _on_exit(self, cid: str) -> None:
        """The shim is gone: record the exit, release the rootfs and ports, apply the policy."""
        c = self.containers.get(cid)
        if c is None or not c["State"]["Running"]:
            return
        p = self.paths(c)
        info = shimclient.read_exit(p.state) or {"ExitCode": 255, "FinishedAt": now()}
        code = int(info.get("ExitCode", 255))
        ran_for = _epoch(info.get("FinishedAt", "")) - _epoch(c["State"]["StartedAt"])
        decision = restart.decide(c["HostConfig"]["RestartPolicy"], code, c["RestartCount"],
                                  c["StoppedByUser"], ran_for, self._delays.get(cid, 0.0))
        status = "restarting" if decision.restart else "exited"
        self.last_exit[cid] = code
        self._set_state(c, Status=status, Running=False, Pid=0, ExitCode=code,
                        FinishedAt=info.get("FinishedAt") or now())
        # Waiters (wait, stop, run) are told first; the release (veth deletion is ~16 ms
        # of kernel time) follows on this same worker task, before any other operation.
        self._release(c, p)
        if decision.restart:
            self._delays[cid] = decision.delay
            timer = threading.Timer(decision.delay, self._restart_later, (cid,))
            timer.daemon = True
            self._timers[cid] = timer
            timer.start()
        elif c["HostConfig"]["AutoRemove"]:
            self.remove(cid, force=True)

    def _restart_later(self, cid: str) -> None:
        def run() -> None:
            self._timers.pop(cid, None)
            c = self.containers.get(cid)
            if c is None or c["State"]["Status"] != "restarting":
                return
            c["RestartCount"] += 1
            try:
                self.start(cid)
            except CnetError as exc:
                log.warning("restart of %s failed: %s", c["Name"], exc)
                self._set_state(c, Status="exited")

        self.worker.submit(run)

    # -- networks (attached while running, like Docker: a stopped container is off the net)
    def _connect(self, c: dict, net: str, cfg: dict | None, undo: Undo | None = None) -> None:
        netobj = self.ctl.network(net)
        if netobj.driver == "null":
            return
        ipam = (cfg or {}).get("IPAMConfig") or {}
        self.ctl.connect(net, c["Id"], ipv4=ipam.get("IPv4Address") or None,
                         ipv6=ipam.get("IPv6Address") or None,
                         aliases=(cfg or {}).get("Aliases") or [])
        if undo is not None:
            undo.push(self.ctl.disconnect, net, c["Id"])

    def _disconnect_all(self, c: dict) -> None:
        sb = self.ctl.sandboxes.get(c["Id"])
        for ep_id in list(sb.endpoints if sb else []):
            ep = self.ctl.endpoints.get(ep_id)
            if ep is None:  # the gateway-bridge endpoint left with the last overlay
                continue
            try:
                self.ctl.disconnect(ep.network_id, c["Id"])
            except CnetError:
                log.exception("disconnecting %s", c["Name"])

    def connect_network(self, ref: str, net: str, cfg: dict) -> dict:
        """`network connect NET CONTAINER`: remembered, and attached now if running."""
        c = self.get(ref)
        netobj = self.ctl.network(net)
        if self._network_key(c, netobj) is not None:
            raise Conflict(f"endpoint with name {c['Name']} already exists in network "
                           f"{netobj.name}")
        if c["State"]["Running"]:
            # Every endpoint change, done or failed half way (the gateway-bridge endpoint
            # may be gone), is followed by the ports: never DNATed to a given-back address.
            try:
                self._connect(c, netobj.id, cfg)
            except BaseException:
                self._ports_follow_quietly(c)
                raise
            try:
                self._ports_follow(c, strict=True)
            except BaseException:
                try:
                    self.ctl.disconnect(netobj.id, c["Id"])
                except Exception:  # logged: the caller is told why the connect failed
                    log.exception("undoing the connect of %s to %s", c["Name"], netobj.name)
                self._ports_follow_quietly(c)
                raise
        c["Networks"][netobj.id] = cfg
        self._save(c)
        return c

    def disconnect_network(self, ref: str, net: str) -> dict:
        c = self.get(ref)
        if net in c["Networks"] and self._stored_network(net) is None:
            # A deleted network, named as the record holds it (id, or an older record's
            # name): Docker drops the key without asking for the network.
            del c["Networks"][net]
            self._save(c)
            return c
        netobj = self.ctl.network(net)
        key = self._network_key(c, netobj)
        if key is None:
            raise NotFound(f"container {c['Name']} is not connected to network {netobj.name}")
        if c["State"]["Running"] and netobj.driver != "null":
            sb = self.ctl.sandboxes.get(c["Id"])
            if sb is not None and any(self.ctl.endpoints[e].network_id == netobj.id
                                      for e in sb.endpoints if e in self.ctl.endpoints):
                try:
                    self.ctl.disconnect(netobj.id, c["Id"])
                except BaseException:  # maybe half done: the endpoint may be gone
                    self._ports_follow_quietly(c)
                    raise
                self._ports_follow(c)
            else:  # a crash after the endpoint went, before the record was saved
                log.warning("container %s had no endpoint on %s: record entry dropped",
                            c["Name"], netobj.name)
                self._ports_follow(c)
        del c["Networks"][key]
        self._save(c)
        return c

    def _ports_follow(self, c: dict, strict: bool = False) -> None:
        """After a running container's endpoints changed (run after every connect,
        disconnect and undo, even one that failed half way): its published ports go where
        `start` puts them, keeping their host ports: the first joined (in join order)
        endpoint on a non-internal bridge network with IPv4 (`_ipv4`; the gateway bridge
        counts); unpublished when there is none, published again when there is one once
        more. Docker (libnetwork sbLeave/sbJoin) likewise revokes the bindings on the
        endpoint that held them and programs them on the sandbox's next gateway endpoint,
        but picks it by gw-priority then network name; cnet follows its default-route
        rule, the first joined. Never left DNATing to an address the container gave back:
        if moving fails they are unpublished (`strict`: the error is raised, for a connect
        to undo); if even that fails it is logged and they stay recorded as published."""
        if self.ports is None or not c["State"]["Running"]:
            return
        want, have = self._ipv4(c), self.ports.target(c["Id"])
        try:
            if have is not None and want is None:
                self._unpublish(c)
            elif have is not None and want != have:
                self.ports.retarget(c["Id"], want)
            elif have is None and want is not None:
                c["Ports"] = self.ports.publish(c["Id"], want, c["HostConfig"],
                                                c["Config"]["ExposedPorts"])
            else:
                return
        except Exception as exc:
            if self.ports.target(c["Id"]) not in (None, want):
                try:
                    self._unpublish(c)
                except Exception:
                    log.exception("ports of %s could not be unpublished", c["Name"])
            if strict:
                raise
            log.warning("ports of %s not published on %s (left unpublished): %s",
                        c["Name"], want, exc)
        self._save(c)

    def _ports_follow_quietly(self, c: dict) -> None:
        """`_ports_follow` while another error is on its way to the caller: logged, never
        raised over it."""
        try:
            self._ports_follow(c)
        except Exception:
            log.exception("moving the ports of %s", c["Name"])

    def _unpublish(self, c: dict) -> None:
        self.ports.release(c["Id"])  # failed: still published, still shown
        c["Ports"] = {}

    def _release(self, c: dict, p: Paths) -> None:
        if self.ports is not None:
            try:
                self.ports.release(c["Id"])
            except Exception:
                log.exception("unpublishing ports of %s", c["Name"])
        c["Ports"] = {}
        self._disconnect_all(c)
        try:
            rootfs.unmount(p.rootfs)
        except OSError:
            log.exception("unmounting rootfs of %s", c["Name"])

    # -- signals -------------------------------------------------------------------------------
    def _runc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runc", "--root", self.runc_root, *args], capture_output=True,
                              text=True, timeout=30)

    def kill(self, ref: str, sig: str | int | None = None) -> dict:
        c = self.get(ref)
        signo = signal_number(sig)
        if not c["State"]["Running"]:
            raise Conflict(f"Container {c['Id'][:12]} is not running")
        res = self._runc("kill", c["Id"], str(signo))
        if res.returncode != 0 and not any(
                s in res.stderr for s in ("not running", "does not exist", "no such process")):
            raise CnetError(f"kill failed: {res.stderr.strip()}")
        return c

    def mark_stopping(self, ref: str) -> dict:
        """A user stop: no restart policy revives it (until daemon restart for `always`)."""
        c = self.get(ref)
        c["StoppedByUser"] = True
        timer = self._timers.pop(c["Id"], None)
        if timer:
            timer.cancel()
        if c["State"]["Status"] == "restarting":
            self._set_state(c, Status="exited")
        self._save(c)
        return c

    def wait_exit(self, cid: str, timeout: float | None) -> bool:
        """Block (not on the worker) until the container is no longer running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                c = self.containers.get(cid)
                if c is None or not c["State"]["Running"]:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)

    def wait_removed_or_exited(self, cid: str) -> int:
        with self._cond:
            while True:
                c = self.containers.get(cid)
                if c is None:
                    return 0
                if c["State"]["Status"] in ("exited", "created", "dead"):
                    return int(c["State"]["ExitCode"])
                self._cond.wait()

    # -- remove --------------------------------------------------------------------------------
    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        if c["State"]["Running"]:
            if not force:
                raise Conflict(f"You cannot remove a running container {c['Id'][:12]}. "
                               "Stop the container before attempting removal or force remove")
            raise Conflict("container is running")  # the API layer kills first
        timer = self._timers.pop(c["Id"], None)
        if timer:
            timer.cancel()
        p = self.paths(c)
        errors: list[Exception] = []
        self._release(c, p)
        try:
            rootfs.remove(p.layer, p.rootfs)
        except Exception as exc:
            errors.append(exc)
        try:
            self.ctl.delete_sandbox(c["Id"], force=True)
        except NotFound:
            pass
        except Exception as exc:
            errors.append(exc)
        if os.path.isdir(os.path.join(self.runc_root, c["Id"])):  # the shim normally did it
            self._runc("delete", "--force", c["Id"])
        shutil.rmtree(p.bundle, ignore_errors=True)
        shutil.rmtree(p.data, ignore_errors=True)
        self.ctl.store.delete(f"container/{c['Id']}")
        with self._cond:
            self.containers.pop(c["Id"], None)
            self._cond.notify_all()
        if volumes:
            for m in c["HostConfig"]["Mounts"]:
                if m["Type"] == "volume" and not self._volume_users(m["Source"]):
                    try:
                        self.volumes.remove(m["Source"])
                    except CnetError:
                        pass
        if errors:
            raise errors[0]

    # -- daemon start ----------------------------------------------------------------------------
    def load(self) -> None:
        """The container records (the DNS names of a container's endpoints need them
        before anything is published)."""
        for rec in self.ctl.store.list("container/").values():
            self._normalise(rec)
            self.containers[rec["Id"]] = rec

    def _restore_ports(self, c: dict) -> None:
        """Daemon start, a running container: its recorded bindings taken back on its
        `_ipv4` address (none to DNAT them to: dropped; a host port another owner holds:
        refused, logged, dropped). A record without bindings although it asks for some
        (a crash before the record of a publish was saved) gets them published now."""
        ip = self._ipv4(c)
        if c["Ports"]:
            try:
                taken = self.ports.restore(c["Id"], ip, c["Ports"])
            except Exception:
                log.exception("restoring the ports of %s", c["Name"])
                taken = False
            if not taken:
                c["Ports"] = {}
                self._save(c)
        elif ip is not None and (c["HostConfig"].get("PortBindings")
                                 or c["HostConfig"].get("PublishAllPorts")):
            self._ports_follow(c)

    def restore(self) -> None:
        """Find running containers again; apply `always`/`unless-stopped` after a reboot."""
        if not self.containers:
            self.load()
        for c in list(self.containers.values()):
            p = self.paths(c)
            if c["State"]["Running"]:
                pid = _shim_pid(p.state) if shimclient.shim_alive(p.state) else None
                if pid:
                    if self.ports is not None:
                        self._restore_ports(c)
                    self.monitor.watch(c["Id"], pid)
                    continue
                self._on_exit(c["Id"])
                continue
            if c["State"]["Status"] == "restarting":
                c["State"]["Status"] = "exited"
            if restart.start_on_daemon_boot(c["HostConfig"]["RestartPolicy"],
                                            c["StoppedByUser"], c["StartedBefore"]):
                try:
                    self.start(c["Id"])
                except CnetError as exc:
                    log.warning("could not start %s: %s", c["Name"], exc)


def cgroup_version() -> str:
    """"2" on a unified (cgroup2) hierarchy, else "1"; runc follows the same detection."""
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


def cgroup_parent(daemon_id: str) -> str:
    """Every container's cgroup sits under /cnet/<daemon-id> (one parent per daemon)."""
    return f"/cnet/{daemon_id}"


def _shim_pid(state_dir: str) -> int | None:
    try:
        with open(os.path.join(state_dir, "shim.json")) as f:
            return int(json.load(f)["shim_pid"])
    except (OSError, ValueError, KeyError):
        return None


def _user(user: str, root: str) -> tuple[int, int]:
    """`uid[:gid]` or a name from the image's /etc/passwd."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        gid = int(group) if group.isdigit() else uid
        return uid, gid
    try:
        with open(os.path.join(root, "etc", "passwd")) as f:
            for line in f:
                parts = line.split(":")
                if parts[0] == name and len(parts) > 3:
                    return int(parts[2]), int(parts[3])
    except OSError:
        pass
    raise InvalidParameter(f"unable to find user {name}: no matching entries in passwd file")
