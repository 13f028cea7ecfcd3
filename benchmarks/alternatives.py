"""What a user would otherwise pick for the Best-Buddies stage, run on the same descriptors.

* torch dense: one ``normalize(d1) @ normalize(d2).T`` and two ``max`` passes (``bench_kernels.dense_best_buddies``);
* kornia ``match_mnn`` on unit rows (L2 nearest neighbours of unit vectors are cosine nearest neighbours);
* faiss exact inner-product 1-NN (``IndexFlatIP``) both ways on unit rows.

Each returns the mutual pairs so their agreement with dinofeat's Best Buddies can be recorded
(:func:`dinofeat.bench.measures.agreement`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.bench.measures import pairs

ALTERNATIVES = ("torch_dense", "kornia_match_mnn", "faiss_flat_ip")


def unavailable(name: str) -> str:
    """Why alternative `name` cannot run here ('' if it can)."""
    mod = {"torch_dense": None, "kornia_match_mnn": "kornia", "faiss_flat_ip": "faiss"}[name]
    if mod is None:
        return ""
    try:
        __import__(mod)
    except Exception as e:  # noqa: BLE001
        return f"{mod} not installed ({type(e).__name__}: {e}); pip install 'dinofeat[bench]'"
    return ""


def torch_dense(d1: torch.Tensor, d2: torch.Tensor) -> set[tuple[int, int]]:
    from .bench_kernels import dense_best_buddies

    nn_1, _, _, _, mask = dense_best_buddies(d1, d2)
    return pairs(nn_1, mask)


def kornia_match_mnn(d1: torch.Tensor, d2: torch.Tensor) -> set[tuple[int, int]]:
    import kornia.feature as KF

    _, idx = KF.match_mnn(F.normalize(d1, dim=1), F.normalize(d2, dim=1))
    return {(int(a), int(b)) for a, b in idx.cpu().tolist()}


def faiss_flat_ip(d1: torch.Tensor, d2: torch.Tensor) -> set[tuple[int, int]]:
    import faiss

    n1 = np.ascontiguousarray(F.normalize(d1, dim=1).cpu().numpy(), dtype=np.float32)
    n2 = np.ascontiguousarray(F.normalize(d2, dim=1).cpu().numpy(), dtype=np.float32)
    c = n1.shape[1]
    index2 = faiss.IndexFlatIP(c)
    index2.add(n2)
    _, nn_1 = index2.search(n1, 1)
    index1 = faiss.IndexFlatIP(c)
    index1.add(n1)
    _, nn_2 = index1.search(n2, 1)
    nn_1, nn_2 = nn_1[:, 0], nn_2[:, 0]
    mutual = nn_2[nn_1] == np.arange(len(nn_1))
    return {(int(i), int(nn_1[i])) for i in np.nonzero(mutual)[0]}


RUNNERS = {"torch_dense": torch_dense, "kornia_match_mnn": kornia_match_mnn, "faiss_flat_ip": faiss_flat_ip}
