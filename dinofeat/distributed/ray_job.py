"""`match_pairs` on Ray Data: distinct images extracted once by one actor pool, pairs matched by a second.

    pairs ─┬─ distinct images ── map_batches(_Extract, actors)   model loaded once per actor; same-size images
           │                      │                               batched; unbinned keys + saliency + resized image
           │                      └─ materialized: features stay in Ray's object store (blocks owned by the driver,
           │                         so a lost block is rebuilt from lineage)
           └─ pairs ───────────── map_batches(_Match, actors)     log-bin + Best Buddies + foreground + selection
                                  │                               (`correspondences.match_views`) on the actor's
                                  │                               device; one row per pair, errors per row
                                  └─ Parquet (RESULT_SCHEMA), input order, written to a temp file then renamed

Fault tolerance is Ray's own: both actor pools run with `max_restarts` / `max_task_retries` (an actor process that
dies is restarted and its batch retried); a bad image or pair is that row's `error`, never a failed job.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ExtractorConfig, MatchConfig
from ..errors import BackendUnavailableError, DinofeatError, InputError
from ..pipeline.matcher import DEFAULTS


def _default_extractor():
    return ExtractorConfig(stride=DEFAULTS.stride)  # the Matcher's default stride (4), as the batch CLI


@dataclass(frozen=True)
class RayJobOptions:
    """Configuration of a Ray matching job: the model and matching settings are the API's own `ExtractorConfig` /
    `MatchConfig` (one block: several layers are the single-process Matcher's; the device follows
    `gpus_per_worker`), plus how Ray runs the actors. Read access stays flat (`options.model`, `options.layer`);
    `from_kwargs(model=..., layer=..., batch_size=...)` builds one from the flat keywords of `match_pairs`."""

    extractor: ExtractorConfig = field(default_factory=_default_extractor)  # model, weights, backend, load size
    match: MatchConfig = field(default_factory=MatchConfig)  # layer, facet, bin, thresh, num_pairs
    batch_size: int = DEFAULTS.batch_size  # images (stage 1) / pairs (stage 2) per actor call
    cpus_per_worker: float = 1.0         # Ray CPUs per actor; torch threads per actor = max(1, int(this))
    max_restarts: int = 3                # Ray: restarts of a dead actor
    max_task_retries: int = 3            # Ray: retries of a batch whose actor died

    def __post_init__(self):
        if not isinstance(self.extractor, ExtractorConfig) or not isinstance(self.match, MatchConfig):
            raise InputError("extractor / match: expected dinofeat.config.ExtractorConfig and MatchConfig, got "
                             f"{type(self.extractor).__name__} / {type(self.match).__name__}")
        if self.extractor.stride in ("auto", None):  # the pair stage needs the number (match_views' stride)
            from ..model.zoo import get_model_spec

            spec = get_model_spec(self.extractor.model)
            stride = spec.default_stride if self.extractor.stride == "auto" else spec.patch_size
            object.__setattr__(self, "extractor", dataclasses.replace(self.extractor, stride=stride))

    @classmethod
    def from_kwargs(cls, extractor_config: ExtractorConfig | None = None, match_config: MatchConfig | None = None,
                    **config) -> RayJobOptions:
        """From the configs and/or flat keywords: any `ExtractorConfig` field but device (model, stride, weights,
        backend, precision, load_size, ...), any `MatchConfig` field (layer, facet, bin, thresh, num_pairs, ...),
        and this class's own (batch_size, cpus_per_worker, max_restarts, max_task_retries); keywords win."""
        own = {f.name for f in dataclasses.fields(cls)} - {"extractor", "match"}
        model = {f.name for f in dataclasses.fields(ExtractorConfig)} - {"device"}
        matching = {f.name for f in dataclasses.fields(MatchConfig)}
        unknown = set(config) - own - model - matching
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)}; expected fields of RayJobOptions, "
                             "ExtractorConfig or MatchConfig")
        ec = dataclasses.replace(extractor_config or _default_extractor(),
                                 **{k: v for k, v in config.items() if k in model})
        mc = dataclasses.replace(match_config or MatchConfig(), **{k: v for k, v in config.items() if k in matching})
        return cls(extractor=ec, match=mc, **{k: v for k, v in config.items() if k in own})

    def __getattr__(self, name):
        """`options.model`, `options.layer`, ...: the fields of the two configs."""
        if not name.startswith("_"):
            for part in ("extractor", "match"):
                cfg = self.__dict__.get(part)
                if cfg is not None and name in cfg.__dataclass_fields__:
                    return getattr(cfg, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def match_pairs(pairs, out, *, num_workers: int | None = None, gpus_per_worker: int = 0,
                address: str | None = None, labels=None, progress: bool = False,
                extractor_config: ExtractorConfig | None = None, match_config: MatchConfig | None = None,
                **config) -> dict:
    """Match every (image1, image2) of `pairs` on a Ray cluster and write one Parquet row per pair to `out`.

    Args:
        pairs: iterable of (image1, image2) file paths (readable on every worker).
        out: Parquet file with the columns of `dinofeat.pipeline.RESULT_SCHEMA` (the single-machine many-pairs
            CLI's), rows in the order of `pairs`; written to a temp file and renamed when complete.
        num_workers: actors per stage (default: as many as the cluster's CPUs, or GPUs with gpus_per_worker=1).
        gpus_per_worker: 0 (CPU actors) or 1 (one GPU per actor, device cuda).
        address: Ray cluster address (`ray.init(address=...)`); default: the running or a new local cluster.
        labels: (name1, name2) per pair for the image1/image2 columns (default: the paths as given).
        extractor_config, match_config: the model and matching settings (`dinofeat.config`; defaults: theirs,
            stride 4).
        config: flat keywords that replace single settings (model, weights, load_size, layer, facet, thresh,
            num_pairs, ...) and Ray's (batch_size, cpus_per_worker, ...): see `RayJobOptions.from_kwargs`.

    Returns:
        {"pairs", "failed", "images", "seconds", "out"}.
    """
    from ..pipeline.results import ResultWriter

    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise InputError(f"out={str(out)!r}: expected a .parquet file name")
    start = time.perf_counter()
    summary = {"pairs": 0, "failed": 0}
    with ResultWriter(out) as writer:
        for row in iter_rows(pairs, num_workers=num_workers, gpus_per_worker=gpus_per_worker, address=address,
                             labels=labels, progress=progress, summary=summary,
                             extractor_config=extractor_config, match_config=match_config, **config):
            writer.write(row)
    return dict(summary, seconds=time.perf_counter() - start, out=str(out))


def iter_rows(pairs, *, num_workers: int | None = None, gpus_per_worker: int = 0, address: str | None = None,
              labels=None, progress: bool = False, summary: dict | None = None,
              extractor_config: ExtractorConfig | None = None, match_config: MatchConfig | None = None, **config):
    """The job of `match_pairs` as a generator of result rows (dicts of the Parquet columns), in input order.

    `summary` (optional dict) receives "pairs", "failed" and "images" as rows come out.
    """
    try:
        import ray
    except ImportError as e:
        raise BackendUnavailableError(f"match_pairs needs Ray ({e}); pip install 'dinofeat[ray]'") from None
    options = RayJobOptions.from_kwargs(extractor_config, match_config, **config)
    pairs = _check_pairs(pairs)
    labels = [(str(a), str(b)) for a, b in labels] if labels is not None else pairs
    if len(labels) != len(pairs):
        raise InputError(f"labels: expected one (name1, name2) per pair ({len(pairs)}), got {len(labels)}")
    if gpus_per_worker not in (0, 1):
        raise InputError(f"gpus_per_worker={gpus_per_worker!r}: expected 0 or 1")
    summary = {} if summary is None else summary
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = bool(progress)
    workers = num_workers or _default_workers(ray, gpus_per_worker)
    images = sorted({p for pair in pairs for p in pair})
    summary.update(pairs=0, failed=0, images=len(images))
    device = "cuda" if gpus_per_worker else "cpu"
    features = _actor_stage(ray, ray.data.from_items([{"image": p} for p in images]), _Extract, options, workers,
                            gpus_per_worker, {"options": options, "device": device}).materialize()
    refs, where = _index(features, images)
    items = [{"index": i, "image1": a, "image2": b, "name1": labels[i][0], "name2": labels[i][1]}
             for i, (a, b) in enumerate(pairs)]
    results = _actor_stage(ray, ray.data.from_items(items), _Match, options, workers, gpus_per_worker,
                           {"options": options, "device": device, "refs": refs, "where": where})
    for table in results.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in table.sort_by("index").drop_columns(["index"]).to_pylist():
            summary["pairs"] += 1
            summary["failed"] += row["error"] is not None
            yield row


def _check_pairs(pairs) -> list[tuple[str, str]]:
    try:
        items = [tuple(p) for p in pairs]
    except TypeError:
        raise InputError(f"pairs: expected an iterable of (image1, image2) paths, got {type(pairs).__name__}") from None
    bad = [p for p in items if len(p) != 2]
    if bad:
        raise InputError(f"pairs: each item must be (image1, image2); got {bad[0]!r}")
    return [(os.fspath(a), os.fspath(b)) for a, b in items]


def _default_workers(ray, gpus_per_worker: int) -> int:
    res = ray.cluster_resources()
    return max(1, int(res.get("GPU", 0) if gpus_per_worker else res.get("CPU", 1)))


def _actor_stage(ray, ds, cls, options: RayJobOptions, workers: int, gpus: int, kwargs: dict):
    """`map_batches` with a pool of `workers` actors of `cls` and Ray's actor fault tolerance configured."""
    import warnings

    with warnings.catch_warnings():  # max_restarts / max_task_retries have no named parameter in Ray 2.60
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
        return ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_format="numpy", batch_size=options.batch_size,
                              compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=options.cpus_per_worker,
                              num_gpus=gpus, max_restarts=options.max_restarts,
                              max_task_retries=options.max_task_retries)


def _index(features, images: list[str]) -> tuple[list, dict[str, tuple[int, int]]]:
    """Object refs of the materialized feature blocks, and image -> (block, row) (rows are in `images` order)."""
    refs, where, names = [], {}, iter(images)
    for bundle in features.iter_internal_ref_bundles():
        for entry in bundle.blocks:  # BlockEntry(ref, metadata) in Ray 2.60, a (ref, metadata) tuple before
            ref, meta = (entry.ref, entry.metadata) if hasattr(entry, "ref") else entry
            for r in range(meta.num_rows):
                where[next(names)] = (len(refs), r)
            refs.append(ref)
    return refs, where


def _set_threads(options: RayJobOptions) -> None:
    import torch

    torch.set_num_threads(max(1, int(options.cpus_per_worker)))


class _Extract:
    """Stage 1 actor: the model loaded once; a batch of image paths -> unbinned keys, saliency, resized pixels."""

    def __init__(self, options: RayJobOptions, device: str):
        from ..engine.extractor import Extractor

        _set_threads(options)
        self.o = options
        self.ex = Extractor.from_config(dataclasses.replace(options.extractor, device=device))

    def __call__(self, batch: dict) -> dict:
        from ..engine.many import ImageFailure

        names = [str(n) for n in batch["image"]]
        rows = [{"image": n, "keys": np.zeros((0, 0), np.float32), "saliency": np.zeros(0, np.float32),
                 "grid": np.zeros(2, np.int64), "pixels": np.zeros((0, 0, 3), np.uint8), "error": ""}
                for n in names]
        feats = self.ex.extract_many(names, layer=self.o.layer, facet=self.o.facet, bin=False, saliency=True,
                                     load_size=self.o.load_size, batch_size=max(1, len(names)), errors="return")
        for i, f in enumerate(feats):
            if isinstance(f, ImageFailure):
                if not isinstance(f.error, DinofeatError):
                    raise f.error  # not the image's fault: Ray retries the batch (max_task_retries)
                rows[i]["error"] = f.message if f.stage == "preprocess" else f"{names[i]}: {f.message}"
                continue
            rows[i].update(keys=f.descriptors[0].float().cpu().numpy(), saliency=f.saliency[0].cpu().numpy(),
                           grid=np.asarray(f.num_patches, np.int64), pixels=np.asarray(f.image, np.uint8))
        return {k: _column([r[k] for r in rows]) for k in rows[0]}


def _column(values: list):
    if isinstance(values[0], np.ndarray):
        col = np.empty(len(values), dtype=object)
        col[:] = values
        return col
    return np.asarray(values)


class _Match:
    """Stage 2 actor: a batch of pairs -> result rows, reading both images' features from the object store."""

    def __init__(self, options: RayJobOptions, device: str, refs: list, where: dict):
        from ..model.zoo import get_model_spec

        _set_threads(options)
        self.o, self.device, self.refs, self.where = options, device, refs, where
        self.patch_size = get_model_spec(options.model).patch_size
        self._blocks: dict[int, dict] = {}

    def _block(self, b: int) -> dict:
        import ray
        from ray.data.block import BlockAccessor

        if b not in self._blocks:
            if len(self._blocks) >= 8:  # a few blocks cached: pairs sharing images hit the same blocks
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[b] = BlockAccessor.for_block(ray.get(self.refs[b])).to_batch_format("numpy")
        return self._blocks[b]

    def _view(self, name: str):
        import torch
        from PIL import Image

        from ..correspondences import ImageView

        b, r = self.where[name]
        block = self._block(b)
        if str(block["image"][r]) != name:
            raise RuntimeError(f"feature index out of order: block {b} row {r} is {block['image'][r]!r}, not {name!r}")
        if block["error"][r]:
            raise InputError(str(block["error"][r]))
        return ImageView(keys=torch.from_numpy(np.array(block["keys"][r])).to(self.device),
                         saliency=torch.from_numpy(np.array(block["saliency"][r])).to(self.device),
                         num_patches=tuple(int(v) for v in block["grid"][r]),
                         image=Image.fromarray(np.asarray(block["pixels"][r], np.uint8)))

    def __call__(self, batch: dict):
        import pyarrow as pa

        from ..correspondences import match_views
        from ..pipeline.results import PairResult, result_row, result_schema

        rows = []
        for index, a, b, name1, name2 in zip(*(batch[k].tolist() for k in ("index", "image1", "image2", "name1",
                                                                           "name2")), strict=True):
            t0 = time.perf_counter()
            c, error = None, None
            try:
                c = match_views(self._view(a), self._view(b), num_pairs=self.o.num_pairs, bin=self.o.bin,
                                thresh=self.o.thresh, stride=self.o.stride, patch_size=self.patch_size)
            except DinofeatError as e:
                error = str(e)
            r = PairResult(index=index, image1=a, image2=b, result=c, error=error, seconds=time.perf_counter() - t0)
            rows.append(dict(result_row(r, name1, name2), index=index))
        schema = result_schema()
        return pa.Table.from_pylist(rows, schema=schema.append(pa.field("index", pa.int64())))


__all__ = ["RayJobOptions", "iter_rows", "match_pairs"]
