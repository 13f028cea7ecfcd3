"""``python -m benchmarks.gpu_check [--out DIR] [--dry-run] [--budget-s S] [--sections ...]``: the GPU check.

The check itself lives in the package, :mod:`dinofeat.doctor.gpu_check` (``dinofeat doctor --gpu`` runs it too);
this entry point of the source checkout keeps the command and its flags.
"""

from __future__ import annotations

import sys

from dinofeat.doctor.gpu_check import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python -m benchmarks.gpu_check")


if __name__ == "__main__":
    sys.exit(main())
