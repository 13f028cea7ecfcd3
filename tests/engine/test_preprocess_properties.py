"""Property test (hypothesis): any valid image array -> a batch of the documented shape, dtype and range."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dinofeat.engine.preprocess import resized_size

SHAPES = st.sampled_from(["hw", "hw1", "hw3", "hw4"])


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 40), w=st.integers(1, 40), layout=SHAPES, dtype=st.sampled_from([np.uint8, np.uint16]),
       load_size=st.one_of(st.none(), st.integers(8, 40)), contiguous=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_any_valid_array_gives_a_documented_batch(extractor, h, w, layout, dtype, load_size, contiguous, seed):
    rng = np.random.default_rng(seed)
    channels = {"hw": (), "hw1": (1,), "hw3": (3,), "hw4": (4,)}[layout]
    img = rng.integers(0, np.iinfo(dtype).max, size=(h, w, *channels), endpoint=True, dtype=dtype)
    if not contiguous:  # a strided view of a larger array, as slicing gives
        big = np.zeros((2 * h, w, *channels), dtype)
        big[::2] = img
        img = big[::2]
    batch, pil = extractor.preprocess(img, load_size=load_size)
    new_w, new_h = resized_size(w, h, load_size)
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
    assert tuple(batch.shape) == (1, 3, new_h, new_w) and pil.size == (new_w, new_h) and pil.mode == "RGB"
    if load_size is not None:
        assert min(new_h, new_w) == load_size  # the shorter side becomes load_size
    mean = torch.tensor(extractor.spec.mean)[:, None, None]
    std = torch.tensor(extractor.spec.std)[:, None, None]
    pixels = batch[0] * std + mean  # back to [0, 1]
    assert torch.isfinite(batch).all()
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    # the batch is exactly the returned PIL image, normalised
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy() * 255, np.asarray(pil, np.float32), atol=1e-3)
