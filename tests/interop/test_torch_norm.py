"""Importing torch's quantized LayerNorm / GroupNorm / InstanceNorm modules (eager convert) bit-exactly."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax

pytestmark = pytest.mark.torch


class _Norms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        tq = torch.ao.quantization
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.gn = torch.nn.GroupNorm(4, 8)
        self.inorm = torch.nn.InstanceNorm2d(8, affine=True)
        self.ln = torch.nn.LayerNorm([8, 4, 4])

    def forward(self, x):
        return self.dequant(self.ln(self.inorm(self.gn(self.conv(self.quant(x))))))


def test_norm_modules_import_bit_exact():
    tq = torch.ao.quantization
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.backends.quantized.engine = "fbgemm"
    m = _Norms().eval()
    with torch.no_grad():
        m.gn.weight.uniform_(0.5, 2), m.gn.bias.uniform_(-1, 1), m.inorm.weight.uniform_(0.5, 2)
    m.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(m)
    for _ in range(3):
        prepared(torch.randn(2, 3, 6, 6))
    qm = tq.convert(prepared)
    nnq = torch.ao.nn.quantized
    assert isinstance(qm.gn, nnq.GroupNorm) and isinstance(qm.inorm, nnq.InstanceNorm2d)
    assert isinstance(qm.ln, nnq.LayerNorm)
    x = torch.randn(2, 3, 6, 6)
    model = qjax.from_torch(qm, x)
    assert sum(node.op == "norm" for node in model.nodes) == 3
    got = np.asarray(model(x.numpy()))
    np.testing.assert_array_equal(got, qm(x).numpy())
