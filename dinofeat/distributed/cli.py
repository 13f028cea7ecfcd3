"""Moved to `dinofeat.cli.distributed` (the command-line layer); this path stays for one release and warns."""

import sys
import warnings

from dinofeat.cli import distributed as _moved

warnings.warn(
    f"`{__name__}` moved to `{_moved.__name__}`; import it from there (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
