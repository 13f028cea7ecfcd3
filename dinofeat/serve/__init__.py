"""Serve layer: online serving on Triton Inference Server: repository generator, server runner, client.

Owns: `write_repository` / `dinofeat serve triton-repo` (repository.py: the Triton repository layout, its
config.pbtxt files in pbtxt.py and the Python models in triton_models.py), `TritonServer` / `dinofeat serve run`
(server.py), `Client` (client.py) and the wire format of both ends (wire.py).
May import: every layer below it (stream, apps, pipeline, correspondences, engine, export, model, kernels, base);
today correspondences, engine, export, model and errors. Not distributed or robotics (siblings), nor the command
line. Nothing heavy is imported until used (the names below load lazily).
"""

from __future__ import annotations

_LAZY = {
    "Client": ".client", "RepositoryOptions": ".repository", "write_repository": ".repository",
    "TritonServer": ".server", "find_server": ".server", "container_command": ".server",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
