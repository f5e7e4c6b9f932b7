"""Attached runs: -i feeds stdin, -t gives a terminal; the first output is never lost
(the process is held until the client is attached)."""

from __future__ import annotations

import shlex
import subprocess

import harness


def test_run_interactive_pipes_stdin_and_returns_the_exit_code(cdaemon):
    p = cdaemon.cli("run", "-i", "--rm", "busybox", "sh", input="echo from-stdin; exit 4\n",
                    check=False)
    assert p.returncode == 4
    assert p.stdout == "from-stdin\n"
    assert cdaemon.cli("ps", "-aq").stdout.strip() == ""


def test_first_output_is_not_lost_when_attached(cdaemon):
    for _ in range(5):
        p = cdaemon.cli("run", "-i", "--rm", "busybox", "echo", "first", input="")
        assert p.stdout == "first\n"


def test_run_tty_gets_a_terminal(cdaemon):
    cmd = [str(harness.CNET), "-H", cdaemon.host, "run", "-it", "--rm", "busybox", "sh", "-c",
           "tty; exit 3"]
    p = subprocess.run(["script", "-qec", shlex.join(cmd), "/dev/null"], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert "/dev/pts/" in p.stdout
    assert p.returncode == 3
