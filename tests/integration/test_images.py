"""Images through a real cnetd: import, load (docker save and OCI layout), tag, rm, ls,
inspect, and bad input.

Layers are checked on the kernel: the image's layer directories are mounted as a
read-only overlay (in the daemon's temp dir, unmounted after) and the merged view must
honour the whiteouts and the opaque directory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import harness
from cnet.runtime.archives import machine_arch

SCRIPT = harness.REPO_ROOT / "scripts" / "build-busybox-image.sh"


# --- building archives ------------------------------------------------------------------


def tar_bytes(*entries: tuple) -> bytes:
    """entries: (name, data) for files, (name, None) for directories, (name, "->", target)
    for symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif data == "->":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LOWER = tar_bytes(("keep", None), ("keep/a", b"a\n"), ("del.txt", b"bye\n"),
                  ("opq", None), ("opq/lower.txt", b"lower\n"))
UPPER = tar_bytes((".wh.del.txt", b""), ("opq", None), ("opq/.wh..wh..opq", b""),
                  ("opq/upper.txt", b"upper\n"), ("new.txt", b"new\n"))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(cmd: list[str], layers: list[bytes]) -> bytes:
    return json.dumps({
        "architecture": machine_arch(), "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": cmd, "Env": ["PATH=/bin", "A=b"],
                   "WorkingDir": "/keep", "ExposedPorts": {"80/tcp": {}},
                   "Labels": {"org.example": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "test"}],
    }).encode()


def write_tar(path: Path, files: dict[str, bytes | tuple[str, str]]) -> Path:
    """An outer archive; a value ("->", target) is a symlink."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def docker_save(path: Path, tags=("test/two:v1",), layers=(LOWER, UPPER),
                config: bytes | None = None) -> tuple[Path, str]:
    """A `docker save` archive (the second layer as Docker 25 writes it: a symlink into
    blobs/); returns (path, image id)."""
    config = config or image_config(["echo docker"], list(layers))
    cfg = sha(config)[7:]
    files: dict = {f"{cfg}.json": config}
    names = []
    for i, layer in enumerate(layers):
        if i == 1:
            files[f"blobs/sha256/{sha(layer)[7:]}"] = layer
            files[f"l{i}/layer.tar"] = ("->", f"../blobs/sha256/{sha(layer)[7:]}")
        else:
            files[f"l{i}/layer.tar"] = layer
        names.append(f"l{i}/layer.tar")
    files["manifest.json"] = json.dumps(
        [{"Config": f"{cfg}.json", "RepoTags": list(tags), "Layers": names}]).encode()
    return write_tar(path, files), "sha256:" + cfg


def oci_layout(path: Path, ref: str = "ocitest:v1") -> tuple[Path, str]:
    """An OCI image layout: index.json -> image index (two platforms) -> manifest;
    the lower layer gzip-compressed, the upper plain."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        blobs[f"blobs/sha256/{sha(data)[7:]}"] = data
        return sha(data)

    config = image_config(["echo oci"], [LOWER, UPPER])
    lower_gz = gzip.compress(LOWER, mtime=0)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config), "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": blob(lower_gz), "size": len(lower_gz)},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": blob(UPPER), "size": len(UPPER)},
        ],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + "0" * 64, "size": 1,  # another platform: never read
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": blob(manifest), "size": len(manifest),
             "platform": {"os": "linux", "architecture": machine_arch()}},
        ],
    }).encode()
    top = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": blob(index),
         "size": len(index), "annotations": {"org.opencontainers.image.ref.name": ref}}]}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps(top).encode(), **blobs}
    return write_tar(path, files), sha(config)


# --- helpers ------------------------------------------------------------------------


def images_dir(d: harness.Daemon) -> Path:
    return d.data_root / "images"


def layer_dirs(d: harness.Daemon, ref: str) -> list[str]:
    """Topmost first, from inspect's RootFS (what ImageStore.layer_dirs returns)."""
    info = d.cli_json("image", "inspect", ref)[0]
    dirs = [str(images_dir(d) / "layers" / x[7:]) for x in reversed(info["RootFS"]["Layers"])]
    assert info["GraphDriver"]["Data"]["LowerDir"] == ":".join(dirs)
    return dirs


@contextlib.contextmanager
def overlay(d: harness.Daemon, lowers: list[str]):
    mnt = d.root / "mnt"
    mnt.mkdir(exist_ok=True)
    harness.sh("mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(lowers),
               str(mnt))
    try:
        yield mnt
    finally:
        harness.sh("umount", str(mnt))
        mnt.rmdir()


def check_merged_view(d: harness.Daemon, ref: str) -> None:
    lowers = layer_dirs(d, ref)
    assert len(lowers) == 2
    upper = Path(lowers[0])
    wh = os.lstat(upper / "del.txt")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    assert not [p for p in upper.rglob("*") if p.name.startswith(".wh.")]
    with overlay(d, lowers) as mnt:
        assert sorted(os.listdir(mnt)) == ["keep", "new.txt", "opq"]
        assert not (mnt / "del.txt").exists()
        assert sorted(os.listdir(mnt / "opq")) == ["upper.txt"]
        assert (mnt / "keep" / "a").read_text() == "a\n"
        assert (mnt / "new.txt").read_text() == "new\n"


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def ls_rows(d: harness.Daemon) -> list[list[str]]:
    lines = d.cli("image", "ls").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    return [line.split()[:3] for line in lines[1:]]


def build_busybox(d: harness.Daemon) -> Path:
    out = d.root / "busybox.tar"
    subprocess.run([str(SCRIPT), str(out)], check=True)
    return out


# --- tests --------------------------------------------------------------------------


def test_import_busybox_rootfs(daemon):
    tarball = build_busybox(daemon)
    image_id = daemon.cli("image", "import", tarball, "busybox").stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert ls_rows(daemon) == [["busybox", "latest", image_id[7:19]]]
    assert daemon.cli("image", "ls", "-q").stdout.split() == [image_id[7:19]]

    info = daemon.cli_json("image", "inspect", "busybox")[0]
    assert info["Id"] == image_id and info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] is None and info["Config"]["Entrypoint"] is None
    assert info["RootFS"]["Type"] == "layers" and len(info["RootFS"]["Layers"]) == 1
    assert info["Size"] > 500_000 and info["Created"] and info["Os"] == "linux"

    (layer,) = layer_dirs(daemon, "busybox")
    root = Path(layer)
    assert os.readlink(root / "bin" / "sh") == "busybox"
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    assert "nobody:x:65534" in (root / "etc" / "passwd").read_text()
    for d in ("proc", "sys", "dev", "var/www"):
        assert (root / d).is_dir()
    out = harness.sh("chroot", layer, "/bin/sh", "-c", "echo hello from $(basename $0)")
    assert out.stdout.strip() == "hello from sh"

    # by id, prefix, sha256: prefix; the same tarball again shares the layer
    for ref in (image_id, image_id[7:], image_id[7:15], image_id[:15]):
        assert daemon.cli_json("image", "inspect", ref)[0]["Id"] == image_id
    other = daemon.cli("image", "import", tarball, "busybox:copy").stdout.strip()
    assert other != image_id  # a new config (created time), the same layer
    assert len(os.listdir(images_dir(daemon) / "layers")) == 1

    daemon.restart()
    assert {r[1] for r in ls_rows(daemon)} == {"latest", "copy"}
    assert layer_dirs(daemon, "busybox") == [layer]


def test_load_docker_save_and_oci_layout(daemon):
    saved, docker_id = docker_save(daemon.root / "save.tar")
    out = daemon.cli("image", "load", "-i", saved)
    assert out.stdout == "Loaded image: test/two:v1\n"
    info = daemon.cli_json("image", "inspect", "test/two:v1")[0]
    assert info["Id"] == docker_id
    assert info["RootFS"]["Layers"] == [sha(LOWER), sha(UPPER)]
    cfg = info["Config"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"] and cfg["Cmd"] == ["echo docker"]
    assert cfg["Env"] == ["PATH=/bin", "A=b"] and cfg["WorkingDir"] == "/keep"
    assert cfg["ExposedPorts"] == {"80/tcp": {}} and cfg["Labels"] == {"org.example": "yes"}
    assert info["Created"] == "2024-01-02T03:04:05Z"
    assert info["Size"] == len(b"a\nbye\nlower\nupper\nnew\n")
    check_merged_view(daemon, "test/two:v1")

    # OCI layout (relative path: the CLI sends an absolute one), same layers
    archive, oci_id = oci_layout(daemon.root / "oci.tar")
    out = harness.sh(harness.CNET, "-H", daemon.host, "image", "load", "--input", "oci.tar",
                     cwd=daemon.root)
    assert out.stdout == "Loaded image: ocitest:v1\n"
    info = daemon.cli_json("image", "inspect", "ocitest:v1")[0]
    assert info["Id"] == oci_id and info["Config"]["Cmd"] == ["echo oci"]
    check_merged_view(daemon, "ocitest:v1")
    layers = images_dir(daemon) / "layers"
    assert sorted(os.listdir(layers)) == sorted([sha(LOWER)[7:], sha(UPPER)[7:]])

    # loading again is a no-op; a gzip-compressed archive loads too
    daemon.cli("image", "load", "-i", saved)
    gz = daemon.root / "save.tar.gz"
    gz.write_bytes(gzip.compress(saved.read_bytes()))
    daemon.cli("image", "tag", "test/two:v1", "keepme")
    daemon.cli("image", "rm", "test/two:v1")
    assert daemon.cli("image", "load", "-i", gz).stdout == "Loaded image: test/two:v1\n"
    assert sorted(r[0] for r in ls_rows(daemon)) == ["keepme", "ocitest", "test/two"]

    # rm: layers shared with another image stay, the last image takes them along
    out = daemon.cli("image", "rm", "-f", docker_id).stdout.splitlines()
    assert out == ["Untagged: keepme:latest", "Untagged: test/two:v1",
                   f"Deleted: {docker_id}"]
    assert len(os.listdir(layers)) == 2
    check_merged_view(daemon, "ocitest:v1")
    daemon.cli("image", "rm", "ocitest:v1")
    assert os.listdir(layers) == [] and os.listdir(images_dir(daemon) / "blobs/sha256") == []
    assert daemon.cli("image", "ls", "-q").stdout == ""


def test_load_untagged_oci_and_multiple_images(daemon):
    archive, oci_id = oci_layout(daemon.root / "oci.tar", ref="latest")  # a bare tag
    assert daemon.cli("image", "load", "-i", archive).stdout == f"Loaded image ID: {oci_id}\n"
    assert ls_rows(daemon) == [["<none>", "<none>", oci_id[7:19]]]
    daemon.cli("image", "tag", oci_id[7:19], "named:1")
    assert ls_rows(daemon) == [["named", "1", oci_id[7:19]]]


def test_tag_rm_ls_inspect(daemon):
    tarball = build_busybox(daemon)
    image_id = daemon.cli("image", "import", tarball, "busybox:1").stdout.strip()
    daemon.cli("image", "tag", "busybox:1", "localhost:5000/team/bb")
    daemon.cli("image", "tag", image_id[7:19], "docker.io/library/bb:2")
    assert sorted(ls_rows(daemon)) == [["bb", "2", image_id[7:19]],
                                       ["busybox", "1", image_id[7:19]],
                                       ["localhost:5000/team/bb", "latest", image_id[7:19]]]
    assert daemon.cli("image", "ls", "-q").stdout.split() == [image_id[7:19]]
    assert daemon.cli("image", "ls", "-q", "--no-trunc").stdout.split() == [image_id]
    summary = daemon.cli_json("image", "ls", "--format", "json")[0]
    assert summary["Id"] == image_id and isinstance(summary["Created"], int)

    err = daemon.cli_error("image", "rm", image_id[7:19])
    assert "must be forced" in err and "multiple repositories" in err
    assert daemon.cli("image", "rm", "bb:2").stdout == "Untagged: bb:2\n"

    # inspect/rm of several names: the good ones are done, each bad one reported
    proc = daemon.cli("image", "inspect", "busybox:1", "nope", check=False)
    assert proc.returncode == 1 and len(json.loads(proc.stdout)) == 1
    assert proc.stderr.strip() == "Error: No such image: nope"
    proc = daemon.cli("image", "rm", "localhost:5000/team/bb", "nope", "busybox:1",
                      check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "Error: No such image: nope"
    assert proc.stdout.splitlines() == ["Untagged: localhost:5000/team/bb:latest",
                                        "Untagged: busybox:1",
                                        f"Deleted: {image_id}"]
    assert daemon.cli("image", "ls", "-q").stdout == ""
    assert os.listdir(images_dir(daemon) / "layers") == []


def escaping_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("ok.txt", b"fine"), ("../../../evil", b"evil")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_bad_input_one_line_nothing_left(daemon):
    tarball = build_busybox(daemon)
    daemon.cli("image", "import", tarball, "busybox")
    root = daemon.root
    junk = root / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    not_image = write_tar(root / "plain.tar", {"hello.txt": b"hi"})
    escape, _ = docker_save(root / "escape.tar", tags=("esc:1",),
                            layers=(LOWER, escaping_layer()))
    wrong = docker_save(root / "wrong.tar", tags=("wrong:1",),
                        config=image_config(["x"], [LOWER, UPPER]),
                        layers=(LOWER, UPPER + b"\0" * 512))[0]  # content != DiffID
    no_config = write_tar(root / "nocfg.tar", {"manifest.json": json.dumps(
        [{"Config": "missing.json", "RepoTags": ["x:1"], "Layers": []}]).encode()})
    symlink_escape = write_tar(root / "link.tar", {
        "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["x:1"],
                                      "Layers": []}]).encode(),
        "c.json": ("->", "../../../../etc/passwd")})
    cases = [
        (("image", "import", root / "missing.tar", "x"), "no such file or directory"),
        (("image", "import", junk, "x"), "not a valid tar archive"),
        (("image", "import", root, "x"), "is a directory"),
        (("image", "import", tarball, "Bad/Name"), "must be lowercase"),
        (("image", "import", tarball, "x@sha256:" + "0" * 64), "digest"),
        (("image", "load", "-i", root / "missing.tar"), "no such file or directory"),
        (("image", "load", "-i", junk), "not a tar archive"),
        (("image", "load", "-i", not_image), "not an image archive"),
        (("image", "load", "-i", escape), "escaping the layer directory"),
        (("image", "load", "-i", wrong), "does not match its DiffID"),
        (("image", "load", "-i", no_config), "missing.json is missing"),
        (("image", "load", "-i", symlink_escape), "c.json is missing"),
        (("image", "tag", "nope", "x"), "No such image: nope"),
        (("image", "tag", "busybox", "UPPER"), "must be lowercase"),
        (("image", "rm", "nope"), "No such image: nope"),
        (("image", "inspect", "nope"), "No such image: nope"),
    ]
    before_files = files_under(images_dir(daemon))
    before_ls = daemon.cli_json("image", "ls", "--format", "json")
    for args, message in cases:
        err = daemon.cli_error(*args)
        assert len(err.splitlines()) == 1, err
        assert message in err, (args, err)
        assert files_under(images_dir(daemon)) == before_files, args
        assert daemon.cli_json("image", "ls", "--format", "json") == before_ls, args
    assert not list(daemon.root.parent.glob("evil")) and not (root / "evil").exists()
    assert not (daemon.data_root / "evil").exists()
