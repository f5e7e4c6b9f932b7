"""`cnetd --cleanup` for the runtime: stop every container and shim of this exec root."""

from __future__ import annotations

import os
import signal
import subprocess

from cnet.runtime import rootfs


def _shim_pids(exec_root: str) -> list[int]:
    """Shim processes whose command line names this exec root's containers."""
    marker = os.path.join(exec_root, "containers").encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"cnet.runtime.shim" in cmd and marker in cmd:
            pids.append(int(entry))
    return pids


def _remove_cgroups(parent: str) -> list[str]:
    """rmdir the (empty, once runc deleted its containers) cgroup dirs under `parent`."""
    errors = []
    root = "/sys/fs/cgroup"
    hierarchies = [root] + [os.path.join(root, d) for d in os.listdir(root)
                            if os.path.isdir(os.path.join(root, d))]
    for h in hierarchies:
        top = os.path.join(h, parent.lstrip("/"))
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                errors.append(f"cgroup {dirpath}: {exc.strerror}")
        try:
            os.rmdir(os.path.dirname(top))  # /cnet itself when no other daemon uses it
        except OSError:
            pass
    return errors


def runtime_cleanup(exec_root: str, cgroup_parent: str) -> list[str]:
    errors: list[str] = []
    runc_root = os.path.join(exec_root, "runc")
    containers = os.path.join(exec_root, "containers")
    if os.path.isdir(runc_root):
        for cid in os.listdir(runc_root):
            res = subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid],
                                 capture_output=True, text=True)
            if res.returncode != 0 and "does not exist" not in res.stderr:
                errors.append(f"runc delete {cid[:12]}: {res.stderr.strip()}")
    for pid in _shim_pids(exec_root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.path.isdir(containers):
        for cid in os.listdir(containers):
            try:
                rootfs.unmount(os.path.join(containers, cid, "rootfs"))
            except OSError as exc:
                errors.append(f"unmount rootfs of {cid[:12]}: {exc}")
    return errors + _remove_cgroups(cgroup_parent)
