"""Import every API module so that their routes are registered."""

from cnet.daemon import (  # noqa: F401
    api,
    api_capture,
    api_containers,
    api_dns,
    api_images,
    api_network,
    api_nodes,
    api_ports,
    api_topology,
    api_trace,
    api_volumes,
)
