"""The per-container shim (runtime/shim.py) against real runc.

Each test builds containers from a tiny busybox-static rootfs and a hand-written OCI
config (pid, mount, uts, ipc namespaces; the network namespace is a throwaway
`ip netns` of the test, never the host's), with a temporary runc root and a cgroup
parent of its own. Teardown kills whatever is left (shims, containers), then fails
the test if anything had to be cleaned: a runc state, a cgroup, a shim process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import harness
import pytest
from cnet.runtime import shimclient
from cnet.runtime.logfile import read_logs

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "echo", "sleep", "cat", "true", "false", "tty", "seq", "stty")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("runc") is None:
        return "needs runc (Debian package runc)"
    if not os.path.exists(BUSYBOX):
        return "needs a static busybox (Debian package busybox-static)"
    return None


pytestmark = pytest.mark.skipif(_requirements() is not None, reason=_requirements() or "")


def _static(path: str) -> bool:
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
    return "statically linked" in out or "static-pie" in out


@pytest.fixture(scope="module")
def rootfs():
    """A rootfs with busybox-static and a few applet links (shared by the module)."""
    if shutil.which("file") and not _static(BUSYBOX):
        pytest.skip(f"{BUSYBOX} is not statically linked (install busybox-static)")
    top = tempfile.mkdtemp(prefix=harness.unique_name() + "-rootfs-", dir="/tmp")
    root = Path(top) / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for name in APPLETS:
        (root / "bin" / name).symlink_to("busybox")
    yield root
    shutil.rmtree(top, ignore_errors=True)


def _controllers() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones and the v2 mount)."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] in ("cgroup", "cgroup2"):
                out.append(Path(parts[1]))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Env:
    """A test's runc root, network namespace, cgroup parent and container factory."""

    def __init__(self, rootfs: Path):
        self.rootfs = rootfs
        self.name = harness.unique_name()
        self.dir = Path(tempfile.mkdtemp(prefix=self.name + "-", dir="/tmp"))
        self.runc_root = self.dir / "runc"
        self.netns = harness.Netns(self.name)
        self.cgroup_parent = f"/{self.name}"
        self.ids: list[str] = []

    # -- containers

    def bundle(self, id: str, args: list[str], tty: bool = False) -> Path:
        b = self.dir / id / "bundle"
        b.mkdir(parents=True)
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": tty,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm", "HOME=/"],
                "cwd": "/",
                "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
                "noNewPrivileges": True,
            },
            "root": {"path": str(self.rootfs), "readonly": False},
            "hostname": id[:63],
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "linux": {
                "cgroupsPath": f"{self.cgroup_parent}/{id}",
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                               {"type": "ipc"}, {"type": "network", "path": self.netns.path}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
            },
        }
        (b / "config.json").write_text(json.dumps(config))
        return b

    def state(self, id: str) -> Path:
        return self.dir / id / "state"

    def log(self, id: str) -> Path:
        return self.dir / id / "log.json"

    def start(self, args: list[str], *, id: str | None = None, tty: bool = False,
              stdin: bool = False, start: bool = True, log_max_bytes: int = 1 << 20,
              **kw) -> tuple:
        id = id or f"c{len(self.ids)}-{self.name[-8:]}"
        self.ids.append(id)
        bundle = self.bundle(id, args, tty)
        info = shimclient.start_shim(id, bundle, self.runc_root, self.state(id), self.log(id),
                                     tty=tty, stdin=stdin, log_max_bytes=log_max_bytes,
                                     start=start, **kw)
        return id, info

    def runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return harness.sh("runc", "--root", str(self.runc_root), *args, check=check, timeout=20)

    def runc_ids(self) -> list[str]:
        if not self.runc_root.exists():
            return []
        out = self.runc("list", "-q", check=False).stdout
        return out.split()

    def wait_exit(self, id: str, timeout: float = 10) -> dict:
        return harness.wait_for(lambda: shimclient.read_exit(self.state(id)), timeout=timeout,
                                what=f"exit.json of {id}")

    def wait_shim_gone(self, id: str, pid: int, timeout: float = 10) -> None:
        harness.wait_for(lambda: not _alive(pid), timeout=timeout, what=f"shim of {id} to exit")

    def cgroup_dirs(self, id: str | None = None) -> list[Path]:
        rel = self.cgroup_parent.lstrip("/") + (f"/{id}" if id else "")
        return [c / rel for c in _controllers() if (c / rel).exists()]

    def shim_pids(self) -> list[int]:
        return [pid for id in self.ids for pid in shimclient._shim_pids(id, self.state(id))]

    # -- teardown

    def cleanup(self) -> list[str]:
        leaks: list[str] = []
        for pid in self.shim_pids():
            leaks.append(f"shim process {pid}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for id in self.runc_ids():
            leaks.append(f"runc container {id}")
            self.runc("delete", "--force", id, check=False)
        for d in self.cgroup_dirs():
            for sub in sorted(d.glob("*/"), reverse=True):
                leaks.append(f"cgroup {sub}")
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()  # the test's own parent: expected, not a leak
        self.netns.delete()
        shutil.rmtree(self.dir, ignore_errors=True)
        return leaks


@pytest.fixture
def env(rootfs):
    e = Env(rootfs)
    try:
        yield e
    finally:
        leaks = e.cleanup()
    if leaks:
        pytest.fail("shim test left state behind (now cleaned up):\n  " + "\n  ".join(leaks),
                    pytrace=False)


def _log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_gone(env: Env, id: str, info: dict) -> None:
    env.wait_shim_gone(id, info["shim_pid"])
    assert not _alive(info["pid"]), "container init still running"
    assert id not in env.runc_ids(), "runc state left behind"
    assert env.cgroup_dirs(id) == [], "container cgroup left behind"
    assert not (env.state(id) / "attach.sock").exists()


def _connect(env: Env, id: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(shimclient.attach_path(env.state(id)))
    return s


def _recv_until(s: socket.socket, want: bytes, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while want not in buf:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _recv_all(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while chunk := s.recv(4096):
        buf += chunk
    return buf


# --------------------------------------------------------------------------- tests


def test_exit_code_logs_and_cleanup(env):
    id, info = env.start(["sh", "-c", "echo hello; echo err >&2; exit 3"])
    assert info["pid"] > 0 and info["shim_pid"] > 0
    shim_json = json.loads((env.state(id) / "shim.json").read_text())
    assert shim_json == {"id": id, **info}
    assert env.wait_exit(id)["ExitCode"] == 3
    _assert_gone(env, id, info)
    exit_info = shimclient.read_exit(env.state(id))
    assert exit_info["FinishedAt"].endswith("Z") and "T" in exit_info["FinishedAt"]
    lines = _log_lines(env.log(id))
    assert [(r["stream"], r["log"]) for r in lines] in (
        [("stdout", "hello\n"), ("stderr", "err\n")],
        [("stderr", "err\n"), ("stdout", "hello\n")],  # two pipes: no order between them
    )
    assert all(r["time"].endswith("Z") for r in lines)
    assert not shimclient.shim_alive(env.state(id))


def test_missing_command_reports_error_and_leaves_nothing(env):
    with pytest.raises(shimclient.ShimError) as ei:
        env.start(["nope"], id="nope-" + env.name[-8:])
    msg = ei.value.message
    assert 'exec: "nope"' in msg and "not found" in msg, msg
    assert "\n" not in msg
    id = env.ids[0]
    assert env.runc_ids() == []
    assert env.cgroup_dirs(id) == []
    harness.wait_for(lambda: not env.shim_pids(), timeout=5, what="the shim to exit")
    assert not (env.state(id) / "attach.sock").exists()
    assert shimclient.read_exit(env.state(id)) is None


def test_kill_gives_137(env):
    id, info = env.start(["sleep", "1000"])
    assert _alive(info["pid"])
    assert shimclient.shim_alive(env.state(id))
    assert shimclient.read_exit(env.state(id)) is None
    env.runc("kill", id, "KILL")
    assert env.wait_exit(id)["ExitCode"] == 137
    _assert_gone(env, id, info)


def test_shim_ignores_sigterm_and_outlives_its_parent(env):
    """Spawned by a short-lived parent (cnetd exiting): shim and container keep running."""
    id = f"orphan-{env.name[-8:]}"
    env.ids.append(id)
    bundle = env.bundle(id, ["sleep", "1000"])
    script = textwrap.dedent(f"""
        import json
        from cnet.runtime import shimclient
        print(json.dumps(shimclient.start_shim({id!r}, {str(bundle)!r},
              {str(env.runc_root)!r}, {str(env.state(id))!r}, {str(env.log(id))!r})))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    info = json.loads(out)
    time.sleep(0.2)
    assert _alive(info["shim_pid"]) and shimclient.shim_alive(env.state(id))
    os.kill(info["shim_pid"], signal.SIGTERM)
    os.kill(info["shim_pid"], signal.SIGHUP)
    time.sleep(0.1)
    assert _alive(info["shim_pid"])
    state = json.loads(env.runc("state", id).stdout)
    assert state["status"] == "running" and state["pid"] == info["pid"]
    env.runc("kill", id, "TERM")  # sleep as pid 1 ignores TERM... unless it has a handler
    env.runc("kill", id, "KILL")
    assert env.wait_exit(id)["ExitCode"] == 137
    _assert_gone(env, id, info)


def test_attach_stdin_roundtrip_and_eof(env):
    id, info = env.start(["cat"], stdin=True)
    s = _connect(env, id)
    s2 = _connect(env, id)  # a second, output-only client
    s.sendall(b"ping\n")
    assert _recv_until(s, b"ping\n") == b"ping\n"
    assert _recv_until(s2, b"ping\n") == b"ping\n"
    s.shutdown(socket.SHUT_WR)  # EOF on the container's stdin: cat exits 0
    assert _recv_all(s) == b""
    assert _recv_all(s2) == b""
    s.close()
    s2.close()
    assert env.wait_exit(id)["ExitCode"] == 0
    _assert_gone(env, id, info)
    assert [r["log"] for r in _log_lines(env.log(id))] == ["ping\n"]


def test_no_start_attach_sees_all_output(env):
    """--no-start: attach first, then `runc start`: no early output is missed."""
    id, info = env.start(["sh", "-c", "echo first; echo second >&2"], start=False)
    assert json.loads(env.runc("state", id).stdout)["status"] == "created"
    s = _connect(env, id)
    time.sleep(0.05)  # let the shim accept
    env.runc("start", id)
    out = _recv_all(s)
    s.close()
    assert sorted(out.splitlines()) == [b"first", b"second"]
    assert env.wait_exit(id)["ExitCode"] == 0
    _assert_gone(env, id, info)


def test_tty(env):
    id, info = env.start(["sh", "-c", "tty; exit 0"], tty=True)
    assert env.wait_exit(id)["ExitCode"] == 0
    _assert_gone(env, id, info)
    lines = _log_lines(env.log(id))
    assert lines and lines[0]["stream"] == "stdout"
    assert lines[0]["log"].startswith("/dev/pts/"), lines


def test_tty_stdin_attach(env):
    id, info = env.start(["sh", "-c", "read x; echo got:$x; exit 4"], tty=True, stdin=True)
    s = _connect(env, id)
    time.sleep(0.05)
    s.sendall(b"hi\r")
    out = _recv_until(s, b"got:hi")
    assert b"got:hi" in out, out
    assert env.wait_exit(id)["ExitCode"] == 4
    s.close()
    _assert_gone(env, id, info)


def test_tty_size_and_resize(env):
    id, info = env.start(["sh", "-c", "stty size; read x; stty size"], tty=True, stdin=True,
                         tty_size=(30, 100))
    s = _connect(env, id)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.settimeout(5)
        ctl.connect(shimclient.control_path(env.state(id)))
        ctl.sendall(json.dumps({"resize": [40, 120]}).encode() + b"\n")
        assert json.loads(ctl.makefile().readline()) == {"ok": True}
        ctl.sendall(b"{\"nonsense\": 1}\n")
        assert "error" in json.loads(ctl.makefile().readline())
    s.sendall(b"\r")
    assert env.wait_exit(id)["ExitCode"] == 0
    s.close()
    _assert_gone(env, id, info)
    logged = "".join(t for _s, t, _ts in read_logs(env.log(id)))
    assert "30 100" in logged and "40 120" in logged, logged
    assert logged.index("30 100") < logged.index("40 120")


def test_log_rotation(env):
    id, info = env.start(["sh", "-c", "for i in $(seq 1 40); do echo line$i; done"],
                         log_max_bytes=400)
    assert env.wait_exit(id)["ExitCode"] == 0
    _assert_gone(env, id, info)
    log, old = env.log(id), Path(f"{env.log(id)}.1")
    assert old.exists()
    assert log.stat().st_size <= 400 and old.stat().st_size <= 400
    texts = [t for _s, t, _ts in read_logs(log)]
    assert texts[-1] == "line40\n"
    nums = [int(t[4:]) for t in texts]
    assert nums == list(range(nums[0], 41))  # contiguous up to the end
    assert [t for _s, t, _ts in read_logs(log, tail=2)] == ["line39\n", "line40\n"]


def test_read_logs_follow_until_exit(env):
    id, info = env.start(["sh", "-c", "echo a; sleep 0.4; echo b; sleep 0.3; echo c >&2"])
    state = env.state(id)
    t0 = time.monotonic()
    got = [(stream, text) for stream, text, _ts in read_logs(
        env.log(id), follow=True, stop=lambda: shimclient.read_exit(state) is not None)]
    assert got == [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "c\n")]
    assert time.monotonic() - t0 < 5
    assert shimclient.read_exit(state)["ExitCode"] == 0
    _assert_gone(env, id, info)


def test_bulk_output_to_log_and_attach_and_partial_last_line(env):
    id, info = env.start(["sh", "-c", "seq 1 20000; echo -n end"], start=False)
    s = _connect(env, id)
    time.sleep(0.05)
    env.runc("start", id)
    out = _recv_all(s)
    s.close()
    expected = "".join(f"{i}\n" for i in range(1, 20001)) + "end"
    assert out.decode() == expected
    assert env.wait_exit(id)["ExitCode"] == 0
    _assert_gone(env, id, info)
    logged = [t for _s, t, _ts in read_logs(env.log(id))]
    assert len(logged) == 20001 and logged[-1] == "end" and logged[-2] == "20000\n"
    assert "".join(logged) == expected


def test_long_state_dir_paths(env):
    """Socket paths beyond sun_path's 107 bytes: the shim binds relative names, runc gets
    the console socket relative to the bundle, clients connect via /proc/self/fd."""
    id = "long-" + env.name[-8:]
    env.ids.append(id)
    bundle = env.bundle(id, ["sh", "-c", "tty; echo out"], tty=True)
    state = env.dir / id / ("s" * 120) / "state"
    assert len(str(state / "attach.sock")) > 108
    log = env.dir / id / "log.json"
    info = shimclient.start_shim(id, bundle, env.runc_root, state, log, tty=True, start=False)
    s = shimclient.connect_attach(state)
    time.sleep(0.05)
    env.runc("start", id)
    out = _recv_all(s)
    s.close()
    assert b"/dev/pts/" in out and b"out" in out
    exit_info = harness.wait_for(lambda: shimclient.read_exit(state), what="exit.json")
    assert exit_info["ExitCode"] == 0
    env.wait_shim_gone(id, info["shim_pid"])
    assert id not in env.runc_ids()
    assert env.cgroup_dirs(id) == []
    assert not (state / "attach.sock").exists()
