"""``python -m loadtest.calibration``: see :mod:`loadtest.calibration.cli`."""

import sys

from loadtest.calibration.cli import main

sys.exit(main())
