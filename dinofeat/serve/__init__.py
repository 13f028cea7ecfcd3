"""Online serving on Triton Inference Server: repository generator, server runner, client.

`write_repository` / `dinofeat serve triton-repo` (repository.py), `TritonServer` / `dinofeat serve run`
(server.py), `Client` (client.py). Nothing heavy is imported until used.
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
