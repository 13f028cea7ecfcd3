"""The `integration` marker: the default `pytest` deselects those tests; `pytest -m integration` runs them.

Tests that need the heavy integration packages (Ray, Triton, transformers, ...), real pretrained weights or long
real-data runs carry ``@pytest.mark.integration`` (or ``pytestmark = pytest.mark.integration``). A plain `pytest`
(no ``-m``) leaves them out and says how many it left out and how to run them; any ``-m`` expression chooses
itself (``-m integration``: only them; ``-m "integration or not integration"``: all), and so does
``DINOFEAT_INTEGRATION=1``. CI (`.ci/run`) runs both invocations. No torch import here (`test_integration_marker`
runs these hooks in a child pytest).
"""

from __future__ import annotations

import os

import pytest

MARKER = "integration"
ENV = "DINOFEAT_INTEGRATION"
_COUNT = pytest.StashKey[int]()


def deselect_integration(config, items) -> None:
    """Drop `integration` tests from `items` unless ``-m`` or DINOFEAT_INTEGRATION=1 asks otherwise (in place)."""
    if config.option.markexpr or os.environ.get(ENV) == "1":
        return
    keep = [item for item in items if MARKER not in item.keywords]
    dropped = [item for item in items if MARKER in item.keywords]
    config.stash[_COUNT] = len(dropped)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def integration_summary(terminalreporter, config) -> None:
    """One line at the end of a default run: how many integration tests were left out and how to run them."""
    count = config.stash.get(_COUNT, 0)
    if count:
        terminalreporter.write_line(f"{count} integration tests deselected (heavy packages, real weights): run them "
                                    f"with `pytest -m integration`")
