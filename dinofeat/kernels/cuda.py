"""CUDA implementation of the kernels through CuPy ``RawModule`` (NVRTC), launched on the caller's stream.

The module source is ``log_bin.cu`` + ``best_buddies.cu`` with their ``#include "*.cuh"`` lines inlined, so the
CuPy on-disk kernel cache (keyed on source text and options) sees every header change. It is compiled once per
process (:func:`module`), templates instantiated through ``name_expressions``. :func:`module_spec` returns the
(source, options, name expressions) triple, which the NVRTC compile test reuses.

Devices, streams, memory (`_Device`):

* torch CUDA tensors: exchanged zero-copy through DLPack; the kernels run under a device guard for the tensor's
  GPU, on torch's current stream of that GPU (wrapped with ``cupy.cuda.Stream.from_external`` through the CUDA
  stream protocol; ``ExternalStream``, deprecated in CuPy 14, only on older CuPy), and every CuPy allocation
  (temporaries, results) is drawn from torch's caching allocator on that stream: one pool, so memory the kernels
  free is reusable by torch and vice versa.
* CuPy arrays: under their own device, on CuPy's current stream of that device, CuPy's pool.
* host inputs (numpy, CPU torch): copied to CuPy's current device and computed there, results copied back.

Best Buddies at fp32 does not make normalised copies of the inputs: the GEMM runs on the raw rows and the
epilogue scales each product by ``1/||x1_i|| * 1/||x2_j||`` (fp16/bf16 GEMMs and dtype changes still need the
cast copy). CuPy is imported lazily.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict

import numpy as np

from ..errors import BackendUnavailableError
from . import _arrays as A
from .headers import KERNEL_DIR, define

SOURCES = ("log_bin.cu", "best_buddies.cu", "bb_binned.cu")
OPTIONS = ("-std=c++17",)

# dtype name -> C++ type in the kernels; cupy storage dtype (bfloat16 is carried as uint16 bits)
CXX_TYPES = {"float32": "float", "float16": "dinofeat::f16", "bfloat16": "dinofeat::bf16"}
STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
GEMM_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Launch shapes. The kernels' limits are their own #defines, read from the sources (dinofeat.kernels.headers); the
# block sizes chosen here are checked against them in tests/kernels/test_kernels_headers.py.
LOG_BIN_THREADS = 128  # power of two <= DF_LOG_BIN_MAX_THREADS (log_bin.cu)
BB_THREADS = 256  # power of two <= DF_BB_MAX_THREADS (best_buddies.cu)
BB_TILE_ROWS = define("DF_BB_TILE_ROWS")  # rows of S per bb_epilogue block (best_buddies.cu)
GRID_CAP = 1 << 20  # grid-stride kernels never need more blocks than this
DEFAULT_CHUNK_BYTES = 256 << 20
MAX_CHUNK_ROWS = 65535 * BB_TILE_ROWS  # gridDim.y limit of bb_epilogue

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def _inline(name: str, seen: set[str]) -> str:
    if name in seen:  # every header is #pragma once
        return ""
    seen.add(name)
    text = (KERNEL_DIR / name).read_text(encoding="utf-8")
    text = text.replace("#pragma once\n", "")
    return _INCLUDE.sub(lambda m: _inline(m.group(1), seen), text)


def assemble_source() -> str:
    """Single self-contained CUDA source of all kernels (local ``#include "..."`` lines inlined)."""
    seen: set[str] = set()
    return "\n".join(f"// ---- {s}\n" + _inline(s, seen) for s in SOURCES)


def name_expressions() -> list[str]:
    """Every kernel instantiation the Python side launches, as NVRTC name expressions."""
    types = list(CXX_TYPES.values())
    names = [f"dinofeat::log_bin_hsum<{t}>" for t in types]
    names += [f"dinofeat::log_bin_fused<{ti}, {to}>" for ti in types for to in types]
    names += [f"dinofeat::bb_row_norm<{t}>" for t in types]
    names += [f"dinofeat::bb_normalize<{ti}, {to}>" for ti in types for to in types]
    names += ["dinofeat::bb_epilogue", "dinofeat::bb_unpack_keys", "dinofeat::bb_mutual"]
    names += [f"dinofeat::bbb_box_average<{t}>" for t in types]
    names += ["dinofeat::bbb_cell_sqnorm", "dinofeat::bbb_inv_norm", "dinofeat::bbb_fused"]
    return names


def module_spec() -> tuple[str, tuple[str, ...], list[str]]:
    """``(code, options, name_expressions)`` exactly as passed to ``cupy.RawModule``."""
    return assemble_source(), OPTIONS, name_expressions()


def _cupy():
    try:
        import cupy as cp
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(
            f"impl='cuda' needs CuPy (pip install 'dinofeat[gpu]' / cupy-cuda12x): {e}"
        ) from e
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError, missing driver library...
        raise BackendUnavailableError(f"no CUDA GPU: CuPy cannot reach a device ({e})") from e
    if n < 1:
        raise BackendUnavailableError("no CUDA GPU: cupy.cuda.runtime.getDeviceCount() is 0")
    return cp


@functools.cache
def _module_for_device(device_id: int):
    cp = _cupy()
    code, options, names = module_spec()
    with cp.cuda.Device(device_id):
        mod = cp.RawModule(code=code, options=options, name_expressions=names)
        mod.compile()
    return mod


def module():
    """The compiled ``cupy.RawModule`` for the current device (compiled once per process and device)."""
    cp = _cupy()
    return _module_for_device(cp.cuda.Device().id)


def kernel(name: str):
    return module().get_function(name)


def _grid(n: int, block: int) -> int:
    return int(max(1, min((n + block - 1) // block, GRID_CAP)))


# ---------------------------------------------------------------------------- array exchange


class _StreamRef:
    """A ``cudaStream_t`` handle speaking the CUDA stream protocol (``__cuda_stream__``)."""

    def __init__(self, handle: int):
        self.handle = int(handle)

    def __cuda_stream__(self):
        return (0, self.handle)


def external_stream(cp, handle: int, device_id: int):
    """A CuPy stream object for a stream CuPy does not own (torch's): ``Stream.from_external`` where CuPy has it
    (>= 14, where ``ExternalStream`` warns as deprecated on every call), else ``ExternalStream``."""
    from_external = getattr(cp.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamRef(handle))
    return cp.cuda.ExternalStream(int(handle), int(device_id))


def torch_allocator(cp, device):
    """A CuPy allocator that draws from torch's caching allocator on `device` (torch's current stream there)."""
    import torch

    def alloc(size: int):
        t = torch.empty((max(int(size), 1),), dtype=torch.uint8, device=device)
        return cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(t.data_ptr(), int(size), t, device.index), 0)

    return alloc


class _Device:
    """Context: the GPU, stream and allocator matching where the caller's data lives (module docstring)."""

    def __init__(self, x, origin: A.Origin):
        self.cp = cp = _cupy()
        self.origin = origin
        self.stream = None
        self.allocator = None
        self._stack = None
        if origin.kind == "torch" and origin.on_gpu:
            import torch

            dev = x.device if x.device.index is not None else torch.device("cuda", torch.cuda.current_device())
            self.device_id = int(dev.index)
            self.stream = external_stream(cp, torch.cuda.current_stream(dev).cuda_stream, self.device_id)
            self.allocator = torch_allocator(cp, dev)
        elif origin.kind == "cupy":
            self.device_id = int(x.device.id)
        else:
            self.device_id = int(cp.cuda.Device().id)  # host input: CuPy's current device, both ways

    def __enter__(self):
        import contextlib

        self._stack = stack = contextlib.ExitStack()
        stack.enter_context(self.cp.cuda.Device(self.device_id))
        if self.stream is not None:
            stack.enter_context(self.stream)
        if self.allocator is not None:
            stack.enter_context(self.cp.cuda.using_allocator(self.allocator))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def to_cupy(self, x, dtype_name: str):
        """(cupy array in storage dtype, dtype name after the float64 -> float32 cast), on this device."""
        cp, o = self.cp, self.origin
        if o.kind == "torch":
            import torch

            if not o.on_gpu:  # host tensor: through numpy, never through torch's current device
                host = x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()
                arr = cp.asarray(host)
            elif x.dtype == torch.bfloat16:
                return cp.from_dlpack(x.view(torch.int16)).view(cp.uint16), "bfloat16"
            else:
                arr = cp.from_dlpack(x)
        elif o.kind == "numpy":
            arr = cp.asarray(x)
        else:
            arr = x
        if arr.dtype == cp.float64:
            arr, dtype_name = arr.astype(cp.float32), "float32"
        return cp.ascontiguousarray(arr), dtype_name

    def back(self, arr, dtype_name: str | None = None):
        """Return a CuPy result as the caller's kind and device."""
        o = self.origin
        if o.kind == "cupy":
            return arr
        if o.kind == "numpy":
            return self.cp.asnumpy(arr)
        import torch

        if not o.on_gpu:
            host = self.cp.asnumpy(arr)
            if dtype_name == "bfloat16":
                return torch.from_numpy(host.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(host)
        if dtype_name == "bfloat16":
            return torch.from_dlpack(arr.view(self.cp.int16)).view(torch.bfloat16)
        return torch.from_dlpack(arr)


# --------------------------------------------------------------------------------------- log_bin


def log_bin_any(
    desc, origin: A.Origin, in_name: str, num_patches, hierarchy: int, out_name: str, return_norm: bool
):
    """log_bin on the GPU for a validated (B, T, C) array of any kind; returns (out, norm | None)."""
    with _Device(desc, origin) as dev:
        x, in_name = dev.to_cupy(desc, in_name)
        out, norm = log_bin_cupy(x, in_name, num_patches, hierarchy, out_name, return_norm)
        return dev.back(out, out_name), (dev.back(norm) if return_norm else None)


def log_bin_cupy(x, in_name: str, num_patches, hierarchy: int, out_name: str, return_norm: bool):
    """Launch the log-bin kernels on CuPy's current stream. x: (B, T, C) contiguous cupy array."""
    cp = _cupy()
    b, t, c = (int(v) for v in x.shape)
    hp, wp = num_patches
    nb = 1 + 8 * hierarchy
    out = cp.empty((b, t, nb * c), dtype=STORAGE[out_name])
    norm = cp.empty((b, t) if return_norm else (1,), dtype=cp.float32)
    n_h = (hierarchy - 1) * b * t * c
    hsum = cp.empty((max(n_h, 1),), dtype=cp.float32)
    ti, to = CXX_TYPES[in_name], CXX_TYPES[out_name]
    i32 = np.int32
    if n_h:
        kernel(f"dinofeat::log_bin_hsum<{ti}>")(
            (_grid(n_h, 256),), (256,), (x, hsum, i32(b), i32(hp), i32(wp), i32(c), i32(hierarchy))
        )
    kernel(f"dinofeat::log_bin_fused<{ti}, {to}>")(
        (int(min(b * t, GRID_CAP)),),
        (LOG_BIN_THREADS,),
        (x, hsum, out, norm, i32(return_norm), i32(b), i32(hp), i32(wp), i32(c), i32(hierarchy)),
    )
    return out, (norm if return_norm else None)


# ---------------------------------------------------------------------------------- best_buddies


def best_buddies_any(desc1, desc2, origin: A.Origin, precision: str, chunk: int | None):
    """best_buddies on the GPU for validated (T1, C), (T2, C) arrays of any kind (T1, T2 > 0)."""
    with _Device(desc1, origin) as dev:
        x1, n1 = dev.to_cupy(desc1, A.dtype_name(desc1))
        x2, n2 = dev.to_cupy(desc2, A.dtype_name(desc2))
        res = best_buddies_cupy(x1, n1, x2, n2, precision, chunk)
        return tuple(dev.back(r) for r in res)


def _row_norms(x, in_name: str):
    """(rows,) float32 ``max(||x_r||, 1e-8)`` on the current stream."""
    cp = _cupy()
    rows, c = (int(v) for v in x.shape)
    norms = cp.empty((rows,), dtype=cp.float32)
    kernel(f"dinofeat::bb_row_norm<{CXX_TYPES[in_name]}>")(
        (int(min(rows, GRID_CAP)),), (BB_THREADS,), (x, norms, np.int64(rows), np.int32(c))
    )
    return norms


def _normalized(x, in_name: str, gemm_name: str):
    cp = _cupy()
    rows, c = (int(v) for v in x.shape)
    norms = _row_norms(x, in_name)
    out = cp.empty((rows, c), dtype=STORAGE[gemm_name])
    kernel(f"dinofeat::bb_normalize<{CXX_TYPES[in_name]}, {CXX_TYPES[gemm_name]}>")(
        (_grid(rows * c, 256),), (256,), (x, norms, out, np.int64(rows), np.int32(c))
    )
    return out


def _gemm_nt(a, b, out, gemm_name: str):
    """out (m, n) fp32 = a (m, k) @ b (n, k).T, all row-major; fp16/bf16 inputs accumulate in fp32."""
    cp = _cupy()
    if gemm_name == "float32":
        return cp.matmul(a, b.T, out=out)
    from cupy_backends.cuda.libs import cublas

    m, k = (int(v) for v in a.shape)
    n = int(b.shape[0])
    dtype = {"float16": 2, "bfloat16": 14}[gemm_name]  # CUDA_R_16F, CUDA_R_16BF
    one = np.array(1.0, dtype=np.float32)
    zero = np.array(0.0, dtype=np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cp.cuda.get_current_stream().ptr)  # the handle may still hold another stream
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:  # column-major view: out.T (n x m) = b (k x n)^T @ a (k x m)
        cublas.gemmEx(
            handle,
            1,
            0,
            n,
            m,
            k,
            one.ctypes.data,
            b.data.ptr,
            dtype,
            k,
            a.data.ptr,
            dtype,
            k,
            zero.ctypes.data,
            out.data.ptr,
            0,
            n,
            68,
            -1,
        )  # CUDA_R_32F, CUBLAS_COMPUTE_32F, DEFAULT
    finally:
        cublas.setPointerMode(handle, mode)
    return out


def best_buddies_cupy(x1, name1: str, x2, name2: str, precision: str, chunk: int | None):
    """Chunked Best Buddies on CuPy's current stream; returns (nn_1, sim_1, nn_2, sim_2, mask) cupy arrays."""
    cp = _cupy()
    t1, t2 = int(x1.shape[0]), int(x2.shape[0])
    gemm_name = GEMM_DTYPE[precision]
    # fp32 inputs, fp32 GEMM: no normalised copies, the epilogue scales S[i, j] by 1/||x1_i|| * 1/||x2_j||
    scaled = gemm_name == "float32" and name1 == name2 == "float32"
    if scaled:
        a, b = x1, x2
        rs, cs = 1.0 / _row_norms(x1, name1), 1.0 / _row_norms(x2, name2)
    else:
        a = _normalized(x1, name1, gemm_name)  # rows normalised (and cast) once
        b = _normalized(x2, name2, gemm_name)
        rs = cs = cp.empty((1,), dtype=cp.float32)
    step = int(chunk) if chunk else int(max(BB_TILE_ROWS, min(t1, DEFAULT_CHUNK_BYTES // (4 * t2))))
    step = min(step, MAX_CHUNK_ROWS)
    buf = cp.empty((min(step, t1), t2), dtype=cp.float32)
    row_keys = cp.zeros((t1,), dtype=cp.uint64)
    col_keys = cp.zeros((t2,), dtype=cp.uint64)
    epi = kernel("dinofeat::bb_epilogue")
    for i0 in range(0, t1, step):
        rows = min(step, t1 - i0)
        s = _gemm_nt(a[i0 : i0 + rows], b, buf[:rows], gemm_name)
        grid = ((t2 + BB_THREADS - 1) // BB_THREADS, (rows + BB_TILE_ROWS - 1) // BB_TILE_ROWS)
        epi(
            grid,
            (BB_THREADS,),
            (
                s,
                np.int64(t2),
                np.int32(rows),
                np.int32(t2),
                np.int64(i0),
                rs[i0 : i0 + rows] if scaled else rs,
                cs,
                np.int32(scaled),
                row_keys,
                col_keys,
            ),
        )
    return keys_to_best_buddies(row_keys, col_keys)


# --------------------------------------------------------------------------- best_buddies_binned

BBB_THREADS = 256  # power of two <= DF_BBB_MAX_THREADS (bb_binned.cu)
BBB_TILE_ROWS = define("DF_BBB_TILE_ROWS")  # output rows per bbb_fused block (bb_binned.cu)
BBB_MAX_LEVELS = define("DF_BBB_MAX_LEVELS")  # level tiles g0..g3 of bbb_fused (bb_binned_common.cuh)
BBB_TILE_BYTES = 256 << 20  # Gram tiles of all levels together per step (image 1 is stepped in grid rows)


def binned_geom_words(grid1, grid2, hierarchy: int, r_lo, c_lo, ld) -> np.ndarray:
    """The int64 geometry words of ``bbb_fused`` (layout of ``binned_geom_from_words``)."""
    m = BBB_MAX_LEVELS
    pad = [0] * (m - hierarchy)
    return np.array([*grid1, *grid2, hierarchy, *r_lo, *pad, *c_lo, *pad, *ld, *pad], dtype=np.int64)


def binned_step_geoms(grid1, grid2, hierarchy: int, step: int) -> np.ndarray:
    """(steps, DF_BBB_GEOM_WORDS) int64: the ``bbb_fused`` geometry words of every image-1 step of ``step`` grid
    rows (row n: the step starting at grid row n * step, its level tiles starting ``3**k`` rows above it)."""
    t2 = int(grid2[0]) * int(grid2[1])
    rows = [binned_geom_words(grid1, grid2, hierarchy, [max(a0 - 3**k, 0) for k in range(hierarchy)],
                              [0] * hierarchy, [t2] * hierarchy) for a0 in range(0, int(grid1[0]), step)]
    return np.stack(rows)


GEOM_CACHE_SIZE = 64  # device copies of step geometries kept (one small array per shape and device)
_GEOM_CACHE: OrderedDict = OrderedDict()
_GEOM_LOCK = threading.Lock()


def binned_geoms_device(cp, grid1, grid2, hierarchy: int, step: int):
    """`binned_step_geoms` on the current device, uploaded once per (device, shape, step) and kept (LRU): no
    pageable host-to-device copy per step or call. The upload draws from CuPy's own pool (the entry outlives the
    call) and is complete before it is returned, so any stream may read it."""
    key = (int(cp.cuda.Device().id), tuple(int(v) for v in grid1), tuple(int(v) for v in grid2), int(hierarchy),
           int(step))
    with _GEOM_LOCK:
        hit = _GEOM_CACHE.get(key)
        if hit is not None:
            _GEOM_CACHE.move_to_end(key)
            return hit
    host = binned_step_geoms(grid1, grid2, hierarchy, step)
    with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):
        dev = cp.asarray(host)
    cp.cuda.get_current_stream().synchronize()
    with _GEOM_LOCK:
        _GEOM_CACHE[key] = dev
        while len(_GEOM_CACHE) > GEOM_CACHE_SIZE:
            _GEOM_CACHE.popitem(last=False)
    return dev


def binned_step_rows(grid1, t2: int, hierarchy: int, budget: int = BBB_TILE_BYTES) -> int:
    """Image-1 grid rows per step so that the level tiles (step + 2 * 3^k rows, all of image 2) fit ``budget``."""
    h1, w1 = grid1
    halos = [3**k for k in range(hierarchy)]
    step = h1
    while step > 1 and sum(4 * min(step + 2 * s, h1) * w1 * t2 for s in halos) > budget:
        step -= 1
    return step


def best_buddies_binned_any(keys1, grid1, keys2, grid2, origin: A.Origin, hierarchy: int, precision: str):
    """best_buddies_binned on the GPU for validated (T1, C), (T2, C) arrays of any kind (T1, T2 > 0)."""
    with _Device(keys1, origin) as dev:
        x1, n1 = dev.to_cupy(keys1, A.dtype_name(keys1))
        x2, n2 = dev.to_cupy(keys2, A.dtype_name(keys2))
        res = best_buddies_binned_cupy(x1, n1, grid1, x2, n2, grid2, hierarchy, precision)
        return tuple(dev.back(r) for r in res)


def binned_levels_cupy(x, in_name: str, grid, hierarchy: int) -> list:
    """Level maps [box_1^0(x), box_3(x), ...] of a (T, C) cupy array, each (T, C) float32."""
    cp = _cupy()
    t, c = (int(v) for v in x.shape)
    out = []
    for k in range(hierarchy):
        m = cp.empty((t, c), dtype=cp.float32)
        kernel(f"dinofeat::bbb_box_average<{CXX_TYPES[in_name]}>")(
            (_grid(t * c, 256),), (256,), (x, m, np.int32(grid[0]), np.int32(grid[1]), np.int32(c), np.int32(k))
        )
        out.append(m)
    return out


def binned_inv_norms_cupy(levels: list, grid) -> object:
    """(T,) float32 ``1 / max(||binned row||, 1e-8)`` from the level maps."""
    cp = _cupy()
    t, c = (int(v) for v in levels[0].shape)
    sq = cp.empty((len(levels), t), dtype=cp.float64)
    for k, m in enumerate(levels):
        kernel("dinofeat::bbb_cell_sqnorm")((_grid(t, 128),), (128,), (m, sq[k], np.int64(t), np.int32(c)))
    inv = cp.empty((t,), dtype=cp.float32)
    kernel("dinofeat::bbb_inv_norm")(
        (_grid(t, 128),), (128,), (sq, inv, np.int32(grid[0]), np.int32(grid[1]), np.int32(len(levels)))
    )
    return inv


def best_buddies_binned_cupy(x1, name1: str, grid1, x2, name2: str, grid2, hierarchy: int, precision: str,
                             budget: int = BBB_TILE_BYTES):
    """Binned Best Buddies on CuPy's current stream: image 1 in steps of grid rows (tiles with their halo rows,
    recomputed), all of image 2 per tile; returns (nn_1, sim_1, nn_2, sim_2, mask) cupy arrays."""
    cp = _cupy()
    (h1, w1), (h2, w2) = (int(v) for v in grid1), (int(v) for v in grid2)
    t1, t2 = h1 * w1, h2 * w2
    l1 = binned_levels_cupy(x1, name1, grid1, hierarchy)
    l2 = binned_levels_cupy(x2, name2, grid2, hierarchy)
    inv1, inv2 = binned_inv_norms_cupy(l1, grid1), binned_inv_norms_cupy(l2, grid2)
    gemm_name = GEMM_DTYPE[precision]
    if gemm_name != "float32":
        l1 = [_normalized_copy(m, gemm_name) for m in l1]
        l2 = [_normalized_copy(m, gemm_name) for m in l2]
    step = binned_step_rows((h1, w1), t2, hierarchy, budget)
    halos = [3**k for k in range(hierarchy)]
    bufs = [cp.empty((min(step + 2 * s, h1) * w1, t2), dtype=cp.float32) for s in halos]
    row_keys = cp.zeros((t1,), dtype=cp.uint64)
    col_keys = cp.zeros((t2,), dtype=cp.uint64)
    fused = kernel("dinofeat::bbb_fused")
    geoms = binned_geoms_device(cp, (h1, w1), (h2, w2), hierarchy, step)
    for n, a0 in enumerate(range(0, h1, step)):
        a1 = min(a0 + step, h1)
        tiles = []
        for k, s in enumerate(halos):
            lo, hi = max(a0 - s, 0), min(a1 + s, h1)
            tiles.append(_gemm_nt(l1[k][lo * w1 : hi * w1], l2[k], bufs[k][: (hi - lo) * w1], gemm_name))
        geom = geoms[n]
        ptrs = tiles + [tiles[0]] * (BBB_MAX_LEVELS - hierarchy)
        nrows = (a1 - a0) * w1
        grid = ((t2 + BBB_THREADS - 1) // BBB_THREADS, (nrows + BBB_TILE_ROWS - 1) // BBB_TILE_ROWS)
        fused(grid, (BBB_THREADS,), (geom, *ptrs, np.int32(a0), np.int32(a1), np.int32(0), np.int32(h2), inv1, inv2,
                                     row_keys, col_keys))
    return keys_to_best_buddies(row_keys, col_keys)


def keys_to_best_buddies(row_keys, col_keys):
    """Packed (value, index) keys of rows (T1,) and columns (T2,) -> (nn_1, sim_1, nn_2, sim_2, mask) cupy arrays."""
    cp = _cupy()
    t1, t2 = int(row_keys.shape[0]), int(col_keys.shape[0])
    nn_1 = cp.empty((t1,), dtype=cp.int64)
    sim_1 = cp.empty((t1,), dtype=cp.float32)
    nn_2 = cp.empty((t2,), dtype=cp.int64)
    sim_2 = cp.empty((t2,), dtype=cp.float32)
    unpack = kernel("dinofeat::bb_unpack_keys")
    unpack((_grid(t1, 256),), (256,), (row_keys, np.int64(t1), nn_1, sim_1))
    unpack((_grid(t2, 256),), (256,), (col_keys, np.int64(t2), nn_2, sim_2))
    mask = cp.empty((t1,), dtype=cp.bool_)
    kernel("dinofeat::bb_mutual")((_grid(t1, 256),), (256,), (nn_1, nn_2, np.int64(t1), mask))
    return nn_1, sim_1, nn_2, sim_2, mask


def _normalized_copy(m, gemm_name: str):
    """m (T, C) float32 rounded to the GEMM type (bb_normalize with unit norms: a plain cast)."""
    cp = _cupy()
    rows, c = (int(v) for v in m.shape)
    ones = cp.ones((rows,), dtype=cp.float32)
    out = cp.empty((rows, c), dtype=STORAGE[gemm_name])
    kernel(f"dinofeat::bb_normalize<float, {CXX_TYPES[gemm_name]}>")(
        (_grid(rows * c, 256),), (256,), (m, ones, out, np.int64(rows), np.int32(c))
    )
    return out
