"""Triton Python-backend models (`TritonPythonModel` protocol); imported only inside the server's stub.

`VitModel` runs the strided ViT (torch backend) on a dynamically batched request list; `MatchModel` runs the
per-pair step `dinofeat.correspondences.match_views` (log-bin, Best Buddies, foreground filter, k-means,
selection) on two images' ViT outputs, on the instance's device (CPU: C++ kernels; GPU: CUDA kernels).
Options come from the `dinofeat` parameter of the model's config (see `repository.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pb():
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub

    return pb_utils


def _setup(args) -> tuple[dict, object]:
    """(options, torch device) of this model instance."""
    import torch

    from .repository import read_options

    options = read_options(json.loads(args["model_config"]).get("parameters", {}))
    if args.get("model_instance_kind") == "GPU":
        device = torch.device(f"cuda:{int(args.get('model_instance_device_id', 0))}")
    else:
        device = torch.device("cpu")
    return options, device


def _input(pb, request, name):
    """An input tensor as torch, through DLPack: the bundled stub's numpy bridge is built for numpy 1.x and reads
    numpy 2.x arrays wrongly (garbage in `as_numpy`, empty outputs from `Tensor(name, ndarray)`)."""
    import torch

    return torch.from_dlpack(pb.get_input_tensor_by_name(request, name).to_dlpack())


def _output(pb, name, value):
    """A torch tensor or numpy array as an output tensor, through DLPack (see `_input`)."""
    import torch

    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return pb.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(t.contiguous()))


def _error_responses(pb, requests, exc) -> list:
    msg = f"{type(exc).__name__}: {exc}"
    return [pb.InferenceResponse(output_tensors=[], error=pb.TritonError(msg)) for _ in requests]


class VitModel:
    """dinofeat_vit with the Python backend: (B, 3, H, W) images -> facet outputs (B, T, C) + saliency (B, T)."""

    def initialize(self, args) -> None:
        from ..engine.extractor import Extractor
        from ..model.vit import Request

        options, device = _setup(args)
        weights = Path(args["model_repository"]) / str(args["model_version"]) / options["weights_file"]
        self.extractor = Extractor(model=options["model"], stride=options["stride"], weights=str(weights),
                                   backend="torch", device=device, precision=options["precision"], progress=False)
        layers = tuple(dict.fromkeys(options["layers"]))
        self.request = Request(facets=tuple((layer, options["facet"]) for layer in layers), saliency=True)
        self.names = self.request.output_names()

    def execute(self, requests) -> list:
        import torch

        pb = _pb()

        def run(batch):
            with torch.no_grad():
                out = self.extractor.backend.run(batch.float(), self.request)
            return {name: out[name].float().cpu() for name in self.names}

        return _run_by_size(pb, requests, self.names, run)


def _run_by_size(pb, requests, names, run) -> list:
    """One `run` per input size (dinofeat_vit takes any H, W; requests of one size form one batch), each
    request answered with its rows; a failed batch is each of its requests' error."""
    import torch

    parts = [_input(pb, r, "images") for r in requests]
    groups: dict[tuple, list[int]] = {}
    for i, part in enumerate(parts):
        groups.setdefault(tuple(part.shape[1:]), []).append(i)
    responses: list = [None] * len(requests)
    for idx in groups.values():
        try:
            out = run(torch.cat([parts[i] for i in idx], dim=0))
        except Exception as e:  # noqa: BLE001 - the whole batch failed: each of its requests gets the error
            for i, r in zip(idx, _error_responses(pb, [requests[i] for i in idx], e), strict=True):
                responses[i] = r
            continue
        start = 0
        for i in idx:
            n = parts[i].shape[0]
            tensors = [_output(pb, name, out[name][start:start + n]) for name in names]
            responses[i] = pb.InferenceResponse(output_tensors=tensors)
            start += n
    return responses


class OrtVitModel:
    """dinofeat_vit with backend onnxruntime-python: the repository's dynamic-size ONNX graph (1/model.onnx) run
    by ONNX Runtime inside the Python backend (CPU EP; CUDA EP on a GPU instance when onnxruntime-gpu is there)."""

    def initialize(self, args) -> None:
        import onnxruntime as ort

        options, device = _setup(args)
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests) -> list:
        import torch

        def run(batch):
            outs = self.session.run(self.names, {"images": batch.float().cpu().numpy()})
            return {name: torch.from_numpy(a) for name, a in zip(self.names, outs, strict=True)}

        return _run_by_size(_pb(), requests, self.names, run)


class MatchModel:
    """dinofeat_match: both images' ViT outputs (batch 1) -> every field in `wire.FIELDS` (batch 1)."""

    def initialize(self, args) -> None:
        from ..model.zoo import get_model_spec

        self.options, self.device = _setup(args)
        self.patch_size = get_model_spec(self.options["model"]).patch_size
        self.grid = tuple(self.options["num_patches"])
        self.facets = [f"{self.options['facet']}{layer}" for layer in self.options["layers"]]

    def _match_one(self, pb, request) -> dict[str, np.ndarray]:
        from ..correspondences import ImageView, match_views
        from . import wire

        def get(name):
            return _input(pb, request, name)[0].to(self.device, copy=True)

        views = []
        for i in (1, 2):
            keys = [get(f"{name}_{i}") for name in self.facets]
            views.append(ImageView(keys=keys if len(keys) > 1 else keys[0], saliency=get(f"saliency_{i}"),
                                   num_patches=self.grid, image=None))
        o = self.options
        c = match_views(views[0], views[1], num_pairs=o["num_pairs"], bin=o["bin"], thresh=o["thresh"],
                        stride=o["stride"], patch_size=self.patch_size)
        return wire.encode(c)

    def execute(self, requests) -> list:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                arrays = self._match_one(pb, request)
                tensors = [_output(pb, name, a[None]) for name, a in arrays.items()]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
            except Exception as e:  # noqa: BLE001 - one bad pair becomes that request's error
                responses.extend(_error_responses(pb, [request], e))
        return responses


__all__ = ["MatchModel", "OrtVitModel", "VitModel"]
