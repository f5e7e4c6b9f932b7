"""What every API handler gets: the controller and the daemon's other services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnet.cnm.controller import Controller
from cnet.daemon.worker import KernelWorker


@dataclass
class App:
    controller: Controller
    worker: KernelWorker
    info: dict[str, Any] = field(default_factory=dict)  # extra fields of GET /info
    images: Any = None  # cnet.runtime image store (the runtime issue)
    volumes: Any = None
    containers: Any = None
    dns: Any = None  # cnet.dns.server.DNSServer
    cluster: Any = None  # cnet.cnm.cluster.Cluster when --cluster-store is given
