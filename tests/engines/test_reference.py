"""The reference engine vs torch's reference path (dequantize -> F.conv/F.linear -> quantize).

On power-of-two scales the dequantized values are exact and every float sum below 2**24
units is exact, so torch's float convolution (whatever its summation order) and XLA's agree
bit for bit: that is the domain tested for 0 mismatches.  Both output quantizers are checked:
pt2e's ``quantized_decomposed.quantize_per_tensor`` (round, then add the zero point) and
``torch.quantize_per_tensor`` (fused).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch


def torch_reference(x, sx, zx, w, sw, zw, bias, sy, zy, conv_kw, flavor, op):
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)

    xf = (torch.from_numpy(x).float() - zx) * sx
    wf = (torch.from_numpy(w).float() - zw) * sw
    b = torch.from_numpy(bias)
    y = F.linear(xf, wf, b) if op == "linear" else getattr(F, f"conv{x.ndim - 2}d")(xf, wf, b, **conv_kw)
    if flavor == "torch":
        return torch.quantize_per_tensor(y, sy, zy, torch.quint8).int_repr().numpy()
    return torch.ops.quantized_decomposed.quantize_per_tensor(y, sy, zy, 0, 255, torch.uint8).numpy()


@settings(max_examples=40)
@given(nd=st.sampled_from([1, 2, 3]), g=st.sampled_from([1, 2]), k=st.integers(1, 3), s=st.integers(1, 2),
       p=st.integers(0, 1), flavor=st.sampled_from(["decomposed", "torch"]), seed=st.integers(0, 2**31),
       op=st.sampled_from(["conv", "linear"]))
def test_reference_engine_matches_torch_on_exact_sums(nd, g, k, s, p, flavor, seed, op):
    rng = np.random.default_rng(seed)
    sx, sw, sy = 2.0 ** -int(rng.integers(3, 7)), 2.0 ** -int(rng.integers(4, 8)), 2.0 ** -int(rng.integers(1, 5))
    zx, zy = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    if op == "linear":
        x = rng.integers(0, 256, size=(5, 12)).astype(np.uint8)
        w = rng.integers(-128, 128, size=(7, 12)).astype(np.int8)
        kw = {}
    else:
        c, o = 2 * g, 3 * g
        x = rng.integers(0, 256, size=(2, c) + (6,) * nd).astype(np.uint8)
        w = rng.integers(-128, 128, size=(o, c // g) + (k,) * nd).astype(np.int8)
        kw = dict(stride=s, padding=p, groups=g)
    bias = (rng.integers(-64, 64, size=w.shape[0]) * sx * sw).astype(np.float32)  # on the sum's grid too
    want = torch_reference(x, sx, zx, w, sw, 0, bias, sy, zy, kw, flavor, op)
    eng = qjax.engines.Reference(output_quantize=flavor)
    xq, wq = qjax.QArray(x, sx, zx, qjax.quint8), qjax.QArray(w, sw, 0, qjax.qint8)
    if op == "linear":
        got = qjax.linear(xq, wq, bias, scale=sy, zero_point=zy, engine=eng)
    else:
        got = qjax.conv(xq, wq, bias, scale=sy, zero_point=zy, engine=eng, **kw)
    np.testing.assert_array_equal(np.asarray(got.values), want)


def test_reference_quantizers_really_differ():
    # half-way values: decomposed rounds before adding an odd zero point, torch's fused rule after
    y = np.array([[0.5, 1.5, 2.5, -0.5]], np.float32)
    eng_d, eng_t = qjax.engines.Reference("decomposed"), qjax.engines.Reference("torch")
    a = np.asarray(eng_d._requantize(y, np.float32(1.0), 3, False))
    b = np.asarray(eng_t._requantize(y, np.float32(1.0), 3, False))
    assert (a != b).any()
