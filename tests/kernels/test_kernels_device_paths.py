"""Device plumbing of the kernels, checked on the CPU: deferred NaN/Inf checks (no host sync for device inputs),
the CuPy stream protocol instead of the deprecated ExternalStream, and device selection for every input kind
(a recording stand-in of CuPy's device/stream/allocator API; the real GPU runs are in test_kernels_gpu.py)."""

from __future__ import annotations

import types
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from dinofeat.errors import InputError
from dinofeat.kernels import _arrays as A
from dinofeat.kernels import best_buddies
from dinofeat.kernels import cuda as C
from dinofeat.kernels import dispatch as D


def test_deferred_finite_check_never_reads_device_data():
    # A meta tensor has no data: any host read (bool(), .item(), .cpu()) would raise. The deferred check only
    # enqueues the per-row sums.
    x = torch.empty(1000, 64, device="meta")
    pending = A.check_finite_deferred("desc1", x)
    assert isinstance(pending, A.DeferredFinite) and pending.row_sums.shape == (1000,)
    assert pending.row_sums.device.type == "meta" and pending.row_sums.dtype == torch.float32
    # host inputs are still checked at once
    bad = np.zeros((4, 3), np.float32)
    bad[2, 1] = np.inf
    with pytest.raises(InputError, match="desc2 contains Inf at row 2"):
        A.check_finite_deferred("desc2", bad)


def test_deferred_finite_check_reports_like_the_host_check():
    x = torch.randn(50, 8, dtype=torch.float16)
    x[17, 3] = float("nan")
    pending = A.DeferredFinite("desc1", x.sum(dim=-1, dtype=torch.float32))
    with pytest.raises(InputError, match="desc1 contains NaN at row 17"):
        pending.raise_if_bad()
    y = torch.full((6, 4), 60000.0, dtype=torch.float16)  # sum overflows fp16, not the fp32 accumulation
    A.DeferredFinite("desc2", y.sum(dim=-1, dtype=torch.float32)).raise_if_bad()
    res = D._with_pending([torch.zeros(1)] * 5, [None, pending])
    assert isinstance(res, D.BestBuddies) and len(res) == 5
    with pytest.raises(InputError, match="row 17"):
        res.check()
    host = best_buddies(torch.randn(5, 4), torch.randn(3, 4))
    assert host.check() is host and type(host) is D.BestBuddies  # host inputs: checked before, nothing pending


def test_stream_protocol_instead_of_deprecated_external_stream():
    cp = pytest.importorskip("cupy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CuPy 14 warns on every ExternalStream(...)
        s = C.external_stream(cp, 0xBEEF, 0)
    assert s.ptr == 0xBEEF
    assert C._StreamRef(7).__cuda_stream__() == (0, 7)


class _FakeCupy:
    """The CuPy surface `_Device` touches, recording which device is entered."""

    float64, float32, uint16 = np.float64, np.float32, np.uint16

    def __init__(self, current: int):
        self.entered, self.current = [], current
        fake = self

        class Device:
            def __init__(self, i=None):
                self.id = fake.current if i is None else i

            def __enter__(self):
                fake.entered.append(self.id)
                return self

            def __exit__(self, *exc):
                return False

        self.cuda = types.SimpleNamespace(Device=Device, using_allocator=self._using)

    @contextmanager
    def _using(self, alloc):
        yield

    asarray = staticmethod(np.asarray)
    asnumpy = staticmethod(np.asarray)
    ascontiguousarray = staticmethod(np.ascontiguousarray)


def test_device_context_follows_the_data(monkeypatch):
    fake = _FakeCupy(current=0)
    monkeypatch.setattr(C, "_cupy", lambda: fake)
    on_gpu1 = types.SimpleNamespace(device=types.SimpleNamespace(id=1))  # a CuPy array on GPU 1, GPU 0 current
    with C._Device(on_gpu1, A.Origin("cupy", None, True)):
        pass
    assert fake.entered == [1]

    def no_torch_cuda(*a, **k):
        raise AssertionError("host inputs must not go through torch's current CUDA device")

    monkeypatch.setattr(torch.Tensor, "cuda", no_torch_cuda)
    t = torch.randn(4, 3).to(torch.bfloat16)
    with C._Device(t, A.origin_of("desc", t)) as dev:  # host torch input: CuPy's current device, both ways
        arr, name = dev.to_cupy(t, "bfloat16")
        assert arr.dtype == np.uint16 and name == "bfloat16"
        assert torch.equal(dev.back(arr, "bfloat16"), t)
        f64 = torch.randn(2, 2, dtype=torch.float64)
        arr64, name64 = dev.to_cupy(f64, "float64")
        assert arr64.dtype == np.float32 and name64 == "float32"
    assert fake.entered == [1, 0]
