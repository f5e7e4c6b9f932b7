"""runtime/logfile.py: Docker json-file lines, size cap with one rotated file, reader/follow."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
from cnet.runtime.logfile import MAX_LINE, LogWriter, read_logs, rfc3339nano

RFC3339NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def texts(path, **kw) -> list[str]:
    return [text for _stream, text, _ts in read_logs(path, **kw)]


def test_rfc3339nano():
    assert rfc3339nano(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339nano(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert rfc3339nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert RFC3339NANO.match(rfc3339nano())


def test_lines_streams_and_docker_format(tmp_path):
    path = tmp_path / "c.log"
    with LogWriter(path, 1 << 20) as w:
        w.write("stdout", b"hello\nwor")
        w.write("stderr", b"oops\n")
        w.write("stdout", b"ld\n", now_ns=1_700_000_000_5 * 10**8)
        w.write("stdout", b"tail")  # partial: written at close
    raw = path.read_text().splitlines()
    assert raw[0].startswith('{"log":"hello\\n","stream":"stdout","time":"')
    recs = records(path)
    assert [(r["stream"], r["log"]) for r in recs] == [
        ("stdout", "hello\n"), ("stderr", "oops\n"), ("stdout", "world\n"), ("stdout", "tail")]
    assert recs[2]["time"] == "2023-11-14T22:13:20.5Z"
    assert all(RFC3339NANO.match(r["time"]) for r in recs)


def test_flush_one_stream_and_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "c.log"
    w = LogWriter(path, 0)
    w.write("stdout", "héllo <&> \"q\"\n".encode() + b"\xff\xfe\n")
    w.write("stderr", b"half")
    w.write("stdout", b"other half")
    w.flush("stderr")
    assert [r["log"] for r in records(path)] == ['héllo <&> "q"\n', "\ufffd\ufffd\n", "half"]
    w.close()
    assert records(path)[-1] == {**records(path)[-1], "log": "other half", "stream": "stdout"}
    w.close()  # idempotent


def test_long_lines_are_split(tmp_path):
    path = tmp_path / "c.log"
    with LogWriter(path) as w:
        w.write("stdout", b"x" * (MAX_LINE * 2 + 10) + b"\n")
    assert [len(r["log"]) for r in records(path)] == [MAX_LINE, MAX_LINE, 11]


def test_rotation_keeps_one_old_file(tmp_path):
    path = tmp_path / "c.log"
    with LogWriter(path, 300) as w:
        for i in range(30):
            w.write("stdout", f"line{i}\n".encode())
    old = tmp_path / "c.log.1"
    assert old.exists() and not (tmp_path / "c.log.2").exists()
    assert path.stat().st_size <= 300 and old.stat().st_size <= 300
    got = texts(path)
    nums = [int(t[4:]) for t in got]
    assert nums == list(range(nums[0], 30)) and len(nums) > 3
    assert texts(path, tail=3) == ["line27\n", "line28\n", "line29\n"]
    # a tail longer than the current file reaches into the rotated one
    n_current = len(records(path))
    assert texts(path, tail=n_current + 2) == got[-(n_current + 2):]
    assert texts(path, tail=1000) == got


def test_rotation_within_one_write_and_oversized_line(tmp_path):
    path = tmp_path / "c.log"
    with LogWriter(path, 200) as w:
        w.write("stdout", b"".join(f"l{i}\n".encode() for i in range(10)))
        w.write("stdout", b"y" * 500 + b"\n")  # alone in a file of its own
    assert [r["log"] for r in records(path)] == ["y" * 500 + "\n"]
    assert records(str(path) + ".1")[-1]["log"] == "l9\n"
    assert texts(path, tail=2) == ["l9\n", "y" * 500 + "\n"]


def test_reopen_appends_and_counts_existing_size(tmp_path):
    path = tmp_path / "c.log"
    with LogWriter(path, 400) as w:
        w.write("stdout", b"a" * 100 + b"\n")
    with LogWriter(path, 400) as w:  # a restarted container appends
        w.write("stdout", b"b" * 100 + b"\n")
        w.write("stdout", b"c" * 200 + b"\n")
    assert [r["log"][0] for r in records(path)] == ["c"]
    assert [r["log"][0] for r in records(str(path) + ".1")] == ["a", "b"]
    assert [t[0] for t in texts(path)] == ["a", "b", "c"]


def test_read_tail_timestamps_and_bad_lines(tmp_path):
    path = tmp_path / "c.log"
    path.write_text("not json\n")
    with LogWriter(path) as w:
        w.write("stdout", b"one\ntwo\n", now_ns=1_700_000_000_100_000_000)
        w.write("stderr", b"three\n", now_ns=1_700_000_000_000_000_000)
    with open(path, "a") as f:
        f.write('{"log":"torn')  # a writer in the middle of a line
    assert list(read_logs(path, tail=2)) == [
        ("stdout", "two\n", "2023-11-14T22:13:20.1Z"),
        ("stderr", "three\n", "2023-11-14T22:13:20Z")]
    assert texts(path, tail=0) == []
    assert texts(path, tail=1, timestamps=True) == ["2023-11-14T22:13:20.000000000Z three\n"]
    assert texts(path, timestamps=True)[0] == "2023-11-14T22:13:20.100000000Z one\n"
    assert texts(path) == ["one\n", "two\n", "three\n"]
    assert texts(tmp_path / "missing.log") == []
    assert texts(tmp_path / "missing.log", tail=5) == []


def test_follow_sees_appends_across_rotation_and_stops_when_drained(tmp_path):
    path = tmp_path / "c.log"
    done = threading.Event()
    w = LogWriter(path, 2000)
    w.write("stdout", b"before\n")

    def writer():
        for i in range(60):
            w.write("stderr" if i % 2 else "stdout", f"line {i}\n".encode())
            time.sleep(0.002)
        w.write("stdout", b"last without newline")
        w.close()
        done.set()

    t0 = time.monotonic()
    got = []
    th = threading.Thread(target=writer)
    gen = read_logs(path, tail=1, follow=True, stop=done.is_set, stop_interval=0.05)
    for rec in gen:
        got.append(rec)
        if len(got) == 1:
            th.start()
    th.join()
    assert time.monotonic() - t0 < 5
    assert (tmp_path / "c.log.1").exists()  # it did rotate meanwhile
    assert [t for _s, t, _ts in got] == (
        ["before\n"] + [f"line {i}\n" for i in range(60)] + ["last without newline"])
    assert got[2][0] == "stderr"


def test_follow_torn_line_is_read_once_complete(tmp_path):
    path = tmp_path / "c.log"
    rec = json.dumps({"log": "x\n", "stream": "stdout", "time": rfc3339nano()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, rec[:10].encode())
    stop = threading.Event()
    got = []

    def reader():
        got.extend(read_logs(path, follow=True, stop=stop.is_set, stop_interval=0.02))

    th = threading.Thread(target=reader)
    th.start()
    time.sleep(0.1)
    assert got == []
    os.write(fd, rec[10:].encode())
    os.close(fd)
    time.sleep(0.1)
    stop.set()
    th.join(5)
    assert not th.is_alive()
    assert [t for _s, t, _ts in got] == ["x\n"]


def test_follow_waits_for_the_file_to_appear(tmp_path):
    path = tmp_path / "later.log"
    stop = threading.Event()
    got = []
    th = threading.Thread(
        target=lambda: got.extend(read_logs(path, follow=True, stop=stop.is_set,
                                            stop_interval=0.02)))
    th.start()
    time.sleep(0.05)
    with LogWriter(path) as w:
        w.write("stdout", b"hi\n")
    time.sleep(0.1)
    stop.set()
    th.join(5)
    assert [t for _s, t, _ts in got] == ["hi\n"]


@pytest.mark.parametrize("max_bytes", [0, 10 * 1024 * 1024])
def test_many_lines_throughput(tmp_path, max_bytes):
    path = tmp_path / "c.log"
    data = b"".join(b"%d\n" % i for i in range(20000))
    t0 = time.monotonic()
    with LogWriter(path, max_bytes) as w:
        for i in range(0, len(data), 4096):
            w.write("stdout", data[i:i + 4096])
    assert time.monotonic() - t0 < 2
    assert texts(path, tail=1) == ["19999\n"]
    assert len(texts(path)) == 20000
