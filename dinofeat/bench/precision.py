"""`dinofeat bench precision`: how far each precision is from fp32, on every backend here, on a real pair set.

For each (backend, precision) row, on the same images and weights as the fp32 reference (torch backend, fp32):

* descriptor cosine to fp32, per token (min / mean over every token of every image);
* saliency deviation, max |s - s_fp32| and mean (saliency is min-max normalised to [0, 1]);
* Best Buddies agreement: per pair, Jaccard index of the mutual-nearest-neighbour pair sets {(i, nn(i))} of the
  row and of fp32 (mean / min over pairs);
* keypoint transfer on WILLOW-ObjectClass pairs (``shared/data/willow``: 10 annotated keypoints per image): each
  source keypoint goes to its nearest window, whose descriptor's cosine nearest neighbour in the target gives the
  prediction; PCK@alpha with alpha * max(h, w) of the target image (the dataset has no boxes). Reported, with its
  change from fp32, only for real weights (`--weights`): deterministic weights have no semantics to transfer;
* speed: mean seconds per image of ``Extractor.extract`` (first image of each size untimed).

Rows that cannot run here (TensorRT without a GPU, tf32 without tensor cores) are kept with the reason. On the
CPU the onnxruntime rows run the dynamic-size graph of that precision directly on ORT's CPU EP (one session for
every image size; the backend would export one graph per size and refuses fp16 on the CPU, while the CPU EP does
run the fp16 graph, casting where it must), which also checks that the fp32 islands (LayerNorm, Softmax, RoPE)
keep the fp16 graph finite.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DinofeatError, InputError

ROWS = (("torch", "fp32"), ("torch", "tf32"), ("torch", "bf16"), ("torch", "fp16"), ("onnxruntime", "fp32"),
        ("onnxruntime", "fp16"), ("tensorrt", "fp32"), ("tensorrt", "tf32"), ("tensorrt", "fp16"))
WILLOW_CLASSES = ("Car", "Duck", "Winebottle")


@dataclass
class _Image:
    desc: torch.Tensor  # (T, C) float32, unit rows
    saliency: np.ndarray  # (T,)
    grid: tuple[int, int]
    scale: tuple[float, float]  # resized / original, (x, y)
    size: tuple[int, int]  # original (h, w)


def willow_pairs(root, per_class: int) -> list[tuple[Path, Path]]:
    """Consecutive image pairs (sorted names) of each WILLOW class, `per_class` each."""
    root = Path(root)
    pairs = []
    for cls in WILLOW_CLASSES:
        files = sorted((root / cls).glob("*.png"))
        if len(files) < 2:
            raise InputError(f"--data {str(root)!r}: expected WILLOW's layout <root>/{cls}/*.png with .mat files "
                             f"(shared/data/willow)")
        pairs += [(files[2 * i], files[2 * i + 1]) for i in range(min(per_class, len(files) // 2))]
    return pairs


def _keypoints(png: Path) -> np.ndarray:
    from scipy.io import loadmat

    return np.asarray(loadmat(str(png.with_suffix(".mat")))["pts_coord"], np.float64).T  # (10, 2) x, y


def _environment() -> dict:
    import onnxruntime

    return {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _not_here(backend: str, precision: str, device: torch.device) -> str | None:
    if precision == "tf32" and device.type != "cuda":
        return "TF32 is a tensor-core mode of NVIDIA GPUs (Ampere+); this run has no GPU, so tf32 == fp32 here"
    if backend == "tensorrt" and device.type != "cuda":
        return "TensorRT needs an NVIDIA GPU; none in this run (the GPU check measures it)"
    return None


class _Runner:
    """Features of one (backend, precision) for image files, timed."""

    def __init__(self, cfg: dict, backend: str, precision: str):
        from ..engine.extractor import Extractor

        self.cfg, self.backend, self.precision, self.session = cfg, backend, precision, None
        self.times: list[float] = []
        self._seen: set = set()
        device = cfg["device"]
        if backend == "onnxruntime":
            # one dynamic-size graph for every image size (the backend would export one graph per size), run
            # directly (CUDA EP on a GPU, else the CPU EP: the backend refuses fp16 there, the CPU EP runs the
            # fp16 graph all the same)
            self.ex = Extractor(cfg["model"], cfg["stride"], cfg["weights"], "torch", "cpu", "fp32",
                                         progress=False)
            self.session, where = self._graph_session(torch.device(device))
            self.note = f"{precision} ONNX graph (dynamic H, W) on ONNX Runtime's {where}"
        else:
            options = None
            if backend == "tensorrt":  # one engine for every image size: a wide (batch 1) H, W profile
                from ..export.tensorrt import ShapeProfile
                from ..model.zoo import get_model_spec

                p = get_model_spec(cfg["model"]).patch_size
                load = cfg["load_size"]
                options = {"shape_profiles": (ShapeProfile((1, p, p), (1, load, load), (1, 4 * load, 4 * load)),)}
            self.ex = Extractor(cfg["model"], cfg["stride"], cfg["weights"], backend, device, precision,
                                         progress=False, backend_options=options)
            self.note = "one engine, H, W profile up to 4x the load size" if options else ""

    def _graph_session(self, device: torch.device):
        import onnxruntime as ort

        from ..export.onnx import get_onnx
        from ..model.vit import Request

        req = Request(facets=((self.cfg["layer"], "key"),), saliency=True)
        self.request = req
        graph_precision = "fp16" if self.precision == "fp16" else "fp32"  # tf32: the fp32 graph, TF32 matmuls
        path = get_onnx(self.ex.backend.model, req, 224, 224, precision=graph_precision,
                        weights_id=self.ex.weights_sha256, cache_dir=self.cfg.get("cache_dir"), dynamic=True)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            use_tf32 = "1" if self.precision == "tf32" else "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": str(device.index or 0), "use_tf32": use_tf32}))
        elif self.precision == "tf32":
            raise InputError("tf32 with onnxruntime needs its CUDA EP (onnxruntime-gpu)")
        session = ort.InferenceSession(str(path), so, providers=providers)
        return session, session.get_providers()[0].replace("ExecutionProvider", " EP")

    def __call__(self, path: Path) -> _Image:
        from PIL import Image

        batch, pil = self.ex.preprocess(str(path), self.cfg["load_size"], exif_transpose=False)
        with Image.open(path) as im:
            w, h = im.size
        key = tuple(batch.shape)
        t0 = time.perf_counter()
        if self.session is not None:
            desc, sal = self.session.run(None, {"images": batch.numpy()})
            desc, sal = torch.from_numpy(desc[0]), sal[0]
            grid = self.ex.backend.model.grid(*batch.shape[-2:])
        else:
            f = self.ex.extract(batch, layer=self.cfg["layer"], facet="key", saliency=True)
            desc, sal, grid = f.descriptors[0].float().cpu(), f.saliency[0].float().cpu().numpy(), f.num_patches
        dt = time.perf_counter() - t0
        if key in self._seen:
            self.times.append(dt)
        self._seen.add(key)
        d = torch.nn.functional.normalize(desc.float(), dim=1, eps=1e-8)
        return _Image(d, np.asarray(sal, np.float64), tuple(grid), (pil.width / w, pil.height / h), (h, w))


def _bb_pairs(d1: torch.Tensor, d2: torch.Tensor) -> set:
    from ..kernels import best_buddies

    bb = best_buddies(d1.numpy(), d2.numpy())
    idx = np.nonzero(np.asarray(bb.mask))[0]
    return set(zip(idx.tolist(), np.asarray(bb.nn_1)[idx].tolist(), strict=True))


def _pck(a: _Image, b: _Image, kps_a: np.ndarray, kps_b: np.ndarray, stride: int, patch: int, alpha: float):
    from ..apps.keypoints import keypoint_tokens, token_centres

    tokens = keypoint_tokens(kps_a, a.scale, a.grid, stride, patch)
    nn = (a.desc[torch.from_numpy(tokens)] @ b.desc.T).argmax(dim=1).numpy()
    pred = token_centres(nn, b.scale, b.grid, stride, patch)
    dist = np.linalg.norm(pred - kps_b, axis=1)
    return int((dist <= alpha * max(b.size)).sum()), len(kps_a)


def run_precision_bench(*, model: str, stride: int, weights, data, out, pairs_per_class: int = 4,
                        load_size: int = 224, layer: int = 9, alpha: float = 0.1, device: str = "cpu",
                        rows=ROWS, cache_dir=None, progress: bool = True) -> dict:
    """Measure `rows` against (torch, fp32); write ``out/precision.json`` and ``out/precision.md``; return the
    JSON document. `weights`: a checkpoint path (PCK reported) or None (deterministic weights, PCK skipped)."""
    from ..io import atomic_write_bytes
    from ..testing import deterministic_weights

    pairs = willow_pairs(data, pairs_per_class)
    real = weights is not None
    cfg = {"model": model, "stride": stride, "weights": weights if real else deterministic_weights(model),
           "load_size": load_size, "layer": layer, "device": device, "cache_dir": cache_dir}
    dev = torch.device(device)
    files = sorted({p for pair in pairs for p in pair})
    kps = {f: _keypoints(f) for f in files}
    results, ref = [], None
    for backend, precision in rows:
        row = {"backend": backend, "precision": precision}
        reason = _not_here(backend, precision, dev)
        if reason:
            results.append(row | {"status": "not measured", "reason": reason})
            continue
        try:
            runner = _Runner(cfg, backend, precision)
        except DinofeatError as e:
            results.append(row | {"status": "not measured", "reason": str(e).splitlines()[0]})
            continue
        if progress:
            print(f"dinofeat bench precision: {backend} {precision} on {len(files)} images", flush=True)
        feats = {f: runner(f) for f in files}
        patch = runner.ex.patch_size
        correct = total = 0
        for a, b in pairs:
            c, t = _pck(feats[a], feats[b], kps[a], kps[b], stride, patch, alpha)
            correct, total = correct + c, total + t
        row |= {"status": "measured", "note": runner.note, "images": len(files), "pairs": len(pairs),
                "seconds_per_image": float(np.mean(runner.times)) if runner.times else None,
                "nan": bool(any(not torch.isfinite(f.desc).all() for f in feats.values()))}
        if real:
            row["pck"] = correct / total
        if ref is None:
            if (backend, precision) != ("torch", "fp32"):
                raise InputError("the first row must be the fp32 reference (torch, fp32)")
            ref = {"feats": feats, "bb": {p: _bb_pairs(feats[p[0]].desc, feats[p[1]].desc) for p in pairs},
                   "pck": row.get("pck")}
        cos = torch.cat([(feats[f].desc * ref["feats"][f].desc).sum(dim=1) for f in files])
        sal = np.concatenate([np.abs(feats[f].saliency - ref["feats"][f].saliency) for f in files])
        jac = []
        for p in pairs:
            mine, theirs = _bb_pairs(feats[p[0]].desc, feats[p[1]].desc), ref["bb"][p]
            jac.append(len(mine & theirs) / max(len(mine | theirs), 1))
        row |= {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                "saliency_max_dev": float(np.nanmax(sal)), "saliency_mean_dev": float(np.nanmean(sal)),
                "bb_jaccard_mean": float(np.mean(jac)), "bb_jaccard_min": float(np.min(jac)),
                "bb_pairs_mean": float(np.mean([len(ref["bb"][p]) for p in pairs]))}
        if real:
            row["pck_change"] = row["pck"] - ref["pck"]
        results.append(row)
    doc = {"settings": {"model": model, "stride": stride, "layer": layer, "facet": "key", "load_size": load_size,
                        "alpha": alpha, "pairs_per_class": pairs_per_class, "device": device,
                        "weights": str(weights) if real else "deterministic (dinofeat.testing)",
                        "data": str(data), "pairs": [[a.parent.name + "/" + a.name, b.name] for a, b in pairs]},
           "environment": _environment(), "rows": results}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "precision.json", json.dumps(doc, indent=1).encode())
    atomic_write_bytes(out / "precision.md", markdown_table(doc).encode())
    return doc


def markdown_table(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# Precision vs fp32 — {s['model']} stride {s['stride']}, layer {s['layer']} key, load size "
             f"{s['load_size']}, {len(s['pairs'])} WILLOW pairs, device {s['device']}", "",
             f"Weights: {s['weights']}. Machine: {doc['environment']['machine']}, {doc['environment']['cpu_count']} "
             f"CPUs, torch {doc['environment']['torch']}, onnxruntime {doc['environment']['onnxruntime']}, load average "
             f"at the end {doc['environment'].get('load_average_at_end', ['?'])[0]:.1f} (s/image: wall time on a "
             "shared machine, compare rows of one run only).", "",
             "| backend | precision | cos min | cos mean | saliency max dev | BB Jaccard mean (min) | "
             f"PCK@{s['alpha']} | ΔPCK | s/image | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if r["status"] != "measured":
            lines.append(f"| {r['backend']} | {r['precision']} | — | — | — | — | — | — | — | not measured: "
                         f"{r['reason']} |")
            continue
        pck = f"{r['pck']:.3f}" if "pck" in r else "n/a (deterministic weights)"
        dpck = f"{r['pck_change'] * 100:+.1f} pt" if "pck_change" in r else "—"
        spi = f"{r['seconds_per_image']:.3f}" if r["seconds_per_image"] is not None else "—"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['cosine_min']:.5f} | {r['cosine_mean']:.6f} | "
                     f"{r['saliency_max_dev']:.2e} | {r['bb_jaccard_mean']:.4f} ({r['bb_jaccard_min']:.4f}) | "
                     f"{pck} | {dpck} | {spi} | {r['note'] or ''}{' NaN!' if r['nan'] else ''} |")
    return "\n".join(lines) + "\n"


__all__ = ["ROWS", "markdown_table", "run_precision_bench", "willow_pairs"]
