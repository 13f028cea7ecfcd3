"""Kernels layer: log-binning and Best Buddies matching (reference torch, C++ and CUDA implementations).

Owns: the public, checking entry points (dispatch.py) and the one table they dispatch through,
``dispatch.KERNELS = {op: {implementation: function}}`` (ops log_bin, best_buddies, best_buddies_binned,
log_bin_rows; implementations reference, cpu, cuda); the plain-torch oracle (reference.py); the C++ path
(cpu.py, cpu_binned.py over ``dinofeat._native``, built from ``bindings/``); the CUDA path (cuda.py: the ``*.cu``
kernels through a CuPy RawModule); the headers ``*_common.cuh`` holding the per-element logic and the limits of both
builds, whose numbers Python reads through headers.py instead of copying them (docs/kernels.md).
May import: the base layer only (errors, io, limits, progress, version, config, viz); today just
``dinofeat.errors``. Never the model, engine or any higher layer, nor the package root (``import dinofeat`` pulls
every layer in); ``dinofeat._native`` is loaded by name (importlib), CuPy when a CUDA kernel first runs.

Public API (see :mod:`dinofeat.kernels.dispatch`)::

    log_bin(desc, num_patches, hierarchy=2, *, out_dtype=None, return_norm=False, impl="auto")
    best_buddies(desc1, desc2, *, precision="fp32", chunk=None, impl="auto") -> BestBuddies
    best_buddies_binned(keys1, num_patches1, keys2, num_patches2, *, hierarchy=2, precision="fp32", impl="auto")
    log_bin_rows(desc, num_patches, indices, hierarchy=2, *, impl="auto") -> (N, C * (1 + 8 h))
"""

from .dispatch import BestBuddies, best_buddies, best_buddies_binned, log_bin, log_bin_rows, native_available

__all__ = ["BestBuddies", "best_buddies", "best_buddies_binned", "log_bin", "log_bin_rows", "native_available"]
