"""qnnpack's bias scale with torch's double scales: ``fl32(fl64(dx * dw))`` (``QuantizeBias``), against torch."""

import numpy as np
import pytest

import qjax

from .. import torch_ref
from ..helpers import assert_same, qjax_linear, torch_linear

pytestmark = pytest.mark.torch
F32 = np.float32
O = 64


def _inv(sb):
    return (F32(1) / np.asarray(sb, F32)).astype(F32)


def bias_tie_case(rng, per_channel):
    """A linear layer whose input sits on its zero point (acc = 0), so the output is ``rne(bq * rs) + zy``
    with ``rs`` about 0.8: every bias ``bq = rne(fl32(b * inv))`` shows.  ``dx`` is a double and each weight
    scale is picked where ``fl32(fl64(dx * dw))`` differs from ``fl32(fl32(dx) * dw)``; ``b * inv`` lands
    within two float32 ulps of a half-integer."""
    dx = rng.uniform(0.004, 0.04)
    cands = rng.uniform(0.002, 0.02, 4000).astype(F32).astype(np.float64)
    cands = cands[(dx * cands).astype(F32) != (F32(dx) * cands.astype(F32)).astype(F32)]
    sw = cands[:O] if per_channel else np.full(O, cands[0])
    inv_d = _inv((dx * sw).astype(F32))
    b = ((rng.integers(-100, 100, O) + 0.5) / inv_d.astype(np.float64)).astype(F32)
    for _ in range(2):
        step = rng.integers(-1, 2, O)
        b = np.where(step > 0, np.nextafter(b, F32(np.inf)), np.where(step < 0, np.nextafter(b, F32(-np.inf)), b))
    zx = 128
    x = np.full((1, 8), zx, np.uint8)
    w = rng.integers(-128, 128, (O, 8)).astype(np.int8)
    return dict(x=x, sx=dx, zx=zx, w=w, sw=sw if per_channel else float(sw[0]),
                zw=np.zeros(O, np.int64) if per_channel else 0, per_channel=per_channel, bias=b.astype(F32),
                sy=float(dx * sw.max() * 1.25), zy=128, relu=False, out_channels=O)


def model(case, double):
    sw = np.asarray(case["sw"], np.float64) * np.ones(O)
    sb = (case["sx"] * sw).astype(F32) if double else (F32(case["sx"]) * sw.astype(F32)).astype(F32)
    bq = np.rint((case["bias"] * _inv(sb)).astype(F32))
    rs = ((sw.astype(F32) * F32(case["sx"])).astype(F32) * _inv(F32(case["sy"]))).astype(F32)
    return np.clip(np.rint((bq.astype(F32) * rs).astype(F32)).astype(np.int64) + case["zy"], 0, 255)


def test_bias_scale_is_the_double_product():
    torch_ref.set_engine("qnnpack")
    try:
        rng = np.random.default_rng(5)
        case = bias_tie_case(rng, per_channel=False)  # per channel: scripts/fuzz.py --double-scales
        want = torch_linear(case)[0]
        assert_same(qjax_linear(case, engine=qjax.engines.resolve("qnnpack"))[0], want, "qnnpack double bias")
        assert (model(case, double=True) == want).all()
        wrong = int((model(case, double=False) != want).sum())
        assert wrong >= O // 20, f"the float32-first bias scale mismatches only {wrong} of {O}"
    finally:
        torch_ref.set_engine("fbgemm")
