"""dinofeat: dense DINO-ViT descriptors and Best-Buddies correspondences, exact to the original, fast."""

from . import kernels
from .correspondences import Correspondences, find_correspondences
from .engine.extractor import Extractor, Features
from .errors import BackendUnavailableError, DinofeatError, InputError, OutputError, WeightsError
from .zoo import MODELS, ModelSpec, get_model_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "BackendUnavailableError",
    "Correspondences",
    "DinofeatError",
    "Extractor",
    "Features",
    "InputError",
    "ModelSpec",
    "OutputError",
    "WeightsError",
    "__version__",
    "find_correspondences",
    "get_model_spec",
    "kernels",
    "list_models",
]
