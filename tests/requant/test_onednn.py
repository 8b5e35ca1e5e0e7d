"""oneDNN's epilogue on ties where a contracted (FMA) multiply-add gives a different integer, against torch.

qjax runs the epilogue with native float32 products kept out of XLA's contraction
(``qjax.float32.uncontracted``).  These cases are built so that the *fused* form
``fl32(a*b + c)`` and the unfused ``fl32(fl32(a*b) + c)`` round to different integers on
about half of the channels; each test checks that the fused rule does mismatch torch on
the data and that qjax does not (also with every parameter a compile-time constant, which
XLA folds and rewrites).
"""

import jax
import numpy as np
import pytest

import qjax

from .. import torch_ref
from ..helpers import assert_same, operands, qjax_conv, torch_conv

pytestmark = pytest.mark.torch
F32 = np.float32
O = 64
ZX = 120


@pytest.fixture(autouse=True)
def _onednn():
    torch_ref.set_engine("onednn")
    yield
    torch_ref.set_engine("fbgemm")


def inv(v):
    return (F32(1) / F32(v)).astype(F32)


def case_for(acc0, sw, bias, sy, zy, rng):
    """A 1x1 conv, one input channel, weight 1 per output channel: acc = x - zx."""
    x = rng.integers(0, 256, size=(1, 1, 4, 8)).astype(np.uint8)
    x[..., ::2] = ZX + acc0  # half of the pixels on the constructed tie
    w = np.ones((O, 1, 1, 1), np.int8)
    return dict(kind="onednn ties", x=x, w=w, sx=SX, zx=ZX, sw=sw.astype(np.float64), zw=np.zeros(O, np.int64),
                per_channel=True, bias=bias, sy=float(sy), zy=zy, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                groups=1, relu=False)


SX = float(F32(0.0371))


def a_src():
    return inv(inv(SX))


def fused_reference(case, fuse_bias, fuse_zy, reassociate=False):
    """The epilogue in numpy float32, with the bias add or the zero-point add fused (one rounding),
    or the two scale products reassociated (``acc * fl32(a_src * sw)``, XLA's rewrite of constant factors)."""
    acc = (case["x"].astype(np.int64) - ZX).reshape(-1)[None, :].astype(F32)  # (1, P), channel axis first below
    sw = np.asarray(case["sw"], F32)[:, None]
    t = (acc * a_src()).astype(F32)
    p = (acc * (a_src() * sw).astype(F32)).astype(F32) if reassociate else (t * sw).astype(F32)
    if case["bias"] is None:
        v = p
    else:
        b = np.asarray(case["bias"], F32)[:, None]
        v = (t.astype(np.float64) * sw + b).astype(F32) if fuse_bias else (p + b).astype(F32)
    a_dinv = inv(inv(inv(case["sy"])))
    zy = F32(case["zy"])
    v = (v.astype(np.float64) * a_dinv + zy).astype(F32) if fuse_zy else ((v * a_dinv).astype(F32) + zy).astype(F32)
    q = np.rint(np.clip(v, 0, 255)).astype(np.int64)  # (O, P)
    return q.T.reshape(case["x"].shape[2:] + (O,)).transpose(2, 0, 1)[None]


def check(case):
    want = torch_conv(case)
    assert_same(qjax_conv(case, engine=qjax.engines.Onednn()), want, "onednn ties")
    x, wq = operands(case)
    folded = jax.jit(lambda v: qjax.conv(qjax.QArray(v, x.scale, x.zero_point, qjax.quint8), wq, case["bias"],
                                         scale=case["sy"], zero_point=case["zy"], engine=qjax.engines.Onednn()).values)
    assert_same(np.asarray(folded(x.values)), want, "onednn ties, constants folded")
    return want


def test_bias_add_is_not_contracted():
    """``v = fl32(fl32(t * sw) + bias)`` lands exactly on 0.5 (sy = 1, even zy); the FMA does not."""
    rng = np.random.default_rng(0)
    acc0 = 77
    t0 = (F32(acc0) * a_src()).astype(F32)
    sw = (rng.uniform(512, 1024, size=O) / t0).astype(F32)
    p0 = (t0 * sw).astype(F32)  # in [512, 1024): 0.5 - p0 is exact
    bias = (F32(0.5) - p0).astype(F32)
    case = case_for(acc0, sw, bias, 1.0, 100, rng)
    want = check(case)
    assert (fused_reference(case, False, False) == want).all()  # the reference is right ...
    assert (fused_reference(case, True, False) != want).sum() >= O // 8  # ... and the FMA rule is not
    assert (fused_reference(case, False, False, reassociate=True) != want).sum() >= O // 8  # nor reassociation


def test_zero_point_add_is_not_contracted():
    """``fl32(v * a_dinv) = -150.5`` exactly, so ``+ 255`` gives the tie 104.5; the exact product is above it."""
    rng = np.random.default_rng(1)
    acc0 = -77
    sy = float(F32(0.0093))
    a_dinv = inv(inv(inv(sy)))
    t0 = (F32(acc0) * a_src()).astype(F32)
    target = np.float64(-150.5) / np.float64(a_dinv)
    base = F32(target / np.float64(t0))
    # the float32 neighbours of the weight scale that reaches the target: keep those whose product
    # rounds onto -150.5 while the exact product is more than a quarter of its ulp away from it
    cands = [base]
    for _ in range(400):
        cands = [np.nextafter(cands[0], F32(-np.inf), dtype=F32)] + cands + [np.nextafter(cands[-1], F32(np.inf),
                                                                                               dtype=F32)]
    cands = np.array(cands, F32)
    exact = (t0 * cands).astype(F32).astype(np.float64) * np.float64(a_dinv)
    good = cands[(exact.astype(F32) == F32(-150.5)) & (exact + 150.5 > 2.0**-18)]
    assert good.size >= 1
    vt = (t0 * good[0]).astype(F32)  # fl32(vt * a_dinv) == -150.5, the exact product above it
    # per channel a random weight scale, and the bias that brings its product onto vt exactly
    # (p and vt within a factor 2 of each other: Sterbenz makes vt - p and p + bias exact)
    sw = (np.float64(good[0]) * rng.uniform(0.6, 1.4, size=O)).astype(F32)
    p = (t0 * sw).astype(F32)
    bias = (vt - p).astype(F32)
    assert ((p + bias).astype(F32) == vt).all()
    case = case_for(acc0, sw, bias, sy, 255, rng)
    want = check(case)
    assert (fused_reference(case, False, False) == want).all()
    assert (fused_reference(case, False, True) != want).sum() >= O // 8
