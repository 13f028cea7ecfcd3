"""`StreamMatch`: the lazily completed result of `FrameStream.match`."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

FIELDS = ("points1", "points2", "frame_points1", "frame_points2", "scores", "saliency", "indices1", "indices2")


class StreamMatch:
    """Correspondences of one frame (image 2) to the reference keyframe or to the previous frame (image 1).

    `FrameStream.match` returns as soon as the frame's preprocessing and forward are enqueued (on CUDA: on the
    stream's CUDA stream, no host synchronisation; on the CPU they have run). Best Buddies, the foreground filter
    and the k-means selection (`match_views`, which needs the host) run at the first read of any field below, or
    at `wait()`; the host then waits for this frame's work only.

    Fields (torch tensors on the stream's device, K pairs, in `dinofeat match`'s order):
        points1, points2: (K, 2) int64 (y, x) in the resized images' pixels, exactly `find_correspondences`'s.
        frame_points1, frame_points2: (K, 2) float32 (y, x) of the same points in the input frames' pixels
            (pixel centres: ``(p + 0.5) * input_size / resized_size - 0.5``); for a ROS PointCloud2 u = x, v = y.
        scores: (K,) float32 cosine similarity of each pair's (binned) descriptors.
        saliency: (K,) float32 mean saliency of each pair (the score `find_correspondences` ranks by).
        indices1, indices2: (K,) int64 token indices (row-major patch grid).
    Also: `num_best_buddies` (int), `correspondences` (the full `Correspondences` of `match_views`; its images
    are None), `frame_index`, `reference_index`, `previous` (the match to the previous frame, or None).
    """

    def __init__(self, compute, *, frame_index: int, reference_index: int, sizes, device: torch.device,
                 cuda_stream=None, previous: StreamMatch | None = None):
        self._compute = compute
        self._corr = None
        self._fields: dict[str, torch.Tensor] = {}
        self.frame_index = frame_index
        self.reference_index = reference_index
        self._sizes = sizes  # ((H1, W1), (h1, w1), (H2, W2), (h2, w2)): input and resized size of each image
        self.device = device
        self._cuda_stream = cuda_stream
        self.previous = previous

    def __repr__(self) -> str:
        state = f"{len(self)} pairs" if self._corr is not None else "pending"
        return f"StreamMatch(frame {self.frame_index} -> reference {self.reference_index}, {state})"

    def wait(self) -> StreamMatch:
        """Complete the match (host sync on this frame's work); returns self."""
        if self._corr is None:
            ctx = torch.cuda.stream(self._cuda_stream) if self._cuda_stream is not None else contextlib.nullcontext()
            with ctx:
                corr = self._compute()
                self._fields = _fields_of(corr, self._sizes, self.device)
            self._corr, self._compute = corr, None
        return self

    @property
    def ready(self) -> bool:
        """True once the match has been completed (a field was read or `wait()` called)."""
        return self._corr is not None

    @property
    def correspondences(self):
        return self.wait()._corr

    @property
    def num_best_buddies(self) -> int:
        return int(self.correspondences.bbs_mask.sum())

    def __len__(self) -> int:
        return len(self.correspondences)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (host copies), plus frame_index / reference_index / num_best_buddies."""
        out = {k: v.detach().cpu().numpy() for k, v in self.wait()._fields.items()}
        out.update(frame_index=np.int64(self.frame_index), reference_index=np.int64(self.reference_index),
                   num_best_buddies=np.int64(self.num_best_buddies))
        return out


def _field(name: str):
    def get(self) -> torch.Tensor:
        return self.wait()._fields[name]

    get.__name__ = name
    return property(get, doc=f"{name} (see the class docstring)")


for _name in FIELDS:
    setattr(StreamMatch, _name, _field(_name))


def _fields_of(corr, sizes, device: torch.device) -> dict[str, torch.Tensor]:
    (in1, rs1, in2, rs2) = sizes
    p1 = torch.as_tensor(np.asarray(corr.points1, dtype=np.int64).reshape(-1, 2))
    p2 = torch.as_tensor(np.asarray(corr.points2, dtype=np.int64).reshape(-1, 2))
    i1 = torch.as_tensor(corr.indices1, dtype=torch.int64)
    i2 = torch.as_tensor(corr.indices2, dtype=torch.int64)
    on = {k: v.to(device) for k, v in {"points1": p1, "points2": p2, "indices1": i1, "indices2": i2}.items()}
    on["frame_points1"] = to_frame_pixels(on["points1"], in1, rs1)
    on["frame_points2"] = to_frame_pixels(on["points2"], in2, rs2)
    on["scores"] = corr.sim_1.to(device)[on["indices1"]].float()
    on["saliency"] = (corr.saliency1.to(device)[on["indices1"]] + corr.saliency2.to(device)[on["indices2"]]) / 2
    return on


def to_frame_pixels(points: torch.Tensor, input_hw, resized_hw) -> torch.Tensor:
    """(K, 2) (y, x) pixels of the resized image -> float32 (y, x) pixel centres of the input image."""
    scale = torch.tensor([input_hw[0] / resized_hw[0], input_hw[1] / resized_hw[1]], dtype=torch.float64)
    return ((points.double() + 0.5) * scale.to(points.device) - 0.5).float()
