"""The development benchmarks of a source checkout, found at run time.

`benchmarks/` (the re-implementation of the original code, the alternatives kornia / faiss / torch dense, the
kernel micro-benchmarks) lives at the repository root beside `dinofeat/` and is not in the wheel. `dinofeat bench`
uses it when the package runs from a source checkout (``benchmarks/__init__.py`` next to this package's directory)
and otherwise records those rows as skipped with :data:`NOT_INSTALLED` as the reason. The package never imports
`benchmarks` statically (import-linter's ``no-benchmarks`` contract): :func:`dev_module` imports it by name, from
`sys.path` when it is there (``python -m`` from the checkout, an editable install) or else from the checkout's
directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root when the package runs from a source checkout
PACKAGE = "benchmarks"
NOT_INSTALLED = "needs a source checkout (benchmarks/ is not installed)"


class DevBenchmarksUnavailable(Exception):
    """A development benchmark cannot run here; ``str(e)`` is the reason recorded in the output."""


def benchmarks_dir() -> Path | None:
    """``ROOT/benchmarks`` when this package runs from a source checkout, else None."""
    d = ROOT / PACKAGE
    return d if (d / "__init__.py").is_file() else None


def _load_package(d: Path):
    """The checkout's `benchmarks` package: from sys.path when it resolves to `d`, else loaded from `d`."""
    loaded = sys.modules.get(PACKAGE)
    if loaded is None:
        try:
            spec = importlib.util.find_spec(PACKAGE)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).resolve().parent == d.resolve():
            return importlib.import_module(PACKAGE)
        spec = importlib.util.spec_from_file_location(PACKAGE, d / "__init__.py", submodule_search_locations=[str(d)])
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
        return loaded
    paths = [Path(p).resolve() for p in getattr(loaded, "__path__", [])]
    if d.resolve() not in paths:
        raise DevBenchmarksUnavailable(f"another `{PACKAGE}` package is imported ({paths or loaded!r}), not the "
                                       f"checkout's {d}")
    return loaded


def dev_module(name: str):
    """``benchmarks.<name>`` of the source checkout; raises :class:`DevBenchmarksUnavailable` with the reason."""
    d = benchmarks_dir()
    if d is None:
        raise DevBenchmarksUnavailable(NOT_INSTALLED)
    try:
        _load_package(d)
        return importlib.import_module(f"{PACKAGE}.{name}")
    except DevBenchmarksUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - an optional row: record why, never abort the run
        raise DevBenchmarksUnavailable(f"benchmarks/{name}.py does not import ({type(e).__name__}: {e})") from e
