"""Layer extraction: overlayfs whiteouts, metadata kept, and every escape refused.

Layers are built in memory with tarfile; extraction needs root (chown, mknod,
trusted.* xattrs), like cnetd.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile

import pytest
from cnet.runtime.layers import OPAQUE_XATTR, LayerError, extract_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer extraction needs root")


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = attrs.pop("mtime", 1_700_000_000)
    for key, value in attrs.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    return info, data


def tar_bytes(*members: tuple, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def extract(tmp_path, data: bytes):
    dest = tmp_path / "layer"
    dest.mkdir(exist_ok=True)
    return dest, extract_layer(io.BytesIO(data), str(dest))


def is_whiteout(path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def all_names(root) -> list[str]:
    out = []
    for base, dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(base, n), root) for n in dirs + files]
    return sorted(out)


# --- overlayfs format ---------------------------------------------------------------


def test_whiteouts_become_char_devices_and_opaque_xattrs(tmp_path):
    data = tar_bytes(
        member("etc", tarfile.DIRTYPE),
        member("etc/.wh.passwd"),
        member(".wh.gone-dir"),
        member("var", tarfile.DIRTYPE),
        member("var/cache", tarfile.DIRTYPE),
        member("var/cache/.wh..wh..opq"),
        member("var/cache/new", data=b"fresh"),
        member("deep/missing/parent/.wh.x"),  # parents the tar never listed
        member(".wh..wh.plnk", tarfile.DIRTYPE),  # AUFS bookkeeping: dropped
    )
    dest, info = extract(tmp_path, data)
    assert is_whiteout(dest / "etc" / "passwd")
    assert is_whiteout(dest / ".." / "layer" / "gone-dir")
    assert is_whiteout(dest / "deep" / "missing" / "parent" / "x")
    assert os.getxattr(dest / "var" / "cache", OPAQUE_XATTR) == b"y"
    assert (dest / "var" / "cache" / "new").read_bytes() == b"fresh"
    assert not [n for n in all_names(dest) if ".wh." in n]
    with pytest.raises(OSError):
        os.getxattr(dest / "var", OPAQUE_XATTR)
    assert info.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info.digest == info.diff_id and info.compression == "none"
    assert info.size == len(b"fresh")


def test_metadata_devices_and_hardlinks_are_kept(tmp_path):
    data = tar_bytes(
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("bin", tarfile.DIRTYPE, mode=0o755),
        member("bin/su", data=b"#!su", mode=0o4755, uid=0, gid=0),
        member("home/u/file", data=b"mine", mode=0o600, uid=1000, gid=1001),
        member("tmp", tarfile.DIRTYPE, mode=0o1777),
        member("ro", tarfile.DIRTYPE, mode=0o555),
        member("ro/inside", data=b"x", mode=0o444),
        member("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),
        member("bin/su2", tarfile.LNKTYPE, linkname="bin/su"),
        member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        member("dev/fifo", tarfile.FIFOTYPE, mode=0o600),
    )
    dest, _ = extract(tmp_path, data)
    assert stat.S_IMODE(os.stat(dest / "bin" / "su").st_mode) == 0o4755
    st = os.stat(dest / "home" / "u" / "file")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o600)
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555
    assert int(os.stat(dest / "ro").st_mtime) == 1_700_000_000
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"
    assert os.stat(dest / "bin" / "su2").st_ino == os.stat(dest / "bin" / "su").st_ino
    null = os.lstat(dest / "dev" / "null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(dest / "dev" / "fifo").st_mode)


def test_gzip_layer_has_the_plain_tar_as_diffid(tmp_path):
    plain = tar_bytes(member("a", data=b"hello"))
    packed = gzip.compress(plain)
    _, info = extract(tmp_path, packed)
    assert info.compression == "gzip"
    assert info.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert info.digest == "sha256:" + hashlib.sha256(packed).hexdigest()


def test_gnu_format_long_names(tmp_path):
    long = "d/" + "x" * 150
    dest, _ = extract(tmp_path, tar_bytes(member(long, data=b"1"), fmt=tarfile.GNU_FORMAT))
    assert (dest / long).read_bytes() == b"1"


# --- escapes ------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A directory next to the layer that nothing may touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("keep")
    return d


def assert_untouched(outside):
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "keep"


@pytest.mark.parametrize("name", ["../outside/evil", "a/../../outside/evil", "a/b/../../../x"])
def test_dotdot_is_refused(tmp_path, outside, name):
    with pytest.raises(LayerError, match="escaping"):
        extract(tmp_path, tar_bytes(member(name, data=b"evil")))
    assert_untouched(outside)


def test_absolute_path_is_refused(tmp_path, outside):
    with pytest.raises(LayerError, match="absolute"):
        extract(tmp_path, tar_bytes(member(f"{outside}/evil", data=b"evil")))
    assert_untouched(outside)


@pytest.mark.parametrize("target", ["OUTSIDE", "../outside", "."])
def test_path_through_a_symlink_is_refused(tmp_path, outside, target):
    target = str(outside) if target == "OUTSIDE" else target
    data = tar_bytes(member("link", tarfile.SYMTYPE, linkname=target),
                     member("link/evil", data=b"evil"))
    with pytest.raises(LayerError, match="symlink"):
        extract(tmp_path, data)
    assert_untouched(outside)


def test_whiteout_through_a_symlink_is_refused(tmp_path, outside):
    data = tar_bytes(member("link", tarfile.SYMTYPE, linkname=str(outside)),
                     member("link/.wh.secret"))
    with pytest.raises(LayerError, match="symlink"):
        extract(tmp_path, data)
    assert_untouched(outside)


@pytest.mark.parametrize("linkname", ["../outside/secret", "OUTSIDE", "link/secret",
                                      "missing"])
def test_hardlink_outside_the_layer_is_refused(tmp_path, outside, linkname):
    linkname = str(outside / "secret") if linkname == "OUTSIDE" else linkname
    data = tar_bytes(member("link", tarfile.SYMTYPE, linkname=str(outside)),
                     member("hard", tarfile.LNKTYPE, linkname=linkname))
    with pytest.raises(LayerError):
        extract(tmp_path, data)
    assert_untouched(outside)
    assert os.stat(outside / "secret").st_nlink == 1


def test_symlink_itself_may_point_anywhere(tmp_path, outside):
    """A symlink's target is resolved inside the container, never by the extractor."""
    dest, _ = extract(tmp_path, tar_bytes(member("etc", tarfile.SYMTYPE, linkname="/etc"),
                                          member("up", tarfile.SYMTYPE, linkname="../..")))
    assert os.readlink(dest / "etc") == "/etc"
    assert_untouched(outside)


_BIG = tar_bytes(member("a", data=bytes(range(256)) * 40))
_BAD = {
    "empty": b"",
    "text": b"not a tar at all" * 100,
    "gzip-of-junk": gzip.compress(b"junk" * 200),
    "truncated-tar": _BIG[:3000],
    "truncated-gzip": gzip.compress(_BIG)[: len(gzip.compress(_BIG)) // 2],
}


@pytest.mark.parametrize("data", _BAD.values(), ids=_BAD.keys())
def test_not_a_tar_is_one_clear_error(tmp_path, data):
    with pytest.raises(LayerError, match="not a valid tar archive"):
        extract(tmp_path, data)


def test_zstd_is_refused_with_a_reason(tmp_path):
    with pytest.raises(LayerError, match="zstd"):
        extract(tmp_path, b"\x28\xb5\x2f\xfd" + b"\0" * 64)
