"""Descriptor kernels: log-binning and Best-Buddies matching (reference torch, C++ and CUDA implementations).

Public API (see :mod:`dinofeat.kernels.dispatch`)::

    log_bin(desc, num_patches, hierarchy=2, *, out_dtype=None, return_norm=False, impl="auto")
    best_buddies(desc1, desc2, *, precision="fp32", chunk=None, impl="auto") -> BestBuddies
    best_buddies_binned(keys1, num_patches1, keys2, num_patches2, *, hierarchy=2, precision="fp32", impl="auto")
    log_bin_rows(desc, num_patches, indices, hierarchy=2, *, impl="auto") -> (N, C * (1 + 8 h))
"""

from .dispatch import BestBuddies, best_buddies, best_buddies_binned, log_bin, log_bin_rows, native_available

__all__ = ["BestBuddies", "best_buddies", "best_buddies_binned", "log_bin", "log_bin_rows", "native_available"]
