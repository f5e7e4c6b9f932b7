"""cnet's per-container shim: keeps a container's stdio and exit status, outlives cnetd.

cnetd plays containerd's part; this process plays containerd-shim's. One shim per
running container::

    python -m cnet.runtime.shim --id ID --bundle BUNDLE --runc-root ROOT \\
        --state-dir STATE --log-path LOG.json [--log-max-bytes N] [--tty] [--stdin] \\
        [--tty-size ROWSxCOLS] [--keep-stdin-open] [--no-start] [--runc RUNC] --ready-fd FD

It daemonizes at once (double fork + setsid, stdio on /dev/null, cwd STATE), becomes
a child subreaper, and starts the container with `runc run --detach` (create + start
in one runc process; container stdio = pipes). With --tty it runs `runc create
--console-socket STATE/console.sock`, receives the pty master, sizes it (--tty-size),
then `runc start`. With --no-start it only runs `runc create`: whoever attached first
then runs `runc start ID` itself, so no early output is missed. It reports on the
ready fd one JSON line, `{"pid": INIT_PID, "shim_pid": PID}` or `{"error": "..."}`
(runc's message; nothing is left behind in that case).

While the container runs it copies output to LOG.json (Docker json-file lines, see
logfile.py) and to the clients of STATE/attach.sock (raw bytes; what clients send goes
to the container's stdin with --stdin; a client's EOF closes a pipe stdin unless
--keep-stdin-open). STATE/control.sock takes JSON lines, `{"resize": [ROWS, COLS]}`
(--tty). When the init process exits it drains the output, writes STATE/exit.json
`{"ExitCode": N, "FinishedAt": T}` (atomically), runs `runc delete --force ID` and exits.

Files under STATE: shim.json (`{"id", "pid", "shim_pid"}`), init.pid (runc's),
runc.log (runc's JSON log), attach.sock, control.sock, console.sock (--tty, only during
create), exit.json, shim.log (only if the shim itself crashed).

Only the standard library, and little of it: this is on the `cnet run` critical path.
"""

from __future__ import annotations

import os
import select
import sys
import time

try:  # the C module: `signal` itself costs an enum import (~2 ms) before runc can start
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal

# Imported by _late_imports() while runc creates the container (it takes ~25 ms), so
# that runc is spawned as early as possible. `json` (~6 ms: it imports re) is imported
# only on rare paths (errors, control requests); the shim writes its JSON itself.
socket = LogWriter = rfc3339nano = None

try:
    from _json import encode_basestring_ascii as _encode
except ImportError:  # pragma: no cover
    from json.encoder import encode_basestring_ascii as _encode

USAGE = (
    "usage: python -m cnet.runtime.shim --id ID --bundle DIR --runc-root DIR --state-dir DIR"
    " --log-path FILE [--log-max-bytes N] [--tty] [--stdin] [--tty-size ROWSxCOLS]"
    " [--keep-stdin-open] [--no-start] [--runc BINARY] --ready-fd FD"
)

#: signal dispositions reset to default in runc (and so in the container)
_DEFAULT_SIGS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE,
                 signal.SIGXFSZ, signal.SIGCHLD, signal.SIGQUIT, signal.SIGUSR1)
#: = logfile.DEFAULT_MAX_BYTES (not imported before runc is spawned)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
#: output buffered for a slow attach client before the shim stops reading the container's
#: output (backpressure, like Docker: a client that stops reading blocks the container's
#: writes; one that goes away is dropped)
HIGH_WATER = 1024 * 1024
#: after init exited: how long to wait for the output pipes to reach EOF
DRAIN_TIMEOUT = 2.0
#: at exit: how long to try to hand buffered output to attach clients
FLUSH_TIMEOUT = 5.0
_PR_SET_CHILD_SUBREAPER = 36
_IN, _OUT, _HUP = select.POLLIN, select.POLLOUT, select.POLLHUP | select.POLLERR | select.POLLNVAL


class UsageError(Exception):
    pass


class ShimFailure(Exception):
    """The container could not be created/started: reported on the ready fd."""


# --------------------------------------------------------------------------- options


class Options:
    id = bundle = runc_root = state_dir = log_path = ""
    log_max_bytes = DEFAULT_MAX_BYTES
    tty = stdin = keep_stdin_open = no_start = False
    tty_size: tuple[int, int] | None = None
    runc = "runc"
    ready_fd = -1


_VALUED = {"--id": "id", "--bundle": "bundle", "--runc-root": "runc_root",
           "--state-dir": "state_dir", "--log-path": "log_path",
           "--log-max-bytes": "log_max_bytes", "--tty-size": "tty_size", "--runc": "runc",
           "--ready-fd": "ready_fd"}
_FLAGS = {"--tty": "tty", "--stdin": "stdin", "--keep-stdin-open": "keep_stdin_open",
          "--no-start": "no_start"}


def parse_args(argv: list[str]) -> Options:
    o = Options()
    it = iter(argv)
    for arg in it:
        name, eq, val = arg.partition("=")
        if name in _FLAGS and not eq:
            setattr(o, _FLAGS[name], True)
            continue
        if name not in _VALUED:
            raise UsageError(f"unknown argument {arg!r}")
        if not eq:
            val = next(it, None)
            if val is None:
                raise UsageError(f"{name} needs a value")
        attr = _VALUED[name]
        try:
            if attr in ("ready_fd", "log_max_bytes"):
                val = int(val)
            elif attr == "tty_size":
                rows, cols = val.lower().split("x")
                val = (int(rows), int(cols))
        except ValueError:
            raise UsageError(f"bad value for {name}: {val!r}") from None
        setattr(o, attr, val)
    for attr in ("id", "bundle", "runc_root", "state_dir", "log_path"):
        if not getattr(o, attr):
            raise UsageError(f"--{attr.replace('_', '-')} is required")
    if o.ready_fd < 0:
        raise UsageError("--ready-fd is required")
    for attr in ("bundle", "runc_root", "state_dir", "log_path"):
        setattr(o, attr, os.path.abspath(getattr(o, attr)))
    return o


# --------------------------------------------------------------------------- helpers


def _late_imports() -> None:
    global socket, LogWriter, rfc3339nano
    if socket is not None:
        return
    import socket

    from cnet.runtime.logfile import LogWriter, rfc3339nano


def _dumps(obj: dict) -> str:
    """JSON of a flat dict of str/int/bool values (without importing json)."""
    items = []
    for k, v in obj.items():
        if isinstance(v, str):
            val = _encode(v)
        elif isinstance(v, bool):
            val = "true" if v else "false"
        else:
            val = str(int(v))
        items.append(f"{_encode(k)}: {val}")
    return "{" + ", ".join(items) + "}"


def _write_json(path: str, obj: dict) -> None:
    """Write `obj` as JSON to `path` atomically (tmp + rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(_dumps(obj))
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def daemonize(cwd: str) -> None:
    """Double fork + setsid; stdio on /dev/null. Returns in the grandchild."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.chdir(cwd)


# --------------------------------------------------------------------------- the shim


class Client:
    __slots__ = ("sock", "fd", "out", "reading")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.out = bytearray()
        self.reading = True  # until the client shuts its write side


class Shim:
    def __init__(self, o: Options):
        self.o = o
        self.st = o.state_dir
        self.ready_fd = o.ready_fd
        self.null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.init_pid = 0
        self.status: int | None = None  # the init process's wait status, once it exited
        self.finished_at = ""
        self.outputs: dict[int, str] = {}  # fd -> stream
        self.stdin_fd = -1  # pipe write end, or the pty master
        self.stdin_buf = bytearray()
        self.stdin_close = False  # close stdin once stdin_buf is written
        self.master = -1
        self.clients: dict[int, Client] = {}
        self.controls: dict[int, tuple[socket.socket, bytearray]] = {}
        self.listener: socket.socket | None = None
        self.control: socket.socket | None = None
        self.log: LogWriter | None = None
        self.poll = select.poll()
        self.masks: dict[int, int] = {}
        self.wake_r = self.wake_w = -1
        self.action = "run"
        self.runc_args: list[str] = []
        self.runc_stdio: tuple[int, int, int] | None = None
        self.runc_pid = 0  # runc run/create, while it runs
        self.console = None  # --tty: where runc sends the pty master

    # ------------------------------------------------------------------ runc

    def path(self, name: str) -> str:
        return os.path.join(self.st, name)

    def spawn_runc(self, *args: str, stdio=None) -> int:
        o = self.o
        argv = [o.runc, "--root", o.runc_root, "--log", self.path("runc.log"),
                "--log-format", "json", *args]
        fds = stdio or (self.null, self.null, self.null)
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)]
        try:
            return os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions,
                                   setsigdef=_DEFAULT_SIGS, setsigmask=())
        except OSError as e:
            raise ShimFailure(f"cannot run {o.runc}: {e.strerror}") from None

    def runc(self, *args: str) -> int:
        """Run runc with `args` (stdio on /dev/null); wait; return its raw exit status."""
        return os.waitpid(self.spawn_runc(*args), 0)[1]

    def runc_error(self, what: str, status: int) -> str:
        """runc's last error message (from its JSON log), one line."""
        import json

        msg = ""
        try:
            with open(self.path("runc.log"), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("level") in ("error", "fatal"):
                msg = str(rec.get("msg", ""))
                break
        for prefix in (f"runc {what} failed: ", "unable to start container process: "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        msg = " ".join(msg.split())
        return msg or f"runc {what} failed (exit status {_exit_code(status)})"

    # ------------------------------------------------------------------ start-up

    def prepare(self) -> None:
        """Before runc: only what it needs (this runs before most imports)."""
        o = self.o
        _set_subreaper()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for name in ("exit.json", "shim.json", "init.pid", "runc.log", "attach.sock",
                     "control.sock", "console.sock"):
            _unlink(self.path(name))
        # `runc run --detach` is create + start in one runc process (~7 ms less on the
        # `cnet run` path). --no-start needs the two steps (someone else runs start), and
        # so does --tty: the pty gets its size before the process runs.
        self.action = "create" if o.no_start or o.tty else "run"
        args = [self.action, "--bundle", o.bundle, "--pid-file", self.path("init.pid")]
        if self.action == "run":
            args.append("--detach")
        if o.tty:
            _late_imports()
            self.console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            # runc dials it from the bundle directory (it chdirs there): absolute, or
            # relative to the bundle when shorter, or (both too long for a unix socket
            # address) an abstract socket with a random name, which Go spells "@name"
            path = self.path("console.sock")
            rel = os.path.relpath(path, o.bundle)
            addr = path if len(path) <= len(rel) else rel
            if len(os.fsencode(addr)) < 108:
                self.console.bind("console.sock")  # cwd is STATE
            else:
                addr = f"@cnet-console-{os.getpid()}-{os.urandom(8).hex()}"
                self.console.bind("\0" + addr[1:])
            self.console.listen(1)
            args += ["--console-socket", addr]
            self.runc_args, self.runc_stdio = [*args, o.id], None
            return
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        self.outputs = {out_r: "stdout", err_r: "stderr"}
        in_r = self.null
        if o.stdin:
            in_r, self.stdin_fd = os.pipe2(os.O_CLOEXEC)
        self.runc_args, self.runc_stdio = [*args, o.id], (in_r, out_w, err_w)

    def spawn(self) -> None:
        try:
            self.runc_pid = self.spawn_runc(*self.runc_args, stdio=self.runc_stdio)
        finally:
            for fd in self.runc_stdio or ():  # runc and the container hold them now
                if fd != self.null:
                    _close(fd)

    def setup(self) -> None:
        """While runc works: the log, the attach and control sockets, SIGCHLD."""
        o = self.o
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        log_dir = os.path.dirname(o.log_path)
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        self.log = LogWriter(o.log_path, o.log_max_bytes)
        # relative names: cwd is STATE (unix socket paths are limited to 107 bytes)
        self.listener = self._listen("attach.sock")
        self.control = self._listen("control.sock")

    @staticmethod
    def _listen(name: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.bind(name)
        s.listen(64)
        s.setblocking(False)
        return s

    def wait_created(self) -> None:
        o = self.o
        pid, self.runc_pid = self.runc_pid, 0
        status = os.waitpid(pid, 0)[1]
        console, self.console = self.console, None
        try:
            if status != 0:
                raise ShimFailure(self.runc_error(self.action, status))
            if console is not None:
                self.master = self._receive_master(console)
                os.set_blocking(self.master, False)
                self.outputs = {self.master: "stdout"}
                if o.stdin:
                    self.stdin_fd = self.master
                if o.tty_size:
                    _set_winsize(self.master, *o.tty_size)
        finally:
            if console is not None:
                console.close()
                _unlink(self.path("console.sock"))
        for fd in self.outputs:
            os.set_blocking(fd, False)
        if self.stdin_fd >= 0:
            os.set_blocking(self.stdin_fd, False)
        with open(self.path("init.pid")) as f:
            self.init_pid = int(f.read().strip())
        try:  # it must be ours (re-parented to us, the subreaper) to learn its status
            pid, status = os.waitpid(self.init_pid, os.WNOHANG)
            if pid == self.init_pid:  # already exited (started by `runc run`)
                self.exited(status)
        except ChildProcessError:
            raise ShimFailure(f"container init {self.init_pid} is not the shim's child") from None

    @staticmethod
    def _receive_master(console: socket.socket) -> int:
        console.settimeout(10)
        try:
            conn, _ = console.accept()
        except TimeoutError:
            raise ShimFailure("runc sent no console (is process.terminal set?)") from None
        with conn:
            conn.settimeout(10)
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise ShimFailure("runc sent no console fd")
        os.set_inheritable(fds[0], False)
        return fds[0]

    def report(self, obj: dict) -> None:
        if self.ready_fd < 0:
            return
        try:
            os.write(self.ready_fd, (_dumps(obj) + "\n").encode())
        except OSError:
            pass
        _close(self.ready_fd)
        self.ready_fd = -1

    def fail_cleanup(self) -> None:
        """After a failed create/start: leave no runc state, no process, no sockets."""
        if self.runc_pid:
            os.waitpid(self.runc_pid, 0)
            self.runc_pid = 0
        if self.console is not None:
            self.console.close()
            self.console = None
        try:  # whatever runc got to do (harmless when nothing exists)
            self.runc("delete", "--force", self.o.id)
        except ShimFailure:
            pass
        if not self.init_pid:
            try:
                with open(self.path("init.pid")) as f:
                    self.init_pid = int(f.read().strip())
            except (OSError, ValueError):
                pass
        if self.init_pid and self.status is None:  # killed by runc delete; ours to reap
            try:
                os.waitpid(self.init_pid, 0)
            except ChildProcessError:
                pass
        for fd in [*self.outputs, self.stdin_fd]:
            _close(fd)
        self.outputs, self.stdin_fd = {}, -1
        self.reap()
        for s in (self.listener, self.control):
            if s is not None:
                s.close()
        for name in ("attach.sock", "control.sock", "console.sock"):
            _unlink(self.path(name))
        if self.log is not None:
            self.log.close()

    # ------------------------------------------------------------------ event loop

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.init_pid and self.status is None:
                self.exited(status)

    def exited(self, status: int) -> None:
        self.status = status
        self.finished_at = rfc3339nano()

    def want(self, fd: int, mask: int) -> None:
        cur = self.masks.get(fd)
        if mask is None or mask == cur:
            return
        if cur is None:
            self.poll.register(fd, mask)
        else:
            self.poll.modify(fd, mask)
        self.masks[fd] = mask

    def forget(self, fd: int) -> None:
        if self.masks.pop(fd, None) is not None:
            self.poll.unregister(fd)

    def update_masks(self) -> None:
        exited = self.status is not None
        # backpressure from slow clients; once init exited, the rest goes to the log at once
        paused = not exited and any(len(c.out) > HIGH_WATER for c in self.clients.values())
        want: dict[int, int] = {self.wake_r: _IN}
        if self.listener is not None:
            want[self.listener.fileno()] = _IN
        if self.control is not None:
            want[self.control.fileno()] = _IN
        for fd, (_s, _b) in self.controls.items():
            want[fd] = _IN
        for fd in self.outputs:
            want[fd] = 0 if paused else _IN
        if self.stdin_fd >= 0 and self.stdin_buf:
            want[self.stdin_fd] = want.get(self.stdin_fd, 0) | _OUT
        stdin_full = len(self.stdin_buf) > HIGH_WATER
        for fd, c in self.clients.items():
            m = _OUT if c.out else 0
            if c.reading and not stdin_full and not exited:
                m |= _IN
            if m or not stdin_full:
                want[fd] = m
        for fd in list(self.masks):
            if fd not in want:
                self.forget(fd)
        for fd, m in want.items():
            self.want(fd, m)

    def loop(self) -> None:
        drain_deadline = None
        self.reap()  # SIGCHLD may have come before its handler was installed
        while True:
            if self.status is not None:
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
                    self.close_stdin()
                if not self.outputs or time.monotonic() >= drain_deadline:
                    return
            self.update_masks()
            timeout = None
            if drain_deadline is not None:
                timeout = max(0.0, drain_deadline - time.monotonic()) * 1000
            for fd, ev in self.poll.poll(timeout):
                try:
                    self.dispatch(fd, ev)
                except Exception:  # a bug must not orphan the container: note it, go on
                    _crash_log(self.st, "error in the event loop (continuing)")
                    c = self.clients.get(fd)
                    if c is not None:
                        self.drop(c)

    def dispatch(self, fd: int, ev: int) -> None:
        if fd == self.wake_r:
            self._drain_wakeup()
            self.reap()
        elif self.listener is not None and fd == self.listener.fileno():
            self.accept()
        elif self.control is not None and fd == self.control.fileno():
            self.accept_control()
        elif fd in self.controls:
            self.on_control(fd)
        else:
            if fd in self.outputs and ev & (_IN | _HUP):
                self.on_output(fd)
            if fd == self.stdin_fd and ev & (_OUT | _HUP) and self.stdin_buf:
                self.on_stdin_writable()
            if fd in self.clients:
                self.on_client(self.clients[fd], ev)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            c = Client(sock)
            self.clients[c.fd] = c

    def drop(self, c: Client) -> None:
        self.clients.pop(c.fd, None)
        self.forget(c.fd)
        c.sock.close()

    def on_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's slave side is closed everywhere
            data = b""
        stream = self.outputs[fd]
        if not data:
            self.outputs.pop(fd)
            self.forget(fd)
            if fd == self.stdin_fd:
                self.stdin_fd = -1
            os.close(fd)
            self._log_flush(stream)
            return
        self._log_write(stream, data)
        for c in list(self.clients.values()):  # send() may drop a client
            c.out += data
            self.send(c)

    def _log_write(self, stream: str, data: bytes) -> None:
        try:
            self.log.write(stream, data)
        except OSError:
            pass  # a full disk must not kill the container's supervisor

    def _log_flush(self, stream: str) -> None:
        try:
            self.log.flush(stream)
        except OSError:
            pass

    def send(self, c: Client) -> None:
        if not c.out:
            return
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(c)
            return
        del c.out[:n]

    def on_client(self, c: Client, ev: int) -> None:
        if ev & _OUT:
            self.send(c)
            if c.fd not in self.clients:
                return
        if ev & (_IN | _HUP) and c.reading:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self.drop(c)
                return
            if data:
                if self.stdin_fd >= 0 and not self.stdin_close:
                    self.stdin_buf += data
                    self.on_stdin_writable()
                return
            if data == b"":
                c.reading = False  # the client shut its write side (or closed)
                if (self.stdin_fd >= 0 and self.master < 0 and self.o.stdin
                        and not self.o.keep_stdin_open):
                    self.stdin_close = True
                    self.on_stdin_writable()
        if ev & _HUP and not c.reading:
            self.drop(c)

    def on_stdin_writable(self) -> None:
        while self.stdin_buf and self.stdin_fd >= 0:
            try:
                n = os.write(self.stdin_fd, self.stdin_buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE: the container closed its stdin
                self.stdin_buf.clear()
                if self.master < 0:
                    self.close_stdin()
                return
            del self.stdin_buf[:n]
        if self.stdin_close:
            self.close_stdin()

    def close_stdin(self) -> None:
        self.stdin_buf.clear()
        if self.stdin_fd >= 0 and self.stdin_fd != self.master:
            self.forget(self.stdin_fd)
            os.close(self.stdin_fd)
        self.stdin_fd = -1
        self.stdin_close = False

    def accept_control(self) -> None:
        while True:
            try:
                sock, _ = self.control.accept()
            except OSError:
                return
            sock.setblocking(False)
            self.controls[sock.fileno()] = (sock, bytearray())

    def on_control(self, fd: int) -> None:
        sock, buf = self.controls[fd]
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            reply = self.control_command(line)
            try:
                sock.send((_dumps(reply) + "\n").encode())
            except OSError:
                pass
        if not data or len(buf) > 65536:
            self.controls.pop(fd)
            self.forget(fd)
            sock.close()

    def control_command(self, line: bytes) -> dict:
        import json

        try:
            req = json.loads(line)
            if "resize" in req:
                rows, cols = (int(v) for v in req["resize"])
                if self.master < 0:
                    return {"error": "the container has no tty"}
                _set_winsize(self.master, rows, cols)
                return {"ok": True}
        except (ValueError, TypeError, KeyError, OSError) as e:
            return {"error": f"bad request: {e}"}
        return {"error": "unknown request"}

    # ------------------------------------------------------------------ exit

    def finish(self) -> None:
        for fd in list(self.outputs):
            self.forget(fd)
            _close(fd)
        self.outputs = {}
        if self.master >= 0 and self.stdin_fd == self.master:
            self.stdin_fd = -1
        try:
            self.log.close()
        except OSError:
            pass
        _write_json(self.path("exit.json"), {"ExitCode": _exit_code(self.status),
                                             "FinishedAt": self.finished_at})
        for s in (self.listener, self.control):
            if s is not None:
                self.forget(s.fileno())
                s.close()
        self.listener = self.control = None
        for name in ("attach.sock", "control.sock"):
            _unlink(self.path(name))
        try:  # removes runc's state and the container's cgroup
            self.runc("delete", "--force", self.o.id)
        except ShimFailure:
            pass
        self.reap()  # whatever runc delete killed (orphans of a shared pid namespace)
        self.flush_clients()
        for c in list(self.clients.values()):
            self.drop(c)
        for sock, _ in self.controls.values():
            sock.close()

    def flush_clients(self) -> None:
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while time.monotonic() < deadline:
            pending = [c for c in self.clients.values() if c.out]
            if not pending:
                return
            p = select.poll()
            for c in pending:
                p.register(c.fd, _OUT)
            for fd, _ev in p.poll(max(0.0, deadline - time.monotonic()) * 1000):
                c = self.clients.get(fd)
                if c is not None:
                    self.send(c)

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        try:
            self.prepare()
            self.spawn()
            _late_imports()
            self.setup()
            self.wait_created()
            if self.action == "create" and not self.o.no_start:
                status = self.runc("start", self.o.id)
                if status != 0:
                    raise ShimFailure(self.runc_error("start", status))
        except ShimFailure as e:
            self.fail_cleanup()
            self.report({"error": str(e)})
            return 1
        except BaseException as e:
            self.fail_cleanup()
            self.report({"error": f"shim: {type(e).__name__}: {e}"})
            raise
        info = {"id": self.o.id, "pid": self.init_pid, "shim_pid": os.getpid()}
        _write_json(self.path("shim.json"), info)
        self.report({"pid": self.init_pid, "shim_pid": info["shim_pid"]})
        self.loop()
        self.finish()
        return 0


def _crash_log(state_dir: str, what: str = "crashed") -> None:
    import traceback

    try:
        _late_imports()
        with open(os.path.join(state_dir, "shim.log"), "a") as f:
            f.write(f"{rfc3339nano()} shim {os.getpid()} {what}:\n")
            traceback.print_exc(file=f)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        o = parse_args(argv)
        os.set_inheritable(o.ready_fd, False)
    except (UsageError, OSError) as e:
        print(f"shim: {e}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        os.makedirs(o.state_dir, exist_ok=True)
    except OSError as e:
        os.write(o.ready_fd, (_dumps({"error": f"state dir: {e}"}) + "\n").encode())
        return 1
    daemonize(o.state_dir)
    try:
        return Shim(o).run()
    except BaseException:
        _crash_log(o.state_dir)
        return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
