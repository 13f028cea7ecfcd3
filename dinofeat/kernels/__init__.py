"""Descriptor kernels: log-binning and Best-Buddies matching (reference torch, C++ and CUDA implementations).

Public API (see :mod:`dinofeat.kernels.dispatch`)::

    log_bin(desc, num_patches, hierarchy=2, *, out_dtype=None, return_norm=False, impl="auto")
    best_buddies(desc1, desc2, *, precision="fp32", chunk=None, impl="auto") -> BestBuddies
"""

from .dispatch import BestBuddies, best_buddies, log_bin, native_available

__all__ = ["BestBuddies", "best_buddies", "log_bin", "native_available"]
