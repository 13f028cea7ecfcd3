"""Running the strided ViT: preprocessing, backends, the `Extractor`."""

from .extractor import Extractor, Features

__all__ = ["Extractor", "Features"]
