"""``python -m loadtest.stream_bench``: see :mod:`loadtest.stream_bench.cli`."""

import sys

from loadtest.stream_bench.cli import main

sys.exit(main())
