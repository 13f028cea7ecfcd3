"""Pipeline layer: many pairs through one model.

Owns: `Matcher` (matcher.py), `FeatureStore` (store.py), `PairResult` / `RESULT_SCHEMA` / `ResultWriter` /
`result_row` (results.py: the Parquet schema), `prefetch_map` (prefetch.py) its front-end, the batch `dinofeat
match` forms, is `dinofeat.cli.batch`.
May import: correspondences, engine, export | testing, model, kernels and the base layer (errors, io, limits,
progress, version, config, viz); today correspondences, engine, model, errors, io and viz. Nothing below imports
this package. No side effects at import (pyarrow is imported when a results file is written or read).
"""

from .matcher import DEFAULTS, Matcher, MatcherConfig
from .results import COLUMNS, PairResult, ResultWriter, read_results, result_row, result_schema
from .store import FeatureStore, feature_key, image_digest

__all__ = ["COLUMNS", "DEFAULTS", "FeatureStore", "Matcher", "MatcherConfig", "PairResult", "ResultWriter",
           "feature_key", "image_digest", "read_results", "result_row", "result_schema"]
