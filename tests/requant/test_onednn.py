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
from ..helpers import assert_same, operands, qjax_conv, qjax_linear, torch_conv, torch_linear

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


# -- torch's double scales (qjax.float64) -------------------------------------------------------------
# torch inverts the activation and output scales (and linear's per-tensor weight scale) in double before
# rounding to float32; these cases put every output channel on a near-tie of the double rule's epilogue,
# with double scales whose float32-first factors differ, so the float32-first rule must mismatch torch.

G = 96  # depthwise groups (<= 100: torch's x86 engine sends the conv to oneDNN too)


def _r64(d):
    return (np.float64(1.0) / np.asarray(d, np.float64)).astype(F32)  # fl32(fl64(1/d))


def _r32(d):
    return inv(np.asarray(d, np.float64).astype(F32))  # the float32-first rule: fl32(1/fl32(d))


def double_factors(dx, sw, dy, op, per_channel, recip=_r64):
    a_src = inv(recip(dx))
    if op == "conv":
        a_wei = np.asarray(sw, np.float64).astype(F32)
    elif per_channel:
        a_wei = inv(inv(np.asarray(sw, np.float64).astype(F32)))
    else:
        a_wei = inv(recip(sw))
    return a_src, a_wei, inv(inv(recip(dy)))


def epilogue(acc, bias, zy, factors):
    a_src, a_wei, a_dinv = factors
    v = ((acc.astype(F32) * a_src).astype(F32) * a_wei).astype(F32)
    v = ((v + bias).astype(F32) * a_dinv).astype(F32)
    return np.rint(np.clip((v + F32(zy)).astype(F32), 0, 255)).astype(np.int64)


def _nudge(b, ulps):
    for _ in range(int(np.abs(ulps).max())):
        b = np.where(ulps > 0, np.nextafter(b, F32(np.inf)), np.where(ulps < 0, np.nextafter(b, F32(-np.inf)), b))
        ulps = ulps - np.sign(ulps)
    return b.astype(F32)


def double_tie_case(rng, op, per_channel):
    """A depthwise 3x3 conv on a 3x3 input (one output per channel) or a linear layer, O = 96, with double
    scales ``dx``, ``dy`` (and a double per-tensor linear weight scale) and per-channel biases that put the
    double rule's ``v * a_dinv + zy`` within a few float32 ulps of a half-integer."""
    while True:  # double scales whose float32-first factors differ from torch's
        dx, dy = rng.uniform(0.004, 0.04), rng.uniform(0.004, 0.08)
        sw = (rng.uniform(0.002, 0.02, G).astype(F32).astype(np.float64) if per_channel
              else float(F32(rng.uniform(0.002, 0.02))) if op == "conv" else rng.uniform(0.002, 0.02))
        fd, ff = double_factors(dx, sw, dy, op, per_channel), double_factors(dx, sw, dy, op, per_channel, _r32)
        if fd[0] != ff[0] or fd[2] != ff[2] or np.any(fd[1] != ff[1]):
            break
    zx, zy = int(rng.integers(100, 156)), int(rng.integers(0, 256))
    if op == "conv":
        x = rng.integers(0, 256, (1, G, 3, 3)).astype(np.uint8)
        w = rng.integers(-128, 128, (G, 1, 3, 3)).astype(np.int8)
        acc = ((x[0].reshape(G, 9).astype(np.int64) - zx) * w.reshape(G, 9)).sum(1)
    else:
        x = rng.integers(0, 256, (1, 16)).astype(np.uint8)
        w = rng.integers(-128, 128, (G, 16)).astype(np.int8)
        acc = ((x.astype(np.int64) - zx) @ w.T.astype(np.int64))[0]
    a_src, a_wei, a_dinv = fd
    u = ((acc.astype(F32) * a_src).astype(F32) * a_wei).astype(F32)
    target = (rng.integers(1, 254, G) + 0.5 - zy) / np.float64(a_dinv)
    bias = _nudge((target - u).astype(F32), rng.integers(-3, 4, G))
    return dict(kind=f"double scales {op}", x=x, w=w, sx=dx, zx=zx, sw=sw, zw=np.zeros(G, np.int64) if per_channel
                else 0, per_channel=per_channel, bias=bias, sy=dy, zy=zy, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=G, relu=False, acc=acc, out_channels=G)


def _run(case, op, engine):
    if op == "conv":
        return qjax_conv(case, engine=engine).reshape(-1), torch_conv(case).reshape(-1)
    return qjax_linear(case, engine=engine).reshape(-1), torch_linear(case).reshape(-1)


@pytest.mark.parametrize("engine, op, flavours", [("onednn", "conv", (True,)), ("onednn", "linear", (False, True)),
                                                  ("x86", "conv", (False,))], ids=["onednn-conv", "onednn-linear",
                                                                                   "x86-conv"])
def test_double_scales_on_near_ties(engine, op, flavours):
    """torch's double scales on onednn / x86, conv / linear, per tensor and per channel: 0 mismatches, while
    the float32-first rule (qjax before qjax.float64) mismatches torch on the same near-ties (``flavours``:
    per-channel weights or not; ``scripts/fuzz.py --double-scales`` draws all).  (x86 linear
    layers run fbgemm, which casts the scales to float first: ``scripts/fuzz.py --double-scales``.)  Every
    call is traced: ``qjax.conv`` / ``linear`` jit their values with the double words as arguments."""
    torch_ref.set_engine(engine)
    rng = np.random.default_rng([3, len(engine), len(op)])
    outputs = wrong32 = 0
    for per_channel in flavours:
        case = double_tie_case(rng, op, per_channel)
        assert operands(case)[0].scale64 is not None  # the double reached the QArray
        got, want = _run(case, op, qjax.engines.resolve(engine))
        assert_same(got, want, f"{engine} {op} double scales per_channel={per_channel}")
        outputs += want.size
        f = double_factors(case["sx"], case["sw"], case["sy"], op, per_channel)
        assert (epilogue(case["acc"], case["bias"], case["zy"], f) == want).all()
        f32 = double_factors(case["sx"], case["sw"], case["sy"], op, per_channel, _r32)
        wrong32 += int((epilogue(case["acc"], case["bias"], case["zy"], f32) != want).sum())
    assert wrong32 >= outputs // 20, f"the float32-first rule mismatches only {wrong32} of {outputs}"


def test_double_output_scale_as_traced_words():
    """``scale64=``: the output scale's double words as a jit argument (how graph parameters carry it)."""
    torch_ref.set_engine("onednn")
    case = double_tie_case(np.random.default_rng(11), "linear", False)
    x, w = operands(case)
    f = jax.jit(lambda x, w, sy, sy64: qjax.linear(x, w, case["bias"], scale=sy, zero_point=case["zy"],
                                                   engine="onednn", scale64=sy64).values)
    got = f(x, w, np.float32(case["sy"]), qjax.QArray(np.uint8(0), case["sy"], 0, qjax.quint8).scale64)
    assert_same(np.asarray(got).reshape(-1), torch_linear(case).reshape(-1), "onednn double output scale traced")
