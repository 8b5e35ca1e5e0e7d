"""Hypothesis strategies for quantized conv / linear cases (numpy arrays + qparams).

Shapes and options are drawn by hypothesis; array contents come from a drawn seed
(fast, and still reproducible from the failing example).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

CONV_KINDS = ("generic", "grouped", "depthwise_fast", "depthwise_other", "gconv", "pointwise")


def _qparams(rng, case, per_channel, wzp, full_range, has_bias, relu):
    o = case["out_channels"]
    # float32-valued scales, as torch's observers produce them (onednn derives factors from the double)
    f32 = lambda v: np.asarray(v, np.float32).astype(np.float64)  # noqa: E731
    sx = float(f32(np.exp(rng.uniform(-6, 0))))
    zx = int(rng.integers(0, 256 if full_range else 128))
    xmax = 255 if full_range else 127
    case["x"] = rng.integers(0, xmax + 1, size=case["x_shape"]).astype(np.uint8)
    case["w"] = rng.integers(-128, 128, size=case["w_shape"]).astype(np.int8)
    if per_channel:
        sw = f32(np.exp(rng.uniform(-8, -2, size=o)))
        zw = rng.integers(-20, 21, size=o) if wzp else np.zeros(o, np.int64)
    else:
        sw = float(f32(np.exp(rng.uniform(-8, -2))))
        zw = int(rng.integers(-20, 21)) if wzp else 0
    taps = int(np.prod(case["w_shape"][1:]))
    sw_mean = float(np.mean(sw))
    sy = float(f32(sx * sw_mean * np.sqrt(taps) * 60 * np.exp(rng.uniform(-1.5, 1.5))))
    case.update(
        sx=sx, zx=zx, sw=sw, zw=zw, per_channel=per_channel, sy=sy, zy=int(rng.integers(0, 256)), relu=relu,
        bias=(rng.normal(0, 1, size=o) * sx * sw_mean * np.sqrt(taps) * 100).astype(np.float32) if has_bias else None,
    )
    return case


@st.composite
def conv_cases(draw, nds=(1, 2, 3), kinds=CONV_KINDS):
    """A random quantized convolution in torch layout (symmetric padding, as torch supports)."""
    nd = draw(st.sampled_from(nds))
    kind = draw(st.sampled_from([k for k in kinds if not (nd == 1 and k in ("depthwise_fast", "gconv"))]))
    small = {1: 16, 2: 9, 3: 5}[nd]
    if kind == "depthwise_fast":
        g = draw(st.sampled_from([8, 16]))
        c, o = g, g * draw(st.sampled_from([1, 2]))
        k = draw(st.sampled_from([3, 5] if nd == 3 else [3, 5, 7]))
        kt = draw(st.sampled_from([3, 5])) if nd == 3 else k
        kernel = ((kt, k, k) if nd == 3 else (k, k))
        stride = (draw(st.sampled_from([1, 2])),) * nd
        pad = tuple((kk - 1) // 2 for kk in kernel)
        dil = (1,) * nd
    elif kind == "gconv":
        cpg = draw(st.sampled_from([2, 4, 8, 16]))
        g = {2: 8, 4: 4, 8: 2, 16: 1}[cpg] * draw(st.sampled_from([1, 2]))
        c = o = cpg * g
        kernel, pad, dil = (3,) * nd, (1,) * nd, (1,) * nd
        stride = (draw(st.sampled_from([1, 2])),) * nd
    else:
        if kind == "pointwise":
            g = 1
            c, o = draw(st.integers(1, 40)), draw(st.integers(1, 40))
            kernel, stride, pad, dil = (1,) * nd, (1,) * nd, (0,) * nd, (1,) * nd
        else:
            if kind == "generic":
                g = 1
                c, o = draw(st.integers(1, 8)), draw(st.integers(1, 8))
            elif kind == "grouped":
                g = draw(st.integers(2, 4))
                c, o = g * draw(st.integers(1, 4)), g * draw(st.integers(1, 4))
            else:  # depthwise_other
                g = c = draw(st.integers(1, 6))
                o = c * draw(st.integers(1, 3))
            kmax = 5 if nd == 1 else (4 if nd == 2 else 3)
            kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nd))
            stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
            pad = tuple(draw(st.integers(0, 2)) for _ in range(nd))
            dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    spatial = []
    for kk, p, d in zip(kernel, pad, dil):
        lo = max(d * (kk - 1) + 1 - 2 * p, 1)
        if kind == "depthwise_fast" and nd == 3:
            lo = kk  # smaller inputs make torch's fbgemm 3-d depthwise kernel corrupt the heap
        spatial.append(draw(st.integers(lo, max(lo, small) + 2)))
    n = draw(st.integers(1, 2))
    case = dict(
        kind=kind, nd=nd, groups=g, in_channels=c, out_channels=o, kernel=kernel, stride=stride,
        padding=pad, dilation=dil, x_shape=(n, c) + tuple(spatial), w_shape=(o, c // g) + tuple(kernel),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _qparams(
        rng, case,
        per_channel=draw(st.booleans()), wzp=draw(st.booleans()), full_range=draw(st.booleans()),
        has_bias=draw(st.booleans()), relu=draw(st.booleans()),
    )


@st.composite
def linear_cases(draw):
    k = draw(st.integers(1, 300))
    o = draw(st.integers(1, 40))
    batch = draw(st.sampled_from([(1,), (7,), (33,), (2, 5)]))
    case = dict(kind="linear", in_channels=k, out_channels=o, x_shape=batch + (k,), w_shape=(o, k))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _qparams(
        rng, case,
        per_channel=draw(st.booleans()), wzp=draw(st.booleans()), full_range=draw(st.booleans()),
        has_bias=draw(st.booleans()), relu=draw(st.booleans()),
    )
