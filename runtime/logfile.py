"""Container logs in Docker's json-file format: a size-capped writer and a (following) reader.

One JSON object per line, exactly as Docker's json-file driver writes them::

    {"log":"hello\\n","stream":"stdout","time":"2024-05-01T12:00:00.123456789Z"}

- `LogWriter(path, max_bytes)` (used by the shim): feed it raw bytes per stream; it
  splits them into lines (a line longer than 16 KiB is cut into 16 KiB pieces without
  a trailing newline, like Docker), and `flush(stream)` writes a partial last line
  as-is. When a line would make the file exceed `max_bytes`, the file is renamed to
  `PATH.1` (one old file kept, the previous `.1` is replaced) and a new file started.
- `read_logs(path, tail=None, follow=False, timestamps=False, stop=None)` (used by
  cnetd for `cnet logs`) yields `(stream, text, time)` tuples, reading `PATH.1` then
  `PATH`. `follow` waits for appended lines (inotify on the directory when available,
  else polling) across rotations, and returns once `stop()` is true and the file is
  drained.

Stdlib only and cheap to import: the shim imports this module on the `cnet run` path.
"""

from __future__ import annotations

import os
import time

try:  # the C encoder alone: `import json` costs ~6 ms (it pulls in re) on the shim's path
    from _json import encode_basestring as _encode
except ImportError:  # pragma: no cover
    from json.encoder import encode_basestring as _encode

#: default size cap of a log file (Docker's json-file has none; cnet keeps 2 x 10 MiB)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
#: longest line kept whole; longer lines are split (Docker's bufio size for json-file)
MAX_LINE = 16 * 1024



def rfc3339nano(ns: int | None = None) -> str:
    """UTC time as Go's RFC3339Nano (trailing zeros of the fraction trimmed)."""
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


def _fixed_nano(ts: str) -> str:
    """RFC3339Nano -> fixed 9-digit fraction (the `docker logs -t` prefix format)."""
    if not ts.endswith("Z"):
        return ts
    head, dot, frac = ts[:-1].partition(".")
    return f"{head}.{frac.ljust(9, '0')[:9]}Z"


class LogWriter:
    """Append Docker json-file lines to `path`, rotating to `path.1` at `max_bytes`."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = str(path)
        self.max_bytes = max(int(max_bytes), 0)  # 0: no cap
        self._partial: dict[str, bytes] = {}
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        os.replace(self.path, self.path + ".1")
        self._open()

    def write(self, stream: str, data: bytes, now_ns: int | None = None) -> None:
        """Log raw output of `stream` ("stdout"/"stderr"); complete lines are written now."""
        if not data:
            return
        buf = self._partial.pop(stream, b"") + data
        ts = rfc3339nano(now_ns)
        lines: list[bytes] = []
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start, start + MAX_LINE)
            if nl >= 0:
                lines.append(buf[start:nl + 1])
                start = nl + 1
            elif n - start >= MAX_LINE:
                lines.append(buf[start:start + MAX_LINE])
                start += MAX_LINE
            else:
                self._partial[stream] = buf[start:]
                break
        self._emit(stream, lines, ts)

    def flush(self, stream: str | None = None) -> None:
        """Write the partial last line of `stream` (every stream if None) as it is."""
        for s in [stream] if stream else list(self._partial):
            rest = self._partial.pop(s, b"")
            if rest:
                self._emit(s, [rest], rfc3339nano())

    def _emit(self, stream: str, lines: list[bytes], ts: str) -> None:
        if not lines:
            return
        tail = f',"stream":"{stream}","time":"{ts}"}}\n'
        out: list[bytes] = []
        pending = 0
        for raw in lines:
            rec = ('{"log":' + _encode(raw.decode("utf-8", "replace")) + tail).encode()
            if self.max_bytes and self._size + pending + len(rec) > self.max_bytes and (
                    self._size + pending):
                if out:
                    self._write_all(b"".join(out))
                    out, pending = [], 0
                self._rotate()
            out.append(rec)
            pending += len(rec)
        self._write_all(b"".join(out))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reader


def _parse(line: bytes, timestamps: bool):
    import json

    try:
        rec = json.loads(line)
        text, stream, ts = rec["log"], rec.get("stream", "stdout"), rec.get("time", "")
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign line: skip it
    if timestamps:
        text = f"{_fixed_nano(ts)} {text}"
    return stream, text, ts


def _last_lines(f, n: int) -> tuple[list[bytes], bool, int]:
    """The last `n` complete lines of open file `f` (read backwards), whether the file
    holds fewer than `n` lines (so an older file should be consulted too), and the offset
    just after the last complete line (where following continues)."""
    end = f.seek(0, os.SEEK_END)
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= n:
        step = min(pos, 64 * 1024)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    cut = data.rfind(b"\n") + 1  # a torn last line (being written) is not complete
    stop_at = pos + cut
    lines = data[:cut].splitlines(keepends=True)
    if pos > 0:
        lines = lines[1:]  # the first one may be cut
    if len(lines) >= n:
        return (lines[len(lines) - n:] if n else []), False, stop_at
    return lines, pos == 0, stop_at


class _Waiter:
    """Block until something happens in a directory (inotify), or for a short poll."""

    POLL = 0.05

    def __init__(self, directory: str):
        self.fd = -1
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            mask = 0x2 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200
            if libc.inotify_add_watch(fd, os.fsencode(directory or "."), mask) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = -1

    def wait(self, timeout: float) -> None:
        if self.fd < 0:
            time.sleep(min(timeout, self.POLL))
            return
        import select

        r, _, _ = select.select([self.fd], [], [], timeout)
        if r:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_logs(path, tail: int | None = None, follow: bool = False, timestamps: bool = False,
              stop=None, stop_interval: float = 0.25):
    """Return an iterator of `(stream, text, time)` for the lines of the json-file log at
    `path`.

    `tail`: only the last N lines (None: all; 0: none, useful with `follow`). `timestamps`:
    prefix `text` with the time (fixed 9-digit fraction, as `docker logs -t` prints it).
    `follow`: keep waiting for new lines (also across rotation), until `stop()` returns
    true (checked at least every `stop_interval` s) and everything written has been read.
    The files (and, when following, the directory watch) are opened now, not at the first
    iteration: a log removed right after this call (an auto-removed container) is still
    read whole.
    """
    path = str(path)
    f, g = _open(path), _open(path + ".1")
    waiter = _Waiter(os.path.dirname(path)) if follow else None
    return _lines(path, f, g, tail, follow, timestamps, stop, stop_interval, waiter)


def _lines(path, f, g, tail, follow, timestamps, stop, stop_interval, waiter):
    try:
        if tail is not None:
            tail = max(int(tail), 0)
            lines, short, offset = _last_lines(f, tail) if f else ([], True, 0)
            if short and tail and g is not None:
                lines = _last_lines(g, tail - len(lines))[0] + lines
            for line in lines:
                rec = _parse(line, timestamps)
                if rec:
                    yield rec
            if f is not None:
                f.seek(offset)
        else:
            if g is not None:
                yield from _read_complete(g, timestamps, final=True)
            if not follow and f is not None:
                yield from _read_complete(f, timestamps, final=True)
        if follow:
            yield from _follow(path, f, timestamps, stop, stop_interval, waiter)
            f = None  # _follow owns (and closed) it
    finally:
        for h in (f, g):
            if h is not None:
                h.close()
        if waiter is not None:
            waiter.close()


def _open(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _read_complete(f, timestamps: bool, final: bool = False):
    """Parse the complete lines from f's position; leave f before a torn last line
    (unless `final`: then the rest is tried as a line too)."""
    while True:
        line = f.readline()
        if not line:
            return
        if not line.endswith(b"\n") and not final:
            f.seek(-len(line), os.SEEK_CUR)
            return
        rec = _parse(line, timestamps)
        if rec:
            yield rec


def _same_file(f, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(f.fileno())
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


def _follow(path: str, f, timestamps: bool, stop, stop_interval: float, waiter):
    try:
        while True:
            # Decide on stopping *before* draining: whatever the writer wrote before
            # stop() turned true is read below.
            stopping = bool(stop and stop())
            while True:
                if f is not None:
                    yield from _read_complete(f, timestamps)
                    if _same_file(f, path):
                        break
                    # rotated (or removed): finish the old file, go on with the new one
                    yield from _read_complete(f, timestamps, final=True)
                    f.close()
                f = _open(path)
                if f is None:
                    break
            if stopping:
                if f is not None:
                    yield from _read_complete(f, timestamps, final=True)
                return
            waiter.wait(stop_interval)
    finally:
        if f is not None:
            f.close()
