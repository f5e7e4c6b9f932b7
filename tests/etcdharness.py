"""Real etcd members for tests: one throwaway member, or a static-bootstrap cluster.

Members run as real `etcd` processes inside network namespaces (`nsenter --net=...`,
like cnetd in harness.py), with data dirs under /dev/shm (fsync on tmpfs is free) named
`cnet-t-<session>...` so they are attributable to this test session.

No etcd process may outlive a test: every member is stopped by the context manager that
made it (even when the test fails), is registered for an atexit kill, and is started
under `setpriv --pdeathsig KILL` so that it dies with the pytest process even if that is
SIGKILLed. (The death signal fires when the *thread* that started it exits: start
members from the main thread, as fixtures do.) Deleting its namespace kills it too.

The test process itself lives in the root namespace, where these members are not
reachable: talk to them from inside a namespace with `in_netns(ns)`, which moves the
calling thread (and the sockets and threads it creates meanwhile) there and back.
Enter it per test, never for longer: the leak check must run in the root namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import harness
from cnet.cnm.etcd import EtcdClient

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
#: pid -> member of every etcd process started and not yet reaped
_LIVE: dict[int, EtcdMember] = {}


def requirements_missing() -> str | None:
    """Why etcd tests cannot run here, or None."""
    reason = harness.requirements_missing()
    if reason:
        return reason
    if not os.access(ETCD, os.X_OK):
        return "etcd tests need /usr/bin/etcd (Debian etcd-server; run scripts/setup.sh)"
    if shutil.which("setpriv") is None:
        return "etcd tests need `setpriv` (util-linux)"
    return None


# --------------------------------------------------------------------------- netns


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(target) -> Iterator[None]:
    """Run the calling thread in network namespace `target` (Netns, name, path; None: stay).

    Sockets opened and threads started inside keep that namespace after the block.
    """
    if target is None:
        yield
        return
    with open("/proc/thread-self/ns/net") as orig, open(harness.netns_path(target)) as new:
        _setns(new.fileno())
        try:
            yield
        finally:
            _setns(orig.fileno())


# --------------------------------------------------------------------------- members


def _tmp_base() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


class EtcdMember:
    """One etcd member: a process in `ns` serving clients on ip:client_port.

    start() bootstraps with `--initial-cluster-state new` the first time and `existing`
    afterwards (a restart keeps the data dir). close() stops it and removes its files.
    """

    def __init__(
        self,
        name: str,
        ns: harness.Netns | None,
        ip: str,
        client_port: int = 2379,
        peer_port: int = 2380,
        data_dir: str | Path | None = None,
        *,
        initial_cluster: str | None = None,
        token: str | None = None,
        extra_args: Sequence[str] = (),
    ):
        self.name, self.ns, self.ip = name, ns, ip
        self.client_port, self.peer_port = client_port, peer_port
        self._own_root: Path | None = None
        if data_dir is None:
            self._own_root = Path(tempfile.mkdtemp(
                prefix=f"{harness.unique_name()}-etcd-{name}-", dir=_tmp_base()))
            data_dir = self._own_root / "data"
        self.data_dir = Path(data_dir)
        self.log_path = (self._own_root / "etcd.log" if self._own_root
                         else Path(f"{self.data_dir}.log"))
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.token = token or harness.unique_name()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.started_once = False

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """host:port, as EtcdClient takes it."""
        return f"{self.ip}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self, state: str) -> list[str]:
        cmd = ["setpriv", "--pdeathsig", "KILL"]
        if self.ns is not None:
            cmd += ["nsenter", f"--net={harness.netns_path(self.ns)}"]
        return cmd + [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self.extra_args,
        ]

    def start(self, state: str | None = None, wait: bool = False,
              timeout: float = 20) -> EtcdMember:
        """Start the process (restart: same data dir, `existing`); wait=True: until healthy."""
        if self.running:
            raise RuntimeError(f"etcd member {self.name} already running")
        state = state or ("existing" if self.started_once else "new")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== start: {' '.join(self.command(state))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(state), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        _LIVE[self.proc.pid] = self
        self.started_once = True
        if wait:
            wait_healthy([self], timeout)
        return self

    def _reap(self, proc: subprocess.Popen) -> None:
        _LIVE.pop(proc.pid, None)
        if self.proc is proc:
            self.proc = None

    def stop(self, timeout: float = 5) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit code (None: not running)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._reap(proc)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash: no clean shutdown)."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        self._reap(proc)
        return proc.returncode

    def client(self, **kw) -> EtcdClient:
        """A client for this member only (use it inside in_netns(self.ns))."""
        return EtcdClient([self.endpoint], **kw)

    def healthy(self) -> bool:
        """Answers and has a leader (call from a thread that can reach it)."""
        c = EtcdClient([self.endpoint], timeout=0.5)
        try:
            s = c.status()[self.endpoint]
            return s["ok"] and s["has_leader"]
        finally:
            c.close()

    def logs(self, tail: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def close(self) -> None:
        """Stop (kill if need be) and remove the data dir and log."""
        try:
            self.stop(timeout=3)
        finally:
            if self._own_root:
                shutil.rmtree(self._own_root, ignore_errors=True)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    self.log_path.unlink()

    def __repr__(self) -> str:
        return f"EtcdMember({self.name!r}, {self.endpoint}, pid={self.pid})"


def wait_healthy(members: Sequence[EtcdMember], timeout: float = 20) -> None:
    """Until every member answers with a leader; raise with the logs of the laggards."""
    deadline = time.monotonic() + timeout
    pending = list(members)
    while pending:
        for m in list(pending):
            if not m.running:
                rc = m.proc.returncode if m.proc else None
                raise RuntimeError(f"etcd member {m.name} exited (rc={rc}):\n{m.logs()}")
            with in_netns(m.ns):
                ok = m.healthy()
            if ok:
                pending.remove(m)
        if not pending:
            return
        if time.monotonic() >= deadline:
            logs = "\n".join(f"--- {m.name}:\n{m.logs()}" for m in pending)
            raise TimeoutError(f"etcd members not healthy after {timeout}s:\n{logs}")
        time.sleep(0.05)


@contextlib.contextmanager
def etcd_cluster(
    members: Sequence[tuple[str, harness.Netns | None, str]],
    client_port: int = 2379,
    peer_port: int = 2380,
    timeout: float = 30,
) -> Iterator[list[EtcdMember]]:
    """Bootstrap a static cluster of (name, ns, ip) members; stop and remove all on exit."""
    token = harness.unique_name()
    ms = [EtcdMember(name, ns, ip, client_port, peer_port, token=token)
          for name, ns, ip in members]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in ms)
    for m in ms:
        m.initial_cluster = initial
    try:
        for m in ms:
            m.start()
        wait_healthy(ms, timeout)
        yield ms
    finally:
        for m in ms:
            m.close()


@contextlib.contextmanager
def single_etcd() -> Iterator[EtcdMember]:
    """One member on 127.0.0.1 (random ports) in a fresh namespace (`member.ns`)."""
    ns = harness.Netns()
    try:
        port = random.randrange(20000, 40000, 2)
        m = EtcdMember("s0", ns, "127.0.0.1", port, port + 1)
        try:
            m.start(wait=True)
            yield m
        finally:
            m.close()
    finally:
        ns.delete()


def leftover_processes() -> list[str]:
    """etcd processes of this session still alive (started here or with our data dirs)."""
    out = []
    for pid, m in list(_LIVE.items()):
        if m.proc is not None and m.proc.poll() is None:
            out.append(f"pid {pid}: {m!r}")
    mark = f"{harness.PREFIX}{harness.SESSION_ID}"
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in _LIVE:
            continue
        argv = harness._proc_cmdline(int(d))
        if argv and os.path.basename(argv[0]) == "etcd" and any(mark in a for a in argv):
            out.append(f"pid {d}: {' '.join(argv)}")
    return out


def _kill_all() -> None:
    for m in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            m.kill()


atexit.register(_kill_all)
