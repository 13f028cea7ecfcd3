"""`Matcher`: one loaded model and one configuration for many matches (feature store, batched forwards,
prefetched decoding, optional overlap of matching with extraction)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch

from ..config import ExtractorConfig, MatchConfig
from ..correspondences import Correspondences, check_match_args, match_views, view_of
from ..engine.extractor import Features
from ..engine.many import ImageFailure
from ..errors import DinofeatError, InputError
from .prefetch import prefetch_map
from .results import PairResult
from .store import FeatureStore, feature_key, image_digest

_E, _M = ExtractorConfig(), MatchConfig()  # the shared defaults (dinofeat.config)


@dataclass(frozen=True)
class MatcherConfig:
    """Every default of `Matcher` in one place; the model and matching ones are `dinofeat.config`'s (declared
    there once), the stride is the method's 4 and the rest are the Matcher's own."""

    model: str = _E.model  # zoo name
    stride: int = 4  # patch-embedding stride (the paper's 4 for ViT-S/8)
    weights: object = _E.weights  # None: the official file (cached download); a path or a state dict
    backend: str = _E.backend  # torch | onnxruntime | tensorrt | auto
    device: object = _E.device  # auto | cpu | cuda[:N]
    precision: str = _E.precision  # ViT precision: fp32 (exact), tf32, bf16, fp16
    load_size: object = _E.load_size  # shorter side after resizing (int), (H, W) or None
    layer: object = _M.layer  # layer (int) or list of layers whose facet is the descriptor
    facet: str = _M.facet  # key | query | value | token
    bin: bool = _M.bin  # log-bin (17 bins) before matching
    thresh: float = _M.thresh  # saliency threshold of the foreground
    num_pairs: int = _M.num_pairs  # pairs returned per image pair (k-means clusters)
    cache_dir: object = None  # folder of the on-disk feature store, None for memory only
    cache_bytes: int = 2 << 30  # bound of the in-memory feature LRU in bytes
    match_precision: str = _M.match_precision  # Best-Buddies GEMM precision (fp32 exact)
    batch_size: int = 8  # default images per forward in match_pairs (same preprocessed size only)
    workers: int = 2  # default decode/resize threads in match_pairs
    window: int = 32  # pairs gathered before their images are extracted and they are matched
    overlap: object = "auto"  # match a window while the next one is extracted: auto = on CUDA only


DEFAULTS = MatcherConfig()


class Matcher:
    """Many matches through one model.

    Example:
        >>> m = dinofeat.Matcher(weights="dino_deitsmall8_pretrain.pth", cache_dir="~/.cache/dinofeat/features")
        >>> c = m.match("a.png", "b.png")                       # == find_correspondences("a.png", "b.png")
        >>> for r in m.match_pairs([("a.png", "b.png"), ("a.png", "c.png")], batch_size=8, workers=2):
        ...     print(r.index, r.error or len(r.result))

    Counters: `forwards` (images through the backend), `forward_calls` (backend calls), `stage_seconds`
    ({"decode", "forward", "match"}), `store.stats` (memory / disk hits, misses, corrupt entries).
    """

    def __init__(self, model: str = "dino_vits8", stride: int = 4, weights=None, backend: str = "auto",
                 device="auto", precision: str = "fp32", load_size=224, layer=9, facet: str = "key",
                 bin: bool = True, thresh: float = 0.05, num_pairs: int = 10, cache_dir=None,
                 cache_bytes: int = 2 << 30, *, extractor=None, match_precision: str = "fp32",
                 overlap="auto", progress: bool = False):
        from ..engine.extractor import Extractor
        from ..engine.preprocess import check_load_size
        from ..model.vit import check_request

        num_pairs, thresh = check_match_args(num_pairs, thresh)
        if overlap not in ("auto", True, False):
            raise InputError(f"overlap={overlap!r}: expected 'auto', True or False")
        self.config = MatcherConfig(model=model, stride=stride, weights=weights, backend=backend, device=device,
                                    precision=precision, load_size=load_size, layer=layer, facet=facet,
                                    bin=bool(bin), thresh=thresh, num_pairs=num_pairs, cache_dir=cache_dir,
                                    cache_bytes=cache_bytes, match_precision=match_precision, overlap=overlap)
        self.extractor = extractor or Extractor(model=model, stride=stride, weights=weights, backend=backend,
                                                device=device, precision=precision, progress=progress)
        ex = self.extractor
        check_load_size(load_size, ex.patch_size)
        check_request(ex.spec, layer, facet)
        self.store = FeatureStore(cache_dir, cache_bytes)
        self._key_config = {"model": ex.model_name, "weights_sha256": ex.weights_sha256, "stride": ex.stride,
                            "load_size": load_size, "layer": layer, "facet": facet, "precision": ex.precision,
                            "backend": ex.backend.name, "exif_transpose": True}
        self.forwards = 0
        self.forward_calls = 0
        self.stage_seconds = {"decode": 0.0, "forward": 0.0, "match": 0.0}
        self._lock = threading.Lock()
        self._decoded: dict[str, tuple] = {}  # key -> (batch, resized image) decoded ahead, until extracted
        on_cuda = ex.device.type == "cuda"
        self.overlap = on_cuda if overlap == "auto" else bool(overlap)
        self._match_stream = torch.cuda.Stream(device=ex.device) if (self.overlap and on_cuda) else None

    @classmethod
    def from_configs(cls, extractor_config=None, match_config=None, *, progress: bool = False, **options):
        """A `Matcher` of the API's settings objects (`dinofeat.config.ExtractorConfig` / `MatchConfig`; defaults:
        theirs, stride 4); `options`: cache_dir, cache_bytes, overlap, extractor."""
        from ..engine.extractor import Extractor

        ec = extractor_config or ExtractorConfig(stride=DEFAULTS.stride)
        mc = match_config or MatchConfig()
        ex = options.pop("extractor", None) or Extractor.from_config(ec, progress=progress)
        return cls(model=ec.model, stride=ex.stride, weights=ec.weights, backend=ec.backend, device=ec.device,
                   precision=ec.precision, load_size=ec.load_size, layer=mc.layer, facet=mc.facet, bin=mc.bin,
                   thresh=mc.thresh, num_pairs=mc.num_pairs, match_precision=mc.match_precision, extractor=ex,
                   progress=progress, **options)

    def __repr__(self) -> str:
        c = self.config
        return (f"Matcher({self.extractor!r}, load_size={c.load_size}, layer={c.layer}, facet={c.facet!r}, "
                f"bin={c.bin}, thresh={c.thresh}, num_pairs={c.num_pairs}, cache_dir={c.cache_dir!r})")

    # ---- one image -------------------------------------------------------------------------------------------

    def key(self, image, name: str = "image") -> str:
        """The feature-store key of `image` under this configuration."""
        return feature_key(image_digest(image, name=name), self._key_config)

    def features(self, image) -> Features:
        """Unbinned facet descriptors (1, T, C), saliency (1, T), grid and resized `image` of one image (cached), on
        the backend's device whatever their source (forward, memory or disk)."""
        key = self.key(image)
        f, _ = self._lookup(key)
        if f is None:
            f = self._forward([self._decode(image, "image")], 1, errors="raise")[0]
            self.store.put(key, f)
        return f

    def match(self, image1, image2) -> Correspondences:
        """Correspondences of one pair; equal to `find_correspondences(image1, image2, <same arguments>)`."""
        return self._match(self.features(image1), self.features(image2))

    # ---- many pairs ------------------------------------------------------------------------------------------

    def match_pairs(self, pairs: Iterable, batch_size: int | None = None, workers: int | None = None
                    ) -> Iterator[PairResult]:
        """Match every (image1, image2) of `pairs` (any iterable, consumed lazily); yields `PairResult`s in
        input order. A bad or missing image makes that pair's `error`; the other pairs complete.

        Images are decoded on `workers` threads ahead of the model (bounded), each distinct image is extracted
        once per configuration (feature store), and images of the same preprocessed size go through the
        backend together, up to `batch_size` per forward.
        """
        batch_size = check_count(DEFAULTS.batch_size if batch_size is None else batch_size, "batch_size")
        workers = check_count(DEFAULTS.workers if workers is None else workers, "workers", minimum=0)
        window = max(self.config.window, 2 * batch_size)
        jobs = prefetch_map(self._prepare_pair, enumerate(pairs), workers=workers, depth=max(window, 2 * workers))
        try:
            yield from self._pipeline(jobs, window, batch_size)
        finally:
            with self._lock:
                self._decoded.clear()

    def _pipeline(self, jobs: Iterator[dict], window: int, batch_size: int) -> Iterator[PairResult]:
        if not self.overlap:
            for chunk in _chunks(jobs, window):
                self._extract_window(chunk, batch_size)
                yield from self._match_window(chunk)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dinofeat-match") as pool:
            previous = None
            for chunk in _chunks(jobs, window):
                self._extract_window(chunk, batch_size)
                event = self._record_event()
                current = pool.submit(self._match_window_list, chunk, event)
                if previous is not None:
                    yield from previous.result()
                previous = current
            if previous is not None:
                yield from previous.result()

    def match_one_to_many(self, query, gallery: Iterable, batch_size: int | None = None,
                          workers: int | None = None) -> list[PairResult]:
        """`PairResult` of (query, g) for each g of `gallery`, in the gallery's order."""
        return list(self.match_pairs(((query, g) for g in gallery), batch_size=batch_size, workers=workers))

    # ---- internals -------------------------------------------------------------------------------------------

    def _decode(self, image, name: str):
        from ..engine.preprocess import preprocess

        t0 = time.perf_counter()
        spec = self.extractor.spec
        batch, pil = preprocess(image, self.config.load_size, spec.mean, spec.std, name=name)
        with self._lock:
            self.stage_seconds["decode"] += time.perf_counter() - t0
        return batch, pil

    def _prepare_image(self, image, name: str) -> dict:
        """Worker-thread step: key, store lookup, else decode + resize. Never raises (errors are returned)."""
        try:
            key = self.key(image, name)
            f, where = self._lookup(key, count=False)  # counted once the window is done (`_count_lookups`)
            if f is not None:
                return {"key": key, "features": f, "where": where}
            with self._lock:
                decoded = self._decoded.get(key)
            if decoded is None:  # not decoded by an earlier pair of this or the next window
                decoded = self._decode(image, name)
                with self._lock:
                    self._decoded[key] = decoded
            return {"key": key, "batch": decoded[0], "image": decoded[1]}
        except DinofeatError as e:
            return {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - one bad item is that item's error, the rest complete
            return {"error": f"{name}: {type(e).__name__}: {e}"}

    def _prepare_pair(self, item) -> dict:
        index, pair = item
        try:
            image1, image2 = pair
        except (TypeError, ValueError):
            return {"index": index, "pair": (pair, None), "error": f"pairs[{index}]: expected (image1, image2), "
                    f"got {type(pair).__name__}", "images": ()}
        return {"index": index, "pair": (image1, image2),
                "images": (self._prepare_image(image1, "image1"), self._prepare_image(image2, "image2"))}

    def _extract_window(self, chunk: list[dict], batch_size: int) -> None:
        """Forward every image of the window not found in the store (`Extractor.extract_many`: grouped by size,
        B <= batch_size; a bad image is that image's error)."""
        todo: dict[str, dict] = {}
        for job in chunk:
            for prep in job["images"]:
                if "batch" in prep and prep["key"] not in todo:
                    todo[prep["key"]] = prep
        forward: list[str] = []
        for key, prep in todo.items():
            f, where = self._lookup(key, count=False)  # extracted since this image was prepared (an earlier window)
            if f is not None:
                prep["features"], prep["where"] = f, where
            else:
                forward.append(key)
        group = [todo[k] for k in forward]
        seconds = {}
        feats = self._forward([(p["batch"], p["image"]) for p in group], batch_size, seconds)
        for i, (p, f) in enumerate(zip(group, feats, strict=True)):
            p.pop("batch", None)
            if isinstance(f, ImageFailure):
                p["error"] = f"feature extraction failed: {type(f.error).__name__}: {f.error}"
                continue
            self.store.put(p["key"], f)
            p["features"], p["forward_seconds"] = f, seconds[i]
        with self._lock:
            for key in todo:
                self._decoded.pop(key, None)
        for job in chunk:  # share the extracted features with every job that prepared the same image
            job["images"] = tuple(todo.get(p.get("key"), p) if "batch" in p else p for p in job["images"])
        self._count_lookups(chunk, set(forward))

    def _count_lookups(self, chunk: list[dict], forwarded: set[str]) -> None:
        """One store outcome per image of each pair: the first use of an image forwarded in this window is the
        miss, its other uses memory hits; images found in the store count as the hit they were."""
        counted: set[str] = set()
        for job in chunk:
            for prep in job["images"]:
                key = prep.get("key")
                if key is None:
                    continue
                if key in forwarded:
                    self.store.count("memory" if key in counted else "miss")
                    counted.add(key)
                elif "where" in prep:
                    self.store.count(prep["where"])

    def _forward(self, prepared: list[tuple], batch_size: int, seconds: dict | None = None,
                 errors: str = "return") -> list:
        """Unbinned B = 1 `Features` (or `ImageFailure`) of preprocessed (batch, resized image) pairs, same-size
        images batched (`Extractor.extract_many`); `seconds` receives each image's share of its forward."""
        c = self.config

        def counted(indices: list[int], spent: float) -> None:
            with self._lock:
                self.forwards += len(indices)
                self.forward_calls += 1
                self.stage_seconds["forward"] += spent
            if seconds is not None:
                seconds.update((i, spent / len(indices)) for i in indices)

        feats = self.extractor.extract_many(prepared, layer=c.layer, facet=c.facet, bin=False, saliency=True,
                                            batch_size=batch_size, errors=errors, on_forward=counted)
        return [f if isinstance(f, ImageFailure) else self._placed(f) for f in feats]

    def _lookup(self, key: str, *, count: bool = True) -> tuple[Features | None, str]:
        """The store's entry of `key` on the backend's device (a disk hit is read to the CPU: it is moved once and
        kept in memory there), or None; and where it was found ("memory" | "disk" | "miss"). `count`: record the
        outcome in the store's stats now (the batch path counts per image once a window is done)."""
        f, where = self.store.lookup(key)
        if count:
            self.store.count(where)
        if f is None:
            return None, where
        placed = self._placed(f)
        if placed is not f:
            self.store.put(key, placed, write=False)
        return placed, where

    def _placed(self, f: Features) -> Features:
        """`f` with every tensor on the backend's device (`f` itself when they are there already)."""
        dev = self.extractor.device
        tensors = [f.descriptors, f.saliency, *f.per_layer.values()]
        if all(t is None or on_device(t, dev) for t in tensors):
            return f
        per_layer = {lyr: t.to(dev) for lyr, t in f.per_layer.items()}
        same = [lyr for lyr, t in f.per_layer.items() if t is f.descriptors]
        desc = per_layer[same[0]] if same else f.descriptors.to(dev)
        return Features(descriptors=desc, saliency=None if f.saliency is None else f.saliency.to(dev),
                        num_patches=f.num_patches, load_size=f.load_size, per_layer=per_layer, image=f.image)

    def _match(self, f1: Features, f2: Features) -> Correspondences:
        c, ex = self.config, self.extractor
        f1, f2 = self._placed(f1), self._placed(f2)  # every source reaches the kernels on one device
        t0 = time.perf_counter()
        corr = match_views(view_of(f1, 0, c.layer, f1.image), view_of(f2, 0, c.layer, f2.image),
                           num_pairs=c.num_pairs, bin=c.bin, thresh=c.thresh, stride=ex.stride,
                           patch_size=ex.patch_size, match_precision=c.match_precision)
        with self._lock:
            self.stage_seconds["match"] += time.perf_counter() - t0
        return corr

    def _match_window(self, chunk: list[dict]) -> Iterator[PairResult]:
        users: dict[str, int] = {}
        for job in chunk:
            for p in job["images"]:
                if "forward_seconds" in p:
                    users[p["key"]] = users.get(p["key"], 0) + 1
        for job in chunk:
            yield self._match_job(job, users)

    def _match_window_list(self, chunk: list[dict], event) -> list[PairResult]:
        if self._match_stream is None:
            return list(self._match_window(chunk))
        with torch.cuda.stream(self._match_stream):
            self._match_stream.wait_event(event)
            out = list(self._match_window(chunk))
        self._match_stream.synchronize()
        return out

    def _record_event(self):
        if self._match_stream is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.extractor.device))
        return event

    def _match_job(self, job: dict, users: dict[str, int]) -> PairResult:
        image1, image2 = job["pair"]
        error = job.get("error") or next((p["error"] for p in job["images"] if "error" in p), None)
        share = sum(p.get("forward_seconds", 0.0) / users.get(p.get("key"), 1) for p in job["images"])
        if error is not None:
            return PairResult(job["index"], image1, image2, None, error, share)
        t0 = time.perf_counter()
        try:
            corr = self._match(job["images"][0]["features"], job["images"][1]["features"])
        except DinofeatError as e:
            return PairResult(job["index"], image1, image2, None, str(e), share + time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - one bad pair is that pair's error
            return PairResult(job["index"], image1, image2, None, f"matching failed: {type(e).__name__}: {e}",
                              share + time.perf_counter() - t0)
        return PairResult(job["index"], image1, image2, corr, None, share + time.perf_counter() - t0)

    def config_dict(self) -> dict:
        """The configuration as a plain dict (weights shown as their SHA-256)."""
        d = asdict(self.config)
        d["weights"] = self.extractor.weights_sha256
        return d


def _chunks(it: Iterable, n: int) -> Iterator[list]:
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def on_device(t: torch.Tensor, device: torch.device) -> bool:
    """True when `t` lives on `device` (a device without an index, e.g. "cuda", means its current one)."""
    if t.device.type != device.type:
        return False
    if device.index is None:
        return device.type != "cuda" or t.device.index == torch.cuda.current_device()
    return t.device.index == device.index


def check_count(v, name: str, minimum: int = 1) -> int:
    """`v` if it is an int >= minimum, else InputError naming `name`."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise InputError(f"{name}={v!r}: expected an int >= {minimum}")
    return v
