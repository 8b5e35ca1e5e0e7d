"""fbgemm requantization on adversarial ties, against torch 2.13 (1x1 convs and linears).

Random data hides the rounding rules (16 mismatches in 11M outputs for a wrong
multiplier); these cases put the pre-rounding value within a few ulps of k + 0.5,
and each test also checks that a plausible wrong rule *does* mismatch on the data.
"""

import jax
import numpy as np
import pytest

import qjax

from .. import torch_ref
from ..helpers import assert_same

pytestmark = pytest.mark.torch
F32 = np.float32


@pytest.fixture(autouse=True, scope="module")
def _fbgemm():
    torch_ref.set_engine("fbgemm")


def run_both(op, x, sx, zx, w, sw, per_channel, bias, sy, zy, relu=False):
    o = w.shape[0]
    xq = qjax.QArray(x, sx, zx, qjax.quint8)
    if per_channel:
        wq = qjax.QArray(w, np.asarray(sw), np.zeros(o, np.int32), qjax.qint8, axis=0)
    else:
        wq = qjax.QArray(w, sw, 0, qjax.qint8)
    zw = np.zeros(o, np.int64) if per_channel else 0
    if op == "conv":
        got = qjax.conv(xq, wq, bias, scale=sy, zero_point=zy, relu=relu).values
        # the same with every parameter a compile-time constant (XLA folds and rewrites those)
        folded = jax.jit(lambda v: qjax.conv(qjax.QArray(v, sx, zx, qjax.quint8), wq, bias, scale=sy,
                                              zero_point=zy, relu=relu).values)(x)
        np.testing.assert_array_equal(np.asarray(folded), np.asarray(got))
        want = torch_ref.conv(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, (1, 1), (0, 0), (1, 1), 1, relu)
    else:
        got = qjax.linear(xq, wq, bias, scale=sy, zero_point=zy, relu=relu).values
        want = torch_ref.linear(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, relu)
    return np.asarray(got), want


def naive_requant(acc, sx, sw, sy, zy, bias):
    """The forum's hand formula: int32-rounded bias, real-valued multiplier."""
    bq = np.rint(bias.astype(np.float64) / (sx * np.asarray(sw, np.float64)))
    y = (acc + bq) * (sx * np.asarray(sw, np.float64) / sy)
    return np.clip(np.rint(y) + zy, 0, 255)


@pytest.mark.parametrize("op", ["conv", "linear"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_bias_fold_ties(op, per_channel):
    # weight 1, multiplier exactly 1 (sy = atw): y = acc + bias/atw, bias placed a few ulps
    # around (m + 0.5) * atw so the FMA / division / int32-rounding choices all show.
    rng = np.random.default_rng(7 + per_channel)
    o, hw = 256, 16
    mism_naive = 0
    for _ in range(4):
        sx = float(np.exp(rng.uniform(-6, 0)))
        zx = int(rng.integers(100, 156))
        sw1 = float(np.exp(rng.uniform(-8, -2)))
        sw = np.full(o, sw1) if per_channel else sw1
        atw = F32(F32(sx) * F32(sw1))
        sy = float(atw)
        m = rng.integers(-40, 40, size=o).astype(np.float64)
        bias = ((m + 0.5) * np.float64(atw)).astype(F32)
        steps = rng.integers(-3, 4, size=o)
        bias = np.array([b if k == 0 else np.nextafter(b, F32(np.inf) if k > 0 else F32(-np.inf)) for b, k in zip(bias, steps)], F32)
        for i in np.flatnonzero(np.abs(steps) > 1):
            for _ in range(abs(steps[i]) - 1):
                bias[i] = np.nextafter(bias[i], F32(np.inf) if steps[i] > 0 else F32(-np.inf))
        zy = int(rng.integers(60, 196))
        w = np.ones((o, 1, 1, 1) if op == "conv" else (o, 1), np.int8)
        if op == "conv":
            x = rng.integers(zx - 20, zx + 21, size=(1, 1, hw, hw)).astype(np.uint8)
            acc = (x.astype(np.int64) - zx).reshape(1, 1, hw, hw).repeat(o, axis=1)
            bshape = (1, o, 1, 1)
        else:
            x = rng.integers(zx - 20, zx + 21, size=(hw * hw, 1)).astype(np.uint8)
            acc = (x.astype(np.int64) - zx).repeat(o, axis=1)
            bshape = (1, o)
        got, want = run_both(op, x, sx, zx, w, sw, per_channel, bias, sy, zy)
        assert_same(got, want, f"{op} bias ties")
        naive = naive_requant(acc, sx, np.broadcast_to(sw, (o,)).reshape(bshape), sy, zy, bias.reshape(bshape))
        mism_naive += int((naive != want).sum())
    assert mism_naive > 0, "the adversarial data no longer discriminates the naive formula"


@pytest.mark.parametrize("per_channel", [False, True])
def test_multiplier_ties(per_channel):
    # acc = 0 (x == zx); the float bias alone sets xf, chosen so xf * mult lands next to .5
    rng = np.random.default_rng(11 + per_channel)
    o = 256
    mism_double = 0
    for _ in range(8):
        sx = float(np.exp(rng.uniform(-5, -1)))
        sw = np.exp(rng.uniform(-6, -3, size=o)) if per_channel else float(np.exp(rng.uniform(-6, -3)))
        sy = float(np.exp(rng.uniform(-3, 0)))
        sw_v = np.broadcast_to(np.asarray(sw, np.float64), (o,))
        atw = (F32(sx) * sw_v.astype(F32)).astype(F32)
        mult = (atw / F32(sy)).astype(F32)
        n = rng.integers(-100, 100, size=o)
        target = (n + 0.5) * (1 + rng.uniform(-3e-6, 3e-6, size=o))
        bias = (target / mult.astype(np.float64) * atw.astype(np.float64)).astype(F32)
        zx, zy = 100, 128
        x = np.full((1, 1, 1, 1), zx, np.uint8)
        w = np.ones((o, 1, 1, 1), np.int8)
        got, want = run_both("conv", x, sx, zx, w, sw, per_channel, bias, sy, zy)
        assert_same(got, want, "multiplier ties")
        y_double = bias.astype(np.float64) / (sx * sw_v) * (sx * sw_v / sy)
        mism_double += int((np.clip(np.rint(y_double) + zy, 0, 255) != want.reshape(-1)).sum())
    assert mism_double > 0, "the adversarial data no longer discriminates a double-precision requant"


@pytest.mark.parametrize("relu", [False, True])
def test_overflow_and_clamp(relu):
    # huge positive y: cvtps2dq gives INT32_MIN, so fbgemm outputs 0 (not 255)
    o = 4
    x = np.full((1, 1, 2, 2), 10, np.uint8)
    w = np.ones((o, 1, 1, 1), np.int8)
    bias = np.array([3e5, -3e5, 1e-3, 30.0], F32)
    got, want = run_both("conv", x, 0.01, 0, w, 0.01, False, bias, 1e-4, 17, relu)
    assert_same(got, want, "overflow")
    assert want[0, 0, 0, 0] == (17 if relu else 0)
