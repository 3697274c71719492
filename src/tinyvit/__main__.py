"""``python -m tinyvit``: the command line."""

import sys

from tinyvit.deploy.cli import main

sys.exit(main())
