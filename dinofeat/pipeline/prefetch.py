"""Bounded, ordered prefetching: map a function over an iterable on worker threads, a fixed depth ahead.

Memory stays bounded however long the input is: at most `depth` items are in flight or waiting. Results come
back in input order. Used by `Matcher.match_pairs` to decode and resize images ahead of the model (Pillow and
the resize release the GIL for most of their work).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = 2, depth: int | None = None) -> Iterator[R]:
    """Yield fn(item) for each item in order, computing up to `depth` (default 2 * workers) items ahead.

    `fn` should not raise (wrap errors into its result): an exception is re-raised here, in order.
    workers=0 runs `fn` inline (no threads). The input is consumed lazily, `depth` items ahead.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    depth = max(1, depth if depth is not None else 2 * workers)
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dinofeat-decode")
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
