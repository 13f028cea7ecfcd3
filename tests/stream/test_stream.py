"""`FrameStream`: results equal `find_correspondences` on the same frames; encodings, zero-copy input, no host
sync while enqueueing, sizes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streamutil import LOAD

import dinofeat
from dinofeat.errors import InputError
from dinofeat.stream import ExtractorConfig, FrameStream, MatchConfig
from dinofeat.stream.frames import as_tensor

NUM_PAIRS = 5


def make_stream(extractor, **kw) -> FrameStream:
    kw.setdefault("frame_size", (60, 80))
    return FrameStream(ExtractorConfig(load_size=LOAD), MatchConfig(num_pairs=NUM_PAIRS), extractor=extractor, **kw)


def reference_match(extractor, image1, image2):
    return dinofeat.find_correspondences(image1, image2, num_pairs=NUM_PAIRS, load_size=LOAD, extractor=extractor)


def assert_same(result, corr):
    assert len(corr) > 0, "the test frames must give pairs"
    np.testing.assert_array_equal(result.points1.numpy(), np.asarray(corr.points1).reshape(-1, 2))
    np.testing.assert_array_equal(result.points2.numpy(), np.asarray(corr.points2).reshape(-1, 2))
    np.testing.assert_array_equal(result.indices1.numpy(), corr.indices1)
    np.testing.assert_array_equal(result.indices2.numpy(), corr.indices2)
    assert result.num_best_buddies == int(corr.bbs_mask.sum())


@pytest.fixture(scope="module")
def run(extractor, frames):
    """One stream over frames 0 (keyframe), 1, 2 with match_previous, and find_correspondences of each pair."""
    s = make_stream(extractor, match_previous=True)
    s.warmup(frames[2])  # changes neither the keyframe nor the frame count
    assert not s.has_reference and s.frames == 0
    assert s.set_reference(frames[0]) == 0
    results = [s.match(frames[1]), s.match(frames[2])]
    corrs = {(i, j): reference_match(extractor, frames[i], frames[j]) for i, j in ((0, 1), (1, 2))}
    return s, results, corrs


def test_matches_find_correspondences_on_the_same_frames(run):
    _, results, corrs = run
    assert [(r.frame_index, r.reference_index) for r in results] == [(1, 0), (2, 0)]
    assert_same(results[0], corrs[0, 1])  # frame 1 to the keyframe
    assert results[0].previous.reference_index == 0
    assert results[1].previous.reference_index == 1
    assert_same(results[1].previous, corrs[1, 2])  # frame 2 to frame 1 (another image)
    assert len(results[1]) > 0


def test_result_fields(run):
    r = run[1][0]
    corr = r.correspondences
    # scores: the pair's cosine similarity; saliency: the ranking score (mean saliency of both ends)
    torch.testing.assert_close(r.scores, corr.sim_1[r.indices1], rtol=0, atol=0)
    torch.testing.assert_close(r.saliency, (corr.saliency1[r.indices1] + corr.saliency2[r.indices2]) / 2)
    # frame pixels: (p + 0.5) * 60 / 40 - 0.5 vertically, * 80 / 53 horizontally
    expected = (r.points2.double() + 0.5) * torch.tensor([60 / 40, 80 / 53], dtype=torch.float64) - 0.5
    torch.testing.assert_close(r.frame_points2, expected.float())
    assert r.points1.dtype == torch.int64 and r.frame_points1.dtype == torch.float32
    assert torch.from_dlpack(r.points1).data_ptr() == r.points1.data_ptr()  # DLPack-exportable as is
    arrays = r.to_numpy()
    assert arrays["points1"].dtype == np.int64 and arrays["frame_points1"].dtype == np.float32
    assert arrays["points1"].shape == (len(r), 2) and int(arrays["frame_index"]) == 1


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_device_preprocess_equals_extractor_preprocess(extractor, frames, encoding):
    rgb = frames[1]
    if encoding == "rgb8":
        frame, pil_input = rgb, rgb
    elif encoding == "bgr8":
        frame, pil_input = np.ascontiguousarray(rgb[..., ::-1]), rgb
    else:
        frame = np.ascontiguousarray(rgb[..., 1])
        pil_input = frame  # Extractor.preprocess converts an HxW array like PIL's L -> RGB
    s = make_stream(extractor, encoding=encoding)
    expected, _ = extractor.preprocess(pil_input, LOAD)
    got = s.preprocess(frame)
    assert got.shape == expected.shape == (1, 3, 40, 53)
    assert torch.equal(got, expected)


def test_row_padded_frame_is_viewed_in_place(extractor, frames):
    """A ROS image whose rows are padded (step > width * 3) passes as a strided view, no copy needed."""
    step = 80 * 3 + 16
    raw = np.zeros((60, step), np.uint8)
    raw[:, :240] = frames[1].reshape(60, 240)
    view = raw[:, :240].reshape(60, 80, 3)  # what a node builds from msg.data and msg.step
    assert not view.flags.c_contiguous and np.shares_memory(view, raw)
    s = make_stream(extractor)
    assert torch.equal(s.preprocess(view), extractor.preprocess(frames[1], LOAD)[0])


def test_float_chw_at_the_model_size_equals_rgb8(extractor, frames):
    """A float CHW frame already at the resized size needs no resize: the same batch as its uint8 source."""
    small = frames[0][:40, :53]
    s = make_stream(extractor, frame_size=(40, 53))
    chw = torch.from_numpy(small).permute(2, 0, 1).to(torch.float32).div(255)
    from_uint8 = s.preprocess(small).clone()
    before = chw.clone()
    assert torch.equal(s.preprocess(chw, encoding="float_chw"), from_uint8)
    assert torch.equal(chw, before)  # the caller's frame is never written


def test_float_chw_resized_on_the_device_and_empty_result(extractor, frames):
    """float CHW frames of another size go through torch's antialiased bicubic; with a threshold no saliency
    reaches (saliency > 1.0: it is normalised to [0, 1]), the result is empty and typed."""
    s = FrameStream(ExtractorConfig(load_size=LOAD), MatchConfig(thresh=1.0), frame_size=(60, 80),
                    encoding="float_chw", extractor=extractor)
    chw = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames[:2]]
    # close to the uint8 path's input (Pillow's Lanczos), not equal
    assert (s.preprocess(chw[1]) - extractor.preprocess(frames[1], LOAD)[0]).abs().mean() < 0.05
    s.set_reference(chw[0])
    r = s.match(chw[1])
    assert len(r) == 0 and r.points1.shape == (0, 2) and r.points1.dtype == torch.int64
    assert r.frame_points2.shape == (0, 2) and r.scores.shape == (0,)
    arrays = r.to_numpy()
    assert arrays["points2"].shape == (0, 2) and arrays["num_best_buddies"] == 0


def test_zero_copy_inputs():
    a = np.zeros((6, 8, 3), dtype=np.uint8)
    assert as_tensor(a).data_ptr() == a.ctypes.data  # numpy: a view
    t = torch.zeros((6, 8, 3), dtype=torch.uint8)
    assert as_tensor(t) is t

    class Capsule:  # any __dlpack__ producer (here numpy's, behind another type)
        def __init__(self, arr):
            self.arr = arr

        def __dlpack__(self, **kw):
            return self.arr.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.arr.__dlpack_device__()

    assert as_tensor(Capsule(a)).data_ptr() == a.ctypes.data
    ro = a.copy()
    ro.setflags(write=False)
    assert torch.equal(as_tensor(ro), torch.from_numpy(a))  # read-only: one copy, same values


def test_match_enqueues_without_host_reads(run, frames, monkeypatch):
    """The enqueue path (`match`) never reads a tensor back to the host (what would be a sync on CUDA): no
    .cpu() / .numpy() / .item() / .tolist(); the result completes only when read."""
    s, _, corrs = run
    calls = []

    def forbid(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            calls.append(name)
            return original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("cpu", "numpy", "item", "tolist"):
        forbid(name)
    r = s.match(frames[1], previous=False)
    assert calls == [] and not r.ready
    monkeypatch.undo()
    assert_same(r, corrs[0, 1])
    assert r.ready and r.previous is None


def test_buffers_are_reused(run, frames):
    s = run[0]
    first = s.preprocess(frames[0]).data_ptr()
    assert s.preprocess(frames[2]).data_ptr() == first


def test_other_size_is_an_input_error_unless_dynamic(run, extractor, frames):
    with pytest.raises(InputError, match=r"60x72 frame, but the stream was planned for 60x80.*dynamic=True"):
        run[0].match(frames[1][:, :72])
    d = make_stream(extractor, dynamic=True)
    crop = np.ascontiguousarray(frames[1][:, :72])
    batch = d.preprocess(crop)  # re-planned: sizes and buffer of the new frame size
    assert d.frame_size == (60, 72) and d.resized_size == (40, 48) and d.num_patches == (9, 11)
    assert torch.equal(batch, extractor.preprocess(crop, LOAD)[0])


@pytest.mark.parametrize("frame,encoding,message", [
    (np.zeros((60, 80, 3), np.float32), "rgb8", r"expects uint8 pixels, got dtype torch.float32.*float_chw"),
    (np.zeros((3, 60, 80), np.uint8), "rgb8", r"expects shape \(H, W, 3\), got \(3, 60, 80\).*permute"),
    (np.zeros((60, 80, 3), np.uint8), "mono8", r"mono8 expects shape \(H, W\) or \(H, W, 1\)"),
    (np.zeros((60, 80, 3), np.uint8), "yuv422", r"encoding='yuv422' is unknown; choose one of rgb8, bgr8"),
    ([[1, 2]], "rgb8", r"unsupported type list"),
    (np.zeros((60, 80), dtype=object), "mono8", r"expected a uint8 or float array, got dtype object"),
    (np.zeros((3, 0, 80), np.float32), "float_chw", r"empty frame of shape \(3, 0, 80\)"),
    (np.zeros((0, 80, 3), np.uint8), "rgb8", r"empty frame of shape \(0, 80, 3\)"),
])
def test_bad_frames(extractor, frame, encoding, message):
    s = make_stream(extractor)
    with pytest.raises(InputError, match=message):
        s.set_reference(frame, encoding=encoding)


def test_bad_use(extractor, frames):
    s = make_stream(extractor)
    with pytest.raises(InputError, match=r"no reference frame yet; call stream.set_reference"):
        s.match(frames[0])
    with pytest.raises(InputError, match=r"a CUDA stream needs a CUDA device"):
        make_stream(extractor, stream=123)
    with pytest.raises(InputError, match=r"frame_size=\(0, 80\)"):
        make_stream(extractor, frame_size=(0, 80))
    with pytest.raises(InputError, match=r"resized to 4x4, smaller than the patch size 8"):
        FrameStream(ExtractorConfig(load_size=None), frame_size=(4, 4), extractor=extractor)
    with pytest.raises(InputError, match=r"layer"):
        FrameStream(ExtractorConfig(load_size=LOAD), MatchConfig(layer=40), frame_size=(60, 80), extractor=extractor)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_pairs": 0}, r"num_pairs=0: expected an int >= 1"),
    ({"thresh": float("nan")}, r"thresh=nan"),
    ({"facet": "keys"}, r"facet='keys' is unknown; choose one of key, query, value, token"),
    ({"layer": [9, -1]}, r"layer=\[9, -1\]"),
    ({"match_precision": "fp8"}, r"match_precision='fp8' is unknown"),
    ({"bin": 1}, r"expected True or False"),
])
def test_match_config_checks(kwargs, message):
    with pytest.raises(InputError, match=message):
        MatchConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "int8"}, r"precision='int8' is unknown"),
    ({"stride": 0}, r"stride=0"),
    ({"load_size": (224,)}, r"must be \(height, width\)"),
    ({"load_size": -3}, r"load_size=-3"),
    ({"model": ""}, r"model=''"),
])
def test_extractor_config_checks(kwargs, message):
    with pytest.raises(InputError, match=message):
        ExtractorConfig(**kwargs)


def test_configs_from_matcher_config():
    from dinofeat.pipeline.matcher import MatcherConfig

    mc = MatcherConfig(num_pairs=3, load_size=112, backend="onnxruntime")
    assert ExtractorConfig.from_object(mc).load_size == 112
    assert ExtractorConfig.from_object(mc).backend == "onnxruntime"
    assert MatchConfig.from_object(mc, thresh=0.2) == MatchConfig(num_pairs=3, thresh=0.2)


@pytest.mark.gpu
def test_cuda_stream_enqueue_has_no_sync(vits8_weights_file, frames):
    """On a GPU: match() runs under torch's sync debug mode 'error' (any host sync raises), on a side stream."""
    ex = dinofeat.Extractor(weights=str(vits8_weights_file), backend="torch", device="cuda", progress=False)
    side = torch.cuda.Stream()
    s = FrameStream(ExtractorConfig(load_size=LOAD), MatchConfig(num_pairs=NUM_PAIRS), frame_size=(60, 80),
                    extractor=ex, stream=side)
    device_frames = [torch.from_numpy(f).cuda() for f in frames]
    s.set_reference(device_frames[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        r = s.match(device_frames[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    corr = reference_match(ex, frames[0], frames[1])
    np.testing.assert_array_equal(r.points2.cpu().numpy(), np.asarray(corr.points2).reshape(-1, 2))
    assert r.points2.device.type == "cuda"
