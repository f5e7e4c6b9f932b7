"""Image layers: safe tar extraction into overlayfs format.

A layer is a tar (plain, gzip, bzip2 or xz) of filesystem changes in the OCI/AUFS
convention: `.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` inside a
directory hides everything below it. `extract_layer` writes it into a directory
overlayfs can use as a `lowerdir` directly:

- `.wh.NAME`     -> a character device 0:0 named NAME (overlayfs' whiteout)
- `.wh..wh..opq` -> xattr `trusted.overlay.opaque=y` on the directory
- other `.wh..wh.*` (AUFS bookkeeping such as `.wh..wh.plnk`) are dropped

and returns the layer's DiffID (sha256 of the uncompressed tar) and the sha256 of the
bytes as given (an OCI descriptor's digest), computed in the same pass.

Safety (we cannot rely on tarfile's extraction filters: Python 3.11.2 has none, and
their "tar" filter would strip set-uid bits and group/other write bits a root
filesystem needs): every member must stay inside the layer directory. Absolute
names, `..` components, member paths through a symlink, and hard links to anything
outside the layer are refused; the whole layer fails with LayerError and the caller
deletes the directory. Ownership (numeric uid/gid), full modes (set-uid, sticky),
mtimes, device nodes, fifos, symlinks (targets are not interpreted: they are
resolved inside the container), hard links within the layer and `SCHILY.xattr.*`
extended attributes (except `trusted.*`) are kept. Needs root (chown, mknod,
trusted.* xattrs), like cnetd.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from cnet.cnm.errors import InvalidParameter

WHITEOUT = ".wh."
WHITEOUT_META = ".wh..wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX = "SCHILY.xattr."
CHUNK = 1 << 20


class LayerError(InvalidParameter):
    """A layer that is not a readable tar or tries to write outside its directory."""


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    digest: str  # "sha256:<hex>" of the bytes as read (compressed or not)
    size: int  # bytes of regular file content
    compression: str  # "none", "gzip", "bzip2", "xz"


class _Hashing:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO, head: bytes = b"") -> None:
        self.f = f
        self.head = head
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.f.read(), b""
            else:
                data, self.head = self.head[:n], self.head[n:]
                if len(data) < n:
                    data += self.f.read(n - len(data))
        else:
            data = self.f.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def sniff_compression(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def decompressed(f: BinaryIO) -> tuple[_Hashing, _Hashing, str]:
    """(raw hasher, uncompressed hasher, compression) for a possibly compressed stream."""
    head = f.read(6)
    kind = sniff_compression(head)
    raw = _Hashing(f, head)  # replays the sniffed head, hashes every byte as given
    if kind == "none":
        return raw, _Hashing(raw), kind  # type: ignore[arg-type]
    if kind == "gzip":
        return raw, _Hashing(gzip.GzipFile(fileobj=raw, mode="rb")), kind  # type: ignore[arg-type]
    if kind == "bzip2":
        return raw, _Hashing(bz2.BZ2File(raw, mode="rb")), kind  # type: ignore[arg-type]
    if kind == "xz":
        return raw, _Hashing(lzma.LZMAFile(raw, mode="rb")), kind  # type: ignore[arg-type]
    raise LayerError("zstd-compressed layers are not supported (use gzip or plain tar)")


def extract_layer(f: BinaryIO, dest: str) -> LayerInfo:
    """Extract the layer tar read from `f` into the existing, empty directory `dest`.

    Raises LayerError (an InvalidParameter) for bad input; the caller removes `dest`.
    """
    raw, plain, kind = decompressed(f)
    try:
        with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
            size = _Extractor(tar, dest).run()
        plain.drain()  # the tar's trailing padding is part of the DiffID
        raw.drain()
    except LayerError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, lzma.LZMAError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno:
            raise  # a real I/O error (disk full, permissions): not the input's fault
        raise LayerError(f"not a valid tar archive ({kind}): {exc}") from None
    return LayerInfo(plain.digest(), raw.digest(), size, kind)


# --- the extractor ------------------------------------------------------------------


def clean_name(name: str) -> list[str]:
    """The components of a member name; [] for the root. LayerError if it escapes."""
    if name.startswith("/"):
        raise LayerError(f"refusing absolute path in layer: {name}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"refusing path escaping the layer directory: {name}")
    if any("\x00" in p for p in parts):
        raise LayerError(f"refusing path with a NUL byte: {name!r}")
    return parts


class _Extractor:
    def __init__(self, tar: tarfile.TarFile, dest: str) -> None:
        self.tar = tar
        self.dest = os.path.abspath(dest)
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []

    def run(self) -> int:
        size = 0
        for member in self.tar:
            size += self._member(member)
        # Directories last, deepest first: entries added below change their mtime,
        # and a read-only directory must stay writable until its content is in.
        for path, member in reversed(self.dirs):
            self._attrs(path, member)
        return size

    def _parent(self, parts: list[str], name: str) -> str:
        """The directory for a member (created, 0755 root, if the tar omits it).

        Every component must be a real directory inside the layer: a member path
        through a symlink is refused (it could point anywhere on the host).
        """
        path = self.dest
        for comp in parts:
            path = os.path.join(path, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(f"refusing path through a symlink in layer: {name}")
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"refusing path through a non-directory in layer: {name}")
        return path

    def _member(self, m: tarfile.TarInfo) -> int:
        parts = clean_name(m.name)
        if not parts:  # "./": the layer's root directory
            if m.isdir():
                self.dirs.append((self.dest, m))
            return 0
        base = parts[-1]
        parent = self._parent(parts[:-1], m.name)
        if base.startswith(WHITEOUT):
            if base == OPAQUE:
                os.setxattr(parent, OPAQUE_XATTR, b"y")
            elif not base.startswith(WHITEOUT_META):
                target = base[len(WHITEOUT):]
                path = os.path.join(parent, target)
                _remove(path)
                os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
                os.chown(path, 0, 0)
            return 0
        path = os.path.join(parent, base)
        if m.isdir():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                _remove(path)
                st = None
            if st is None:
                os.mkdir(path, 0o700)
            self.dirs.append((path, m))
            return 0
        _remove(path)
        if m.isreg():
            self._file(path, m)
            self._attrs(path, m)
            return m.size
        if m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            os.link(self._link_target(m), path, follow_symlinks=False)
            return 0  # same inode: its attributes came with the target
        elif m.ischr() or m.isblk() or m.isfifo():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        else:
            return 0  # unknown member types are skipped, as docker does
        self._attrs(path, m)
        return 0

    def _file(self, path: str, m: tarfile.TarInfo) -> None:
        src = self.tar.extractfile(m)
        assert src is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)

    def _link_target(self, m: tarfile.TarInfo) -> str:
        parts = clean_name(m.linkname)
        if not parts:
            raise LayerError(f"refusing hard link to the layer root: {m.name}")
        target = os.path.join(self._existing_parent(parts[:-1], m.name), parts[-1])
        if not os.path.lexists(target):
            raise LayerError(
                f"hard link {m.name} -> {m.linkname}: target is not in this layer"
            )
        if os.path.isdir(target) and not os.path.islink(target):
            raise LayerError(f"refusing hard link to a directory: {m.name}")
        return target

    def _existing_parent(self, parts: list[str], name: str) -> str:
        path = self.dest
        for comp in parts:
            path = os.path.join(path, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise LayerError(f"hard link {name}: target is not in this layer") from None
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"refusing hard link through a symlink or file: {name}")
        return path

    def _attrs(self, path: str, m: tarfile.TarInfo) -> None:
        symlink = m.issym()
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if not symlink:
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears set-uid bits
        for key, value in m.pax_headers.items():
            if not key.startswith(XATTR_PAX):
                continue
            attr = key[len(XATTR_PAX):]
            if attr.startswith("trusted.") or symlink:
                continue  # trusted.* would let a layer steer overlayfs
            try:
                os.setxattr(path, attr, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError:
                pass  # best effort, like docker on filesystems without xattrs
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
