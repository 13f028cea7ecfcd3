"""Defaults of the applications, in one place: the original scripts' values (pca.py, cosegmentation.py,
part_cosegmentation.py of ShirAmir/dino-vit-features) plus dinofeat's own options."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PcaDefaults:
    load_size: int = 224  # shorter image side after resizing (None keeps the size)
    layer: int = 11  # block whose facet is the descriptor (0-based)
    facet: str = "key"  # key | query | value | token
    bin: bool = False  # log-binned (17 bins) descriptors
    stride: int = 4  # patch-embedding stride
    n_components: int = 4  # principal components kept
    all_together: bool = True  # one PCA fitted on all images (False: one per image)


@dataclass(frozen=True)
class CosegDefaults:
    elbow: float = 0.975  # stop adding clusters when the mean squared distance drops by less than this factor
    load_size: int = 224
    layer: int = 11
    facet: str = "key"
    bin: bool = False
    thresh: float = 0.065  # a cluster is salient in an image when its mean saliency there exceeds this
    stride: int = 4
    votes_percentage: float = 75  # a cluster is foreground when >= this % of the (inlier) images vote for it
    sample_interval: int = 100  # k-means trains on every sample_interval-th descriptor of each image
    remove_outliers: bool = False  # drop images whose CLS descriptor is far from the mean (needs bin=False)
    outliers_thresh: float = 0.7  # cosine to the mean CLS descriptor below which an image is an outlier
    low_res_saliency_maps: bool = True  # saliency from a stride-8 forward at half the load size
    max_clusters: int = 14  # the elbow search tries k = 1 .. max_clusters
    kmeans_niter: int = 300  # faiss.Kmeans niter
    kmeans_nredo: int = 10  # faiss.Kmeans nredo (best of this many runs)
    grabcut_kernel: int = 7  # erosion kernel (square) giving GrabCut's sure foreground / background
    grabcut_iters: int = 5  # cv2.grabCut iterations


@dataclass(frozen=True)
class PartsDefaults:
    num_parts: int = 4  # parts (k-means clusters of the foreground descriptors)
    num_crop_augmentations: int = 0  # random 95% crops (+ their flips) per image added to the clustering
    three_stages: bool = False  # fg/bg, then an elbow over foreground clusters, then the parts of common ones
    elbow_second_stage: float = 0.94  # elbow factor of the second stage (three_stages only)
    crf_iters: int = 10  # mean-field iterations of the dense CRF
    crf_gaussian_sxy: float = 3.0  # positional kernel width (pixels)
    crf_gaussian_compat: float = 50.0  # Potts weight of the positional kernel
    crf_bilateral_sxy: float = 5.0  # bilateral kernel: position width (pixels)
    crf_bilateral_srgb: float = 13.0  # bilateral kernel: colour width (0..255)
    crf_bilateral_compat: float = 15.0  # Potts weight of the bilateral kernel


@dataclass(frozen=True)
class SpairDefaults:
    load_size: int = 224
    layer: int = 9  # the paper's Table 3 setting: layer 9 key, log-binned, stride 4
    facet: str = "key"
    bin: bool = True
    stride: int = 4
    pairs_per_category: int = 20  # randomly sampled test pairs per category (360 over SPair-71k's 18)
    alpha: float = 0.1  # PCK threshold factor
    seed: int = 0  # pair sampling seed
    split: str = "test"  # PairAnnotation/<split>


PCA = PcaDefaults()
COSEG = CosegDefaults()
PARTS = PartsDefaults()
SPAIR = SpairDefaults()
