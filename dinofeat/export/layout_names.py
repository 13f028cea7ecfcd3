"""Moved to `dinofeat.model.layout_names` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import layout_names as _moved

warnings.warn(
    "`dinofeat.export.layout_names` moved to `dinofeat.model.layout_names`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
