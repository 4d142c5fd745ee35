"""``python -m loadtest.soak``: see :mod:`loadtest.soak.cli`."""

import sys

from loadtest.soak.cli import main

sys.exit(main())
