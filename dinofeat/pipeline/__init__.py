"""Throughput layer above the engine: many pairs through one model.

`Matcher` (matcher.py), `FeatureStore` (store.py), `PairResult` / `RESULT_SCHEMA` / `ResultWriter` /
`result_row` (results.py), `prefetch_map` (prefetch.py) and the batch `dinofeat match` forms (cli.py).
Imports the engine, kernels and `correspondences`; nothing below imports this package. No side effects at
import (pyarrow is imported when a results file is written or read).
"""

from .matcher import DEFAULTS, Matcher, MatcherConfig
from .results import COLUMNS, PairResult, ResultWriter, read_results, result_row, result_schema
from .store import FeatureStore, feature_key, image_digest

__all__ = ["COLUMNS", "DEFAULTS", "FeatureStore", "Matcher", "MatcherConfig", "PairResult", "ResultWriter",
           "feature_key", "image_digest", "read_results", "result_row", "result_schema"]
