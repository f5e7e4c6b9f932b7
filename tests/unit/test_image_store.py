"""ImageStore without a daemon: references, resolve, users, shared layers, clean failure."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.store import SQLiteStore
from cnet.runtime.images import ImageStore, normalize

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer extraction needs root")


@pytest.mark.parametrize("ref, want", [
    ("busybox", "busybox:latest"),
    ("busybox:1.36", "busybox:1.36"),
    ("docker.io/library/busybox:1", "busybox:1"),
    ("docker.io/me/app", "me/app:latest"),
    ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
    ("registry.example.com/x_y/z-w.v:T_1", "registry.example.com/x_y/z-w.v:T_1"),
])
def test_normalize(ref, want):
    assert normalize(ref) == want


@pytest.mark.parametrize("ref, message", [
    ("Busybox", "must be lowercase"),
    ("busybox@sha256:" + "a" * 64, "digest"),
    ("a:b:c", "invalid reference format"),
    ("bad name", "invalid reference format"),
    ("x:" + "t" * 200, "bad tag"),
    ("a" * 64, "64-byte hexadecimal"),
    ("", "invalid reference format"),
])
def test_bad_references(ref, message):
    with pytest.raises(InvalidParameter, match=message):
        normalize(ref)


def rootfs_tar(path, files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture
def images(tmp_path):
    store = SQLiteStore(str(tmp_path / "cnet.db"))
    yield ImageStore(str(tmp_path / "images"), store)
    store.close()


def test_resolve_by_name_id_and_prefix(images, tmp_path):
    rec = images.import_rootfs(rootfs_tar(tmp_path / "a.tar", {"a": b"1"}), "one")
    hexid = rec["Id"].removeprefix("sha256:")
    assert rec["Id"].startswith("sha256:") and len(hexid) == 64
    for ref in ("one", "one:latest", rec["Id"], hexid, hexid[:12], "sha256:" + hexid[:5]):
        assert images.resolve(ref)["Id"] == rec["Id"]
    with pytest.raises(NotFound, match="No such image: two"):
        images.resolve("two")
    (layer,) = images.layer_dirs(rec)
    assert os.path.isabs(layer) and open(os.path.join(layer, "a")).read() == "1"


def test_users_block_removal_even_with_force(images, tmp_path):
    rec = images.import_rootfs(rootfs_tar(tmp_path / "a.tar", {"a": b"1"}), "one")
    images.tag("one", "one:v2")
    images.set_users(lambda image_id: ["c1", "c2"] if image_id == rec["Id"] else [])
    assert images.remove("one:v2") == [{"Untagged": "one:v2"}]  # other tags remain
    for ref, force in (("one", False), ("one", True), (rec["Id"], True)):
        with pytest.raises(Conflict, match=r"image is being used by container\(s\): c1, c2"):
            images.remove(ref, force=force)
    images.set_users(lambda image_id: [])
    assert images.remove("one") == [{"Untagged": "one:latest"}, {"Deleted": rec["Id"]}]
    assert images.list() == []


def test_remove_by_id_with_several_tags_needs_force(images, tmp_path):
    rec = images.import_rootfs(rootfs_tar(tmp_path / "a.tar", {"a": b"1"}), "one")
    images.tag(rec["Id"], "two:x")
    with pytest.raises(Conflict, match="must be forced"):
        images.remove(rec["Id"])
    out = images.remove(rec["Id"][7:19], force=True)
    assert out == [{"Untagged": "one:latest"}, {"Untagged": "two:x"}, {"Deleted": rec["Id"]}]


def test_tag_moves_between_images(images, tmp_path):
    a = images.import_rootfs(rootfs_tar(tmp_path / "a.tar", {"a": b"1"}), "app")
    b = images.import_rootfs(rootfs_tar(tmp_path / "b.tar", {"b": b"2"}), "app")
    assert images.resolve("app")["Id"] == b["Id"]
    assert images.resolve(a["Id"])["RepoTags"] == []  # dangling, like docker


def test_shared_layer_is_stored_once_and_removed_with_its_last_image(images, tmp_path):
    tar = rootfs_tar(tmp_path / "a.tar", {"a": b"1"})
    a = images.import_rootfs(tar, "a")
    b = images.import_rootfs(tar, "b")
    assert a["Layers"] == b["Layers"]
    layer_root = os.path.join(images.root, "layers")
    assert len(os.listdir(layer_root)) == 1
    images.remove("a")
    assert len(os.listdir(layer_root)) == 1 and images.layer_dirs(images.resolve("b"))
    images.remove("b")
    assert os.listdir(layer_root) == []
    assert os.listdir(os.path.join(images.root, "blobs", "sha256")) == []


def test_failed_import_leaves_nothing(images, tmp_path):
    bad = tmp_path / "bad.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("ok", "../evil"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    bad.write_bytes(buf.getvalue())
    with pytest.raises(InvalidParameter, match="escaping"):
        images.import_rootfs(str(bad), "bad")
    for sub in ("layers", "tmp", "blobs/sha256"):
        assert os.listdir(os.path.join(images.root, sub)) == []
    assert images.list() == [] and images.store.list("layer/") == {}
    assert not (tmp_path / "evil").exists()


def test_start_removes_leftovers(tmp_path):
    store = SQLiteStore(str(tmp_path / "cnet.db"))
    images = ImageStore(str(tmp_path / "images"), store)
    rec = images.import_rootfs(rootfs_tar(tmp_path / "a.tar", {"a": b"1"}), "keep")
    os.makedirs(os.path.join(images.root, "tmp", "half-done", "x"))
    os.makedirs(os.path.join(images.root, "layers", "f" * 64))
    open(os.path.join(images.root, "blobs", "sha256", "e" * 64), "w").close()
    images = ImageStore(str(tmp_path / "images"), store)
    assert os.listdir(os.path.join(images.root, "tmp")) == []
    assert os.listdir(os.path.join(images.root, "layers")) == [rec["Layers"][0][7:]]
    assert os.listdir(os.path.join(images.root, "blobs", "sha256")) == [rec["Id"][7:]]
    store.close()
