"""The image store: content-addressed images and layers under `<data-root>/images/`.

    blobs/sha256/<hex>     image configs, byte for byte; the image id is their sha256
    layers/<diffid-hex>/   one layer, extracted in overlayfs format (runtime.layers),
                           shared by every image that has it
    tmp/                   staging; emptied on start

State in the store: `image/<hex>` (the record below) and `layer/<diffid-hex>`
{DiffID, Size}. A record:

    {"Id": "sha256:<hex>", "RepoTags": ["busybox:latest"], "Created": RFC 3339,
     "Size": bytes, "Layers": ["sha256:<diffid>", ...]  (lowest first),
     "Config": {Entrypoint, Cmd, Env, WorkingDir, ExposedPorts, User, Labels,
                Volumes, StopSignal}, "Architecture", "Os", "Author", "Comment"}

Tags are familiar names (`busybox:latest`, `me/app:1`, `registry:5000/x:y`); a name
without a tag means `:latest`, like docker. Queries read the store only; changes
(import, load, tag, remove) hold the store's lock. Layer directories appear by an
atomic rename from tmp/ once complete, and are deleted when the last image using
them goes; on start, directories and blobs no record refers to are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cnet.cnm.errors import Conflict, InvalidParameter, NotFound
from cnet.cnm.store import Store, Txn
from cnet.cnm.timefmt import now
from cnet.cnm.undo import Undo
from cnet.runtime.archives import ImageSource, machine_arch, open_archive, parse_config
from cnet.runtime.layers import LayerError, extract_layer

log = logging.getLogger(__name__)

IMAGE_PREFIX = "image/"
LAYER_PREFIX = "layer/"
CONFIG_KEYS = ("Entrypoint", "Cmd", "Env", "WorkingDir", "ExposedPorts", "User", "Labels",
               "Volumes", "StopSignal")

# Docker's reference grammar (distribution/reference), without digests.
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:(?:[._]|__|[-]+){_ALNUM})*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_ID_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
_FAMILIAR = ("docker.io/library/", "index.docker.io/library/", "docker.io/",
             "index.docker.io/")

Users = Callable[[str], list[str]]


# --- references ---------------------------------------------------------------------


def parse_reference(ref: str) -> tuple[str, str]:
    """(repository, tag) of `name[:tag]`, in docker's familiar form; InvalidParameter."""
    if not ref or ref != ref.strip():
        raise InvalidParameter(f'invalid reference format: "{ref}"')
    if "@" in ref:
        raise InvalidParameter(f"invalid reference format: digest references are not "
                               f"supported: {ref}")
    name, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
    if not _TAG.fullmatch(tag):
        raise InvalidParameter(f'invalid reference format: bad tag "{tag}" in {ref}')
    for prefix in _FAMILIAR:
        if name.startswith(prefix) and name != prefix:
            name = name[len(prefix):]
            break
    parts = name.split("/")
    first = parts[0]
    path = parts
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"
                           or first != first.lower()):
        if not _DOMAIN.fullmatch(first):
            raise InvalidParameter(f"invalid reference format: bad registry in {ref}")
        path = parts[1:]
    if name != name.lower() and any(p != p.lower() for p in path):
        raise InvalidParameter(
            f"invalid reference format: repository name ({name}) must be lowercase"
        )
    if not all(_PATH_COMPONENT.fullmatch(p) for p in path) or len(name) > 255:
        raise InvalidParameter(f'invalid reference format: "{ref}"')
    if _HEX64.fullmatch(name):
        raise InvalidParameter(
            f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings"
        )
    return name, tag


def normalize(ref: str) -> str:
    """`name` -> `name:latest`, `docker.io/library/x:1` -> `x:1`."""
    name, tag = parse_reference(ref)
    return f"{name}:{tag}"


def unix_time(created: str) -> int:
    try:
        return int(datetime.fromisoformat(created).timestamp())
    except (TypeError, ValueError):
        return 0


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]


# --- the store ------------------------------------------------------------------------


class ImageStore:
    def __init__(self, root: str, store: Store) -> None:
        self.root = os.path.abspath(root)
        self.store = store
        self.blob_dir = os.path.join(self.root, "blobs", "sha256")
        self.layer_dir = os.path.join(self.root, "layers")
        self.tmp_dir = os.path.join(self.root, "tmp")
        for d in (self.blob_dir, self.layer_dir, self.tmp_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.layer_dir, 0o711)  # runc's container user must reach rootfs layers
        os.chmod(self.root, 0o711)
        self._lock = threading.RLock()
        self._users: Users = lambda image_id: []
        self._collect_garbage()

    # -- queries ---------------------------------------------------------------------
    def records(self) -> dict[str, dict[str, Any]]:
        """{hex id: record} of every image."""
        return {k[len(IMAGE_PREFIX):]: v for k, v in self.store.list(IMAGE_PREFIX).items()}

    def list(self) -> list[dict[str, Any]]:
        """Every image record, newest first."""
        return sorted(self.records().values(), key=lambda r: r.get("Created", ""),
                      reverse=True)

    def resolve(self, ref: str) -> dict[str, Any]:
        return self._lookup(ref)[0]

    def _lookup(self, ref: str) -> tuple[dict[str, Any], str | None]:
        """(record, the tag `ref` named or None when it named an id). NotFound."""
        records = self.records()
        found = _ID.fullmatch(ref)
        if found and found.group(1) in records:
            return records[found.group(1)], None
        try:
            tag = normalize(ref)
        except InvalidParameter:
            tag = None
        if tag:
            for rec in records.values():
                if tag in rec.get("RepoTags", []):
                    return rec, tag
        found = _ID_PREFIX.fullmatch(ref)
        if found:
            matches = [r for h, r in records.items() if h.startswith(found.group(1))]
            if len(matches) == 1:
                return matches[0], None
            if len(matches) > 1:
                raise InvalidParameter(f"ambiguous image id prefix: {ref}")
        raise NotFound(f"No such image: {ref}")

    def layer_dirs(self, record: dict[str, Any]) -> list[str]:
        """The image's layer directories, topmost first (overlayfs' `lowerdir=` order)."""
        dirs = []
        for diff_id in reversed(record.get("Layers", [])):
            path = os.path.join(self.layer_dir, _hex(diff_id))
            if not os.path.isdir(path):
                raise NotFound(f"image {_hex(record['Id'])[:12]}: layer {diff_id} is "
                               f"missing from {self.layer_dir}")
            dirs.append(path)
        return dirs

    def inspect(self, ref: str) -> dict[str, Any]:
        """Docker's image inspect document."""
        rec = self.resolve(ref)
        return {
            "Id": rec["Id"],
            "RepoTags": list(rec.get("RepoTags", [])),
            "RepoDigests": [],
            "Parent": "",
            "Comment": rec.get("Comment", ""),
            "Created": rec.get("Created", ""),
            "Author": rec.get("Author", ""),
            "Config": rec.get("Config", {}),
            "Architecture": rec.get("Architecture", ""),
            "Os": rec.get("Os", ""),
            "Size": rec.get("Size", 0),
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDir": ":".join(
                    os.path.join(self.layer_dir, _hex(d)) for d in reversed(rec["Layers"]))},
            },
            "RootFS": {"Type": "layers", "Layers": list(rec.get("Layers", []))},
            "Metadata": {"LastTagTime": rec.get("LastTagTime", "")},
        }

    @staticmethod
    def summary(rec: dict[str, Any]) -> dict[str, Any]:
        """One entry of GET /images/json (docker's ImageSummary)."""
        return {
            "Id": rec["Id"],
            "ParentId": "",
            "RepoTags": list(rec.get("RepoTags", [])),
            "RepoDigests": [],
            "Created": unix_time(rec.get("Created", "")),
            "Size": rec.get("Size", 0),
            "SharedSize": -1,
            "Labels": (rec.get("Config") or {}).get("Labels") or {},
            "Containers": -1,
        }

    # -- changes ---------------------------------------------------------------------
    def set_users(self, fn: Users) -> None:
        """`fn(image_id)` ("sha256:<hex>") -> names of the containers using the image."""
        self._users = fn

    def import_rootfs(self, path: str, ref: str | None = None) -> dict[str, Any]:
        """One layer from a root filesystem tar (plain or compressed); returns the record."""
        tag = normalize(ref) if ref else None
        path = _check_path(path)
        with self._lock, self._staging() as stage:
            layer = os.path.join(stage, "layer")
            os.mkdir(layer, 0o755)
            try:
                with open(path, "rb") as f:
                    info = extract_layer(f, layer)
            except LayerError as exc:
                raise LayerError(f"{path}: {exc}") from None
            created = now()
            config = {
                "architecture": machine_arch(),
                "os": "linux",
                "created": created,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [info.diff_id]},
                "history": [{"created": created, "comment": f"Imported from {path}"}],
            }
            data = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
            image = ImageSource(data, [], [tag] if tag else [])
            staged = {info.diff_id: (layer, info.size)}
            self._commit([(image, config)], staged)
            return self.records()[_hex(image.id)]

    def load(self, path: str) -> list[str]:
        """Load a `docker save` or OCI layout archive; the refs loaded (or "sha256:<id>"
        for an image the archive does not name)."""
        path = _check_path(path)
        with self._lock, self._staging() as stage:
            with open_archive(path, stage) as archive:
                sources = archive.images()
                images = []
                for src in sources:
                    src.refs = [normalize(r) for r in src.refs]
                    images.append((src, parse_config(src.config, "image config")))
                staged: dict[str, tuple[str, int]] = {}
                for src, _ in images:
                    for layer in src.layers:
                        if layer.diff_id in staged or self._has_layer(layer.diff_id):
                            continue
                        target = os.path.join(stage, _hex(layer.diff_id))
                        os.mkdir(target, 0o755)
                        try:
                            with layer.open() as f:
                                info = extract_layer(f, target)
                        except LayerError as exc:
                            raise LayerError(f"layer {layer.name}: {exc}") from None
                        if info.diff_id != layer.diff_id:
                            raise LayerError(f"layer {layer.name}: content ({info.diff_id}) "
                                             f"does not match its DiffID {layer.diff_id}")
                        if layer.digest and info.digest != layer.digest:
                            raise LayerError(f"layer {layer.name}: content does not match "
                                             f"its digest {layer.digest}")
                        staged[layer.diff_id] = (target, info.size)
            self._commit(images, staged)
        loaded = []
        for src, _ in images:
            loaded.extend(src.refs or [src.id])
        return loaded

    def tag(self, src: str, ref: str) -> str:
        """Point `ref` at the image `src` names (moving it off any other image)."""
        tag = normalize(ref)
        with self._lock:
            rec = self.resolve(src)
            records = self.records()
            txn = Txn()
            for h, other in records.items():
                if other["Id"] != rec["Id"] and tag in other.get("RepoTags", []):
                    other["RepoTags"] = [t for t in other["RepoTags"] if t != tag]
                    txn.puts[IMAGE_PREFIX + h] = other
            if tag not in rec["RepoTags"]:
                rec["RepoTags"] = [*rec["RepoTags"], tag]
                rec["LastTagTime"] = now()
                txn.puts[IMAGE_PREFIX + _hex(rec["Id"])] = rec
            if txn.puts:
                self.store.commit(txn)
        return tag

    def remove(self, ref: str, force: bool = False) -> list[dict[str, str]]:
        """docker rmi: untag; delete the image with its last tag (or when named by id).

        Refused (Conflict) while a container uses the image, even with force; by id,
        an image with several tags needs force.
        """
        with self._lock:
            rec, tag = self._lookup(ref)
            key = IMAGE_PREFIX + _hex(rec["Id"])
            tags = list(rec.get("RepoTags", []))
            if tag and len(tags) > 1:
                rec["RepoTags"] = [t for t in tags if t != tag]
                self.store.put(key, rec)
                return [{"Untagged": tag}]
            if not tag and len(tags) > 1 and not force:
                raise Conflict(f"unable to delete {_hex(rec['Id'])[:12]} (must be forced) - "
                               "image is referenced in multiple repositories")
            users = self._users(rec["Id"])
            if users:
                raise Conflict(f"image is being used by container(s): {', '.join(users)}")
            others = [r for h, r in self.records().items() if IMAGE_PREFIX + h != key]
            kept = {d for r in others for d in r.get("Layers", [])}
            orphans = [d for d in dict.fromkeys(rec.get("Layers", [])) if d not in kept]
            txn = Txn(deletes=[key, *(LAYER_PREFIX + _hex(d) for d in orphans)])
            self.store.commit(txn)
            self._remove_file(os.path.join(self.blob_dir, _hex(rec["Id"])))
            for d in orphans:
                self._remove_layer_dir(_hex(d))
        return [*({"Untagged": t} for t in tags), {"Deleted": rec["Id"]}]

    # -- internals ---------------------------------------------------------------------
    def _has_layer(self, diff_id: str) -> bool:
        return (self.store.get(LAYER_PREFIX + _hex(diff_id)) is not None
                and os.path.isdir(os.path.join(self.layer_dir, _hex(diff_id))))

    @contextlib.contextmanager
    def _staging(self):
        stage = tempfile.mkdtemp(dir=self.tmp_dir)
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _commit(self, images: list[tuple[ImageSource, dict[str, Any]]],
                staged: dict[str, tuple[str, int]]) -> None:
        """Move staged layers into place, write configs, record everything in one txn;
        on failure take back what this call added."""
        with Undo() as undo:
            for diff_id, (path, _size) in staged.items():
                target = os.path.join(self.layer_dir, _hex(diff_id))
                if os.path.lexists(target):
                    if self.store.get(LAYER_PREFIX + _hex(diff_id)) is not None:
                        continue  # already here (an import of known content)
                    self._remove_layer_dir(_hex(diff_id))  # left over, not recorded
                os.rename(path, target)
                undo.push(self._remove_layer_dir, _hex(diff_id))
            for src, _ in images:
                blob = os.path.join(self.blob_dir, _hex(src.id))
                if not os.path.exists(blob):
                    tmp = blob + ".tmp"
                    with open(tmp, "wb") as f:
                        f.write(src.config)
                    os.rename(tmp, blob)
                    undo.push(self._remove_file, blob)
            records = self.records()
            txn = Txn()
            sizes = {d: s for d, (_p, s) in staged.items()}
            for diff_id, size in sizes.items():
                txn.puts[LAYER_PREFIX + _hex(diff_id)] = {"DiffID": diff_id, "Size": size}
            for src, config in images:
                h = _hex(src.id)
                diff_ids = config["rootfs"].get("diff_ids") or []
                for d in diff_ids:
                    if d not in sizes:
                        sizes[d] = (self.store.get(LAYER_PREFIX + _hex(d)) or {}).get("Size", 0)
                for other_h, other in records.items():
                    moved = [t for t in other.get("RepoTags", []) if t in src.refs]
                    if other_h != h and moved:
                        other["RepoTags"] = [t for t in other["RepoTags"] if t not in moved]
                        txn.puts[IMAGE_PREFIX + other_h] = other
                rec = records.get(h) or self._record(src, config, sizes)
                rec["RepoTags"] = list(dict.fromkeys([*rec.get("RepoTags", []), *src.refs]))
                records[h] = rec
                txn.puts[IMAGE_PREFIX + h] = rec
            self.store.commit(txn)

    @staticmethod
    def _record(src: ImageSource, config: dict[str, Any], sizes: dict[str, int]
                ) -> dict[str, Any]:
        cfg = config.get("config") or {}
        diff_ids = list(config["rootfs"].get("diff_ids") or [])
        view = {k: cfg.get(k) for k in CONFIG_KEYS}
        view["WorkingDir"] = view["WorkingDir"] or ""
        view["User"] = view["User"] or ""
        created = config.get("created")
        return {
            "Id": src.id,
            "RepoTags": [],
            "Created": created if isinstance(created, str) and created else now(),
            "Size": sum(sizes.get(d, 0) for d in dict.fromkeys(diff_ids)),
            "Layers": diff_ids,
            "Config": view,
            "Architecture": config.get("architecture", ""),
            "Os": config.get("os", ""),
            "Author": config.get("author", ""),
            "Comment": next((h.get("comment", "") for h in reversed(config.get("history") or [])
                             if isinstance(h, dict) and h.get("comment")), ""),
        }

    def _remove_layer_dir(self, hexid: str) -> None:
        """Rename out of layers/ first, so a half-deleted layer is never in use."""
        path = os.path.join(self.layer_dir, hexid)
        if not os.path.lexists(path):
            return
        trash = tempfile.mkdtemp(dir=self.tmp_dir)
        try:
            os.rename(path, os.path.join(trash, "layer"))
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _remove_file(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _collect_garbage(self) -> None:
        """Empty tmp/; drop layers and blobs no record refers to (a crash mid-change)."""
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                self._remove_file(path)
        records = self.records()
        used = {_hex(d) for r in records.values() for d in r.get("Layers", [])}
        txn = Txn(deletes=[k for k in self.store.list(LAYER_PREFIX)
                           if k[len(LAYER_PREFIX):] not in used])
        if txn.deletes:
            self.store.commit(txn)
        for name in os.listdir(self.layer_dir):
            if name not in used:
                log.info("images: removing unreferenced layer %s", name)
                self._remove_layer_dir(name)
        for name in os.listdir(self.blob_dir):
            if name not in records:
                self._remove_file(os.path.join(self.blob_dir, name))


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidParameter("a file path is required")
    if not os.path.isabs(path):
        raise InvalidParameter(f"{path}: the path must be absolute")
    if not os.path.exists(path):
        raise InvalidParameter(f"open {path}: no such file or directory")
    if os.path.isdir(path):
        raise InvalidParameter(f"{path}: is a directory, not a tar archive")
    return path

