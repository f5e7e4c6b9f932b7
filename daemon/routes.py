"""Import every API module so that their routes are registered."""

from cnet.daemon import api, api_containers, api_images, api_network, api_volumes  # noqa: F401
