"""Parsing of `cnet run` flags into Docker's create-body shapes.

Shared by the CLI (which sends Docker's JSON) and the daemon (which checks what
it receives). Pure stdlib: the CLI imports it on its start-up path.
"""

from __future__ import annotations

import ipaddress
import re

from cnet.cnm.errors import InvalidParameter

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
RESTART_NAMES = ("no", "always", "unless-stopped", "on-failure")


def parse_memory(text: str) -> int:
    """`512m`, `1g`, `1048576` -> bytes (Docker's RAMInBytes); at least 6 MiB like Docker."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", text.strip().lower())
    if not m:
        raise InvalidParameter(f'invalid memory value "{text}": want a number with an '
                               "optional unit b, k, m, g")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 6 * (1 << 20):
        raise InvalidParameter(f"minimum memory limit allowed is 6MB (got {text})")
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidParameter(f'invalid --cpus value "{text}"') from None
    if value <= 0:
        raise InvalidParameter(f"--cpus must be positive (got {text})")
    return value


def parse_restart(text: str) -> dict:
    """`on-failure:3` -> {"Name": "on-failure", "MaximumRetryCount": 3}."""
    name, _, count = (text or "no").partition(":")
    if name not in RESTART_NAMES:
        raise InvalidParameter(f'invalid restart policy "{text}": want no, always, '
                               "unless-stopped or on-failure[:max-retries]")
    if count and name != "on-failure":
        raise InvalidParameter(f'invalid restart policy "{text}": only on-failure takes '
                               "a maximum retry count")
    if count and (not count.isdigit()):
        raise InvalidParameter(f'invalid restart policy "{text}": bad retry count')
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _port_range(text: str, what: str) -> list[int]:
    lo, sep, hi = text.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise InvalidParameter(f'invalid {what} "{text}"')
    first, last = int(lo), int(hi) if sep else int(lo)
    if not (0 < first <= last <= 65535):
        raise InvalidParameter(f'invalid {what} "{text}": ports are 1-65535')
    return list(range(first, last + 1))


def parse_publish(spec: str) -> list[tuple[str, str, dict]]:
    """`[HOSTIP:][HOSTPORT:]PORT[/proto]` -> [("80/tcp", ..., {"HostIp", "HostPort"})].

    Returns (container port key, _, binding) per port; HostPort "" asks for a free one.
    """
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidParameter(f'invalid protocol "{proto}" in "{spec}": want tcp or udp')
    host_ip = ""
    if rest.startswith("["):  # [::1]:8080:80
        end = rest.find("]")
        host_ip, rest = rest[1:end], rest[end + 2:]
    else:
        parts = rest.split(":")
        if len(parts) == 3:
            host_ip, rest = parts[0], ":".join(parts[1:])
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidParameter(f'invalid host IP "{host_ip}" in "{spec}"') from None
    host, sep, container = rest.rpartition(":")
    if not sep:
        host, container = "", rest
    cports = _port_range(container, "container port")
    hports = _port_range(host, "host port") if host else []
    if hports and len(hports) != len(cports):
        if len(cports) == 1:  # docker: 8000-8010:80 picks one free port of the range
            raise InvalidParameter(f'host port range in "{spec}" is not supported for one '
                                   "container port")
        raise InvalidParameter(f'port ranges in "{spec}" must be of equal size')
    out = []
    for i, cport in enumerate(cports):
        out.append((f"{cport}/{proto}", spec,
                    {"HostIp": host_ip, "HostPort": str(hports[i]) if hports else ""}))
    return out


def parse_env(items: list[str], env_files: list[str]) -> list[str]:
    env: list[str] = []
    for path in env_files:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise InvalidParameter(f"cannot read env file {path}: {exc.strerror}") from None
        env += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    env += list(items)
    for e in env:
        if not e or e.startswith("="):
            raise InvalidParameter(f'invalid environment variable "{e}"')
    return env


def parse_volume(spec: str) -> dict:
    """`-v NAME:/path[:ro]` or `-v /host/path:/path[:ro]` -> a Docker Mount dict."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1].startswith("/"):
        raise InvalidParameter(f'invalid volume spec "{spec}": want SOURCE:/path[:ro]')
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidParameter(f'invalid mode "{mode}" in volume spec "{spec}"')
    kind = "bind" if parts[0].startswith("/") else "volume"
    return {"Type": kind, "Source": parts[0], "Target": parts[1], "ReadOnly": mode == "ro"}


def parse_mount(spec: str) -> dict:
    """`--mount type=volume|bind,source=X,target=/p[,readonly]`."""
    fields: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        fields[key.strip()] = value if sep else "true"
    kind = fields.get("type", "volume")
    if kind not in ("volume", "bind"):
        raise InvalidParameter(f'invalid mount type "{kind}": want volume or bind')
    source = fields.get("source") or fields.get("src") or ""
    target = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
    if not target.startswith("/"):
        raise InvalidParameter(f'invalid mount "{spec}": target must be an absolute path')
    if kind == "bind" and not source.startswith("/"):
        raise InvalidParameter(f'invalid mount "{spec}": a bind source must be absolute')
    ro = fields.get("readonly", fields.get("ro", "false")).lower() in ("true", "1")
    return {"Type": kind, "Source": source, "Target": target, "ReadOnly": ro}
