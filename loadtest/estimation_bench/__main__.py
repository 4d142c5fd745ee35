"""``python -m loadtest.estimation_bench``: see :mod:`loadtest.estimation_bench.cli`."""

import sys

from loadtest.estimation_bench.cli import main

sys.exit(main())
