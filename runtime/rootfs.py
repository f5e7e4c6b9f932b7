"""A container's root filesystem: overlayfs of its image layers plus its own upper layer."""

from __future__ import annotations

import os
import shutil

from cnet.cnm.osl import nsenter


def _mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def mount(layers: list[str], upper_root: str, target: str) -> None:
    """Mount the overlay at `target`; `layers` topmost first; `upper_root` keeps the
    container's writes across stops (removed with the container)."""
    upper = os.path.join(upper_root, "upper")
    work = os.path.join(upper_root, "work")
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    if _mounted(target):
        return
    opts = f"lowerdir={':'.join(layers)},upperdir={upper},workdir={work}"
    nsenter.mount("overlay", target, "overlay", 0, opts)


def unmount(target: str) -> None:
    if os.path.exists(target) and _mounted(target):
        nsenter.umount(target)


def remove(upper_root: str, target: str) -> None:
    """Unmount and delete the container's layer (its bundle dir is removed by the caller)."""
    unmount(target)
    shutil.rmtree(upper_root, ignore_errors=True)
