"""The self-tests of `dinofeat doctor`: every backend and kernel that can run here against a CPU reference.

Every self-test compares an implementation with a CPU reference on deterministic weights
(:func:`dinofeat.testing.deterministic_weights`, no download) and deterministic inputs, and reports PASS / FAIL
with the measured deviation, or SKIP with the reason it cannot run on this machine:

* backends (torch fp32/bf16/fp16, ONNX Runtime CPU/CUDA/TensorRT EP, native TensorRT) against an eager float64
  re-implementation of the strided ViT written here, independent of :mod:`dinofeat.model.vit`: keys of
  layer 9 and the saliency map of a small non-square image;
* kernels (``impl="cpu"``, ``"cuda"``) against ``impl="reference"`` for ``log_bin`` and ``best_buddies``;
* NVRTC compilation of the CUDA kernel source exactly as :func:`dinofeat.kernels.cuda.module_spec` builds it
  (this needs no GPU).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field

from ..bench.environment import cuda_status, first_line, native_reason, nvrtc_version

# Self-test tolerances: relative = max|actual - expected| / max|expected|.
TOL_FP32 = 1e-4  # fp32 engine vs float64 eager reference (the tolerance)
TOL_HALF = {"bf16": 6e-2, "fp16": 1e-2}  # reduced-precision forwards vs the same reference
TOL_TF32 = 5e-3  # TF32 matmuls (10-bit mantissa inputs, fp32 accumulation) vs the same reference
TOL_KERNEL = 1e-5  # C++ / CUDA kernels vs the torch reference (summation order only)
NVRTC_ARCHS = ("compute_75", "compute_80", "compute_90")


@dataclass
class Check:
    """One self-test result."""

    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""  # measured deviations, or the reason for skip / fail
    deviation: float | None = None  # the largest relative deviation measured
    tolerance: float | None = None
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ eager reference


def _eager_reference(state_dict, spec, stride: int, batch, layer: int):
    """Keys of `layer` (B, T, C, channel d*heads + h) and saliency (B, T) of a DINO ViT, in float64.

    Written from SEMANTICS §1, §3-§5 with explicit (materialised) attention and every block run, sharing no code
    with :mod:`dinofeat.model.vit`: the yardstick for the backends.
    """
    import torch
    import torch.nn.functional as F

    w = {k: v.detach().to(torch.float64).cpu() for k, v in state_dict.items()}
    x = batch.to(torch.float64).cpu()
    heads, dim = spec.num_heads, spec.embed_dim
    hd = dim // heads
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=stride)
    b, _, rows, cols = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = w["pos_embed"]
    g = spec.pos_grid
    height, width = batch.shape[-2:]
    if not (rows * cols == g * g and height == width):
        table = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
        table = F.interpolate(table, scale_factor=((rows + 0.1) / g, (cols + 0.1) / g), mode="bicubic",
                              align_corners=False, recompute_scale_factor=False)
        pos = torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)
    x = torch.cat([w["cls_token"].expand(b, -1, -1), x], dim=1) + pos
    n = x.shape[1]
    keys = saliency = None
    for i in range(spec.depth):
        pre = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), w[pre + "norm1.weight"], w[pre + "norm1.bias"], spec.norm_eps)
        qkv = (h @ w[pre + "attn.qkv.weight"].T + w[pre + "attn.qkv.bias"]).reshape(b, n, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, heads, N, hd) each
        if i == layer:
            keys = k[:, :, 1:].permute(0, 2, 3, 1).reshape(b, n - 1, hd * heads)
        attn = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(dim=-1)
        if i == spec.depth - 1:
            heads_sel = list(spec.saliency_heads) if spec.saliency_heads is not None else list(range(heads))
            cls = attn[:, heads_sel, 0, 1:].mean(dim=1)
            lo, hi = cls.min(dim=1, keepdim=True).values, cls.max(dim=1, keepdim=True).values
            saliency = (cls - lo) / (hi - lo)
        out = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        x = x + out @ w[pre + "attn.proj.weight"].T + w[pre + "attn.proj.bias"]
        h = F.layer_norm(x, (dim,), w[pre + "norm2.weight"], w[pre + "norm2.bias"], spec.norm_eps)
        h = F.gelu(h @ w[pre + "mlp.fc1.weight"].T + w[pre + "mlp.fc1.bias"])
        x = x + h @ w[pre + "mlp.fc2.weight"].T + w[pre + "mlp.fc2.bias"]
    return keys, saliency


def _rel(actual, expected) -> float:
    import torch

    a = torch.as_tensor(actual).detach().to(torch.float64).cpu()
    e = torch.as_tensor(expected).detach().to(torch.float64).cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if not torch.isfinite(a).all():
        return float("inf")
    scale = float(e.abs().max()) or 1.0
    return float((a - e).abs().max()) / scale


# -------------------------------------------------------------------------------------------- self-tests


class _Fixture:
    """Deterministic weights, image and reference outputs shared by the backend tests (built once)."""

    def __init__(self, model: str, stride: int, load_size: int, layer: int):
        import numpy as np
        import torch

        from ..engine.extractor import Extractor
        from ..model.zoo import get_model_spec
        from ..testing import deterministic_weights

        self.model, self.stride, self.layer, self.load_size = model, stride, layer, load_size
        self.spec = get_model_spec(model)
        self.weights = deterministic_weights(model)
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, size=(load_size * 4 // 3 + 7, load_size + 5, 3), dtype=np.uint8)
        # preprocessing itself is exact and covered by the test suite; any extractor's preprocess will do
        self.cpu_fp32 = Extractor(model=model, stride=stride, weights=self.weights, backend="torch", device="cpu",
                                  precision="fp32", progress=False)
        self.batch, _ = self.cpu_fp32.preprocess(self.image, load_size)
        self.grid = self.cpu_fp32.num_patches(*self.batch.shape[-2:])
        with torch.inference_mode():
            self.ref_keys, self.ref_sal = _eager_reference(self.weights, self.spec, stride, self.batch, layer)

    def describe(self) -> str:
        h, w = self.batch.shape[-2:]
        return (f"{self.model}, stride {self.stride}, deterministic weights, random {h}x{w} image, "
                f"grid {self.grid[0]}x{self.grid[1]} (T={self.grid[0] * self.grid[1]}), layer {self.layer} key")

    def compare(self, ex, tol: float) -> tuple[str, float, dict]:
        f = ex.extract(self.batch, layer=self.layer, facet="key", bin=False, saliency=True)
        dk = _rel(f.descriptors, self.ref_keys)
        ds = _rel(f.saliency, self.ref_sal)  # saliency spans [0, 1]: relative == absolute
        dev = max(dk, ds)
        detail = f"keys rel {dk:.1e}, saliency {ds:.1e} (tol {tol:.0e})"
        return detail, dev, {"keys_rel": dk, "saliency_abs": ds}


def _run(name: str, fn, tol: float | None = None) -> Check:
    """Run one test: fn() returns (detail, deviation, metrics) or raises _Skip."""
    t0 = time.perf_counter()
    try:
        detail, dev, metrics = fn()
    except _Skip as s:
        return Check(name, "skip", str(s), seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a crash is a failure, reported with its message
        return Check(name, "fail", f"{type(e).__name__}: {first_line(e)}", tolerance=tol,
                     seconds=time.perf_counter() - t0)
    ok = dev is not None and dev <= (tol if tol is not None else 0.0)
    return Check(name, "pass" if ok else "fail", detail, deviation=dev, tolerance=tol,
                 seconds=time.perf_counter() - t0, metrics=metrics)


class _Skip(Exception):
    pass


def _backend_tests(fx: _Fixture, gpu_ok: bool, gpu_why: str) -> list[Check]:
    from ..engine.extractor import Extractor

    checks = []
    devices = ["cpu"] + (["cuda"] if gpu_ok else [])

    def make(backend, device, precision, **kw):
        return Extractor(model=fx.model, stride=fx.stride, weights=fx.weights, backend=backend, device=device,
                         precision=precision, progress=False, **kw)

    for device in ("cpu", "cuda"):
        for precision in ("fp32", "bf16", "fp16"):
            name = f"backend torch {precision} {device}"
            tol = TOL_FP32 if precision == "fp32" else TOL_HALF[precision]
            if device not in devices:
                checks.append(Check(name, "skip", f"no CUDA GPU: {gpu_why}"))
                continue

            def test(device=device, precision=precision, tol=tol):
                ex = fx.cpu_fp32 if (device, precision) == ("cpu", "fp32") else make("torch", device, precision)
                return fx.compare(ex, tol)

            checks.append(_run(name, test, tol))

    # ONNX Runtime: one test per execution provider.
    ort_reason = _ort_unavailable()
    providers = _ort_providers()
    for ep, device in (("CPUExecutionProvider", "cpu"), ("CUDAExecutionProvider", "cuda"),
                       ("TensorrtExecutionProvider", "cuda")):
        name = f"backend onnxruntime {ep.replace('ExecutionProvider', '')} EP"
        if ort_reason:
            checks.append(Check(name, "skip", ort_reason))
            continue
        if ep not in providers:
            checks.append(Check(name, "skip", f"{ep} not in onnxruntime.get_available_providers() = {providers}"
                                + ("" if device == "cpu" else " (needs onnxruntime-gpu)")))
            continue
        if device == "cuda" and not gpu_ok:
            checks.append(Check(name, "skip", f"no CUDA GPU: {gpu_why}"))
            continue
        # fp32 never runs on the TensorRT EP (it cannot clear TensorRT's TF32 flag): that EP is tested in tf32.
        ep_precision = "tf32" if ep == "TensorrtExecutionProvider" else "fp32"
        ep_tol = TOL_TF32 if ep_precision == "tf32" else TOL_FP32

        def test_ort(device=device, ep=ep, precision=ep_precision, tol=ep_tol):
            with _scratch_cache():
                ex = make("onnxruntime", device, precision)
                if device == "cuda":  # pin the provider under test (TensorRT EP first, or CUDA EP only)
                    from ..engine.backends.onnxruntime import OnnxRuntimeBackend

                    ex.backend = OnnxRuntimeBackend(ex.backend.model, ex.device, precision, ex.weights_sha256,
                                                    use_tensorrt=ep == "TensorrtExecutionProvider")
                detail, dev, metrics = fx.compare(ex, tol)
                used = _ort_used_providers(ex.backend)
            if used and used[0] != ep:
                raise AssertionError(f"session fell back to {used[0]} (asked for {ep})")
            return detail + (f"; ran on {used[0]}" if used else ""), dev, metrics

        checks.append(_run(name, test_ort, ep_tol))

    name = "backend tensorrt fp32 cuda"
    trt_reason = _trt_unavailable(gpu_ok, gpu_why)
    if trt_reason:
        checks.append(Check(name, "skip", trt_reason))
    else:
        def test_trt():
            with _scratch_cache():
                return fx.compare(make("tensorrt", "cuda", "fp32"), TOL_FP32)

        checks.append(_run(name, test_trt, TOL_FP32))
    return checks


@contextlib.contextmanager
def _scratch_cache():
    """Point DINOFEAT_CACHE at a temporary directory: the doctor's tiny exports never touch the user's cache."""
    old = os.environ.get("DINOFEAT_CACHE")
    with tempfile.TemporaryDirectory(prefix="dinofeat-doctor-") as tmp:
        os.environ["DINOFEAT_CACHE"] = tmp
        try:
            yield tmp
        finally:
            if old is None:
                os.environ.pop("DINOFEAT_CACHE", None)
            else:
                os.environ["DINOFEAT_CACHE"] = old


def _ort_used_providers(backend) -> list[str]:
    """Providers of the session the ORT backend built (empty if its internals are not visible)."""
    try:
        sessions = list(getattr(backend, "_sessions", {}).values())
        return list(sessions[-1].session.get_providers()) if sessions else []
    except Exception:  # noqa: BLE001
        return []


def _ort_unavailable() -> str:
    try:
        import onnxruntime  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"onnxruntime not installed ({first_line(e)}); pip install 'dinofeat[onnx]'"
    try:
        from ..engine.backends import onnxruntime as _b  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"dinofeat.engine.backends.onnxruntime does not import ({type(e).__name__}: {first_line(e)})"
    return ""


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except Exception:  # noqa: BLE001
        return []


def _trt_unavailable(gpu_ok: bool, gpu_why: str) -> str:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"tensorrt not installed ({first_line(e)}); needs an NVIDIA GPU and pip install 'dinofeat[gpu]'"
    if not gpu_ok:
        return f"no CUDA GPU: {gpu_why}"
    try:
        from ..engine.backends import tensorrt as _t  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"dinofeat.engine.backends.tensorrt does not import ({type(e).__name__}: {first_line(e)})"
    return ""


def _kernel_inputs():
    """Deterministic (B=2, 7x9 grid, C=48) descriptors and a pair of (T, C) sets for Best Buddies."""
    import torch

    g = torch.Generator().manual_seed(0)
    desc = torch.randn(2, 63, 48, generator=g)
    d1 = torch.randn(150, 96, generator=g)
    d2 = torch.randn(110, 96, generator=g)
    d1[::7] = d2[: len(d1[::7])] * 1.5  # plant exact best buddies (scaled copies)
    return desc, (7, 9), d1, d2


def _kernel_tests(gpu_ok: bool, gpu_why: str) -> list[Check]:
    import torch

    from .. import kernels

    checks = []
    desc, grid, d1, d2 = _kernel_inputs()
    ref_bin, ref_norm = kernels.log_bin(desc, grid, return_norm=True, impl="reference")
    ref_bb = {p: kernels.best_buddies(d1, d2, precision=p, impl="reference") for p in ("fp32", "bf16", "fp16")}
    avail = {"cpu": "" if kernels.native_available() else native_reason(),
             "cuda": "" if gpu_ok else f"no CUDA GPU: {gpu_why}"}
    for impl in ("cpu", "cuda"):
        dev = torch.device("cuda" if impl == "cuda" else "cpu")
        name = f"kernel log_bin {impl} vs reference"
        if avail[impl]:
            checks.append(Check(name, "skip", avail[impl]))
        else:
            def test_bin(impl=impl, dev=dev):
                out, norm = kernels.log_bin(desc.to(dev), grid, return_norm=True, impl=impl)
                d_out, d_norm = _rel(out, ref_bin), _rel(norm, ref_norm)
                return (f"binned rel {d_out:.1e}, row norms rel {d_norm:.1e} (tol {TOL_KERNEL:.0e})",
                        max(d_out, d_norm), {"binned_rel": d_out, "norm_rel": d_norm})

            checks.append(_run(name, test_bin, TOL_KERNEL))
        for precision in ("fp32", "bf16", "fp16"):
            name = f"kernel best_buddies {impl} {precision} vs reference"
            if avail[impl]:
                checks.append(Check(name, "skip", avail[impl]))
                continue
            # bf16/fp16 round the normalised rows: products may differ in the last bits of float32
            tol = TOL_KERNEL if precision == "fp32" else 1e-3

            def test_bb(impl=impl, dev=dev, precision=precision, tol=tol):
                r = ref_bb[precision]
                res = kernels.best_buddies(d1.to(dev), d2.to(dev), precision=precision, impl=impl)
                mism = sum(int((a.cpu() != b).sum()) for a, b in ((res.nn_1, r.nn_1), (res.nn_2, r.nn_2),
                                                                   (res.mask, r.mask)))
                ds = max(_rel(res.sim_1, r.sim_1), _rel(res.sim_2, r.sim_2))
                dev_ = ds if mism == 0 else float("inf")
                return (f"{mism} nn/mask mismatches, sims rel {ds:.1e} (tol {tol:.0e}), "
                        f"{int(r.mask.sum())} best buddies", dev_, {"mismatches": mism, "sim_rel": ds})

            checks.append(_run(name, test_bb, tol))
    checks.append(_run("kernel CUDA source compiles with NVRTC", _nvrtc_test, 0.0))
    return checks



def _nvrtc_test():
    try:
        from cupy.cuda import compiler
        from cupy_backends.cuda.libs import nvrtc  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise _Skip(f"CuPy not installed ({first_line(e)}); pip install 'dinofeat[gpu]'") from None
    try:
        from ..kernels import cuda
    except Exception as e:  # noqa: BLE001
        raise _Skip(f"dinofeat.kernels.cuda does not import ({type(e).__name__}: {first_line(e)})") from None
    code, options, names = cuda.module_spec()
    sizes = []
    for arch in NVRTC_ARCHS:
        # what cupy.RawModule passes to NVRTC, with an explicit virtual arch (no device needed)
        prog = compiler._NVRTCProgram(code, "dinofeat_kernels.cu", name_expressions=list(names), method="ptx")
        ptx, mapping = prog.compile(tuple(options) + (f"-arch={arch}", "--device-as-default-execution-space"))
        missing = [n for n in names if not (mapping or {}).get(n)]
        if missing:
            raise AssertionError(f"{arch}: no lowered name for {missing[:3]}")
        sizes.append(f"{arch} {len(ptx) // 1024} KiB PTX")
    return (f"NVRTC {nvrtc_version()}: {len(names)} kernels; " + ", ".join(sizes), 0.0,
            {"archs": list(NVRTC_ARCHS), "kernels": len(names)})


def self_tests(model: str = "dino_vits8", stride: int = 4, load_size: int = 40, layer: int = 9,
               device: str = "auto", progress=None) -> tuple[list[Check], str]:
    """Run every self-test; returns (checks, description of the test input)."""
    gpu_ok, gpu_why = cuda_status()
    if device == "cpu":
        gpu_ok, gpu_why = False, "--device cpu"
    checks: list[Check] = []
    say = progress or (lambda c: None)
    t0 = time.perf_counter()
    try:
        fx = _Fixture(model, stride, load_size, layer)
        what = fx.describe()
    except Exception as e:  # noqa: BLE001
        fx, what = None, f"fixture failed: {type(e).__name__}: {first_line(e)}"
        c = Check("reference fixture (deterministic weights + eager reference)", "fail", what,
                  seconds=time.perf_counter() - t0)
        checks.append(c)
        say(c)
    if fx is not None:
        for c in _backend_tests(fx, gpu_ok, gpu_why):
            checks.append(c)
            say(c)
    for c in _kernel_tests(gpu_ok, gpu_why):
        checks.append(c)
        say(c)
    return checks, what


