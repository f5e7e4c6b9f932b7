"""/etc/hosts, /etc/hostname and /etc/resolv.conf that cnet writes for a container."""

from __future__ import annotations

import os


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # bind mounts see the new inode only after restart; fine


def hosts(addresses: list[str], hostname: str, names: list[str]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    aliases = " ".join(dict.fromkeys([hostname, *names]))
    lines += [f"{addr}\t{aliases}" for addr in addresses]
    return "\n".join(lines) + "\n"


def resolv_conf(nameservers: list[str], search: list[str], options: list[str]) -> str:
    lines = [f"nameserver {ns}" for ns in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def host_resolv(path: str = "/etc/resolv.conf") -> tuple[list[str], list[str]]:
    """The host's nameservers (loopback ones dropped: unreachable from a container) and
    search domains."""
    servers: list[str] = []
    search: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    if not parts[1].startswith("127.") and parts[1] != "::1":
                        servers.append(parts[1])
                elif parts and parts[0] in ("search", "domain"):
                    search = parts[1:]
    except OSError:
        pass
    return servers, search


def write_all(directory: str, *, hostname: str, addresses: list[str], names: list[str],
              nameservers: list[str], search: list[str], options: list[str]) -> dict[str, str]:
    """Write the three files into `directory`; returns {container path: host path}."""
    os.makedirs(directory, exist_ok=True)
    files = {
        "/etc/hosts": hosts(addresses, hostname, names),
        "/etc/hostname": hostname + "\n",
        "/etc/resolv.conf": resolv_conf(nameservers, search, options),
    }
    out = {}
    for target, text in files.items():
        path = os.path.join(directory, os.path.basename(target))
        _write(path, text)
        out[target] = path
    return out
