"""Network namespaces bind-mounted on files, the way `ip netns` keeps them.

A sandbox is a network namespace pinned by a bind mount on a file under
`<exec-root>/netns/`. The directory itself is made a shared mount point (as
iproute2 does for /run/netns) so that unmounting a namespace file also removes
the copies that other mount namespaces (containers, later) inherited; without
that the namespace would outlive its sandbox.
"""

from __future__ import annotations

import fcntl
import os
import threading

from cnet.cnm.osl import nsenter


def _is_mount_point(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def prepare_dir(directory: str) -> None:
    """Create `directory` and make it a shared bind mount of itself (idempotent)."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = os.path.realpath(directory)
    if not _is_mount_point(path):
        nsenter.mount(path, path, None, nsenter.MS_BIND | nsenter.MS_REC)
    nsenter.mount("none", path, None, nsenter.MS_SHARED | nsenter.MS_REC)


def is_netns(path: str) -> bool:
    """True when `path` is a mounted network namespace file."""
    return os.path.exists(path) and _is_mount_point(os.path.realpath(path))


NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
CLONE_NEWNET = 0x40000000


def runtime_netns_problem(path: object) -> str | None:
    """Why `path` cannot be a runtime's network namespace handed to cnet (CNI_NETNS, a
    sandbox Key), or None: an absolute path to a network-namespace file that is not the
    host's own (cnet would otherwise put interfaces and routes into the host)."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return "not an absolute path"
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    own = os.stat("/proc/self/ns/net")
    if st.st_dev != own.st_dev:
        return "not a namespace file"
    for other in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            o = os.stat(other)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (o.st_dev, o.st_ino):
            return "the host's own network namespace"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if kind == CLONE_NEWNET else "not a network namespace"


def is_nsfs(path: str) -> bool:
    """True when `path` is a namespace file (a bind mount of one, or /proc/PID/ns/net):
    namespace files all live on the kernel's nsfs, one device."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def create(path: str) -> None:
    """Create a new network namespace pinned at `path`.

    unshare(CLONE_NEWNET) moves only the calling thread, so it runs on a
    throwaway thread: the caller's own namespace never changes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            nsenter.unshare_net()
            nsenter.mount("/proc/thread-self/ns/net", path, None, nsenter.MS_BIND)
            _ipv6_off_by_default()
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    t = threading.Thread(target=worker, name="netns-create")
    t.start()
    t.join()
    if failure:
        os.unlink(path)
        raise failure[0]


def _ipv6_off_by_default() -> None:
    """New interfaces in this namespace start without IPv6 (the caller's thread is in it).

    Otherwise every interface joining a bridge announces itself with MLD reports,
    router solicitations and DAD probes that the bridge floods to every port: the
    k-th endpoint on a network would cost k-1 deliveries. Interfaces that get an
    IPv6 address switch it back on (Kernel.configure_interface), as Docker does.
    """
    try:
        with open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:  # kernel without IPv6
        pass


def remove(path: str) -> None:
    """Unmount and delete a namespace file; missing pieces are not an error."""
    if os.path.exists(path) and _is_mount_point(os.path.realpath(path)):
        nsenter.umount(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def remove_dir_mount(directory: str) -> None:
    """Undo prepare_dir: unmount the shared self-bind of the namespace directory."""
    path = os.path.realpath(directory)
    while os.path.isdir(path) and _is_mount_point(path):
        nsenter.umount(path)
