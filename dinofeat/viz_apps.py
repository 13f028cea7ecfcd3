"""Moved to `dinofeat.viz.apps`; this path stays for one release and warns."""

import sys
import warnings

from dinofeat.viz import apps as _moved

warnings.warn(
    "`dinofeat.viz_apps` moved to `dinofeat.viz.apps`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
