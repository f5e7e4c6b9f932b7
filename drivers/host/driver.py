"""The host driver (network "host"): the sandbox is the daemon's own namespace."""

from __future__ import annotations

from cnet.drivers.null.driver import NullDriver


class HostDriver(NullDriver):
    """Nothing to create: an endpoint on "host" adds no interface anywhere."""

    name = "host"
