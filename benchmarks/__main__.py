"""``python -m benchmarks``: see :func:`benchmarks.main`."""

import sys

from . import main

sys.exit(main())
