"""Moved to `dinofeat.model.layouts` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import layouts as _moved

warnings.warn(
    "`dinofeat.export.layouts` moved to `dinofeat.model.layouts`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
