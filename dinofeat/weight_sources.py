"""Moved to `dinofeat.model.weight_sources` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import weight_sources as _moved

warnings.warn(
    "`dinofeat.weight_sources` moved to `dinofeat.model.weight_sources`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
