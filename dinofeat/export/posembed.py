"""Moved to `dinofeat.model.posembed` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import posembed as _moved

warnings.warn(
    "`dinofeat.export.posembed` moved to `dinofeat.model.posembed`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
