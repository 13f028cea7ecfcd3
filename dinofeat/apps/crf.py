"""Dense CRF smoothing of label maps (part co-segmentation): pydensecrf as the original, or a torch mean-field.

Both run the fully connected CRF of Krähenbühl & Koltun with a Potts compatibility and two kernels,
a positional Gaussian exp(-|Δp|² / 2 sxy²) and a bilateral exp(-|Δp|² / 2 sxy_b² - |ΔI|² / 2 srgb²), each
symmetrically normalised (n ⊙ K(n ⊙ Q), n = (K·1)^-1/2), and `iters` mean-field updates
Q <- softmax(-U + Σ w_k n_k ⊙ K_k(n_k ⊙ Q)).

The difference: pydensecrf filters with the permutohedral lattice (an approximation of the Gaussians, O(N));
`method="torch"` sums the Gaussians exactly inside a window of radius ceil(3 σ) (positional: separable conv;
bilateral: one weight map per window offset), on the CPU or a GPU. Near label boundaries the two can differ.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import BackendUnavailableError, InputError
from .defaults import PARTS

CRF_METHODS = ("auto", "pydensecrf", "torch")


def have_pydensecrf() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_crf(method: str) -> str:
    if method not in CRF_METHODS:
        raise InputError(f"crf={method!r}: expected one of {', '.join(CRF_METHODS)}")
    if method == "auto":
        return "pydensecrf" if have_pydensecrf() else "torch"
    if method == "pydensecrf" and not have_pydensecrf():
        raise BackendUnavailableError("crf='pydensecrf' needs the pydensecrf module: pip install pydensecrf2 "
                                      "(or use crf='torch')")
    return method


def dense_crf(unary: np.ndarray, image: np.ndarray, *, method: str = "auto", iters: int = PARTS.crf_iters,
              gaussian_sxy: float = PARTS.crf_gaussian_sxy, gaussian_compat: float = PARTS.crf_gaussian_compat,
              bilateral_sxy: float = PARTS.crf_bilateral_sxy, bilateral_srgb: float = PARTS.crf_bilateral_srgb,
              bilateral_compat: float = PARTS.crf_bilateral_compat, device="cpu") -> np.ndarray:
    """Mean-field inference; unary (K, H, W) float32 energies, image (H, W, 3) uint8 -> (H, W) int64 argmax of Q."""
    method = resolve_crf(method)
    k, height, width = unary.shape
    if image.shape != (height, width, 3):
        raise InputError(f"image: expected shape {(height, width, 3)} to match the unary, got {image.shape}")
    if method == "pydensecrf":
        import pydensecrf.densecrf as dcrf

        d = dcrf.DenseCRF2D(width, height, k)
        d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(k, -1), dtype=np.float32))
        d.addPairwiseGaussian(sxy=(gaussian_sxy, gaussian_sxy), compat=gaussian_compat, kernel=dcrf.DIAG_KERNEL,
                              normalization=dcrf.NORMALIZE_SYMMETRIC)
        d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                               compat=bilateral_compat, kernel=dcrf.DIAG_KERNEL,
                               normalization=dcrf.NORMALIZE_SYMMETRIC)
        q = np.array(d.inference(iters))
        return np.argmax(q, axis=0).reshape(height, width)
    u = torch.from_numpy(np.ascontiguousarray(unary, dtype=np.float32)).to(device)
    img = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
    gauss = _GaussianFilter(gaussian_sxy, height, width, device)
    bilat = _BilateralFilter(img, bilateral_sxy, bilateral_srgb)
    q = torch.softmax(-u, dim=0)
    for _ in range(iters):
        q = torch.softmax(-u + gaussian_compat * gauss(q) + bilateral_compat * bilat(q), dim=0)
    return q.argmax(dim=0).cpu().numpy().astype(np.int64)


class _GaussianFilter:
    """Symmetrically normalised positional Gaussian (separable, zero outside the image)."""

    def __init__(self, sxy: float, height: int, width: int, device):
        r = max(1, math.ceil(3 * sxy))
        x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
        self.k = torch.exp(-(x * x) / (2 * sxy * sxy))
        self.r = r
        self.n = (self._blur(torch.ones(1, height, width, device=device)) + 1e-20).rsqrt()

    def _blur(self, q: torch.Tensor) -> torch.Tensor:
        c = q.shape[0]
        x = q[None]
        x = torch.nn.functional.conv2d(x, self.k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, self.r), groups=c)
        x = torch.nn.functional.conv2d(x, self.k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(self.r, 0), groups=c)
        return x[0]

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return self.n * self._blur(self.n * q)


class _BilateralFilter:
    """Symmetrically normalised bilateral Gaussian, summed exactly over a (2r+1)² window (zero outside)."""

    def __init__(self, img: torch.Tensor, sxy: float, srgb: float):
        r = max(1, math.ceil(3 * sxy))
        _, height, width = img.shape
        self.r, self.h, self.w = r, height, width
        padded = torch.nn.functional.pad(img, (r, r, r, r))
        inside = torch.nn.functional.pad(torch.ones(1, height, width, device=img.device), (r, r, r, r))
        dx = torch.arange(-r, r + 1, dtype=torch.float32, device=img.device)
        rows = []
        for dy in range(-r, r + 1):  # one row of window offsets at a time: (H, W, 2r+1)
            band = padded[:, r + dy:r + dy + height].unfold(2, 2 * r + 1, 1)
            valid = inside[0, r + dy:r + dy + height].unfold(1, 2 * r + 1, 1)
            colour = ((band - img[..., None]) ** 2).sum(0)
            rows.append(valid * torch.exp(-colour / (2 * srgb * srgb) - (dy * dy + dx * dx) / (2 * sxy * sxy)))
        self.weights = rows  # weights[dy + r][y, x, dx + r]: neighbour (y + dy, x + dx) of pixel (y, x)
        self.n = (self._filter(torch.ones(1, height, width, device=img.device)) + 1e-20).rsqrt()

    def _filter(self, q: torch.Tensor) -> torch.Tensor:
        r, h = self.r, self.h
        padded = torch.nn.functional.pad(q, (r, r, r, r))
        out = torch.zeros_like(q)
        for i, w in enumerate(self.weights):
            out += (padded[:, i:i + h].unfold(2, 2 * r + 1, 1) * w).sum(-1)
        return out

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return self.n * self._filter(self.n * q)
