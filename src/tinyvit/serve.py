"""`tinyvit.serve`: the documented import path of :mod:`tinyvit.deploy.serve`; ``python -m
tinyvit.serve MODEL …`` is ``tinyvit serve MODEL …``."""

import sys

from tinyvit.deploy.serve import *  # noqa: F403
from tinyvit.deploy.serve import __all__  # noqa: F401

if __name__ == "__main__":  # the server's classes come from the imported module, so its workers unpickle them
    from tinyvit.deploy.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
