"""GPU paths of the second GPU review (issue 22), checked on the CPU where a CPU can catch the class of bug, plus
gpu-marked tests that run each fixed path where a CUDA GPU exists (docs/gpu.md lists the items).

1. the ViT forward creates no tensor from Python data (a list index is a pageable host-to-device copy per call,
   illegal under CUDA-graph capture): torch.export lifts any such tensor as a constant;
2. `Matcher` hands features from every source (forward, memory, disk) to the kernels on the backend's device;
4. `best_buddies_binned` defers the finiteness check of device inputs (no host sync), as `best_buddies`;
6. the binned CUDA path uploads its step geometry once per shape;
7. the GPU check reports a missing pytest as a failure, even in its dry run.
(3, the warp-reduced atomics of bb_binned.cu, is in tests/kernels/test_kernels_shim.py; 5, the TF32 switches, in
tests/test_gpu_readiness.py.)
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from testutil import EXAMPLES, ROOT

from dinofeat.model.vit import Request, StridedViT
from dinofeat.model.zoo import get_model_spec

A, B = str(EXAMPLES / "img_a.png"), str(EXAMPLES / "img_b.png")


# ------------------------------------------------------------------------------- 1. no tensor from Python data


def _tiny_vit(model: str, heads: tuple[int, ...] | None) -> StridedViT:
    spec = dataclasses.replace(get_model_spec(model), depth=2, embed_dim=64, num_heads=4, saliency_heads=heads)
    torch.manual_seed(0)
    vit = StridedViT(spec, spec.patch_size // 2).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.2)
    return vit


# dino_vits8's kind (non-contiguous heads: index_select on the buffer, learned positions), and DINOv3's (RoPE,
# storage tokens, all heads: a slice)
@pytest.mark.parametrize("model,heads", [("dino_vits8", (0, 2, 3)), ("dinov3_vits16", None)])
def test_vit_forward_creates_no_tensor_from_python_data(model, heads):
    """Under torch.export every tensor the forward makes from Python data (a list index, torch.tensor(...)) is a
    lifted constant: on a GPU each is a pageable host-to-device copy per call, illegal in CUDA-graph capture."""
    vit = _tiny_vit(model, heads)
    size = 4 * vit.spec.patch_size
    req = Request(facets=((0, "key"), (1, "token")), saliency=True)
    table = vit.position_embedding(size, size) if vit.spec.pos == "learned" else vit.rope_embedding(size, size)

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, x, table):
            kw = {"pos": table} if vit.spec.pos == "learned" else {"rope": table}
            return self.vit.forward_features(x, req, **kw)

    x = torch.randn(2, 3, size, size)
    ep = torch.export.export(Forward(), (x, table))
    made = [n for n in ep.constants if n not in ep.graph_signature.buffers]  # the module's own buffers are fine
    assert not ep.graph_signature.lifted_tensor_constants and not made, f"tensors made from Python data: {made}"
    if heads is None:
        return
    # and the saliency is still the mean over exactly the chosen heads
    with torch.no_grad():
        sal = vit.forward_features(x, Request(facets=(), saliency=True), pos=table)[0]
        block = vit.blocks[1]
        tokens = vit.blocks[0](torch.cat([vit.cls_token.expand(2, -1, -1), vit.patch_embed(x)], dim=1) + table)
        attn = block.attn.cls_attention(block.norm1(tokens))[:, list(heads), 1:].mean(dim=1)
        lo, hi = attn.min(-1, keepdim=True).values, attn.max(-1, keepdim=True).values
    torch.testing.assert_close(sal, (attn - lo) / (hi - lo), rtol=0, atol=0)


def test_saliency_heads_buffer_is_not_in_the_checkpoint_and_follows_the_model():
    vit = StridedViT(get_model_spec("dino_vits8"), 4)
    assert "saliency_index" not in vit.state_dict()  # official checkpoints load strictly
    assert vit.saliency_index.tolist() == [0, 2, 4, 5] == vit.saliency_heads
    attn = torch.arange(2 * 6 * 5.0).reshape(2, 6, 5)
    assert torch.equal(vit._saliency_heads_of(attn), attn[:, [0, 2, 4, 5]])
    vit.to(device="meta", dtype=torch.bfloat16)  # the index moves with the model, and stays an integer tensor
    assert vit.saliency_index.device.type == "meta" and vit.saliency_index.dtype == torch.long
    every = StridedViT(get_model_spec("dinov2_vits14"), 14)  # all heads: a plain slice, no index at all
    assert every._saliency_slice == slice(0, 6) and every._saliency_heads_of(attn).data_ptr() == attn.data_ptr()


# -------------------------------------------------------------------- 2. cached features on the backend's device


def test_matcher_features_reach_the_kernels_on_the_backends_device(extractor, tmp_path, monkeypatch):
    """A backend that reports another device (meta, on this CPU): features from the forward, the memory store
    and the disk store all reach the matching kernels there (a disk hit is a CPU tensor, read with torch)."""
    from dinofeat.pipeline import Matcher
    from dinofeat.pipeline import matcher as matcher_module

    arr = np.asarray(Image.open(B).convert("RGB"))
    a, b = (np.ascontiguousarray(arr[y:y + 40, x:x + 40]) for y, x in ((100, 100), (200, 260)))  # small: cheap
    on_meta = copy.copy(extractor)
    on_meta.device = torch.device("meta")
    seen = []

    def spy(view1, view2, **kw):  # where the kernels would be called: record the devices, match nothing
        seen.append({t.device.type for v in (view1, view2) for t in (v.keys, v.saliency)})
        return None

    monkeypatch.setattr(matcher_module, "match_views", spy)
    writer = Matcher(extractor=extractor, load_size=32, cache_dir=tmp_path)  # the disk entries, written on the CPU
    writer.features(a), writer.features(b)
    fresh = Matcher(extractor=on_meta, load_size=32)
    fresh.match(a, b)  # forward
    fresh.match(a, b)  # memory
    assert fresh.store.stats["memory_hits"] == 2 and fresh.forwards == 2
    warm = Matcher(extractor=on_meta, load_size=32, cache_dir=tmp_path)
    assert warm.features(a).descriptors.device.type == "meta"  # disk
    results = list(warm.match_pairs([(a, b), (b, a)], workers=0))  # memory (a), disk (b), memory
    assert warm.store.stats["disk_hits"] == 2 and warm.forwards == 0
    assert all(r.error is None for r in results)
    assert seen == [{"meta"}] * 4
    # the disk entry is moved once: the copy kept in memory is the device one
    assert warm.store.get(warm.key(b)).saliency.device.type == "meta"


# ------------------------------------------------------------------ 4. binned Best Buddies: deferred finiteness


def test_binned_best_buddies_defers_the_check_of_device_inputs():
    from dinofeat.errors import InputError
    from dinofeat.kernels import _arrays as arrays
    from dinofeat.kernels import best_buddies_binned

    # A meta tensor has no data: any host read of it (the old host-only check, bool(), .item()) would raise.
    k1, k2 = torch.empty(12, 8, device="meta"), torch.empty(20, 8, device="meta")
    res = best_buddies_binned(k1, (3, 4), k2, (4, 5), impl="reference")
    pending = res._pending
    assert [p.name for p in pending] == ["keys1", "keys2"]
    assert all(isinstance(p, arrays.DeferredFinite) and p.row_sums.device.type == "meta" for p in pending)
    assert res.nn_1.device.type == "meta"
    # host inputs: still checked at once, nothing pending
    bad = np.ones((12, 8), np.float32)
    bad[5, 2] = np.nan
    with pytest.raises(InputError, match="keys1 contains NaN at row 5"):
        best_buddies_binned(bad, (3, 4), np.ones((20, 8), np.float32), (4, 5))
    ok = best_buddies_binned(np.ones((12, 8), np.float32), (3, 4), np.ones((20, 8), np.float32), (4, 5))
    assert ok.check() is ok


# --------------------------------------------------------------------- 6. step geometry uploaded once per shape


def test_binned_geometry_is_uploaded_once_per_shape(monkeypatch):
    from dinofeat.kernels import cuda

    uploads, syncs = [], []

    class Device:
        def __init__(self, i=None):
            self.id = 0 if i is None else i

    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=Device, using_allocator=lambda alloc: _null(),
                                   get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: syncs.append(1))),
        get_default_memory_pool=lambda: types.SimpleNamespace(malloc=None),
        asarray=lambda a: uploads.append(a.copy()) or a.copy(),
    )
    monkeypatch.setattr(cuda, "_GEOM_CACHE", type(cuda._GEOM_CACHE)())
    g1, g2 = (55, 83), (55, 55)
    for _ in range(3):
        geoms = cuda.binned_geoms_device(fake, g1, g2, 2, 5)
    assert len(uploads) == 1 and len(syncs) == 1  # one upload for every step of every call of this shape
    assert geoms.shape == (11, 5 + 3 * cuda.BBB_MAX_LEVELS)
    for n, a0 in enumerate(range(0, 55, 5)):
        want = cuda.binned_geom_words(g1, g2, 2, [max(a0 - 1, 0), max(a0 - 3, 0)], [0, 0], [3025, 3025])
        np.testing.assert_array_equal(geoms[n], want)
    cuda.binned_geoms_device(fake, g1, g2, 2, 4)
    assert len(uploads) == 2  # another step: another shape


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------- 7. the GPU check's pytest


def test_gpu_check_dry_run_fails_without_pytest():
    code = ("import sys; sys.modules['pytest'] = None; from benchmarks.gpu_check import main; "
            "sys.exit(main(['--dry-run']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail = [line for line in proc.stdout.splitlines() if "FAIL" in line]
    assert len(fail) == 1 and "pytest" in fail[0] and "pip install pytest" in fail[0]


def test_gpu_check_dry_run_lists_the_binned_correctness_row():
    from dinofeat.doctor import gpu_check

    rows = [row for _, row in gpu_check.plan() if "binned" in row and "reference" in row]
    assert len(rows) == 1 and "cuda" in rows[0]


def test_gpu_check_pytest_is_bounded_by_the_budget(tmp_path, monkeypatch):
    """Past the budget the pytest row fails at once (no subprocess); inside it the subprocess gets what is left."""
    from dinofeat.doctor import gpu_check, gpu_pytest

    timeouts = []

    def run(cmd, **kw):
        timeouts.append(kw["timeout"])
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(gpu_pytest.subprocess, "run", run)
    spent = gpu_check.Check(tmp_path, budget_s=100.0)
    spent.t0 -= 95.0  # 95 s of 100 used
    gpu_check._pytest(spent)
    assert timeouts == [] and spent.rows[-1]["status"] == "fail" and "budget" in spent.rows[-1]["detail"]
    fresh = gpu_check.Check(tmp_path, budget_s=100.0)
    fresh.t0 -= 20.0
    gpu_check._pytest(fresh)
    assert len(timeouts) == 1 and 60.0 <= timeouts[0] <= 80.0
    assert fresh.rows[-1]["status"] == "fail" and "timed out" in fresh.rows[-1]["detail"]


# ------------------------------------------------------------------------------- the same paths on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_capture_of_the_vit_forward(precision):
    from dinofeat.engine.backends.torch import TorchBackend
    from dinofeat.testing import deterministic_weights

    vit = StridedViT(get_model_spec("dino_vits8"), 4)
    vit.load_state_dict(deterministic_weights("dino_vits8"))
    be = TorchBackend(vit.eval(), torch.device("cuda"), precision)
    req = Request(facets=((9, "key"),), saliency=True)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = be.run(x, req)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.run(x, req)
    graph.replay()
    torch.cuda.synchronize()
    tol = 1e-5 if precision == "fp32" else 2e-2  # the same kernels, replayed; bf16: a looser bound, never a miss
    for k in eager:
        torch.testing.assert_close(out[k], eager[k], rtol=tol, atol=tol)


@pytest.mark.gpu
def test_matcher_disk_cache_on_cuda_matches_cold(vits8_weights_file, tmp_path):
    import dinofeat
    from dinofeat.pipeline import Matcher

    ex = dinofeat.Extractor(weights=str(vits8_weights_file), backend="torch", device="cuda", progress=False)
    cold = Matcher(extractor=ex, load_size=32, cache_dir=tmp_path).match(A, B)
    warm_m = Matcher(extractor=ex, load_size=32, cache_dir=tmp_path)
    warm = warm_m.match(A, B)
    assert warm_m.store.stats["disk_hits"] == 2 and warm_m.forwards == 0
    assert warm.points1 == cold.points1 and warm.points2 == cold.points2
    assert torch.equal(warm.nn_1.cpu(), cold.nn_1.cpu())
    assert warm_m.features(A).descriptors.device.type == "cuda"  # the disk hit, moved once and kept there


@pytest.mark.gpu
def test_binned_cuda_reports_device_nan_lazily_and_uploads_geometry_once():
    pytest.importorskip("cupy")
    from dinofeat.errors import InputError
    from dinofeat.kernels import best_buddies_binned, cuda

    k1, k2 = torch.randn(35, 16, device="cuda"), torch.randn(30, 16, device="cuda")
    k1[7, 3] = float("nan")
    res = best_buddies_binned(k1, (5, 7), k2, (6, 5))  # no host sync: nothing raised yet
    with pytest.raises(InputError, match="keys1 contains NaN at row 7"):
        res.check()
    before = len(cuda._GEOM_CACHE)
    best_buddies_binned(torch.randn(35, 16, device="cuda"), (5, 7), k2, (6, 5)).check()
    assert len(cuda._GEOM_CACHE) == before  # same shape: the cached geometry


@pytest.mark.gpu
def test_tf32_mode_on_cuda_matmul():
    from dinofeat.engine.backends.torch import tf32_mode

    a = torch.randn(512, 512, device="cuda")
    with tf32_mode(False):
        ieee = a @ a
    exact = (a.double() @ a.double()).float()
    assert float((ieee - exact).abs().max() / exact.abs().max()) < 1e-5
