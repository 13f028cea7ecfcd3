"""The method's applications on the engine: PCA views, co-segmentation, part co-segmentation, PCK evaluation.

Heavy dependencies (scikit-learn, faiss, OpenCV, pydensecrf) are imported inside the functions that use them.
"""

from .coseg import CosegResult, cosegment
from .parts import PartsResult, part_cosegment
from .pca import PcaResult, pca

__all__ = ["CosegResult", "PartsResult", "PcaResult", "cosegment", "part_cosegment", "pca"]
