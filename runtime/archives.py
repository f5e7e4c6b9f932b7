"""Image archives: `docker save` tarballs and OCI image-layout tarballs.

`open_archive(path, workdir)` reads either format into ImageSource objects: the
config bytes, the layers (a way to open each one, its DiffID from the config and,
for OCI, the digest its descriptor promises) and the references to tag. Nothing
is extracted here; ImageStore.load does that with runtime.layers.

docker save:   manifest.json  [{"Config": "<hex>.json", "RepoTags": [...],
                                "Layers": ["<id>/layer.tar", ...]}]
OCI layout:    oci-layout, index.json {"manifests": [descriptor...]} and
               blobs/sha256/<hex> (image indexes are followed to the manifest for
               this machine's platform; names come from the descriptor annotations
               io.containerd.image.name or org.opencontainers.image.ref.name)

Archives written by Docker 25+ carry both: manifest.json wins. The archive may be
compressed (gzip, bzip2, xz): it is then decompressed once into `workdir`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import platform
import posixpath
import re
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from cnet.cnm.errors import InvalidParameter
from cnet.runtime.layers import decompressed, sniff_compression

DIGEST_RX = re.compile(r"sha256:[0-9a-f]{64}")
MAX_JSON = 16 << 20  # manifests, indexes and configs are small

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


class ArchiveError(InvalidParameter):
    """An image archive that is not one we can read; the message says why."""


@dataclass
class LayerSource:
    name: str  # member name, for messages
    diff_id: str  # "sha256:<hex>" from the image config
    digest: str | None  # "sha256:<hex>" the descriptor promises for the bytes (OCI)
    open: Callable[[], IO[bytes]]


@dataclass
class ImageSource:
    config: bytes
    layers: list[LayerSource]
    refs: list[str] = field(default_factory=list)  # as written in the archive

    @property
    def id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def machine_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """An image config (JSON object) whose rootfs.diff_ids we can trust as file names."""
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{where}: image config is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ArchiveError(f"{where}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ArchiveError(f'{where}: image config has no rootfs of type "layers"')
    diff_ids = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and DIGEST_RX.fullmatch(d) for d in diff_ids
    ):
        raise ArchiveError(f"{where}: image config has invalid rootfs.diff_ids")
    cfg = config.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        raise ArchiveError(f"{where}: image config's config is not an object")
    return config


class Archive:
    """An image archive opened for reading; use as a context manager."""

    def __init__(self, path: str, workdir: str) -> None:
        self.path = path
        self.tar = self._open(path, workdir)
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in self.tar.getmembers():
            name = _norm(m.name)
            if name:
                self.members[name] = m

    @staticmethod
    def _open(path: str, workdir: str) -> tarfile.TarFile:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except IsADirectoryError:
            raise ArchiveError(f"{path}: is a directory, not an image archive") from None
        except OSError as exc:
            raise ArchiveError(f"open {path}: {(exc.strerror or str(exc)).lower()}") from None
        with f:
            kind = sniff_compression(f.read(6))
            if kind != "none":  # random access into a compressed tar is slow: unpack once
                f.seek(0)
                _, plain, kind = decompressed(f)
                target = os.path.join(workdir, "archive.tar")
                try:
                    with open(target, "wb") as out:
                        shutil.copyfileobj(plain, out, 1 << 20)  # type: ignore[misc]
                except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
                    if isinstance(exc, OSError) and exc.errno:
                        raise
                    raise ArchiveError(f"{path}: corrupt {kind} data: {exc}") from None
                path = target
        try:
            return tarfile.open(path, "r:")
        except tarfile.TarError:
            raise ArchiveError(f"{path}: not a tar archive") from None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tar.close()

    # -- members -----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.members

    def _member(self, name: str) -> tarfile.TarInfo:
        """The regular file `name` refers to, following links inside the archive."""
        wanted = name
        for _ in range(16):
            norm = _norm(name)
            m = self.members.get(norm) if norm else None
            if m is None:
                raise ArchiveError(f"invalid archive: {wanted} is missing")
            if m.isreg():
                return m
            if m.issym():
                name = posixpath.join(posixpath.dirname(norm), m.linkname)
            elif m.islnk():
                name = m.linkname
            else:
                raise ArchiveError(f"invalid archive: {wanted} is not a file")
        raise ArchiveError(f"invalid archive: too many links for {wanted}")

    def open(self, name: str) -> IO[bytes]:
        f = self.tar.extractfile(self._member(name))
        assert f is not None
        return f

    def read(self, name: str) -> bytes:
        m = self._member(name)
        if m.size > MAX_JSON:
            raise ArchiveError(f"invalid archive: {name} is too large ({m.size} bytes)")
        with self.open(name) as f:
            return f.read()

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise ArchiveError(f"invalid archive: {name} is not JSON: {exc}") from None

    def opener(self, name: str) -> Callable[[], IO[bytes]]:
        self._member(name)  # fail early when missing
        return lambda: self.open(name)

    # -- formats -------------------------------------------------------------------
    def images(self) -> list[ImageSource]:
        if self.has("manifest.json"):
            return self._docker_save()
        if self.has("index.json"):
            if not self.has("oci-layout"):
                raise ArchiveError("invalid archive: index.json without oci-layout")
            return self._oci()
        raise ArchiveError(
            f"{self.path}: not an image archive (no manifest.json from docker save, "
            "no index.json of an OCI image layout)"
        )

    def _docker_save(self) -> list[ImageSource]:
        manifest = self.read_json("manifest.json")
        if not isinstance(manifest, list) or not manifest:
            raise ArchiveError("invalid archive: manifest.json is not a non-empty list")
        out = []
        for entry in manifest:
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise ArchiveError("invalid archive: manifest.json entry without Config")
            layers = entry.get("Layers") or []
            tags = entry.get("RepoTags") or []
            if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
                raise ArchiveError("invalid archive: manifest.json Layers is not a list")
            if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
                raise ArchiveError("invalid archive: manifest.json RepoTags is not a list")
            data = self.read(entry["Config"])
            config = parse_config(data, entry["Config"])
            diff_ids = config["rootfs"].get("diff_ids") or []
            if len(diff_ids) != len(layers):
                raise ArchiveError(
                    f"invalid archive: {len(layers)} layers for {len(diff_ids)} DiffIDs "
                    f"in {entry['Config']}"
                )
            sources = [
                LayerSource(name, diff, None, self.opener(name))
                for name, diff in zip(layers, diff_ids, strict=True)
            ]
            out.append(ImageSource(data, sources, list(tags)))
        return out

    def _oci(self) -> list[ImageSource]:
        layout = self.read_json("oci-layout")
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise ArchiveError("invalid archive: oci-layout has no imageLayoutVersion")
        index = self.read_json("index.json")
        descriptors = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(descriptors, list) or not descriptors:
            raise ArchiveError("invalid archive: index.json lists no manifests")
        images: dict[str, ImageSource] = {}  # by manifest digest
        for desc in descriptors:
            digest, manifest = self._manifest_for(desc, depth=0)
            image = images.get(digest)
            if image is None:
                image = images[digest] = self._oci_image(manifest, digest)
            ref = _oci_name(desc)
            if ref and ref not in image.refs:
                image.refs.append(ref)
        return list(images.values())

    def _blob(self, desc: Any, what: str) -> bytes:
        digest = _descriptor_digest(desc, what)
        data = self.read(_blob_path(digest))
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ArchiveError(f"invalid archive: {what} {digest} does not match its digest")
        return data

    def _manifest_for(self, desc: Any, depth: int) -> tuple[str, dict[str, Any]]:
        """(digest, manifest) for a descriptor, following image indexes."""
        if depth > 4:
            raise ArchiveError("invalid archive: image indexes nested too deeply")
        media = desc.get("mediaType", "") if isinstance(desc, dict) else ""
        data = self._blob(desc, "manifest")
        try:
            doc = json.loads(data)
        except ValueError:
            raise ArchiveError("invalid archive: a manifest is not JSON") from None
        if not isinstance(doc, dict):
            raise ArchiveError("invalid archive: a manifest is not a JSON object")
        media = media or doc.get("mediaType", "")
        if media in INDEX_TYPES or (not media and "manifests" in doc):
            return self._manifest_for(_pick_platform(doc.get("manifests")), depth + 1)
        if media and media not in MANIFEST_TYPES:
            raise ArchiveError(f"invalid archive: unsupported manifest media type {media}")
        return desc["digest"], doc

    def _oci_image(self, manifest: dict[str, Any], digest: str) -> ImageSource:
        data = self._blob(manifest.get("config"), "config")
        config = parse_config(data, f"config of manifest {digest}")
        diff_ids = config["rootfs"].get("diff_ids") or []
        layers = manifest.get("layers") or []
        if not isinstance(layers, list) or len(layers) != len(diff_ids):
            raise ArchiveError(
                f"invalid archive: manifest {digest} does not list one layer per DiffID"
            )
        sources = []
        for desc, diff_id in zip(layers, diff_ids, strict=True):
            layer_digest = _descriptor_digest(desc, "layer")
            media = desc.get("mediaType", "")
            if "zstd" in media:
                raise ArchiveError(f"layer {layer_digest}: zstd-compressed layers are not "
                                   "supported (use gzip or plain tar)")
            name = _blob_path(layer_digest)
            sources.append(LayerSource(name, diff_id, layer_digest, self.opener(name)))
        return ImageSource(data, sources)


def open_archive(path: str, workdir: str) -> Archive:
    return Archive(path, workdir)


def _norm(name: str) -> str:
    """A member name without "./" and duplicate slashes; "" for the root or escapes."""
    norm = posixpath.normpath("/" + name).lstrip("/")
    return "" if norm in ("", ".") else norm


def _descriptor_digest(desc: Any, what: str) -> str:
    digest = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(digest, str) or not DIGEST_RX.fullmatch(digest):
        raise ArchiveError(f"invalid archive: {what} descriptor without a sha256 digest")
    return digest


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _pick_platform(manifests: Any) -> Any:
    if not isinstance(manifests, list) or not manifests:
        raise ArchiveError("invalid archive: an image index lists no manifests")
    arch = machine_arch()
    with_platform = [m for m in manifests if isinstance(m, dict) and m.get("platform")]
    for m in with_platform:
        p = m["platform"]
        if p.get("os") == "linux" and p.get("architecture") == arch:
            return m
    if with_platform and len(with_platform) == len(manifests):
        raise ArchiveError(f"invalid archive: no image for platform linux/{arch}")
    return next(m for m in manifests if not (isinstance(m, dict) and m.get("platform")))


def _oci_name(desc: Any) -> str | None:
    """The reference a descriptor names. A bare tag ("latest", OCI's ref.name) has no
    repository to go with it: such an image is loaded untagged."""
    annotations = desc.get("annotations") if isinstance(desc, dict) else None
    if not isinstance(annotations, dict):
        return None
    for key in NAME_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value and (":" in value or "/" in value):
            return value
    return None
