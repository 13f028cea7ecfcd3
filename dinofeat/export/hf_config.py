"""Moved to `dinofeat.model.hf_config` (the model layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.model import hf_config as _moved

warnings.warn(
    "`dinofeat.export.hf_config` moved to `dinofeat.model.hf_config`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
