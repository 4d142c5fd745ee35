"""``python -m loadtest.proxy_overhead``: see :mod:`loadtest.proxy_overhead.cli`."""

import sys

from loadtest.proxy_overhead.cli import main

sys.exit(main())
