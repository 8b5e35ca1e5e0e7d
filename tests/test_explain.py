"""qjax.explain and `qjax explain`: the trace reproduces the kernel's integer, and the seed thread's answer."""

import numpy as np
import pytest

import qjax
from qjax.cli import main
from qjax._src.explain import explain, printed_scale

from .helpers import HOST_FBGEMM, operands, qjax_conv, qjax_linear
from .strategies import _qparams


def test_printed_scale():
    assert printed_scale(0.004018464591354132) == 0.004
    assert printed_scale(0.0078431) == 0.0078
    assert printed_scale(3.7123e-5) == 3.712e-5


@pytest.mark.parametrize("seed", range(12))
def test_explain_conv_matches_kernel(seed):
    rng = np.random.default_rng(seed)
    case = _case(seed)
    out = qjax_conv(case)
    x, w = operands(case)
    idx = tuple(int(rng.integers(0, s)) for s in out.shape)
    e = explain(x, w, case["bias"], scale=case["sy"], zero_point=case["zy"], index=idx, stride=case["stride"],
                padding=case["padding"], dilation=case["dilation"], groups=case["groups"], relu=case["relu"], engine=HOST_FBGEMM)
    assert e.output == e.qjax_output == out[idx]
    assert "fbgemm arithmetic" in str(e)


def _case(seed):
    """Deterministic conv cases covering depthwise (saturating) and per-channel layers."""
    rng = np.random.default_rng(seed)
    kinds = ["depthwise_fast", "generic", "grouped", "pointwise"]
    kind = kinds[seed % len(kinds)]
    g = 8 if kind == "depthwise_fast" else (2 if kind == "grouped" else 1)
    c = 8 if kind == "depthwise_fast" else g * 3
    o = c if kind == "depthwise_fast" else g * 2
    k = 1 if kind == "pointwise" else 3
    pc = bool(seed % 2)
    case = dict(kind=kind, nd=2, groups=g, in_channels=c, out_channels=o, kernel=(k, k), stride=(1, 1),
                padding=((k - 1) // 2,) * 2, dilation=(1, 1), x_shape=(1, c, 6, 6), w_shape=(o, c // g, k, k))
    return _qparams(rng, case, per_channel=pc, wzp=False, full_range=True, has_bias=seed % 3 != 0, relu=seed % 4 == 1)


def test_explain_linear_matches_kernel():
    rng = np.random.default_rng(3)
    case = dict(kind="linear", in_channels=20, out_channels=5, x_shape=(4, 20), w_shape=(5, 20))
    case = _qparams(rng, case, per_channel=False, wzp=True, full_range=True, has_bias=True, relu=False)
    out = qjax_linear(case)
    x, w = operands(case)
    e = explain(x, w, case["bias"], scale=case["sy"], zero_point=case["zy"], index=(2, 3), op="linear", engine=HOST_FBGEMM)
    assert e.output == e.qjax_output == out[2, 3]


def test_explain_rejects_unknown_op():
    x = qjax.QArray(np.zeros((1, 4), np.uint8), 0.1, 0, qjax.quint8)
    w = qjax.QArray(np.zeros((2, 4), np.int8), 0.1, 0, qjax.qint8)
    with pytest.raises(ValueError, match="op='matmul'"):
        explain(x, w, None, scale=0.1, zero_point=0, index=(0, 0), op="matmul")


@pytest.mark.torch
def test_seed_thread_24_gives_30_not_31(capsys):
    from qjax.examples import seed

    e, mism, total = seed.run()
    assert mism == 0 and total == 64
    assert e.x_taps.tolist() == [24] and e.w_taps.tolist() == [127]
    assert e.torch_output == e.qjax_output == e.output == 30
    assert e.hand["output"] == 31  # the thread's hand calculation
    assert "printed 4-digit scales" in e.hand["cause"]
    assert main(["explain", "--example", "seed"]) == 0
    out = capsys.readouterr().out
    assert "torch returns 30" in out and "-> 31" in out


def test_explain_is_public_api():
    import qjax

    assert qjax.explain is explain  # the public name: qjax.explain(...)
