"""Namespace-scoped sysctls (/proc/sys/net is resolved in the opener's namespace)."""

from __future__ import annotations

from cnet.cnm.osl import nsenter


def _path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def write(name: str, value: str, netns: str | None = None) -> None:
    if netns is None:
        with open(_path(name), "w") as f:
            f.write(value)
        return
    with nsenter.in_netns(netns), open(_path(name), "w") as f:
        f.write(value)


def write_conf(family: str, ifname: str, key: str, value: str) -> None:
    """net.<family>.conf.<ifname>.<key> in the caller's namespace (ifname may hold dots)."""
    with open(f"/proc/sys/net/{family}/conf/{ifname}/{key}", "w") as f:
        f.write(value)


def read(name: str) -> str:
    with open(_path(name)) as f:
        return f.read().strip()


def ensure(name: str, value: str) -> None:
    """Write only if different (avoids needless writes on every network create)."""
    try:
        if read(name) == value:
            return
    except FileNotFoundError:
        return
    write(name, value)
