"""dinofeat: dense DINO-ViT descriptors and Best-Buddies correspondences, exact to the original, fast."""

from . import kernels
from .apps import CosegResult, PartsResult, PcaResult, cosegment, part_cosegment, pca
from .correspondences import Correspondences, find_correspondences
from .engine.extractor import Extractor, Features
from .errors import (
    BackendError,
    BackendUnavailableError,
    DinofeatError,
    InputError,
    OutputError,
    WeightsError,
)
from .model.zoo import MODELS, ModelSpec, get_model_spec, list_models
from .pipeline import Matcher, PairResult
from .version import __version__

__all__ = [
    "MODELS",
    "BackendError",
    "BackendUnavailableError",
    "CosegResult",
    "Correspondences",
    "DinofeatError",
    "Extractor",
    "Features",
    "InputError",
    "Matcher",
    "ModelSpec",
    "OutputError",
    "PairResult",
    "PartsResult",
    "PcaResult",
    "WeightsError",
    "__version__",
    "cosegment",
    "find_correspondences",
    "get_model_spec",
    "kernels",
    "list_models",
    "part_cosegment",
    "pca",
]
