"""``python -m loadtest.admission_bench``: see :mod:`loadtest.admission_bench.cli`."""

import sys

from loadtest.admission_bench.cli import main

sys.exit(main())
