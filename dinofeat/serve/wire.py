"""The tensors of a served match, one table used by the repository generator, the Python models and the client.

`dinofeat_match` returns every field of `Correspondences` except the images and the saliency maps (those are the
ViT's `saliency` outputs, which the ensemble also returns as `saliency_1` / `saliency_2`); the client rebuilds a
`Correspondences` equal to `find_correspondences` on the same (resized) images.
"""

from __future__ import annotations

import numpy as np

# (name, Triton data type, numpy dtype, dims without batch; "T" = tokens of one image, -1 = variable)
FIELDS = (
    ("points1", "TYPE_INT64", np.int64, (-1, 2)),       # (K, 2) (y, x) pixels in image 1 of the returned pairs
    ("points2", "TYPE_INT64", np.int64, (-1, 2)),       # (K, 2) their partners in image 2
    ("similarities", "TYPE_FP32", np.float32, (-1,)),   # (K,) cosine of each returned pair
    ("num_best_buddies", "TYPE_INT64", np.int64, (1,)),  # foreground best buddies (what k-means clusters)
    ("indices1", "TYPE_INT64", np.int64, (-1,)),        # (K,) token indices in image 1
    ("indices2", "TYPE_INT64", np.int64, (-1,)),        # (K,) token indices in image 2
    ("kmeans_labels", "TYPE_INT32", np.int32, (-1,)),   # (N_bb,) cluster of each surviving best buddy
    ("nn_1", "TYPE_INT64", np.int64, ("T",)),           # nearest neighbour in image 2 of each patch of image 1
    ("sim_1", "TYPE_FP32", np.float32, ("T",)),
    ("nn_2", "TYPE_INT64", np.int64, ("T",)),
    ("sim_2", "TYPE_FP32", np.float32, ("T",)),
    ("bbs_mask", "TYPE_BOOL", np.bool_, ("T",)),
    ("mutual_mask", "TYPE_BOOL", np.bool_, ("T",)),
    ("fg_mask1", "TYPE_BOOL", np.bool_, ("T",)),
    ("fg_mask2", "TYPE_BOOL", np.bool_, ("T",)),
)
SALIENCY = ("saliency_1", "saliency_2")  # the ensemble's pass-through of each image's saliency (T,)


def dims(field_dims: tuple, tokens: int) -> list[int]:
    return [tokens if d == "T" else int(d) for d in field_dims]


def encode(c) -> dict[str, np.ndarray]:
    """`Correspondences` -> {name: array} in `FIELDS` order (no batch axis)."""
    k = len(c.points1)
    idx1 = np.asarray(c.indices1, dtype=np.int64)
    values = {
        "points1": np.asarray(c.points1, dtype=np.int64).reshape(k, 2),
        "points2": np.asarray(c.points2, dtype=np.int64).reshape(k, 2),
        "similarities": c.sim_1.detach().cpu().numpy()[idx1].astype(np.float32),
        "num_best_buddies": np.array([int(c.bbs_mask.sum())], dtype=np.int64),
        "indices1": idx1, "indices2": np.asarray(c.indices2, dtype=np.int64),
        "kmeans_labels": np.asarray(c.kmeans_labels, dtype=np.int32),
    }
    for name, _, dtype, _ in FIELDS:
        if name not in values:
            values[name] = getattr(c, name).detach().cpu().numpy().astype(dtype)
    return values


def decode(arrays: dict[str, np.ndarray], image1, image2, num_patches: tuple[int, int]):
    """{name: array} (one item, no batch axis; plus `SALIENCY`) -> `Correspondences` for the given images."""
    import torch

    from ..correspondences import Correspondences

    def tensor(name):
        return torch.from_numpy(np.array(arrays[name]))  # a writable copy of the response buffer

    grid = tuple(int(v) for v in num_patches)
    return Correspondences(
        points1=[(int(y), int(x)) for y, x in arrays["points1"].reshape(-1, 2).tolist()],
        points2=[(int(y), int(x)) for y, x in arrays["points2"].reshape(-1, 2).tolist()],
        image1=image1, image2=image2, nn_1=tensor("nn_1"), sim_1=tensor("sim_1"), nn_2=tensor("nn_2"),
        sim_2=tensor("sim_2"), bbs_mask=tensor("bbs_mask"), mutual_mask=tensor("mutual_mask"),
        fg_mask1=tensor("fg_mask1"), fg_mask2=tensor("fg_mask2"), saliency1=tensor(SALIENCY[0]),
        saliency2=tensor(SALIENCY[1]), kmeans_labels=np.asarray(arrays["kmeans_labels"], dtype=np.int32),
        indices1=np.asarray(arrays["indices1"], dtype=np.int64),
        indices2=np.asarray(arrays["indices2"], dtype=np.int64), num_patches1=grid, num_patches2=grid,
    )


__all__ = ["FIELDS", "SALIENCY", "decode", "dims", "encode"]
