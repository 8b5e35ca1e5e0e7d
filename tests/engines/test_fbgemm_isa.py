"""fbgemm without VNNI: qjax.Fbgemm(isa="avx2"/"avx512") vs torch run with FBGEMM_ENABLE_INSTRUCTIONS.

torch picks its ISA when it loads, so the reference runs in a subprocess.  The data
is built to saturate: activations 128..255 (as without reduce_range) and weights
with |w| >= 100, so most u8*s8 pair sums exceed int16.
"""

import numpy as np
import pytest

import qjax

from .. import torch_ref
from ..helpers import assert_same, qjax_conv, qjax_linear

pytestmark = pytest.mark.torch


def saturating_case(rng, kind, nd=2):
    if kind == "linear":
        k, o = int(rng.integers(2, 80)), int(rng.integers(1, 24))
        case = dict(op="linear", kind=kind, in_channels=k, out_channels=o, x=None, x_shape=(int(rng.integers(1, 9)), k),
                    w_shape=(o, k))
    else:
        if kind == "depthwise":
            g = c = int(rng.choice([8, 16]))
            o, kernel, stride = c, (3,) * nd, (int(rng.choice([1, 2])),) * nd
            pad = (1,) * nd
        elif kind == "pointwise":
            g, c, o = 1, int(rng.integers(2, 40)), int(rng.integers(1, 20))
            kernel, stride, pad = (1,) * nd, (1,) * nd, (0,) * nd
        else:  # im2col, incl. groups and odd channel counts
            g = int(rng.choice([1, 1, 2]))
            c, o = g * int(rng.integers(1, 6)), g * int(rng.integers(1, 6))
            kernel = tuple(int(rng.integers(1, 4)) for _ in range(nd))
            stride, pad = (1,) * nd, tuple(int(rng.integers(0, 2)) for _ in range(nd))
        spatial = tuple(int(rng.integers(max(k, 3), 9)) for k in kernel)
        case = dict(op="conv", kind=kind, nd=nd, groups=g, in_channels=c, out_channels=o, kernel=kernel,
                    stride=stride, padding=pad, dilation=(1,) * nd, x_shape=(1, c) + spatial,
                    w_shape=(o, c // g) + kernel)
    case["x"] = rng.integers(128, 256, size=case["x_shape"]).astype(np.uint8)
    case["w"] = rng.choice([-128, -127, -100, 100, 126, 127], size=case["w_shape"]).astype(np.int8)
    per_channel = bool(rng.random() < 0.5)
    o = case["out_channels"]
    case.update(sx=0.02, zx=int(rng.integers(0, 256)), per_channel=per_channel,
                sw=np.full(o, 0.01) * rng.uniform(0.5, 2, size=o) if per_channel else 0.01,
                zw=np.zeros(o, np.int64) if per_channel else 0,
                relu=bool(rng.random() < 0.3), zy=128,
                bias=rng.normal(size=o).astype(np.float32) if rng.random() < 0.5 else None)
    taps = int(np.prod(case["w_shape"][1:]))
    case["sy"] = float(0.02 * 0.01 * np.sqrt(taps) * 100)
    if case["op"] == "conv":
        case["stride"], case["padding"], case["dilation"] = list(case["stride"]), list(case["padding"]), list(case["dilation"])
    return case


@pytest.mark.parametrize("isa, env", [("avx2", "AVX2"), ("avx512", "AVX512")])
def test_non_vnni_saturation_matches_torch(isa, env, tmp_path):
    rng = np.random.default_rng(5)
    cases = [saturating_case(rng, kind, nd) for kind in ("im2col", "pointwise", "depthwise", "linear")
             for nd in (1, 2) for _ in range(3) if not (kind == "depthwise" and nd == 1)]
    cases += [saturating_case(rng, "im2col", 3) for _ in range(2)]
    wants = torch_ref.run_in_subprocess(cases, tmp_path, {"FBGEMM_ENABLE_INSTRUCTIONS": env})
    exact_mismatch = 0
    for case, want in zip(cases, wants):
        case["stride"] = tuple(case.get("stride", ()))
        case["padding"] = tuple(case.get("padding", ()))
        case["dilation"] = tuple(case.get("dilation", ()))
        run = qjax_linear if case["op"] == "linear" else qjax_conv
        if case["op"] == "linear":
            want = want.reshape(case["x"].shape[:-1] + (case["out_channels"],))
        assert_same(run(case, engine=qjax.Fbgemm(isa=isa)), want, f"{isa} {case['kind']}")
        exact_mismatch += int((run(case, engine=qjax.Fbgemm(isa="avx512_vnni")) != want).sum())
    assert exact_mismatch > 0, "the data no longer shows saturation (VNNI model should differ)"
