"""``python -m dinofeat.doctor``: the same as `dinofeat doctor`."""

import sys

from .command import main

sys.exit(main())
