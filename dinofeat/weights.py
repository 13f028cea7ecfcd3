"""Moved to `dinofeat.model.weights` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import weights as _moved

warnings.warn(
    "`dinofeat.weights` moved to `dinofeat.model.weights`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
