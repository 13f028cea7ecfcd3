"""Moved to `dinofeat.viz.evaluation`; this path stays for one release and warns."""

import sys
import warnings

from dinofeat.viz import evaluation as _moved

warnings.warn(
    "`dinofeat.viz_eval` moved to `dinofeat.viz.evaluation`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
