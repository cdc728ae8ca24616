"""``python -m ct3dzoo``: the command line (see :mod:`ct3dzoo.cli`)."""

import sys

from .cli import main

sys.exit(main())
