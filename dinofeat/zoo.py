"""Moved to `dinofeat.model.zoo` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import zoo as _moved

warnings.warn(
    "`dinofeat.zoo` moved to `dinofeat.model.zoo`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
