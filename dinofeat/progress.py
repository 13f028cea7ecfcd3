"""Status lines for every step that can take more than a couple of seconds (loading weights, converting them,
building an ONNX graph, each forward, matching): always logged (logger ``dinofeat``, INFO), and printed on stderr
as plain lines (``dinofeat: ...``, no bar: readable when piped) when the CLI switches them on.

    >>> from dinofeat import progress
    >>> with progress.step("building the ONNX graph for 224x298"):
    ...     ...   # prints "dinofeat: building ... " then "dinofeat: building ...: done in 3.1 s"
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

LOG = logging.getLogger("dinofeat")
_state = {"echo": False}


def set_echo(enabled: bool) -> bool:
    """Print status lines on stderr (the CLI does, unless --quiet). Returns the previous setting."""
    old = _state["echo"]
    _state["echo"] = bool(enabled)
    return old


def note(message: str) -> None:
    """One status line: logged, and printed on stderr when echo is on."""
    LOG.info(message)
    if _state["echo"]:
        print(f"dinofeat: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(message: str):
    """A timed step: one line when it starts, one with its wall time when it ends."""
    note(f"{message} ...")
    start = time.perf_counter()
    yield
    note(f"{message}: done in {time.perf_counter() - start:.1f} s")


_NATIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def captured_warnings(what: str, *, native: bool = False):
    """Python warnings raised inside the block (and with `native`, the lines native code writes to stderr, as
    faiss does with fprintf), reported afterwards as ONE status line: ``<what>: N warning(s): <first> (+M more)``,
    also logged at WARNING.

    `native` redirects file descriptor 2 for the block's duration, one such block at a time in the process (a
    lock); other threads' stderr lines in that window land in the summary too."""
    import os
    import tempfile
    import warnings

    messages: list[str] = []
    with contextlib.ExitStack() as stack:
        saved = tmp = None
        if native:
            stack.enter_context(_NATIVE_LOCK)
            tmp = stack.enter_context(tempfile.TemporaryFile(mode="w+b"))
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
            except OSError:  # no usable fd 2 (embedded interpreters): Python warnings only
                saved = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            if saved is not None:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                messages += [ln.strip() for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip()]
    messages += [f"{w.category.__name__}: {w.message}" for w in caught]
    if messages:
        distinct = list(dict.fromkeys(messages))
        more = f" (+{len(distinct) - 1} more distinct)" if len(distinct) > 1 else ""
        summary = f"{what}: {len(messages)} warning(s): {distinct[0]}{more}"
        if _state["echo"]:
            LOG.info(summary)
            print(f"dinofeat: {summary}", file=sys.stderr, flush=True)
        else:  # library use: one WARNING record (printed once by logging's last-resort handler when unconfigured)
            LOG.warning(summary)
