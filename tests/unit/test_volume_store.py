"""VolumeStore without a daemon: names, idempotent create, users, prune, clean removal."""

from __future__ import annotations

import os

import pytest
from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.store import SQLiteStore
from cnet.runtime.volumes import VolumeStore


@pytest.fixture
def volumes(tmp_path):
    store = SQLiteStore(str(tmp_path / "cnet.db"))
    yield VolumeStore(str(tmp_path / "volumes"), store)
    store.close()


def test_create_is_idempotent_and_docker_shaped(volumes, tmp_path):
    v = volumes.create("data", labels={"a": "b"})
    assert v == {
        "Name": "data", "Driver": "local",
        "Mountpoint": str(tmp_path / "volumes" / "data" / "_data"),
        "CreatedAt": v["CreatedAt"], "Labels": {"a": "b"}, "Scope": "local", "Options": {},
    }
    assert v["CreatedAt"].endswith("Z") and os.path.isdir(v["Mountpoint"])
    assert volumes.create("data", labels={"other": "x"}) == v  # existing: returned as is
    anon = volumes.create()
    assert len(anon["Name"]) == 64 and int(anon["Name"], 16) >= 0
    assert [x["Name"] for x in volumes.list()] == sorted(["data", anon["Name"]])
    assert volumes.mountpoint("data") == v["Mountpoint"]


@pytest.mark.parametrize("name", ["a", "-x", ".hidden", "has space", "a/b", "ü1"])
def test_bad_names(volumes, name):
    with pytest.raises(InvalidParameter, match="invalid characters"):
        volumes.create(name)


def test_bad_driver_and_options(volumes):
    with pytest.raises(InvalidParameter, match='driver "nfs" not found'):
        volumes.create("v1", driver="nfs")
    with pytest.raises(InvalidParameter, match="options are not supported: device, type"):
        volumes.create("v1", opts={"type": "tmpfs", "device": "tmpfs"})
    assert volumes.list() == [] and os.listdir(volumes.root) == []


def test_in_use_volume_cannot_be_removed(volumes):
    volumes.create("busy")
    volumes.create("idle")
    volumes.set_users(lambda name: ["c1", "c2"] if name == "busy" else [])
    for force in (False, True):
        with pytest.raises(Conflict, match=r"volume is in use - \[c1, c2\]"):
            volumes.remove("busy", force=force)
    assert volumes.prune() == (["idle"], 0)
    assert [v["Name"] for v in volumes.list()] == ["busy"]


def test_remove_missing_and_force(volumes):
    with pytest.raises(NotFound, match="get nope: no such volume"):
        volumes.remove("nope")
    volumes.remove("nope", force=True)


def test_remove_deletes_data_and_prune_counts_bytes(volumes):
    a = volumes.create("va")
    with open(os.path.join(a["Mountpoint"], "f"), "wb") as f:
        f.write(b"x" * 1000)
    os.link(os.path.join(a["Mountpoint"], "f"), os.path.join(a["Mountpoint"], "hard"))
    os.makedirs(os.path.join(a["Mountpoint"], "d"))
    volumes.create("vb")
    volumes.remove("vb")
    assert sorted(os.listdir(volumes.root)) == ["va"]
    assert volumes.prune() == (["va"], 1000)
    assert os.listdir(volumes.root) == [] and volumes.list() == []


def test_restart_recreates_missing_dirs_and_drops_trash(volumes, tmp_path):
    v = volumes.create("keep")
    os.rmdir(v["Mountpoint"])
    os.makedirs(os.path.join(volumes.root, ".trash-0123", "_data"))
    again = VolumeStore(volumes.root, volumes.store)
    assert os.path.isdir(v["Mountpoint"]) and again.get("keep") == v
    assert os.listdir(volumes.root) == ["keep"]
