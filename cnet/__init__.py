"""cnet: a network-first container platform implementing Docker's CNM."""

__version__ = "0.1.0"
