"""`Matcher`: equality with `find_correspondences`, order and errors of `match_pairs`, batching, the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from testutil import EXAMPLES, rel_err

import dinofeat
from dinofeat.engine.extractor import Features
from dinofeat.pipeline import FeatureStore, Matcher
from dinofeat.pipeline.prefetch import prefetch_map

LOAD = 32
A, B = str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png")


@pytest.fixture(scope="module")
def crops():
    """Three different 48x40 crops (same preprocessed size: one forward batch)."""
    arr = np.asarray(Image.open(EXAMPLES / "img_b.png").convert("RGB"))
    return [np.ascontiguousarray(arr[y:y + 48, x:x + 40]) for y, x in ((100, 100), (200, 260), (300, 50))]


def _same(c1, c2):
    assert c1.points1 == c2.points1 and c1.points2 == c2.points2
    for f in ("nn_1", "sim_1", "nn_2", "sim_2", "bbs_mask", "fg_mask1", "fg_mask2", "saliency1", "saliency2"):
        assert torch.equal(getattr(c1, f), getattr(c2, f)), f
    assert np.array_equal(c1.kmeans_labels, c2.kmeans_labels)
    assert np.array_equal(np.asarray(c1.image1), np.asarray(c2.image1))


def test_match_equals_find_correspondences(extractor, crops):
    m = Matcher(extractor=extractor, load_size=LOAD, num_pairs=4)
    for im1, im2 in ((A, B), (B, A), (A, crops[0])):
        ref = dinofeat.find_correspondences(im1, im2, num_pairs=4, load_size=LOAD, extractor=extractor)
        assert len(ref) > 0
        _same(m.match(im1, im2), ref)
    assert m.forwards == 3  # A, B, the crop: each extracted once


def test_match_pairs_order_errors_and_one_to_many(extractor, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    m = Matcher(extractor=extractor, load_size=LOAD, num_pairs=3)
    pairs = [(A, B), (A, str(bad)), (B, A), (str(tmp_path / "missing.png"), B), (A, A)]
    results = list(m.match_pairs(pairs, batch_size=4, workers=2))
    assert [r.index for r in results] == list(range(5))
    assert [(r.image1, r.image2) for r in results] == pairs
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert "image2: cannot read" in results[1].error and "bad.png" in results[1].error
    assert "image1: file not found" in results[3].error and results[3].result is None
    _same(results[0].result, m.match(A, B))
    assert all(r.seconds >= 0 for r in results)
    assert m.forwards == 2  # two distinct good images
    many = m.match_one_to_many(A, [B, str(bad), A])
    assert [r.index for r in many] == [0, 1, 2] and [r.ok for r in many] == [True, False, True]
    assert many[0].result.points1 == results[0].result.points1
    assert m.forwards == 2  # all from the store


def test_batched_forward_equals_unbatched(extractor, crops):
    m = Matcher(extractor=extractor, load_size=LOAD)
    results = list(m.match_pairs([(crops[0], crops[1]), (crops[1], crops[2])], batch_size=4, workers=1))
    assert all(r.ok for r in results)
    assert m.forward_calls == 1 and m.forwards == 3  # one batch of three same-size images
    for crop in crops:
        batched = m.store.get(m.key(crop))
        f = extractor.extract(extractor.preprocess(crop, LOAD)[0], layer=9, facet="key", saliency=True)
        assert rel_err(batched.descriptors, f.descriptors) < 1e-4
        assert rel_err(batched.saliency, f.saliency) < 1e-4


def test_disk_store_verifies_entries(extractor, tmp_path):
    m = Matcher(extractor=extractor, load_size=LOAD, cache_dir=tmp_path)
    ref = m.features(A)
    path = m.store.path(m.key(A))
    assert path.is_file() and m.store.stats["disk_writes"] == 1
    warm = Matcher(extractor=extractor, load_size=LOAD, cache_dir=tmp_path)
    assert torch.equal(warm.features(A).descriptors, ref.descriptors) and warm.forwards == 0
    assert warm.store.stats["disk_hits"] == 1
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], good[:-40] + bytes(40 * [7])):  # truncated, then corrupted
        path.write_bytes(damaged)
        fresh = Matcher(extractor=extractor, load_size=LOAD, cache_dir=tmp_path)
        f = fresh.features(A)
        assert fresh.store.stats["corrupt"] == 1 and fresh.forwards == 1  # recomputed, not used
        assert torch.equal(f.descriptors, ref.descriptors) and torch.equal(f.saliency, ref.saliency)
        again = Matcher(extractor=extractor, load_size=LOAD, cache_dir=tmp_path)
        again.features(A)  # the rewritten entry is good again
        assert again.store.stats["disk_hits"] == 1 and again.store.stats["corrupt"] == 0 and again.forwards == 0


def _fake(n: int) -> Features:
    t = torch.zeros(1, n, 4)
    return Features(descriptors=t, saliency=torch.zeros(1, n), num_patches=(1, n), load_size=(8, 8),
                    per_layer={9: t}, image=Image.new("RGB", (2, 2)))


def test_memory_lru_is_bounded_by_bytes():
    one = 10 * 4 * 4 + 10 * 4 + 12  # keys + saliency + image bytes
    store = FeatureStore(cache_bytes=3 * one)
    for k in "abcd":
        store.put(k, _fake(10))
    assert store.memory_bytes == 3 * one and len(store) == 3
    assert store.get("a") is None and store.get("d") is not None
    store.put("big", _fake(1000))  # larger than the bound: not kept
    assert store.get("big") is None and store.memory_bytes <= 3 * one
    with pytest.raises(dinofeat.InputError, match="cache_bytes"):
        FeatureStore(cache_bytes=-1)


def test_disk_reads_keep_no_python_objects(tmp_path):
    """Reading an on-disk entry again and again holds no Python memory (safetensors 0.8.0's safe_open/get_tensor
    kept ~5 objects per tensor read: the many-pairs soak's slow RSS growth)."""
    import gc
    import tracemalloc

    store = FeatureStore(tmp_path, cache_bytes=0)  # memory cache off: every get() reads the file
    store.put("k", _fake(10))
    for _ in range(100):
        assert store.get("k") is not None
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):  # safe_open/get_tensor kept ~180 KB here
            store.get("k")
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, f"{grown} bytes of Python objects kept by 1000 reads"
    assert store.stats["disk_hits"] == 1100 and store.stats["corrupt"] == 0


def test_prefetch_is_ordered_and_bounded():
    consumed = []

    def items():
        for i in range(100):
            consumed.append(i)
            yield i

    it = prefetch_map(lambda x: x * x, items(), workers=2, depth=4)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    assert len(consumed) <= 3 + 4
    assert list(it) == [i * i for i in range(3, 100)]


def test_bad_arguments(extractor):
    m = Matcher(extractor=extractor, load_size=LOAD)
    with pytest.raises(dinofeat.InputError, match="batch_size"):
        list(m.match_pairs([(A, B)], batch_size=0))
    with pytest.raises(dinofeat.InputError, match="num_pairs"):
        Matcher(extractor=extractor, num_pairs=0)
    bad = list(m.match_pairs([(A,)]))
    assert bad[0].error.startswith("pairs[0]: expected (image1, image2)")


@pytest.mark.gpu
def test_cuda_overlap_stream_matches_serial(vits8_weights_file):
    ex = dinofeat.Extractor(weights=str(vits8_weights_file), backend="torch", device="cuda", progress=False)
    serial = Matcher(extractor=ex, load_size=LOAD, overlap=False)
    overlapped = Matcher(extractor=ex, load_size=LOAD, overlap=True)
    assert overlapped._match_stream is not None
    pairs = [(A, B), (B, A), (A, A)] * 12
    for r1, r2 in zip(serial.match_pairs(pairs), overlapped.match_pairs(pairs), strict=True):
        assert r1.ok and r2.ok
        assert r1.result.points1 == r2.result.points1 and r1.result.points2 == r2.result.points2
