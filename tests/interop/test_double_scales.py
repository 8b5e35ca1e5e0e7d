"""Imported models keep torch's double scales: a Python-float ``quantize_per_tensor`` scale and a conv
module's ``scale`` that are not float32-valued reach the onednn arithmetic as doubles (``scale64`` node
parameters), so the import equals torch on near-ties where the float32-first rule does not."""

import numpy as np
import pytest

import qjax

from .. import torch_ref
from ..requant.test_onednn import _r32, double_factors, double_tie_case, epilogue

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class _QuantConvDequant(torch.nn.Module):
    def __init__(self, conv, sx, zx):
        super().__init__()
        self.conv, self.sx, self.zx = conv, sx, zx

    def forward(self, x):
        return self.conv(torch.quantize_per_tensor(x, self.sx, self.zx, torch.quint8)).dequantize()


def _model(case):
    G = case["out_channels"]
    conv = torch.ao.nn.quantized.Conv2d(G, G, 3, groups=G)
    sw = case["sw"]
    if case["per_channel"]:
        wq = torch._make_per_channel_quantized_tensor(torch.from_numpy(case["w"]), torch.from_numpy(sw),
                                                      torch.zeros(G, dtype=torch.int64), 0)
    else:
        wq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(case["w"]), sw, 0)
    conv.set_weight_bias(wq, torch.from_numpy(case["bias"]))
    conv.scale, conv.zero_point = float(case["sy"]), int(case["zy"])
    return _QuantConvDequant(conv, float(case["sx"]), int(case["zx"])).eval()


@pytest.mark.parametrize("engine, per_channel", [("onednn", True), ("x86", False)])
def test_from_torch_keeps_double_scales(engine, per_channel):
    torch_ref.set_engine(engine)
    case = double_tie_case(np.random.default_rng([5, len(engine)]), "conv", per_channel)
    assert all(float(np.float32(case[k])) != float(case[k]) for k in ("sx", "sy"))  # doubles, not float32s
    model = _model(case)
    # float inputs that quantize to the case's integers (torch multiplies by fl32(1/fl32(sx)))
    x = torch.from_numpy(((case["x"].astype(np.float32) - case["zx"]) * np.float32(case["sx"])).astype(np.float32))
    with torch.no_grad():
        want = model(x)
    qm = qjax.from_torch(model, x, engine=engine)
    got = np.asarray(qm(x.numpy()))
    assert np.array_equal(got.view(np.int32), want.numpy().view(np.int32)), \
        f"{int((got != want.numpy()).sum())} of {got.size} differ"
    # the data decides: the float32-first factors give other integers on these near-ties
    ints = np.rint(want.numpy().reshape(-1) / np.float32(case["sy"]) + case["zy"]).astype(np.int64)
    f32 = double_factors(case["sx"], case["sw"], case["sy"], "conv", per_channel, _r32)
    assert (epilogue(case["acc"], case["bias"], case["zy"], f32) != ints).sum() >= 3
