"""TensorRT shape profiles over H and W (issue 25, slice 2), against the TensorRT API stand-ins of
test_tensorrt_backend.py: profile parsing and selection, one profile per bucket in the built engine, the engine
cache keyed on the profile set, per-call profile selection in the backend, and the error outside every profile."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch
from test_tensorrt_backend import GPU, _Context, _FakeCuda, _FakeEngine, _Stream, fake_trt

from dinofeat.errors import InputError
from dinofeat.export import tensorrt as trt_export
from dinofeat.export.tensorrt import ShapeProfile, bucket_profiles, parse_shape, select_profile
from dinofeat.model.vit import Request, StridedViT
from dinofeat.model.zoo import get_model_spec

REQ = Request(facets=((9, "key"),), saliency=True)


def test_profiles_parse_validate_and_select():
    assert parse_shape("2x224x336", "--max-shape") == (2, 224, 336)
    with pytest.raises(InputError, match="--min-shape '224x224': expected BxHxW"):
        parse_shape("224x224", "--min-shape")
    with pytest.raises(InputError, match="min <= opt <= max"):
        ShapeProfile((1, 64, 64), (1, 300, 64), (8, 224, 224))
    buckets = bucket_profiles([(480, 640), (224, 224), (224, 224)], 8, max_batch=4)
    assert [p.opt for p in buckets] == [(1, 224, 224), (1, 480, 640)]  # de-duplicated, smallest area first
    assert buckets[0].min == (1, 8, 8) and buckets[1].max == (4, 480, 640)
    assert select_profile(buckets, 1, 120, 180) == 0 and select_profile(buckets, 4, 224, 224) == 0
    assert select_profile(buckets, 2, 225, 100) == 1 and select_profile(buckets, 1, 480, 640) == 1
    with pytest.raises(InputError, match=r"481x640 .*profile 0: batch 1..4, H 8..224, W 8..224; profile 1: "
                                         r"batch 1..4, H 8..480, W 8..640"):
        select_profile(buckets, 1, 481, 640)
    with pytest.raises(InputError, match="batch 5"):
        select_profile(buckets, 5, 64, 64)
    with pytest.raises(InputError, match="smaller than the patch size"):
        bucket_profiles([(4, 64)], 8)


def test_engine_has_one_profile_per_bucket_and_cache_keys_on_the_set(tmp_path, monkeypatch):
    trt = fake_trt("11.4.0")
    monkeypatch.setattr(trt_export, "gpu_identity", lambda device=None: dict(GPU))
    onnx_file = tmp_path / "dyn.onnx"
    onnx_file.write_bytes(b"a dynamic-size graph (the stand-in parser does not read it)")
    buckets = bucket_profiles([(224, 224), (480, 640)], 8, max_batch=4)
    kw = dict(precision="fp16", profile=trt_export.Profile(), height=224, width=224, cache_dir=tmp_path,
              progress=False, trt=trt)
    _, _, m1 = trt_export.get_engine(onnx_file, shape_profiles=buckets, **kw)
    shapes = [p.shapes["images"] for p in trt.config.profiles]
    assert shapes == [((1, 3, 8, 8), (1, 3, 224, 224), (4, 3, 224, 224)),
                      ((1, 3, 8, 8), (1, 3, 480, 640), (4, 3, 480, 640))]
    meta = m1["meta"]
    assert meta["profile"] == [p.as_list() for p in buckets] and meta["height"] == meta["width"] == "dynamic"
    builds = sum(c[0] == "build" for c in trt.calls)
    trt_export.get_engine(onnx_file, shape_profiles=list(buckets), **kw)  # same set: cache hit
    assert sum(c[0] == "build" for c in trt.calls) == builds
    wide = (ShapeProfile((1, 8, 8), (1, 224, 224), (4, 1024, 1024)),)
    _, _, m2 = trt_export.get_engine(onnx_file, shape_profiles=wide, **kw)  # another set: another engine
    assert m2["key"] != m1["key"] and sum(c[0] == "build" for c in trt.calls) == builds + 1
    assert len(trt.config.profiles) == 1
    _, _, m3 = trt_export.get_engine(onnx_file, **kw)  # the fixed-size batch profile is a third key
    assert m3["meta"]["height"] == 224 and m3["key"] not in (m1["key"], m2["key"])


class _ProfiledContext(_Context):
    def __init__(self, engine):
        super().__init__(engine)
        self.profile = 0

    def set_optimization_profile_async(self, index, handle):
        self.profile = index
        return True


class _ProfiledEngine(_FakeEngine):
    def create_execution_context(self):
        self.contexts.append(_ProfiledContext(self))
        return self.contexts[-1]


@pytest.fixture
def dyn_backend(monkeypatch):
    from dinofeat.engine.backends import tensorrt as trtb

    trt = fake_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = _FakeCuda()
    buckets = bucket_profiles([(224, 224), (480, 640)], 8, max_batch=2)
    be = trtb.TensorRTBackend(StridedViT(get_model_spec("dino_vits8"), 4), torch.device("cuda", 0), "fp32", "w",
                              cuda_ops=cuda, shape_profiles=buckets)
    logger = trt_export.recording_logger(trt)
    eng = _ProfiledEngine(cuda, logger)
    dtypes = {"key9": torch.float32, "saliency": torch.float32}
    be._engines[(None, None, REQ)] = trtb._Engine(eng, None, logger, ["key9", "saliency"], dtypes, {}, buckets)
    return be, eng, cuda


def test_backend_selects_the_profile_per_call(dyn_backend):
    be, eng, cuda = dyn_backend
    be.run(torch.zeros(1, 3, 120, 180), REQ)
    be.run(torch.zeros(2, 3, 224, 224), REQ)  # same bucket, same stream: same context
    assert [c.profile for c in eng.contexts] == [0]
    be.run(torch.zeros(1, 3, 300, 500), REQ)  # the 480x640 bucket: a context on profile 1
    assert [c.profile for c in eng.contexts] == [0, 1] and eng.contexts[1].shape == (1, 3, 300, 500)
    cuda.current = _Stream(222)
    be.run(torch.zeros(1, 3, 480, 640), REQ)
    assert [c.profile for c in eng.contexts] == [0, 1, 1] and eng.contexts[2].launches[0][0] == 222
    assert len(be._engines) == 1  # one engine serves every size


def test_backend_refuses_sizes_outside_the_profiles(dyn_backend):
    be, eng, _ = dyn_backend
    with pytest.raises(InputError, match=r"481x640 .*profile 1: batch 1..2, H 8..480, W 8..640"):
        be.run(torch.zeros(1, 3, 481, 640), REQ)
    with pytest.raises(InputError, match="batch 3"):
        be.run(torch.zeros(3, 3, 64, 64), REQ)
    assert eng.contexts == []


def test_cli_shape_flags(capsys, tmp_path):
    from dinofeat.cli import main
    from dinofeat.cli.export import shape_profiles

    args = argparse.Namespace(size_buckets="224x224, 480x640", min_shape=None, opt_shape=None, max_shape=None,
                              opt_batch=1, max_batch=8)
    assert [p.opt[1:] for p in shape_profiles(args, 14, 224, 224)] == [(224, 224), (480, 640)]
    args = argparse.Namespace(size_buckets=None, min_shape="1x64x64", opt_shape=None, max_shape="4x800x800",
                              opt_batch=2, max_batch=8)
    (p,) = shape_profiles(args, 8, 224, 320)
    assert (p.min, p.opt, p.max) == ((1, 64, 64), (2, 224, 320), (4, 800, 800))
    out = str(tmp_path / "m.onnx")
    assert main(["export", "--size-buckets", "224x224", "-o", out]) == 2
    assert "add --tensorrt-engine ENGINE" in capsys.readouterr().err
    assert main(["export", "--size-buckets", "224x224", "--max-shape", "1x224x224", "--tensorrt-engine", "e",
                 "-o", out]) == 2
    assert "not both" in capsys.readouterr().err


def test_backend_options_only_for_tensorrt():
    from dinofeat.engine.backends import create_backend

    with pytest.raises(InputError, match="apply to backend='tensorrt' only"):
        create_backend("torch", StridedViT(get_model_spec("dino_vits8"), 4), torch.device("cpu"), "fp32", "w",
                       {"shape_profiles": ()})
