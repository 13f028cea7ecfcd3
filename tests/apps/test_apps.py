"""PCA, co-segmentation and part co-segmentation against the original's procedure, written out here from its
description (issue 12): scikit-learn-free PCA by SVD, faiss k-means with the elbow, saliency votes, GrabCut,
distances to part / background centroids and pydensecrf, on the original's per-image extraction."""

from __future__ import annotations

import cv2
import faiss
import numpy as np
import pytest
from conftest import LOAD
from PIL import Image

import dinofeat
from dinofeat.apps.common import train_kmeans
from dinofeat.apps.coseg import grabcut_refine, vote_salient
from dinofeat.apps.crf import dense_crf

SAMPLE = 4  # sample_interval for the tiny grids (the default 100 leaves too few training rows)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_coseg(feats, elbow=0.975, thresh=0.065, votes_percentage=75, sample=SAMPLE):
    """The original's co-segmentation procedure, step by step."""
    normed = [np.ascontiguousarray(f["desc"], dtype=np.float32).copy() for f in feats]
    for x in normed:
        faiss.normalize_L2(x)
    every = np.concatenate(normed)
    train = np.ascontiguousarray(np.concatenate([x[::sample] for x in normed]))
    means = []
    for k in range(1, 15):
        km = faiss.Kmeans(d=train.shape[1], k=k, niter=300, nredo=10)
        km.train(train)
        sq, lab = km.index.search(every, 1)
        means.append(sq.sum() / every.shape[0])
        if len(means) > 1 and means[-1] > elbow * means[-2]:
            break
    labels = np.split(lab[:, 0], np.cumsum([x.shape[0] for x in normed])[:-1])
    votes = np.zeros(k + 1)
    for lab_i, f in zip(labels, feats, strict=True):
        for c in range(k + 1):
            sel = f["sal"][lab_i == c]
            if sel.size and sel.mean() > thresh:
                votes[c] += 1
    salient = np.where(votes >= np.ceil(len(feats) * votes_percentage / 100))[0]
    cv2.setRNGSeed(0)  # a fresh process's OpenCV RNG, as the original ran
    masks, grids = [], []
    for lab_i, f in zip(labels, feats, strict=True):
        grid = np.isin(lab_i, salient).reshape(f["grid"])
        h, w = f["size"]
        resized = np.array(Image.fromarray(grid).resize((w, h), resample=Image.LANCZOS))
        kernel = np.ones((7, 7), np.uint8)
        sure_fg = cv2.erode(resized.astype(np.uint8), kernel)
        sure_bg = cv2.erode((~resized).astype(np.uint8), kernel)
        m = np.full((h, w), cv2.GC_PR_FGD, np.uint8)
        m[sure_bg == 1] = cv2.GC_BGD
        m[sure_fg == 1] = cv2.GC_FGD
        try:
            cv2.grabCut(np.array(f["pil"]), m, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
            mask = (m == cv2.GC_FGD) | (m == cv2.GC_PR_FGD)
        except cv2.error:
            mask = resized
        masks.append(mask)
        grids.append(grid)
    return {"normed": normed, "km": km, "labels": labels, "votes": votes, "salient": salient, "masks": masks,
            "grids": grids}


@pytest.fixture(scope="module")
def reference(original_features):
    return _reference_coseg(original_features)


def test_pca_matches_svd_up_to_sign(extractor, app_images, original_features):
    res = dinofeat.pca(app_images, load_size=LOAD, n_components=4, extractor=extractor)
    assert [r.components.shape for r in res] == [(7, 11, 4), (7, 7, 4), (7, 11, 4)]
    assert all(r.components.dtype == np.float32 for r in res)
    assert res[0].image.size == (48, 32) and res[1].image.size == (32, 32)
    x = np.concatenate([f["desc"] for f in original_features]).astype(np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:4].T
    got = np.concatenate([r.components.reshape(-1, 4) for r in res]).astype(np.float64)
    signs = np.sign((got * expected).sum(axis=0))
    assert np.abs(got - expected * signs).max() <= 1e-4 * np.abs(expected).max()


def test_cosegment_matches_original_procedure(extractor, extractor_s8, app_images, reference):
    res = dinofeat.cosegment(app_images, load_size=LOAD, sample_interval=SAMPLE, extractor=extractor)
    assert len(res) == 3
    for r, grid, mask, lab in zip(res, reference["grids"], reference["masks"], reference["labels"], strict=True):
        assert r.grid_mask.dtype == bool and r.mask.dtype == bool
        assert r.mask.shape == r.image.size[::-1]
        np.testing.assert_array_equal(r.labels.reshape(-1), lab)
        np.testing.assert_array_equal(r.grid_mask, grid)
        np.testing.assert_array_equal(r.mask, mask)
    # the deterministic weights give a non-trivial split: some patches are foreground, some are not
    grids = np.concatenate([g.reshape(-1) for g in reference["grids"]])
    assert 0 < grids.mean() < 1


def test_votes_and_grabcut_given_labels(reference, original_features):
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 5, f["desc"].shape[0]) for f in original_features]
    sal = [f["sal"] for f in original_features]
    votes, salient = vote_salient(labels, sal, 6, 0.3, 75, 3)
    expected = np.zeros(6)
    for lab, s in zip(labels, sal, strict=True):
        for c in range(6):
            if (lab == c).any() and s[lab == c].mean() > 0.3:
                expected[c] += 1
    np.testing.assert_array_equal(votes, expected)
    np.testing.assert_array_equal(salient, np.where(expected >= 3)[0])
    f = original_features[0]
    grid = np.zeros(f["grid"], bool)
    grid[1:6, 2:9] = True
    cv2.setRNGSeed(0)
    first = grabcut_refine(f["pil"], grid)
    assert first.shape == (32, 48) and 0 < first.mean() < 1
    assert not grabcut_refine(f["pil"], np.zeros(f["grid"], bool)).any()  # no foreground: GrabCut cannot run


def test_part_cosegment_matches_original_procedure(extractor, extractor_s8, app_images, reference,
                                                   original_features):
    res = dinofeat.part_cosegment(app_images, load_size=LOAD, sample_interval=SAMPLE, num_parts=3,
                                  extractor=extractor, saliency_extractor=extractor_s8, crf="pydensecrf")
    fg = [np.isin(lab, reference["salient"]) for lab in reference["labels"]]
    x = np.concatenate([n[m] for n, m in zip(reference["normed"], fg, strict=True)])
    train = np.ascontiguousarray(np.concatenate([n[m][::SAMPLE] for n, m in zip(reference["normed"], fg, strict=True)]))
    parts_km = faiss.Kmeans(d=x.shape[1], k=3, niter=300, nredo=10)
    parts_km.train(train)
    bg = [c for c in range(reference["km"].centroids.shape[0]) if c not in reference["salient"]]
    for r, n, f in zip(res, reference["normed"], original_features, strict=True):
        d_parts = ((n[:, None, :] - parts_km.centroids[None]) ** 2).sum(axis=2)
        d_bg = ((n[:, None, :] - reference["km"].centroids[None, bg]) ** 2).sum(axis=2).min(axis=1)[:, None]
        d = np.concatenate((d_parts, d_bg), axis=1).reshape(*f["grid"], 4)
        d = d - d.max(axis=-1, keepdims=True)
        before = np.argmin(d, axis=-1)
        np.testing.assert_array_equal(r.grid_parts, np.where(before == 3, -1, before))
        import pydensecrf.densecrf as dcrf
        import torch

        u = torch.nn.functional.interpolate(torch.from_numpy(d).permute(2, 0, 1)[None], size=f["size"])[0]
        u = np.ascontiguousarray(u.numpy().reshape(4, -1))
        crf = dcrf.DenseCRF2D(f["size"][1], f["size"][0], 4)
        crf.setUnaryEnergy(u)
        crf.addPairwiseGaussian(sxy=(3, 3), compat=50, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
        crf.addPairwiseBilateral(sxy=5, srgb=13, rgbim=np.array(f["pil"]), compat=15, kernel=dcrf.DIAG_KERNEL,
                                 normalization=dcrf.NORMALIZE_SYMMETRIC)
        after = np.argmax(np.array(crf.inference(10)), axis=0).reshape(f["size"])
        np.testing.assert_array_equal(r.parts, np.where(after == 3, -1, after))
        assert r.parts.shape == r.image.size[::-1] and r.num_parts == 3 and r.crf == "pydensecrf"


def test_torch_kmeans_and_crf_fast_modes():
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((3, 16))).astype(np.float32)
    x = _unit(centres[rng.integers(0, 3, 300)] + 0.05 * rng.standard_normal((300, 16))).astype(np.float32)
    ref, fast = train_kmeans(x, 3, method="faiss"), train_kmeans(x, 3, method="torch", niter=50, nredo=3)
    obj = [m.assign(x)[0].sum() for m in (ref, fast)]
    assert obj[1] <= 1.05 * obj[0]
    # a two-region image with noisy unaries: both CRFs recover the regions and agree with each other
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, 16:] = 200
    truth = np.zeros((24, 32), int)
    truth[:, 16:] = 1
    unary = np.stack([truth.astype(np.float32), 1 - truth.astype(np.float32)]) + rng.normal(0, 1.2, (2, 24, 32))
    unary = unary.astype(np.float32)
    noisy = (unary.argmin(axis=0) == truth).mean()
    a = dense_crf(unary, img, method="pydensecrf")
    b = dense_crf(unary, img, method="torch")
    assert (a == truth).mean() > max(noisy, 0.95) and (b == truth).mean() > max(noisy, 0.95)


def test_bad_inputs(extractor, app_images):
    with pytest.raises(dinofeat.InputError, match="n_components"):
        dinofeat.pca(app_images[:1], load_size=LOAD, n_components=0, extractor=extractor)
    with pytest.raises(dinofeat.InputError, match="kmeans"):
        dinofeat.cosegment(app_images, kmeans="bogus", extractor=extractor)
    with pytest.raises(dinofeat.InputError, match="images"):
        dinofeat.cosegment([], extractor=extractor)
    with pytest.raises(dinofeat.InputError, match="not found"):
        dinofeat.part_cosegment(["no/such/file.png"], extractor=extractor)
    with pytest.raises(dinofeat.InputError, match="crf"):
        dinofeat.part_cosegment(app_images, crf="bogus", extractor=extractor)
    with pytest.raises(dinofeat.InputError, match="bin=False"):
        dinofeat.cosegment(app_images, load_size=LOAD, bin=True, remove_outliers=True, extractor=extractor)


def test_outliers(extractor, app_images, reference):
    from dinofeat.apps.coseg import outlier_inliers

    cls = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]], np.float32)
    mean = cls.mean(axis=0)
    cos = cls @ mean / np.linalg.norm(cls, axis=1) / np.linalg.norm(mean)
    np.testing.assert_array_equal(outlier_inliers(cls, 0.7), cos >= 0.7)
    # every image an inlier: the CLS descriptors come from the same forward, the masks are the plain ones
    res = dinofeat.cosegment(app_images, load_size=LOAD, sample_interval=SAMPLE, extractor=extractor,
                             remove_outliers=True, outliers_thresh=-1.0)
    assert all(r.inlier for r in res)
    for r, mask in zip(res, reference["masks"], strict=True):
        np.testing.assert_array_equal(r.mask, mask)
