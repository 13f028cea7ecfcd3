"""`python -m dinofeat.cli` (as `python -m dinofeat`)."""

import sys

from . import main

sys.exit(main())
