"""Moved to `dinofeat.bench.precision` (the bench layer); this path stays for one release and warns.

A deprecation alias only: it is resolved by name (importlib) when someone imports the old path, so the apps layer
itself never depends on the bench layer above it.
"""

import importlib
import sys
import warnings

warnings.warn(
    "`dinofeat.apps.precision` moved to `dinofeat.bench.precision`; import it from there (the old path goes in the "
    "next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("dinofeat.bench.precision")
