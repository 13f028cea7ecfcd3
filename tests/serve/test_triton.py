"""Triton serving: generated configs parse as Triton's ModelConfig; a real server answers like find_correspondences.

The round trip runs the `nvidia-pytriton` wheel's bundled Triton 2.51 server (Python backend), kept outside the venv
(it pins numpy<2) in `dinofeat.serve.server.triton_home()`; when it is missing there, the `server_binary` fixture
installs it with the documented command (`install_command()`, one pip call from the package registry), so the README's
set-up is all the suite needs. ONNX Runtime / TensorRT models need NVIDIA's container, so their configs are checked
with Triton's own config message here.
"""

from __future__ import annotations

import numpy as np
import pytest
from testutil import EXAMPLES

from dinofeat.errors import BackendUnavailableError, InputError
from dinofeat.serve import pbtxt, repository
from dinofeat.serve.repository import RepositoryOptions

pytestmark = pytest.mark.integration  # a real Triton server: heavy, run by `pytest -m integration`

SIZE = 64  # small repository size: the server test stays quick on 2 cores


@pytest.fixture(scope="module")
def server_binary():
    """The bundled Triton server, installed into `triton_home()` with the documented command when missing."""
    import shlex
    import subprocess
    import sys

    from dinofeat.serve.server import find_server, install_command

    try:
        return find_server()
    except BackendUnavailableError:
        pass
    cmd = shlex.split(install_command())
    proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"installing the Triton server failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}"
    return find_server()


def test_onnxruntime_configs_parse_with_tritons_message_and_match_the_export():
    from dinofeat.export.onnx import INPUT_NAME, output_shapes
    from dinofeat.model.vit import Request, StridedViT
    from dinofeat.model.zoo import get_model_spec

    o = RepositoryOptions(layers=(9, 11), height=64, width=96, max_batch=16, instance_kind="gpu", instances=2)
    vit = repository.vit_config(o, 384)
    parsed = pbtxt.check_config(pbtxt.render(vit))
    assert parsed.backend == "onnxruntime" and parsed.max_batch_size == 16
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == o.queue_delay_us
    assert parsed.instance_group[0].count == 2 and parsed.instance_group[0].kind == 1  # KIND_GPU
    spec = get_model_spec("dino_vits8")
    import torch

    with torch.device("meta"):
        model = StridedViT(spec, 4)
    shapes = output_shapes(model, Request(facets=((9, "key"), (11, "key")), saliency=True), 64, 96)
    # one model serves every size: H, W and the token axis are variable, the channels are the export's
    assert [i.name for i in parsed.input] == [INPUT_NAME] and list(parsed.input[0].dims) == [3, -1, -1]
    assert {t.name: tuple(t.dims) for t in parsed.output} == {k: (-1, *v[1:]) for k, v in shapes.items()}
    pair = pbtxt.check_config(pbtxt.render(repository.pair_config(o, 384)))
    assert pair.platform == "ensemble" and len(pair.ensemble_scheduling.step) == 3
    match = pbtxt.check_config(pbtxt.render(repository.match_config(o, 384)))
    assert {t.name for t in match.input} == {"key9_1", "key11_1", "saliency_1", "key9_2", "key11_2", "saliency_2"}
    with pytest.raises(InputError, match="ModelConfig"):
        pbtxt.check_config('name: "x"\nmax_batch: 3\n')


def test_bad_options_and_missing_backend_are_clear(tmp_path, capsys, server_binary):
    from dinofeat.cli import main

    with pytest.raises(InputError, match="backend='tensorflow'"):
        repository.write_repository(tmp_path / "r", RepositoryOptions(backend="tensorflow"))
    assert not (tmp_path / "r").exists()
    assert main(["serve", "triton-repo", "--out", str(tmp_path / "r"), "--size", "4x4"]) == 2
    assert "height=4" in capsys.readouterr().err
    # an ONNX Runtime repository cannot run on a server without that backend: say so and print the container line
    ort = tmp_path / "ort" / repository.VIT
    ort.mkdir(parents=True)
    (ort / "config.pbtxt").write_text(pbtxt.render(repository.vit_config(RepositoryOptions(), 384)))
    assert main(["serve", "run", str(tmp_path / "ort")]) == 1
    out = capsys.readouterr()
    assert "onnxruntime" in out.err and "docker run --gpus all" in out.out


def test_served_pair_equals_find_correspondences(tmp_path, vits8_weights_file, server_binary):
    """One real server: generated Python-backend repository, HTTP and gRPC clients, every field compared."""
    import dinofeat
    from dinofeat.serve import Client, TritonServer
    repo = repository.write_repository(tmp_path / "repo", RepositoryOptions(
        weights=str(vits8_weights_file), backend="python", height=SIZE, width=SIZE, max_batch=4))
    a, b = EXAMPLES / "img_a.png", EXAMPLES / "img_b.png"
    ref = dinofeat.find_correspondences(a, b, load_size=(SIZE, SIZE), weights=str(vits8_weights_file),
                                        backend="torch", device="cpu")
    with TritonServer(repo) as server:
        server.wait_ready(timeout=240)
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with Client(url, protocol=protocol) as client:
                assert client.size == (SIZE, SIZE)
                got = client.match(a, b)
            assert len(got) == len(ref) > 0
            expected, actual = ref.to_numpy(), got.to_numpy()
            for name, value in expected.items():
                if value.dtype.kind == "f":
                    np.testing.assert_allclose(actual[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
                else:
                    np.testing.assert_array_equal(actual[name], value, err_msg=name)
        # a request the model cannot take is that request's error, and the server stays up
        with Client(server.http_url) as client, pytest.raises(BackendUnavailableError, match="dinofeat_pair"):
            bad = np.zeros((1, 3, SIZE, SIZE + 8), np.float32)
            client.infer(bad, bad)
        assert server.process.poll() is None


@pytest.mark.integration
def test_onnxruntime_repository_serves_every_size(tmp_path, vits8_weights_file, server_binary):
    """The repository's ONNX Runtime model (the dynamic-size graph, dims [3, -1, -1]) loaded by the real Triton
    server. Its bundled build has no onnxruntime backend, so backend onnxruntime-python runs the same model.onnx
    with ONNX Runtime inside the Python backend: two sizes through dinofeat_vit equal the torch path, and the
    pair ensemble (fixed size) loads and answers."""
    import torch
    import tritonclient.http as tc
    from testutil import rel_err

    from dinofeat.model.vit import Request, build_vit
    from dinofeat.model.weights import load_weights
    from dinofeat.model.zoo import get_model_spec
    from dinofeat.serve import Client, TritonServer

    repo = repository.write_repository(tmp_path / "repo", RepositoryOptions(
        weights=str(vits8_weights_file), backend="onnxruntime-python", height=SIZE, width=SIZE, max_batch=4))
    config = (repo / repository.VIT / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and (repo / repository.VIT / "1" / "model.onnx").is_file()
    spec = get_model_spec("dino_vits8")
    vit = build_vit(spec, 4, load_weights(spec, str(vits8_weights_file), progress=False))
    req = Request(facets=((9, "key"),), saliency=True)
    with TritonServer(repo) as server:
        server.wait_ready(timeout=300)
        client = tc.InferenceServerClient(server.http_url)
        for h, w in [(SIZE, SIZE), (48, 80)]:
            x = np.random.default_rng(h).standard_normal((1, 3, h, w)).astype(np.float32)
            inp = tc.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = client.infer(repository.VIT, [inp])
            with torch.no_grad():
                rk, rs = vit.forward_features(torch.from_numpy(x), req)
            assert rel_err(res.as_numpy("key9"), rk.numpy()) < 1e-4, (h, w)
            assert rel_err(res.as_numpy("saliency"), rs.numpy()) < 1e-4, (h, w)
        client.close()
        with Client(server.http_url) as pair:
            assert len(pair.match(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png")) > 0


def test_tensorrt_repository_writes_one_wide_profile_engine(tmp_path, monkeypatch, vits8_weights_file):
    """`serve triton-repo --backend tensorrt` writes model.plan through `export.engine_file.write_engine` (the
    TensorRT API stand-ins of tests/engine build it here): one wide (B, H, W) profile, every size up to 1024."""
    import importlib.util
    import json

    from testutil import ROOT

    from dinofeat.export import tensorrt as trt_export

    # the TensorRT API stand-ins of tests/engine (that folder is not on sys.path when only tests/serve runs)
    spec = importlib.util.spec_from_file_location("trt_standins", ROOT / "tests" / "engine" / "test_tensorrt_backend.py")
    standins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standins)
    GPU, fake_trt = standins.GPU, standins.fake_trt

    trt = fake_trt("10.3.0")
    monkeypatch.setattr(trt_export, "import_tensorrt", lambda: trt)  # not sys.modules: torch.export probes it
    monkeypatch.setattr(trt_export, "gpu_identity", lambda device=None: dict(GPU))
    monkeypatch.setenv("DINOFEAT_CACHE", str(tmp_path / "cache"))
    o = RepositoryOptions(backend="tensorrt", weights=str(vits8_weights_file), height=SIZE, width=SIZE, max_batch=4)
    root = repository.write_repository(tmp_path / "repo", o, progress=False)
    plan = root / repository.VIT / "1" / "model.plan"
    meta = json.loads((plan.parent / "model.plan.json").read_text())
    assert plan.stat().st_size > 0 and meta["engine"] == "model.plan"
    assert meta["profile"] == [[[1, 8, 8], [1, SIZE, SIZE], [4, 1024, 1024]]]
    assert meta["height"] == meta["width"] == "dynamic"
    assert [p.shapes["images"] for p in trt.config.profiles] == [((1, 3, 8, 8), (1, 3, SIZE, SIZE),
                                                                    (4, 3, 1024, 1024))]
