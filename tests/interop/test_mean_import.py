"""Quantized ``mean`` through from_torch (FX and TorchScript): torch's own path per engine, refusals at import."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.ao.quantization as tq

import qjax
from qjax._src.interop.torch_common import TorchImportError

pytestmark = pytest.mark.torch


class _Mean(torch.nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims, self.q, self.dq = dims, tq.QuantStub(), tq.DeQuantStub()

    def forward(self, x):
        return self.dq(self.q(x).mean(self.dims))


def _converted(dims, engine, x):
    torch.backends.quantized.engine = engine
    m = _Mean(dims).eval()
    m.qconfig = tq.get_default_qconfig(engine)
    p = tq.prepare(m)
    p(x)
    return tq.convert(p)


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_channels_last_mean_imports_as_torch_runs_it(engine):
    # 40 channels, 7x7: fbgemm / x86 take the float cascade sum (32 multi_row_sum + 8 row_sum channels),
    # qnnpack its global average pool; scale and zero point come from the observer
    x = torch.randn(2, 40, 7, 7).contiguous(memory_format=torch.channels_last)
    try:
        m = _converted([2, 3], engine, x)
        want = m(x).numpy()
        for source in (m, torch.jit.trace(m, x)):
            got = np.asarray(qjax.from_torch(source, x, engine=engine)(x.numpy()))
            assert (got.view(np.uint32) == want.view(np.uint32)).all(), (engine, type(source).__name__)
    finally:
        torch.backends.quantized.engine = "fbgemm"


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_a_mean_the_engine_cannot_reproduce_is_refused_at_import(engine):
    x = torch.randn(1, 4, 3, 3)
    try:
        m = _converted([1], engine, x)  # over channels: torch's float path in TensorIterator's order
        sources = (m, torch.jit.trace(m, x)) if engine == "fbgemm" else (m,)
        for source in sources:
            with pytest.raises(TorchImportError, match=f"engine '{engine}' has no quantized mean over dims \\(1,\\)"):
                qjax.from_torch(source, x, engine=engine)
    finally:
        torch.backends.quantized.engine = "fbgemm"
