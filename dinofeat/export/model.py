"""Moved to `dinofeat.model.vit` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import vit as _moved

warnings.warn(
    "`dinofeat.export.model` moved to `dinofeat.model.vit`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
