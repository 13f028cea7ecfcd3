"""Visualisation (base layer): drawing only -- arrays and duck-typed results in, PIL images / PNG files out.

Owns: `pairs` (correspondences side by side, output-path checks), `apps` (PCA, co-segmentation, parts),
`evaluation` (keypoint transfers, correspondences coloured by their error). Writes go through
`dinofeat.io.atomic_save` (re-exported here for old callers).
May import: `dinofeat.errors`, `dinofeat.io` and third-party imaging libraries; nothing else of dinofeat, so every
layer may draw.
"""

from ..io import atomic_save
from .apps import checkerboard, draw_cosegmentation, draw_mask, draw_parts, draw_pca, part_colors, pca_images
from .evaluation import draw_homography, draw_keypoint_samples
from .pairs import check_output_path, draw_correspondences, pair_colors

__all__ = ["atomic_save", "check_output_path", "checkerboard", "draw_correspondences", "draw_cosegmentation",
           "draw_homography", "draw_keypoint_samples", "draw_mask", "draw_parts", "draw_pca", "pair_colors",
           "part_colors", "pca_images"]
