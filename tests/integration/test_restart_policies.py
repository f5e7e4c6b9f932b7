"""Restart policies and daemon restarts, with real containers on runc.

Restarts are counted from the containers' own output (each run prints one line to
the log) and from the processes the kernel shows, not only from RestartCount; a
daemon restart must leave running containers' processes alone (same pid, same start
time), still reachable by ping, still logging, and under the new daemon's control.
"""

from __future__ import annotations

import re
import signal
import time

import harness

SLEEP = ("sleep", "600")
TRAP_TERM = ("sh", "-c", 'trap "exit 0" TERM; while :; do sleep 0.1; done')
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:(\d\d):(\d\d(?:\.\d+)?)Z) (.*)$")


def inspect(d: harness.Daemon, name: str) -> dict:
    return d.cli_json("inspect", name)[0]


def run_d(d: harness.Daemon, name: str, *args: str) -> str:
    return d.cli("run", "-d", "--name", name, *args).stdout.strip()


def wait_for(pred, timeout: float = 10, what: str = "condition"):
    return harness.wait_for(pred, timeout=timeout, interval=0.05, what=what)


def runs(d: harness.Daemon, name: str) -> int:
    """How many times the container really ran (one `run` line per start)."""
    return d.cli("logs", name).stdout.splitlines().count("run")


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (pid reuse cannot fake it)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def seconds(ts_match: re.Match) -> float:
    """Seconds within the hour of a `logs -t` timestamp (runs here last < 1 minute)."""
    return int(ts_match.group(2)) * 60 + float(ts_match.group(3))


# --------------------------------------------------------------------------- policies


def test_on_failure_max_retries_and_exit_zero(cdaemon):
    d = cdaemon
    run_d(d, "fail", "--restart", "on-failure:2", "busybox", "sh", "-c", "echo run; exit 1")
    run_d(d, "ok", "--restart", "on-failure", "busybox", "sh", "-c", "echo run; exit 0")
    wait_for(lambda: inspect(d, "fail")["RestartCount"] == 2, timeout=5, what="2 restarts")
    st = wait_for(lambda: (s := inspect(d, "fail")["State"])["Status"] == "exited" and s,
                  timeout=5, what="fail exited for good")
    assert st["ExitCode"] == 1 and not st["Running"]
    time.sleep(1.0)  # longer than the next back-off would be (0.4 s)
    c = inspect(d, "fail")
    assert c["RestartCount"] == 2 and c["State"]["Status"] == "exited"
    assert c["State"]["ExitCode"] == 1
    assert runs(d, "fail") == 3  # the first run and 2 restarts
    assert d.cli("wait", "fail").stdout.strip() == "1"
    # on-failure does not restart a container that exited 0
    c = inspect(d, "ok")
    assert (c["RestartCount"], c["State"]["Status"], c["State"]["ExitCode"]) == (0, "exited", 0)
    assert runs(d, "ok") == 1


def test_always_restarts_with_growing_back_off_until_stopped(cdaemon):
    d = cdaemon
    run_d(d, "quick", "--restart", "always", "busybox", "sh", "-c", "echo run; exit 0")
    run_d(d, "slow", "--restart", "always", "busybox", "sh", "-c", "echo run; exit 0")
    # `quick` is stopped early (its pending back-off is short), `slow` keeps going.
    wait_for(lambda: inspect(d, "quick")["RestartCount"] >= 2, timeout=5, what="2 restarts")
    d.cli("stop", "quick")
    stopped = inspect(d, "quick")
    assert stopped["State"]["Status"] == "exited" and not stopped["State"]["Running"]
    n_runs = runs(d, "quick")
    assert n_runs >= 3
    # Back-off doubles: the gaps between the starts of `slow` grow (0.1, 0.2, 0.4, 0.8 s).
    wait_for(lambda: runs(d, "slow") >= 5, timeout=6, what="5 runs of slow")
    stamps = [TS.match(x) for x in d.cli("logs", "-t", "slow").stdout.splitlines()]
    times = [seconds(m) for m in stamps if m and m.group(4) == "run"][:5]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    # nominal gaps ~0.15, 0.25, 0.45, 0.85 s (delay + start/exit work); compared by
    # differences, so a loaded machine's constant overhead cancels out (the delays alone
    # grow by 0.7 s from the first gap to the fourth)
    assert gaps[2] > gaps[0] and gaps[3] > gaps[1] and gaps[3] - gaps[0] > 0.4, gaps
    assert inspect(d, "slow")["RestartCount"] >= 4
    # After `stop`, the always container stays down (no new run, no new restart).
    assert runs(d, "quick") == n_runs
    c = inspect(d, "quick")
    assert c["RestartCount"] == stopped["RestartCount"] and c["State"]["Status"] == "exited"
    d.cli("stop", "slow")


def test_unless_stopped_stays_stopped_across_daemon_restart_always_comes_back(cdaemon):
    d = cdaemon
    run_d(d, "always", "--restart", "always", "busybox", *TRAP_TERM)
    run_d(d, "unless", "--restart", "unless-stopped", "busybox", *TRAP_TERM)
    run_d(d, "unless-up", "--restart", "unless-stopped", "busybox", *SLEEP)
    run_d(d, "never", "--restart", "no", "busybox", *TRAP_TERM)
    up_pid = inspect(d, "unless-up")["State"]["Pid"]
    time.sleep(0.2)  # traps installed
    old = {n: inspect(d, n)["State"]["Pid"] for n in ("always", "unless", "never")}
    d.cli("stop", "always", "unless", "never")
    for n, pid in old.items():
        assert inspect(d, n)["State"]["Status"] == "exited"
        assert not harness._alive(pid)
    d.restart()
    c = wait_for(lambda: (c := inspect(d, "always"))["State"]["Running"] and c, timeout=10,
                 what="always container started by the daemon restart")
    pid = c["State"]["Pid"]
    assert harness._alive(pid) and pid != old["always"]
    assert harness._proc_cmdline(pid)[:2] == ["sh", "-c"]
    for n in ("unless", "never"):
        st = inspect(d, n)["State"]
        assert st["Status"] == "exited" and not st["Running"], (n, st)
    # a running unless-stopped container simply kept running
    st = inspect(d, "unless-up")["State"]
    assert st["Running"] and st["Pid"] == up_pid and harness._alive(up_pid)
    d.cli("stop", "always")
    assert not harness._alive(pid)


# --------------------------------------------------------------------------- daemon restart


def _check_survivors(d: harness.Daemon, before: dict, ip2: str) -> None:
    for name, (pid, started) in before.items():
        st = inspect(d, name)["State"]
        assert st["Running"] and st["Pid"] == pid, (name, st)
        assert harness._alive(pid) and start_time(pid) == started, name
    assert harness.ping(f"/proc/{before['c1'][0]}/ns/net", ip2)
    assert d.cli("exec", "c1", "ping", "-c", "1", "-W", "2", ip2).returncode == 0
    n = d.cli("logs", "ticker").stdout.count("tick")
    wait_for(lambda: d.cli("logs", "ticker").stdout.count("tick") > n + 1, timeout=3,
             what="ticker still logging")


def test_daemon_restart_keeps_containers_running_and_under_control(cdaemon):
    d = cdaemon
    d.cli("network", "create", "localnet")
    run_d(d, "c1", "--network", "localnet", "--restart", "always", "busybox", *SLEEP)
    run_d(d, "c2", "--network", "localnet", "busybox", *TRAP_TERM)
    run_d(d, "ticker", "--network", "localnet", "busybox", "sh", "-c",
          "while :; do echo tick; sleep 0.1; done")
    ip2 = inspect(d, "c2")["NetworkSettings"]["Networks"]["localnet"]["IPAddress"]
    before = {}
    for n in ("c1", "c2", "ticker"):
        pid = inspect(d, n)["State"]["Pid"]
        before[n] = (pid, start_time(pid))
    assert harness.ping(f"/proc/{before['c1'][0]}/ns/net", ip2)

    d.restart()  # SIGTERM
    _check_survivors(d, before, ip2)

    d.kill(signal.SIGKILL)
    time.sleep(0.3)  # the containers run on without any daemon
    for pid, _ in before.values():
        assert harness._alive(pid)
    d.start()
    _check_survivors(d, before, ip2)
    assert inspect(d, "c1")["RestartCount"] == 0  # found again, not started a second time

    # The new daemon controls them: stop, exit codes, exits it did not cause.
    t0 = time.monotonic()
    d.cli("stop", "c2")
    assert time.monotonic() - t0 < 1.5  # SIGTERM was delivered: no 10 s timeout
    st = inspect(d, "c2")["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 0)
    assert not harness._alive(before["c2"][0])
    d.cli("stop", "-t", "1", "c1")
    assert inspect(d, "c1")["State"]["ExitCode"] == 137
    assert not harness._alive(before["c1"][0])
    harness.sh("kill", "-KILL", str(before["ticker"][0]))  # dies behind the daemon's back
    st = wait_for(lambda: (s := inspect(d, "ticker")["State"])["Status"] == "exited" and s,
                  timeout=5, what="exit noticed by the restarted daemon")
    assert st["ExitCode"] == 137
    d.cli("rm", "c1", "c2", "ticker")
    assert d.cli("ps", "-aq").stdout == ""
