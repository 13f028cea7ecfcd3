"""Find and run a Triton server for a model repository.

Where the server comes from, in order: `server=` / `--server` (a `tritonserver` executable), `$DINOFEAT_TRITONSERVER`,
`tritonserver` on PATH (NVIDIA's container: every backend), or the server that the `nvidia-pytriton` wheel bundles
(Triton 2.51, Python backend only), installed *outside* any venv with
`pip install --no-deps --target $DINOFEAT_TRITON_HOME nvidia-pytriton==0.7.0` (default home
`~/.cache/dinofeat/tritonserver`; its numpy pin would break this environment if installed into it).

The bundled Python-backend stub links `libpython3.X.so.1.0` dynamically: it must load the libpython of the very
interpreter whose standard library it runs (else e.g. `'_thread.RLock' object has no attribute '_recursion_count'`:
Debian's 3.11.2 runtime under pyenv's 3.11.7 stdlib). `server_env` puts this interpreter's LIBDIR first on
`LD_LIBRARY_PATH` and its `sys.path` on `PYTHONPATH`, so the models import this environment's torch and dinofeat.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailableError, InputError

CONTAINER_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the bundled server's version
PYTRITON_VERSION = "0.7.0"


@dataclass(frozen=True)
class ServerBinary:
    """A `tritonserver` executable and what it needs to run here."""

    executable: Path
    backends: Path | None      # --backend-directory (None: the server's default, e.g. /opt/tritonserver/backends)
    lib_dirs: tuple[Path, ...]  # extra LD_LIBRARY_PATH entries (the wheel's bundled libraries)
    stubs: Path | None         # python_backend_stubs/<X.Y>/ of the pytriton bundle


def triton_home() -> Path:
    from ..model.weights import cache_dir

    env = os.environ.get("DINOFEAT_TRITON_HOME")
    return Path(env).expanduser() if env else cache_dir() / "tritonserver"


def install_command() -> str:
    return (f"{Path(sys.executable).name} -m pip install --no-deps --target {triton_home()} "
            f"nvidia-pytriton=={PYTRITON_VERSION}")


def container_command(repo, image: str = CONTAINER_IMAGE) -> str:
    """The `docker run` line that serves `repo` on GPUs with NVIDIA's container, dinofeat installed inside from
    this checkout (the Python models import it; the ONNX Runtime / TensorRT model does not need it)."""
    repo = Path(repo).resolve()
    source = Path(__file__).resolve().parents[2]
    src = f"-v {source}:/dinofeat " if (source / "pyproject.toml").is_file() else ""
    install = "pip install '/dinofeat[serve]'" if src else "pip install 'dinofeat[serve]'"
    return (f"docker run --gpus all --rm -p8000:8000 -p8001:8001 -p8002:8002 -v {repo}:/models {src}{image} "
            f"bash -c \"{install} && tritonserver --model-repository=/models\"")


def find_server(server=None) -> ServerBinary:
    """Locate a Triton server (see the module docstring); raises `BackendUnavailableError` naming what to do."""
    explicit = server or os.environ.get("DINOFEAT_TRITONSERVER")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InputError(f"server={str(explicit)!r}: not an executable tritonserver binary")
        return _binary(path)
    on_path = shutil.which("tritonserver")
    if on_path:
        return _binary(Path(on_path))
    bundled = triton_home() / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if bundled.is_file():
        return _binary(bundled)
    raise BackendUnavailableError(
        f"no Triton server found (server=, $DINOFEAT_TRITONSERVER, tritonserver on PATH, {bundled}); install the "
        f"bundled CPU server with `{install_command()}` or run NVIDIA's container")


def _binary(executable: Path) -> ServerBinary:
    root = executable.resolve().parent.parent  # .../tritonserver/{bin,backends,python_backend_stubs}
    stubs = root / "python_backend_stubs"
    if stubs.is_dir():  # the pytriton bundle
        libs = root.parent.parent / "nvidia_pytriton.libs"
        return ServerBinary(executable, root / "backends", (libs,) if libs.is_dir() else (), stubs)
    backends = root / "backends"
    return ServerBinary(executable, backends if backends.is_dir() else None, (), None)


def available_backends(binary: ServerBinary) -> list[str] | None:
    """Backends the server can load (None: unknown, e.g. the container's default directory)."""
    if binary.backends is None:
        return None
    return sorted(p.name for p in binary.backends.iterdir() if p.is_dir())


def prepare_backends(binary: ServerBinary, workdir: Path) -> Path | None:
    """The pytriton bundle: a backend directory whose python/ holds the stub of *this* Python version."""
    if binary.stubs is None:
        return binary.backends
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = binary.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in binary.stubs.iterdir())
        raise BackendUnavailableError(f"the bundled Triton server has Python-backend stubs for {have}, not for "
                                      f"this Python {version}")
    target = workdir / "backends"
    for backend in binary.backends.iterdir():
        if backend.is_dir():
            shutil.copytree(backend, target / backend.name, dirs_exist_ok=True)
    shutil.copy2(stub, target / "python" / stub.name)
    return target


def server_env(binary: ServerBinary, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    lib_dirs = [str(p) for p in binary.lib_dirs]
    if libdir and sysconfig.get_config_var("LDLIBRARY") and Path(libdir, sysconfig.get_config_var("LDLIBRARY")).exists():
        lib_dirs.insert(0, libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when this process dies (no orphaned server)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A running `tritonserver` for one repository (context manager; `stop()` ends it).

    Example:
        >>> with TritonServer("repo") as server:
        ...     client = dinofeat.serve.Client(server.http_url)
    """

    def __init__(self, repo, *, server=None, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, log_file=None, extra_args: tuple[str, ...] = ()):
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise InputError(f"repo={str(repo)!r}: not a directory (make one with `dinofeat serve triton-repo`)")
        self.binary = find_server(server)
        self._check_backends()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="dinofeat-triton-"))
        self.log_path = Path(log_file) if log_file else self._workdir / "server.log"
        backends = prepare_backends(self.binary, self._workdir)
        cmd = [str(self.binary.executable), f"--model-repository={self.repo.resolve()}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", "--exit-timeout-secs=5", *extra_args]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        self.command = cmd
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=server_env(self.binary), start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def _check_backends(self) -> None:
        have = available_backends(self.binary)
        if have is None:
            return
        import re

        needed = set()
        for config in self.repo.glob("*/config.pbtxt"):
            m = re.search(r'^backend:\s*"([^"]+)"', config.read_text(encoding="utf-8"), re.M)
            if m:
                needed.add(m.group(1))
        missing = sorted(needed - set(have))
        if missing:
            raise BackendUnavailableError(
                f"the Triton server at {self.binary.executable} has backends {have}, the repository needs "
                f"{missing}; make it with --backend python, or serve it with NVIDIA's container: "
                f"{container_command(self.repo)}")

    def wait_ready(self, timeout: float = 300.0) -> TritonServer:
        """Block until every model is loaded (HTTP /v2/health/ready); raises with the log's tail if it dies."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendUnavailableError(f"tritonserver exited with code {self.process.returncode}:\n"
                                              f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise BackendUnavailableError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)  # the copied backends; the log stays

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["CONTAINER_IMAGE", "ServerBinary", "TritonServer", "container_command", "find_server", "free_port",
           "install_command", "server_env", "triton_home"]
