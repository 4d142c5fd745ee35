"""``python -m loadtest.quota_bench``: see :mod:`loadtest.quota_bench.cli`."""

import sys

from loadtest.quota_bench.cli import main

sys.exit(main())
