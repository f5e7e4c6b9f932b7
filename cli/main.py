"""Entry point of `cnet` (the console script calls main()).

Imports nothing heavy: argv is first offered to the no-click fast path
(cli/fastpath.py); the click CLI (cli/app.py) is loaded only when that declines.
"""

from __future__ import annotations

import sys


def main() -> None:
    from cnet.cli.fastpath import run

    status = run(sys.argv[1:])
    if status is not None:
        raise SystemExit(status)
    from cnet.cli.app import cli

    cli(prog_name="cnet")
