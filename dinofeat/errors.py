"""Exceptions raised at dinofeat's public boundary.

Every user-facing error names the argument or file, what was expected, what was given and how to fix it.
"""

from __future__ import annotations


class DinofeatError(Exception):
    """Base class of every error dinofeat raises on purpose."""


class InputError(DinofeatError, ValueError):
    """A user-supplied argument, array or image is not what the call expects."""


class WeightsError(DinofeatError):
    """A checkpoint cannot be found, downloaded, verified or mapped onto the model."""


class BackendUnavailableError(DinofeatError, RuntimeError):
    """A backend or kernel implementation needs a package or a device that is not present."""


class BackendError(DinofeatError, RuntimeError):
    """A backend failed while running (engine build, shape binding, execution, CUDA-graph capture); the message
    carries the backend's own error text (e.g. the TensorRT log)."""


class OutputError(DinofeatError, OSError):
    """An output file cannot be written (its directory cannot be created, no space, no permission)."""


class WeightsWarning(UserWarning):
    """A checkpoint loaded, but tensors were ignored (outside the backbone, e.g. a task model's head) or filled in
    (missing but unused at inference, e.g. DINOv2's ``mask_token``); the message names them."""
