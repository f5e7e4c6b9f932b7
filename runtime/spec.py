"""The OCI runtime spec (config.json) of a container, as runc reads it.

Docker's defaults where it has them: capability set, masked and read-only
paths, /dev and friends. No rlimits unless asked: this machine lacks
CAP_SYS_RESOURCE, and an rlimit above the hard limit fails at exec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnet.cnm.errors import InvalidParameter

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
ALL_CAPS = DEFAULT_CAPS + [
    "CAP_DAC_READ_SEARCH", "CAP_LINUX_IMMUTABLE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_LEASE", "CAP_AUDIT_CONTROL", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
]

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def normalize_caps(names: list[str]) -> list[str]:
    out = []
    for name in names:
        cap = name.upper()
        cap = cap if cap.startswith("CAP_") else "CAP_" + cap
        if cap != "CAP_ALL" and cap not in ALL_CAPS:
            raise InvalidParameter(f"unknown capability: {name}")
        out.append(cap)
    return out


def capabilities(cap_add: list[str], cap_drop: list[str]) -> list[str]:
    add, drop = normalize_caps(cap_add), normalize_caps(cap_drop)
    caps = list(ALL_CAPS) if "CAP_ALL" in add else list(DEFAULT_CAPS)
    caps += [c for c in add if c != "CAP_ALL" and c not in caps]
    if "CAP_ALL" in drop:
        return [c for c in add if c != "CAP_ALL"]
    return [c for c in caps if c not in drop]


@dataclass
class Mount:
    destination: str
    source: str
    readonly: bool = False

    def to_oci(self) -> dict:
        opts = ["rbind", "ro" if self.readonly else "rw"]
        return {"destination": self.destination, "type": "bind", "source": self.source,
                "options": opts}


@dataclass
class ProcessSpec:
    args: list[str]
    env: list[str]
    cwd: str = "/"
    terminal: bool = False
    uid: int = 0
    gid: int = 0
    caps: list[str] = field(default_factory=lambda: list(DEFAULT_CAPS))


@dataclass
class Resources:
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None

    def to_oci(self) -> dict:
        out: dict = {"devices": [{"allow": False, "access": "rwm"}]}
        if self.memory:
            out["memory"] = {"limit": self.memory}
        if self.cpus:
            period = 100000
            out["cpu"] = {"period": period, "quota": int(self.cpus * period)}
        if self.pids:
            out["pids"] = {"limit": self.pids}
        return out


def _base_mounts() -> list[dict]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]


def build_spec(*, process: ProcessSpec, rootfs: str, readonly: bool, hostname: str,
               netns: str, mounts: list[Mount], resources: Resources,
               cgroups_path: str) -> dict:
    caps = process.caps
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": process.terminal,
            "user": {"uid": process.uid, "gid": process.gid},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
        },
        "root": {"path": rootfs, "readonly": readonly},
        "hostname": hostname,
        "mounts": _base_mounts() + [m.to_oci() for m in mounts],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": netns},
            ],
            "cgroupsPath": cgroups_path,
            "resources": resources.to_oci(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
