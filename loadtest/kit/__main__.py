"""``python -m loadtest.kit``: the same as ``fairgate loadtest``."""

import sys

from loadtest.kit.cli import main

sys.exit(main())
