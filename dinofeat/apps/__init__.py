"""Apps layer: the method's applications on the engine: PCA views, co-segmentation, part co-segmentation, PCK and
homography evaluation, precision comparison.

Owns: `pca`, `cosegment`, `part_cosegment` (pca.py, coseg.py, parts.py, crf.py over common.py), the evaluations
(spair.py, kp_data.py, keypoints.py, homography.py). Their commands live in `dinofeat.cli` (apps.py,
evaluation.py); `dinofeat bench precision` in `dinofeat.bench.precision`.
May import: pipeline, correspondences, engine, export | testing, model, kernels and the base layer; today all of
those. Not stream or anything above it.
Heavy dependencies (scikit-learn, faiss, OpenCV, pydensecrf) are imported inside the functions that use them.
"""

from .coseg import CosegResult, cosegment
from .parts import PartsResult, part_cosegment
from .pca import PcaResult, pca

__all__ = ["CosegResult", "PartsResult", "PcaResult", "cosegment", "part_cosegment", "pca"]
