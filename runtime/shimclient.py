"""cnetd's side of the per-container shim (runtime/shim.py): spawn it, find it again.

- `start_shim(...)` spawns `python -m cnet.runtime.shim` with a pipe as its ready fd and
  returns `{"pid": INIT_PID, "shim_pid": SHIM_PID}` once the container runs (or, with
  `start=False`, is created: then call `runc start ID` after attaching), or raises
  `ShimError` with runc's one-line message.
- `read_exit(state_dir)`: the container's `{"ExitCode", "FinishedAt"}` once it exited.
- `read_shim(state_dir)`, `shim_alive(state_dir)`: after a cnetd restart, whether the
  shim recorded in STATE/shim.json still runs (its pid *and* its command line: pids are
  reused).
- `attach_path(state_dir)`: the attach socket (raw output; input goes to stdin with
  `stdin=True`); `control_path(state_dir)` takes `{"resize": [rows, cols]}` lines;
  `connect_attach(state_dir)` / `connect_unix(path)` also work when the path is longer
  than a unix socket address allows (107 bytes).

The shim outlives cnetd: cnetd watches `shim_pid` (pidfd), then reads exit.json.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from cnet.runtime.logfile import DEFAULT_MAX_BYTES

READY_TIMEOUT = 30.0


class ShimError(Exception):
    """The shim could not create or start the container (message: one line)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _package_root() -> str | None:
    """The sys.path entry from which `python -S` (no site: ~8 ms less per shim start)
    imports this very `cnet.runtime`, or None if there is none (then site is used)."""
    import cnet

    root = os.path.dirname(os.path.dirname(os.path.abspath(cnet.__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.realpath(here) == os.path.realpath(os.path.join(root, "cnet", "runtime")):
        return root  # a regular install: ROOT/cnet/runtime
    # the source tree (editable install): cnet/__init__.py maps cnet.runtime to ROOT/runtime
    if (os.path.realpath(here) == os.path.realpath(os.path.join(root, "runtime"))
            and os.path.isfile(os.path.join(root, "cnm", "controller.py"))):
        return root
    return None


def shim_command(id: str, bundle, runc_root, state_dir, log_path, tty: bool = False,
                 stdin: bool = False, log_max_bytes: int = DEFAULT_MAX_BYTES, ready_fd: int = 3,
                 *, start: bool = True, tty_size: tuple[int, int] | None = None,
                 stdin_once: bool = True, runc: str | None = None,
                 python: str | None = None, no_site: bool = False) -> list[str]:
    """The shim's command line. `no_site`: run `python -S` (the caller then puts
    _package_root() on PYTHONPATH)."""
    cmd = [python or sys.executable, *(["-S"] if no_site else []), "-m", "cnet.runtime.shim",
           "--id", id,
           "--bundle", str(bundle), "--runc-root", str(runc_root),
           "--state-dir", str(state_dir), "--log-path", str(log_path),
           "--log-max-bytes", str(int(log_max_bytes)), "--ready-fd", str(ready_fd)]
    if tty:
        cmd.append("--tty")
        if tty_size:
            cmd += ["--tty-size", f"{int(tty_size[0])}x{int(tty_size[1])}"]
    if stdin:
        cmd.append("--stdin")
        if not stdin_once:
            cmd.append("--keep-stdin-open")
    if not start:
        cmd.append("--no-start")
    if runc:
        cmd += ["--runc", runc]
    return cmd


def start_shim(id: str, bundle, runc_root, state_dir, log_path, tty: bool = False,
               stdin: bool = False, log_max_bytes: int = DEFAULT_MAX_BYTES, *,
               start: bool = True, tty_size: tuple[int, int] | None = None,
               stdin_once: bool = True, runc: str | None = None,
               timeout: float = READY_TIMEOUT, env: dict | None = None) -> dict:
    """Spawn the shim for container `id` and wait for its ready line.

    Returns {"pid": container init pid, "shim_pid": shim pid}. Raises ShimError on
    `{"error": ...}`, when the shim dies without a word, or after `timeout` seconds
    (the shim is then killed: it would otherwise leave a container nobody knows of).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        root = _package_root()
        if root is not None:
            env = dict(os.environ if env is None else env)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = shim_command(id, bundle, runc_root, state_dir, log_path, tty, stdin,
                           log_max_bytes, w, start=start, tty_size=tty_size,
                           stdin_once=stdin_once, runc=runc, no_site=root is not None)
        proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                close_fds=True, env=env)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    os.close(w)
    try:
        line = _read_line(r, timeout)
    finally:
        os.close(r)
        # the first process exits as soon as it has forked the daemon
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stderr = b""
    if proc.stderr is not None:
        if not line:  # the shim never spoke: say what its first process said, if anything
            if select.select([proc.stderr], [], [], 1.0)[0]:
                stderr = proc.stderr.read1(65536)
        proc.stderr.close()
    if line is None:
        _kill_stray(state_dir, id)
        raise ShimError(f"container {id}: the shim did not report within {timeout:.0f}s")
    if not line:
        detail = stderr.decode(errors="replace").strip().splitlines()
        log = _shim_log(state_dir)
        msg = (detail[0] if detail else "") or log or f"exit status {proc.returncode}"
        raise ShimError(f"container {id}: the shim exited before reporting: {msg}")
    try:
        msg = json.loads(line)
    except ValueError:
        raise ShimError(f"container {id}: bad shim report: {line[:200]!r}") from None
    if "error" in msg:
        raise ShimError(str(msg["error"]))
    return {"pid": int(msg["pid"]), "shim_pid": int(msg["shim_pid"])}


def _read_line(fd: int, timeout: float) -> bytes | None:
    """One line from `fd`: b"" on EOF without any data, None on timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _shim_log(state_dir) -> str:
    try:
        with open(os.path.join(state_dir, "shim.log")) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def _kill_stray(state_dir, id: str) -> None:
    """A shim that never reported: kill it if we can find it (by its command line)."""
    for pid in _shim_pids(id, state_dir):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _shim_pids(id: str, state_dir) -> list[int]:
    want = str(state_dir).encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if _is_shim(args, id) and want in args:
            out.append(int(name))
    return out


def _is_shim(args: list[bytes], id: str) -> bool:
    if b"cnet.runtime.shim" not in args:
        return False
    try:
        return args[args.index(b"--id") + 1] == id.encode()
    except (ValueError, IndexError):
        return False


def read_json(path) -> dict | None:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_exit(state_dir) -> dict | None:
    """{"ExitCode": N, "FinishedAt": "..."} once the container exited, else None."""
    return read_json(os.path.join(state_dir, "exit.json"))


def read_shim(state_dir) -> dict | None:
    """{"id", "pid", "shim_pid"} as the shim recorded them, or None."""
    return read_json(os.path.join(state_dir, "shim.json"))


def shim_alive(state_dir) -> bool:
    """Whether the shim recorded in STATE/shim.json is still running."""
    info = read_shim(state_dir)
    if not info:
        return False
    try:
        pid, id = int(info["shim_pid"]), str(info["id"])
    except (KeyError, TypeError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z" and _is_shim(args, id)


def attach_path(state_dir) -> str:
    return os.path.join(str(state_dir), "attach.sock")


def control_path(state_dir) -> str:
    return os.path.join(str(state_dir), "control.sock")


def connect_unix(path):
    """A connected unix stream socket, also for paths longer than sun_path (107 bytes):
    those are reached through /proc/self/fd/N of their directory."""
    import socket

    path = str(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if len(os.fsencode(path)) < 108:
            s.connect(path)
            return s
        d = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            s.connect(f"/proc/self/fd/{d}/{os.path.basename(path)}")
        finally:
            os.close(d)
        return s
    except BaseException:
        s.close()
        raise


def connect_attach(state_dir):
    """Connect to the container's attach socket (raw output; input goes to its stdin)."""
    return connect_unix(attach_path(state_dir))
