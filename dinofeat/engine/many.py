"""`Extractor.extract_many`: the one place that preprocesses a list of images, groups them by preprocessed size,
batches (at most `batch_size` per forward) and forwards; one `Features` (B = 1) per image, in input order.

Used by the applications (`dinofeat.apps`), `Matcher.match_pairs` and the Ray job, so batching, error isolation and
the per-image split are written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import DinofeatError, InputError
from .features import Features

ERRORS = ("raise", "return")


@dataclass
class ImageFailure:
    """One image's failure in `Extractor.extract_many(errors="return")`: its input position, the exception (a
    `dinofeat.errors.DinofeatError` for bad input; any exception its own forward raised) and the stage that
    failed ("preprocess" or "forward")."""

    index: int
    error: BaseException
    stage: str = "forward"

    @property
    def message(self) -> str:
        return str(self.error)


def is_preprocessed(item) -> bool:
    """True for what `Extractor.preprocess` returns: a ((1, 3, H, W) tensor, resized image) pair."""
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.Tensor)


def split_features(f, images: Sequence) -> list:
    """A batch's `Features` -> one B = 1 `Features` per image (`images[i]` its resized image), each tensor its own
    copy (a slice would keep the whole batch alive, or a reused log-bin buffer)."""
    only = next(iter(f.per_layer))
    out = []
    for i, image in enumerate(images):
        per_layer = {lyr: t[i:i + 1].clone() for lyr, t in f.per_layer.items()}
        desc = per_layer[only] if f.descriptors is f.per_layer[only] else f.descriptors[i:i + 1].clone()
        out.append(Features(descriptors=desc, saliency=None if f.saliency is None else f.saliency[i:i + 1].clone(),
                            num_patches=f.num_patches, load_size=f.load_size, per_layer=per_layer, image=image,
                            cls=None if f.cls is None else f.cls[i:i + 1].clone()))
    return out


def extract_many(ex, images, *, layer, facet, bin, saliency, cls, load_size, batch_size, hierarchy, errors,
                 progress, desc, on_forward: Callable[[list[int], float], None] | None) -> list:
    """See `Extractor.extract_many`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r}: expected an int >= 1")
    if errors not in ERRORS:
        raise InputError(f"errors={errors!r}: expected one of {', '.join(ERRORS)}")
    items = list(images)
    out: list = [None] * len(items)
    prepared: dict[int, tuple] = {}
    for i, item in enumerate(items):
        if is_preprocessed(item):
            prepared[i] = item
            continue
        try:
            prepared[i] = ex.preprocess(item, load_size)
        except DinofeatError as e:
            if errors == "raise":
                raise
            out[i] = ImageFailure(i, e, "preprocess")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (batch, _) in prepared.items():
        groups.setdefault(tuple(batch.shape[-2:]), []).append(i)
    kw = dict(layer=layer, facet=facet, bin=bin, saliency=saliency, cls=cls, hierarchy=hierarchy)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="img", disable=None)  # shown on a terminal
    try:
        for idxs in groups.values():
            for start in range(0, len(idxs), batch_size):
                chunk = idxs[start:start + batch_size]
                _forward(ex, chunk, prepared, out, kw, errors, on_forward)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out


def _forward(ex, chunk: list[int], prepared: dict, out: list, kw: dict, errors: str, on_forward) -> None:
    """One backend call for `chunk`; with errors="return" a failed call is retried image by image, so one bad
    image is that image's failure and the others complete."""
    t0 = time.perf_counter()
    try:
        batches = [prepared[i][0] for i in chunk]
        f = ex.extract(torch.cat(batches) if len(batches) > 1 else batches[0], **kw)
        feats = split_features(f, [prepared[i][1] for i in chunk])
    except Exception as e:  # noqa: BLE001 - isolate the bad image (errors="return"), else raise it
        if errors == "raise":
            raise
        if len(chunk) > 1:
            for i in chunk:
                _forward(ex, [i], prepared, out, kw, errors, on_forward)
        else:
            out[chunk[0]] = ImageFailure(chunk[0], e)
        return
    if on_forward is not None:
        on_forward(chunk, time.perf_counter() - t0)
    for i, feat in zip(chunk, feats, strict=True):
        out[i] = feat
