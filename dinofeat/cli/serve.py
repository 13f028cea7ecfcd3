"""``dinofeat serve``: ``triton-repo`` writes a Triton model repository, ``run`` serves one.

Example::

    dinofeat serve triton-repo --out repo --weights dino_deitsmall8_pretrain.pth            # ONNX Runtime backend
    dinofeat serve triton-repo --out repo_cpu --backend python --weights W.pth              # Python backend only
    dinofeat serve run repo_cpu                                                             # until Ctrl-C
"""

from __future__ import annotations

import argparse
import sys

from ..config import ExtractorConfig, MatchConfig, add_arguments
from ..errors import BackendUnavailableError
from .common import EXPORT_CHOICES, parse_size


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from ..serve.repository import BACKENDS, INSTANCE_KINDS, RepositoryOptions

    d = RepositoryOptions()
    p.description = "Serve correspondences with Triton Inference Server."
    sub = p.add_subparsers(dest="serve_command", metavar="ACTION", required=True)
    r = sub.add_parser("triton-repo", help="write a Triton model repository (dinofeat_vit, dinofeat_match, "
                       "dinofeat_pair)")
    r.add_argument("--out", required=True, metavar="MODEL_REPO", help="directory to write (new or empty)")
    r.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help=f"dinofeat_vit's Triton backend (default {d.backend}); onnxruntime-python: the same "
                   "ONNX graph run by ONNX Runtime in the Python backend (Triton builds without onnxruntime)")
    r.add_argument("--max-batch", type=int, default=d.max_batch, help=f"dinofeat_vit max batch (default {d.max_batch})")
    r.add_argument("--size", default=f"{d.height}x{d.width}", help="input H x W; clients resize to it (default "
                   f"{d.height}x{d.width})")
    add_arguments(r, ExtractorConfig, only=("model", "stride", "weights"), defaults={"stride": d.stride},
                  metavars={"weights": None}, help={"model": f"zoo name (default {d.model})",
                                                    "stride": "patch-embedding stride",
                                                    "weights": "checkpoint file; default: the cached official file"})
    add_arguments(r, MatchConfig, only=("layer", "facet"), defaults={"layer": list(d.layers)}, nargs={"layer": "+"},
                  help={"layer": "block(s) of the descriptor facet"})
    add_arguments(r, ExtractorConfig, only=("precision",), choices=EXPORT_CHOICES,
                  help={"precision": "exported graph precision"})
    r.add_argument("--queue-delay-us", type=int, default=d.queue_delay_us, help="dynamic batching queue delay")
    r.add_argument("--instance-kind", default=d.instance_kind, choices=list(INSTANCE_KINDS),
                   help="where Triton runs each model instance")
    r.add_argument("--instances", type=int, default=d.instances, help="model instances per device")
    add_arguments(r, MatchConfig, only=("num_pairs", "thresh", "bin"),
                  help={"num_pairs": "correspondences per served pair", "thresh": "saliency threshold of the "
                        "foreground"})
    r.add_argument("--overwrite", action="store_true", help="replace an existing repository")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s = sub.add_parser("run", help="serve a repository with a local tritonserver (or print the container command)")
    s.add_argument("repo", metavar="MODEL_REPO")
    s.add_argument("--server", default=None, help="tritonserver executable (default: see README, Scale out)")
    s.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port")
    s.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port")
    s.add_argument("--metrics-port", type=int, default=8002, help="Triton's metrics port")


def serve_main(args) -> int:
    if args.serve_command == "triton-repo":
        return _triton_repo(args)
    return _run(args)


def _triton_repo(args) -> int:
    from ..serve.repository import RepositoryOptions, write_repository
    from ..serve.server import container_command

    height, width = parse_size(args.size)
    model = ExtractorConfig.from_args(args, backend="auto", load_size=(height, width))  # --backend: Triton's
    o = RepositoryOptions.from_configs(model, MatchConfig.from_args(args), backend=args.backend,
                                       max_batch=args.max_batch, queue_delay_us=args.queue_delay_us,
                                       instance_kind=args.instance_kind, instances=args.instances)
    out = write_repository(args.out, o, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote Triton model repository {out}: dinofeat_vit ({o.backend}, max batch {o.max_batch}, "
          f"{height}x{width}), dinofeat_match (python), dinofeat_pair (ensemble)")
    print(f"serve it: dinofeat serve run {out}" + ("" if o.backend in ("python", "onnxruntime-python") else
                                                   f"   (GPU: {container_command(out)})"))
    return 0


def _run(args) -> int:
    from ..serve.server import TritonServer, container_command

    try:
        server = TritonServer(args.repo, server=args.server, http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, log_file=None)
    except BackendUnavailableError as e:
        print(f"dinofeat serve run: {e}", file=sys.stderr)
        print(f"to serve it with NVIDIA's container (GPUs): {container_command(args.repo)}")
        return 1
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server cleanly on SIGTERM too
    try:
        server.wait_ready()
        print(f"serving {args.repo}: HTTP localhost:{server.http_port}, gRPC localhost:{server.grpc_port}, "
              f"metrics localhost:{server.metrics_port} (Ctrl-C stops; log {server.log_path})", flush=True)
        server.process.wait()
        return 0 if server.process.returncode == 0 else 1
    finally:
        server.stop()


__all__ = ["add_serve_arguments", "serve_main"]
