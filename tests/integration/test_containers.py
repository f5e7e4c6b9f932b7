"""Containers on runc, observed on the kernel: packets, processes, cgroups, mounts.

Every test gets a fresh cnetd with the busybox image (`cdaemon`). The daemon's claims
(inspect, ps) are checked against what the kernel shows: ping between containers,
addresses on eth0 of the container's namespace, the init process and its cgroup files,
veths, namespace mounts, runc state and shim processes.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time

import harness

SLEEP = ("sleep", "600")
#: exits 0 at once on SIGTERM (sh runs the trap after the current `sleep 0.1`)
TRAP_TERM = ("sh", "-c", 'trap "exit 0" TERM; while :; do sleep 0.1; done')
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (.*)$")


# --------------------------------------------------------------------------- helpers


def inspect(d: harness.Daemon, name: str) -> dict:
    return d.cli_json("inspect", name)[0]


def run_d(d: harness.Daemon, name: str, *args: str) -> str:
    """`cnet run -d --name NAME ARGS...` -> the container id."""
    return d.cli("run", "-d", "--name", name, *args).stdout.strip()


def wait_status(d: harness.Daemon, name: str, status: str, timeout: float = 10) -> dict:
    return harness.wait_for(lambda: (s := inspect(d, name)["State"])["Status"] == status and s,
                            timeout=timeout, interval=0.05, what=f"{name} {status}")


def exec_ping(d: harness.Daemon, name: str, ip: str, timeout: float = 5) -> bool:
    """ping `ip` from inside container `name` (busybox ping through `cnet exec`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.cli("exec", name, "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0:
            return True
    return False


def host_veths(d: harness.Daemon) -> set[str]:
    out = d.run_in_host("ip", "-o", "link", "show", "type", "veth").stdout
    return {line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()}


def proc_cgroup(pid: int, controller: str) -> str:
    """The cgroup v1 directory of `pid` for `controller` (e.g. memory, pids, cpu)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if controller in ctrls.split(","):
                mount = glob.glob(f"/sys/fs/cgroup/{controller}") or glob.glob(
                    f"/sys/fs/cgroup/*{controller}*")
                return os.path.join(mount[0], path.lstrip("/"))
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def shim_pids(cid: str) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            argv = harness._proc_cmdline(int(p))
            if "cnet.runtime.shim" in argv and cid in argv:
                out.append(int(p))
    return out


def traces(d: harness.Daemon, cid: str, veths_before: set[str]) -> list[str]:
    """Everything of container `cid` that the kernel, runc or the daemon still has."""
    found = []
    if d.cli("inspect", cid, check=False).returncode == 0:
        found.append("container record")
    if cid[:12] in d.cli("ps", "-aq").stdout.split():
        found.append("ps -a entry")
    if d.cli("sandbox", "inspect", cid, check=False).returncode == 0:
        found.append("sandbox")
    new_veths = host_veths(d) - veths_before
    if new_veths:
        found.append(f"veths {sorted(new_veths)}")
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f]
    found += [f"mount {m}" for m in mounts if cid in m]
    container_dir = os.path.join(d.exec_root, "containers", cid)
    found += [f"mount under exec root {m}" for m in mounts if m.startswith(container_dir)]
    for path in (os.path.join(d.exec_root, "runc", cid), container_dir,
                 os.path.join(d.exec_root, "netns", cid),
                 os.path.join(d.data_root, "containers", cid)):
        if os.path.exists(path):
            found.append(f"path {path}")
    state = harness.sh("runc", "--root", os.path.join(d.exec_root, "runc"), "state", cid,
                       check=False)
    if state.returncode == 0:
        found.append("runc state")
    found += [f"shim pid {p}" for p in shim_pids(cid)]
    found += [f"cgroup {c}" for c in glob.glob(f"/sys/fs/cgroup/*/cnet/*/{cid}")]
    return found


# --------------------------------------------------------------------------- networking


def test_containers_ping_each_other_on_user_network_and_default_bridge(cdaemon):
    d = cdaemon
    d.cli("network", "create", "--subnet", "10.89.0.0/24", "localnet")
    run_d(d, "l1", "--network", "localnet", "busybox", *SLEEP)
    run_d(d, "l2", "--network", "localnet", "--ip", "10.89.0.50", "busybox", *SLEEP)
    run_d(d, "b1", "busybox", *SLEEP)
    run_d(d, "b2", "busybox", *SLEEP)
    ip = {n: inspect(d, n)["NetworkSettings"]["Networks"][net]["IPAddress"]
          for n, net in (("l1", "localnet"), ("l2", "localnet"), ("b1", "bridge"),
                         ("b2", "bridge"))}
    assert len(set(ip.values())) == 4 and ip["l2"] == "10.89.0.50"
    assert exec_ping(d, "l1", ip["l2"]) and exec_ping(d, "l2", ip["l1"])
    assert exec_ping(d, "b1", ip["b2"]) and exec_ping(d, "b2", ip["b1"])
    # The same from the kernel's side: ping from l1's network namespace found by its pid.
    pid = inspect(d, "l1")["State"]["Pid"]
    assert harness.ping(f"/proc/{pid}/ns/net", ip["l2"])
    # A removed peer no longer answers (the pings above are real packets).
    d.cli("rm", "-f", "l2")
    assert not harness.ping(f"/proc/{pid}/ns/net", ip["l2"])


def test_stopped_container_is_off_the_network(cdaemon):
    """Like Docker: networks are attached while a container runs; `network connect` of a
    stopped container is remembered and attached at its next start."""
    d = cdaemon
    run_d(d, "a", "busybox", *SLEEP)
    run_d(d, "b", "busybox", *SLEEP)
    ip_b = inspect(d, "b")["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert exec_ping(d, "a", ip_b)
    d.cli("kill", "b")
    wait_status(d, "b", "exited")
    assert d.cli("exec", "a", "ping", "-c", "1", "-W", "1", ip_b, check=False).returncode != 0
    assert inspect(d, "b")["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ""
    d.cli("network", "create", "later")
    d.cli("network", "connect", "later", "b")
    d.cli("network", "connect", "later", "a")
    d.cli("start", "b")
    wait_status(d, "b", "running")
    nets = inspect(d, "b")["NetworkSettings"]["Networks"]
    assert set(nets) == {"bridge", "later"}
    assert exec_ping(d, "a", nets["bridge"]["IPAddress"])
    assert exec_ping(d, "a", nets["later"]["IPAddress"])
    d.cli("network", "disconnect", "later", "a")
    assert d.cli("exec", "a", "ping", "-c", "1", "-W", "1", nets["later"]["IPAddress"],
                 check=False).returncode != 0


def test_inspect_has_docker_fields_and_the_address_is_on_eth0(cdaemon):
    d = cdaemon
    net_id = d.cli("network", "create", "localnet").stdout.strip()
    cid = run_d(d, "web", "--network", "localnet", "--hostname", "webhost", "-e", "A=1",
                "busybox", *SLEEP)
    c = inspect(d, "web")
    assert c["Id"] == cid and re.fullmatch(r"[0-9a-f]{64}", cid)
    assert c["Name"] == "/web"
    st = c["State"]
    assert st["Status"] == "running" and st["Running"] is True and st["ExitCode"] == 0
    assert st["StartedAt"].startswith(time.strftime("%Y-", time.gmtime()))
    assert st["FinishedAt"].startswith("0001-")
    assert c["RestartCount"] == 0
    assert c["Config"]["Cmd"] == list(SLEEP) and "A=1" in c["Config"]["Env"]
    assert c["Config"]["Hostname"] == "webhost"
    assert c["HostConfig"]["RestartPolicy"]["Name"] == "no"
    ep = c["NetworkSettings"]["Networks"]["localnet"]
    assert set(ep) >= {"IPAddress", "Gateway", "MacAddress", "Aliases", "NetworkID",
                       "EndpointID"}
    assert ep["NetworkID"] == net_id == d.cli_json("network", "inspect", "localnet")[0]["Id"]
    # EndpointID names the host side of the veth (alias cnet:<daemon>:<endpoint>), and that
    # veth is a port of localnet's bridge (alias cnet:<daemon>:<network>).
    links = d.run_in_host("ip", "-o", "-d", "link").stdout.splitlines()
    veth = [x for x in links if f"alias cnet:{d.daemon_id}:{ep['EndpointID']}" in x]
    bridge = [x for x in links if f"alias cnet:{d.daemon_id}:{net_id}" in x]
    assert len(veth) == 1 and len(bridge) == 1, (veth, bridge)
    bridge_name = bridge[0].split(":", 2)[1].strip()
    assert f"master {bridge_name} " in veth[0]
    # State.Pid is a real process: the container's sleep, in the sandbox's namespace.
    pid = st["Pid"]
    assert harness._proc_cmdline(pid) == list(SLEEP)
    key = c["NetworkSettings"]["SandboxKey"]
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(key).st_ino
    # The address and MAC really are on its eth0 (seen from the host and from inside).
    addr = harness.nsexec(f"/proc/{pid}/ns/net", "ip", "-o", "-4", "addr", "show", "eth0",
                          check=True).stdout
    assert f"inet {ep['IPAddress']}/" in addr
    link = harness.nsexec(f"/proc/{pid}/ns/net", "ip", "-o", "link", "show", "eth0",
                          check=True).stdout
    assert ep["MacAddress"].lower() in link
    inside = d.cli("exec", "web", "ip", "addr", "show", "eth0").stdout
    assert f"inet {ep['IPAddress']}/" in inside
    route = d.cli("exec", "web", "ip", "route").stdout
    assert f"default via {ep['Gateway']}" in route
    assert d.cli("exec", "web", "hostname").stdout.strip() == "webhost"
    # The gateway is the bridge's address in the host namespace and answers a ping.
    host_addrs = d.run_in_host("ip", "-o", "-4", "addr").stdout
    assert f"inet {ep['Gateway']}/" in host_addrs
    assert exec_ping(d, "web", ep["Gateway"])


# --------------------------------------------------------------------------- exec, logs, run


def test_exec_returns_exit_code_env_and_workdir(cdaemon):
    d = cdaemon
    run_d(d, "x", "busybox", *SLEEP)
    assert d.cli("exec", "x", "sh", "-c", "exit 7", check=False).returncode == 7
    assert d.cli("exec", "x", "true").returncode == 0
    assert d.cli("exec", "-e", "FOO=bar", "x", "sh", "-c", "echo $FOO").stdout == "bar\n"
    assert d.cli("exec", "-w", "/tmp", "x", "pwd").stdout == "/tmp\n"
    # exec runs in the container's namespaces: same net ns as the init process
    pid = inspect(d, "x")["State"]["Pid"]
    inner = d.cli("exec", "x", "readlink", "/proc/self/ns/net").stdout.strip()
    assert inner == os.readlink(f"/proc/{pid}/ns/net")
    # exec's stdout and stderr are kept apart
    p = d.cli("exec", "x", "sh", "-c", "echo o; echo e >&2")
    assert (p.stdout, p.stderr) == ("o\n", "e\n")
    d.cli("kill", "x")
    wait_status(d, "x", "exited")
    proc = d.cli("exec", "x", "true", check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("Error:")


def test_logs_stdout_stderr_tail_and_timestamps(cdaemon):
    d = cdaemon
    # stdout and stderr are separate pipes: the sleep orders out2 after err1 in the log
    run_d(d, "l", "busybox", "sh", "-c", "echo out1; echo err1 >&2; sleep 0.2; echo out2")
    assert d.cli("wait", "l").stdout.strip() == "0"
    p = d.cli("logs", "l")
    assert p.stdout == "out1\nout2\n" and p.stderr == "err1\n"
    assert d.cli("logs", "--tail", "1", "l").stdout == "out2\n"
    p = d.cli("logs", "-t", "l")
    lines = p.stdout.splitlines() + p.stderr.splitlines()
    assert len(lines) == 3
    started = inspect(d, "l")["State"]["StartedAt"]
    for line in lines:
        m = TS.match(line)
        assert m, f"no timestamp: {line!r}"
        assert m.group(1)[:16] == started[:16]  # same minute as the start
    assert sorted(TS.match(x).group(2) for x in lines) == ["err1", "out1", "out2"]


def test_logs_follow_until_the_container_exits(cdaemon):
    d = cdaemon
    run_d(d, "f", "busybox", "sh", "-c",
          "for i in 1 2 3 4; do echo line$i; sleep 0.3; done")
    t0 = time.monotonic()
    proc = subprocess.Popen([harness.CNET, "-H", d.host, "logs", "-f", "f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        t_first = time.monotonic() - t0
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t_end = time.monotonic() - t0
    assert first == "line1\n" and t_first < 1.0, (first, t_first)
    assert rest == "line2\nline3\nline4\n", (rest, err)
    assert proc.returncode == 0
    assert t_end >= 0.7, f"logs -f returned after {t_end:.2f}s, before the container ended"
    assert inspect(d, "f")["State"]["Status"] == "exited"


def test_run_foreground_prints_output_and_exits_with_the_code(cdaemon):
    d = cdaemon
    p = d.cli("run", "--name", "fg", "busybox", "sh", "-c", "echo hi; echo oops >&2; exit 3",
              check=False)
    assert (p.returncode, p.stdout, p.stderr) == (3, "hi\n", "oops\n")
    st = inspect(d, "fg")["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 3 and not st["Running"]
    assert d.cli("run", "busybox", "true").returncode == 0
    # environment, workdir and entrypoint reach the process
    p = d.cli("run", "--rm", "-e", "X=42", "-w", "/etc", "--entrypoint", "sh", "busybox",
              "-c", "echo $X $(pwd)")
    assert p.stdout == "42 /etc\n"


def test_run_rm_leaves_nothing(cdaemon):
    d = cdaemon
    veths = host_veths(d)
    # Foreground: the process reports its own cgroup (so we know what to look for).
    p = d.cli("run", "--rm", "--name", "gone", "busybox", "cat", "/proc/self/cgroup")
    m = re.search(r":memory:/cnet/[0-9a-f]+/([0-9a-f]{64})$", p.stdout, re.M)
    assert m, p.stdout
    cid = m.group(1)
    assert "gone" not in d.cli("ps", "-a").stdout
    assert traces(d, cid, veths) == []
    # Detached: first prove the probes see a live container, then stop it.
    cid = run_d(d, "gone2", "--rm", "busybox", *TRAP_TERM)
    live = traces(d, cid, veths)
    for what in ("container record", "ps -a entry", "sandbox", "veths", "runc state",
                 "shim pid", "cgroup", f"mount {d.exec_root}/netns/{cid}",
                 f"mount under exec root {d.exec_root}/containers/{cid}/rootfs"):
        assert any(t.startswith(what) for t in live), (what, live)
    pid = inspect(d, cid)["State"]["Pid"]
    d.cli("stop", "gone2")
    harness.wait_for(lambda: not traces(d, cid, veths), timeout=10,
                     what="--rm container removed")
    assert not harness._alive(pid)
    assert d.cli("ps", "-aq").stdout == ""


def test_rm_force_of_a_running_container_leaves_nothing(cdaemon):
    d = cdaemon
    d.cli("network", "create", "localnet")
    veths = host_veths(d)
    cid = run_d(d, "victim", "--network", "localnet", "--memory", "64m", "busybox", *SLEEP)
    pid = inspect(d, "victim")["State"]["Pid"]
    assert len(traces(d, cid, veths)) >= 8
    d.cli("rm", "-f", "victim")
    assert traces(d, cid, veths) == []
    assert not harness._alive(pid)
    assert d.cli("rm", "victim", check=False).returncode != 0


# --------------------------------------------------------------------------- stop, kill


def test_stop_timing(cdaemon):
    d = cdaemon
    run_d(d, "polite", "busybox", *TRAP_TERM)
    run_d(d, "stubborn", "busybox", "sleep", "1000")
    p_pid = inspect(d, "polite")["State"]["Pid"]
    s_pid = inspect(d, "stubborn")["State"]["Pid"]
    time.sleep(0.2)  # let sh install its trap
    t0 = time.monotonic()
    d.cli("stop", "polite")
    took = time.monotonic() - t0
    assert took < 0.8, f"a container exiting on SIGTERM took {took:.2f}s to stop"
    st = inspect(d, "polite")["State"]
    assert (st["Status"], st["ExitCode"], st["Running"]) == ("exited", 0, False)
    assert not harness._alive(p_pid)
    # restart: starts a stopped container, and stops + starts a running one
    d.cli("restart", "polite")
    pid1 = inspect(d, "polite")["State"]["Pid"]
    assert harness._alive(pid1) and pid1 != p_pid
    time.sleep(0.2)
    t0 = time.monotonic()
    d.cli("restart", "polite")
    assert time.monotonic() - t0 < 1.5
    c = inspect(d, "polite")
    assert c["State"]["Running"] and not harness._alive(pid1)
    assert harness._alive(c["State"]["Pid"]) and c["RestartCount"] == 0
    d.cli("stop", "polite")
    # sleep as PID 1 has no handler: SIGTERM is ignored, SIGKILL after -t 1
    t0 = time.monotonic()
    d.cli("stop", "-t", "1", "stubborn")
    took = time.monotonic() - t0
    assert 0.95 <= took < 2.0, f"stop -t 1 took {took:.2f}s"
    st = inspect(d, "stubborn")["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 137)
    assert not harness._alive(s_pid)
    assert st["FinishedAt"] > st["StartedAt"]
    # stopping a stopped container, starting a running one: no-ops (docker: 304, exit 0)
    assert d.cli("stop", "stubborn").stdout == "stubborn\n"
    d.cli("start", "stubborn")
    pid = inspect(d, "stubborn")["State"]["Pid"]
    assert d.cli("start", "stubborn").stdout == "stubborn\n"
    assert inspect(d, "stubborn")["State"]["Pid"] == pid and harness._alive(pid)


def test_kill_delivers_the_signal(cdaemon):
    d = cdaemon
    run_d(d, "k", "busybox", "sh", "-c",
          'trap "echo got-usr1; exit 5" USR1; while :; do sleep 0.1; done')
    time.sleep(0.2)
    d.cli("kill", "-s", "USR1", "k")
    assert d.cli("wait", "k").stdout.strip() == "5"
    assert "got-usr1" in d.cli("logs", "k").stdout
    run_d(d, "k2", "busybox", *SLEEP)
    pid = inspect(d, "k2")["State"]["Pid"]
    d.cli("kill", "k2")  # SIGKILL by default
    assert d.cli("wait", "k2").stdout.strip() == "137"
    assert not harness._alive(pid)
    err = d.cli_error("kill", "k2")
    assert "not running" in err
    # container prune removes the exited ones only
    exited = {inspect(d, "k")["Id"], inspect(d, "k2")["Id"]}
    keep = run_d(d, "keep", "busybox", *SLEEP)
    out = d.cli("container", "prune", "-f").stdout.splitlines()
    assert out[0] == "Deleted Containers:" and set(out[1:]) == exited
    assert d.cli("ps", "-aq", "--no-trunc").stdout.split() == [keep]


# --------------------------------------------------------------------------- limits


def test_memory_pids_and_cpu_limits_are_in_the_cgroup(cdaemon):
    d = cdaemon
    cid = run_d(d, "lim", "--memory", "64m", "--pids-limit", "10", "--cpus", "0.5", "busybox",
                *SLEEP)
    c = inspect(d, "lim")
    assert c["HostConfig"]["Memory"] == 64 << 20
    assert c["HostConfig"]["PidsLimit"] == 10 and c["HostConfig"]["NanoCpus"] == 500_000_000
    pid = c["State"]["Pid"]
    mem = proc_cgroup(pid, "memory")
    assert mem.endswith(f"/{cid}") and "/cnet/" in mem
    assert read(f"{mem}/memory.limit_in_bytes") == str(64 << 20)
    assert read(f"{proc_cgroup(pid, 'pids')}/pids.max") == "10"
    cpu = proc_cgroup(pid, "cpu")
    assert read(f"{cpu}/cpu.cfs_quota_us") == "50000"
    assert read(f"{cpu}/cpu.cfs_period_us") == "100000"
    # The pids limit is enforced: of 20 background sleeps, the ones past 10 tasks fail.
    p = d.cli("exec", "lim", "sh", "-c",
              "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
              "sleep 30 >/dev/null 2>&1 </dev/null & done", check=False)
    assert "can't fork" in p.stderr or "Resource temporarily unavailable" in p.stderr, p
    assert 0 < int(read(f"{proc_cgroup(pid, 'pids')}/pids.current")) <= 10
    # no limits -> no limit files set by us
    run_d(d, "free", "busybox", *SLEEP)
    fpid = inspect(d, "free")["State"]["Pid"]
    assert read(f"{proc_cgroup(fpid, 'pids')}/pids.max") == "max"
    assert read(f"{proc_cgroup(fpid, 'cpu')}/cpu.cfs_quota_us") == "-1"


# --------------------------------------------------------------------------- bad input


BAD = [
    ("unknown image", ["run", "-d", "--name", "bad", "nosuchimage", "true"], "nosuchimage"),
    ("bad restart policy", ["run", "-d", "--name", "bad", "--restart", "sometimes", "busybox",
                            "true"], "restart"),
    ("restart count on always", ["run", "-d", "--name", "bad", "--restart", "always:3",
                                 "busybox", "true"], "restart"),
    ("bad memory", ["run", "-d", "--name", "bad", "--memory", "lots", "busybox", "true"],
     "memory"),
    ("memory too small", ["run", "-d", "--name", "bad", "--memory", "1k", "busybox", "true"],
     "memory"),
    ("duplicate name", ["run", "-d", "--name", "dup", "busybox", "true"], "already in use"),
    ("missing command", ["run", "-d", "--name", "bad", "busybox"], "command"),
    ("missing command (create)", ["create", "--name", "bad", "busybox"], "command"),
    ("unknown network", ["run", "-d", "--name", "bad", "--network", "nonet", "busybox",
                         "true"], "nonet"),
    ("cpus abc", ["run", "-d", "--name", "bad", "--cpus", "abc", "busybox", "true"], "cpus"),
]


def _world(d: harness.Daemon) -> dict:
    with open("/proc/self/mounts") as f:
        mounts = sorted(line.split()[1] for line in f if str(d.root) in line)
    return {
        "containers": d.cli("ps", "-a", "--no-trunc", "-q").stdout,
        "sandboxes": d.cli("sandbox", "ls", "-q", "--no-trunc").stdout,
        "veths": host_veths(d),
        "netns": sorted(os.listdir(os.path.join(d.exec_root, "netns")))
        if os.path.isdir(os.path.join(d.exec_root, "netns")) else [],
        "mounts": mounts,
        "runc": sorted(os.listdir(os.path.join(d.exec_root, "runc")))
        if os.path.isdir(os.path.join(d.exec_root, "runc")) else [],
        "cgroups": sorted(glob.glob(f"/sys/fs/cgroup/*/cnet/{d.daemon_id}/*")),
    }


def test_bad_input_one_line_nothing_left_behind(cdaemon):
    d = cdaemon
    dup = d.cli("create", "--name", "dup", "busybox", "true").stdout.strip()
    before = _world(d)
    failures = []
    for what, args, needle in BAD:
        proc = d.cli(*args, check=False)
        err = proc.stderr.strip()
        if proc.returncode == 0:
            failures.append(f"{what}: succeeded ({proc.stdout.strip()})")
            d.cli("rm", "-f", "bad", check=False)
            continue
        if not (err.startswith("Error:") and "\n" not in err):
            failures.append(f"{what}: not one `Error:` line: {err!r}")
        elif needle not in err:
            failures.append(f"{what}: {needle!r} not in {err!r}")
        if proc.returncode != 125:
            failures.append(f"{what}: exit code {proc.returncode}, docker's is 125")
        after = _world(d)
        if after != before:
            diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            failures.append(f"{what}: left state behind: {diff}")
            d.cli("rm", "-f", "bad", check=False)
    assert not failures, "\n".join(failures)
    assert inspect(d, "dup")["Id"] == dup  # the existing container is untouched
