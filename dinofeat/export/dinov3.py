"""Moved to `dinofeat.model.dinov3` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import dinov3 as _moved

warnings.warn(
    "`dinofeat.export.dinov3` moved to `dinofeat.model.dinov3`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
