"""cnet: a network-first container platform implementing Docker's CNM.

The repository keeps the product's top-level folders (cnm/, cli/, dns/, ...),
installed as subpackages of `cnet`. When Python imports this file from the
source tree instead (a script or `python -c` run from the repository root,
where the current directory comes first on sys.path), the repository root is
added to the package path so `cnet.cli` still means `<repo>/cli`.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "cnm", "controller.py")) and _root not in __path__:
    __path__.append(_root)
