"""``python -m flowsolve``: the ``flowsolve`` command."""

import sys

from .cli import main

sys.exit(main())
