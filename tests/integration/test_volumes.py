"""Volumes through a real cnetd: create/ls/inspect/rm/prune, persistence across a daemon
restart, bad input, and a volume in use by a container."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import harness
import pytest

SCRIPT = harness.REPO_ROOT / "scripts" / "build-busybox-image.sh"


def remove_container(d: harness.Daemon, name: str) -> None:
    """`cnet rm -f`, retried: at the time of writing it sometimes fails with runc's
    "container does not exist" (a container runtime race, not a volume matter)."""
    for _ in range(5):
        removed = d.cli("rm", "-f", name, check=False)
        if removed.returncode == 0 or "No such container" in removed.stderr:
            return
    raise AssertionError(f"cnet rm -f {name}: {removed.stderr}")


def names(d: harness.Daemon, *args: str) -> list[str]:
    return d.cli("volume", "ls", "-q", *args).stdout.split()


def test_volume_lifecycle_and_persistence(daemon):
    assert daemon.cli("volume", "create", "data").stdout == "data\n"
    assert daemon.cli("volume", "create", "--name", "web", "--label", "tier=front",
                      "--label", "x").stdout == "web\n"
    anon = daemon.cli("volume", "create").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", anon)
    first = daemon.cli_json("volume", "inspect", "data")[0]
    assert daemon.cli("volume", "create", "data").stdout == "data\n"  # exists: same volume
    assert daemon.cli_json("volume", "inspect", "data")[0] == first

    mountpoint = daemon.data_root / "volumes" / "data" / "_data"
    assert first == {"Name": "data", "Driver": "local", "Mountpoint": str(mountpoint),
                     "CreatedAt": first["CreatedAt"], "Labels": {}, "Scope": "local",
                     "Options": {}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["CreatedAt"])
    web = daemon.cli_json("volume", "inspect", "web")[0]
    assert web["Labels"] == {"tier": "front", "x": ""}

    lines = daemon.cli("volume", "ls").stdout.splitlines()
    assert lines[0].split() == ["DRIVER", "VOLUME", "NAME"]
    assert [line.split() for line in lines[1:]] == [["local", n]
                                                    for n in sorted([anon, "data", "web"])]
    assert names(daemon, "--filter", "label=tier=front") == ["web"]
    assert names(daemon, "--filter", "name=at") == ["data"]
    assert names(daemon, "--filter", "dangling=true") == sorted([anon, "data", "web"])

    (mountpoint / "sub").mkdir()
    (mountpoint / "sub" / "file").write_text("persisted\n")
    daemon.restart()
    assert daemon.cli_json("volume", "inspect", "data")[0] == first
    assert (mountpoint / "sub" / "file").read_text() == "persisted\n"

    assert daemon.cli("volume", "rm", "web", anon).stdout.split() == ["web", anon]
    assert not (daemon.data_root / "volumes" / "web").exists()
    err = daemon.cli_error("volume", "rm", "web")
    assert err == "Error: get web: no such volume"
    assert daemon.cli("volume", "rm", "-f", "web").returncode == 0

    daemon.cli("volume", "create", "empty")
    out = daemon.cli("volume", "prune", "-f").stdout
    assert out == "Deleted Volumes:\ndata\nempty\n\nTotal reclaimed space: 10B\n"
    assert names(daemon) == [] and os.listdir(daemon.data_root / "volumes") == []
    assert daemon.cli("volume", "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    # without -f, prune asks; "n" keeps everything
    daemon.cli("volume", "create", "kept")
    proc = daemon.cli("volume", "prune", input="n\n")
    assert "Are you sure you want to continue?" in proc.stdout
    assert names(daemon) == ["kept"]


def test_bad_input(daemon):
    daemon.cli("volume", "create", "ok")
    before = daemon.cli_json("volume", "ls", "--format", "json")
    files = sorted(os.listdir(daemon.data_root / "volumes"))
    cases = [
        (("volume", "create", "a"), "invalid characters for a local volume name"),
        (("volume", "create", "-d", "local", "bad/name"), "invalid characters"),
        (("volume", "create", "_x"), "invalid characters"),
        (("volume", "create", "-d", "nfs", "v2"), 'volume driver "nfs" not found'),
        (("volume", "create", "-o", "type=tmpfs", "v2"), "options are not supported: type"),
        (("volume", "create", "--name", "v2", "v3"), "conflicting options"),
        (("volume", "inspect", "nope"), "get nope: no such volume"),
        (("volume", "rm", "nope"), "get nope: no such volume"),
        (("volume", "ls", "--filter", "bogus=1"), 'invalid filter "bogus"'),
    ]
    for args, message in cases:
        err = daemon.cli_error(*args)
        assert len(err.splitlines()) == 1 and message in err, (args, err)
        assert daemon.cli_json("volume", "ls", "--format", "json") == before, args
        assert sorted(os.listdir(daemon.data_root / "volumes")) == files, args


@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_volume_in_use_by_a_container(daemon):
    tarball = daemon.root / "busybox.tar"
    subprocess.run([str(SCRIPT), str(tarball)], check=True)
    daemon.cli("image", "import", tarball, "busybox")
    daemon.cli("volume", "create", "shared")
    daemon.cli("volume", "create", "spare")
    try:
        daemon.cli("run", "-d", "--name", "c1", "-v", "shared:/data", "busybox",
                   "sh", "-c", "echo from-c1 > /data/out; sleep 600")
        out = daemon.data_root / "volumes" / "shared" / "_data" / "out"
        harness.wait_for(out.exists, timeout=10, what="the container's write")
        assert out.read_text() == "from-c1\n"
        for args in (("volume", "rm", "shared"), ("volume", "rm", "-f", "shared")):
            assert daemon.cli_error(*args) == \
                "Error: remove shared: volume is in use - [c1]"
        assert names(daemon, "--filter", "dangling=false") == ["shared"]
        assert daemon.cli("volume", "prune", "-f").stdout.splitlines()[:2] == \
            ["Deleted Volumes:", "spare"]
        assert names(daemon) == ["shared"]
    finally:
        remove_container(daemon, "c1")
    assert out.read_text() == "from-c1\n"  # data outlives the container
    daemon.cli("volume", "rm", "shared")
    assert names(daemon) == []
