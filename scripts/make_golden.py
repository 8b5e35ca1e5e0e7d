"""Regenerate the golden test vectors in tests/golden/ from live torch.

    python scripts/make_golden.py

torch's quantized tensors are deprecated (pytorch#184982); these files keep the
bit-exactness tests' reference where torch is absent.  Each ``.npz`` holds one op's
inputs, parameters and torch's output, plus ``meta`` (JSON: op, arguments, torch
version, engine, the CPU ISA fbgemm ran on).  Inputs are built to sit on rounding ties
where the op has them.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qjax._src.kernels.fbgemm_paths import host_isa  # noqa: E402
from tests import torch_ref  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden")


def save(name, op, args, **arrays):
    meta = dict(op=op, args=args, torch_version=torch.__version__, engine=torch.backends.quantized.engine,
                isa=host_isa(), threads=torch.get_num_threads())
    np.savez_compressed(os.path.join(OUT, f"{name}.npz"), meta=np.array(json.dumps(meta)), **arrays)


def f32(v):
    return float(np.float32(v))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.backends.quantized.engine = "fbgemm"
    rng = np.random.default_rng(2026)

    # quantize: half the values on exact ties
    for dt in ("quint8", "qint8", "qint32"):
        s = f32(0.0123)
        k = rng.integers(-300, 300, size=600)
        x = np.where(rng.random(600) < 0.5, (k + 0.5) * np.float32(s), rng.normal(0, 1, 600)).astype(np.float32)
        x[:3] = [np.nan, np.inf, -np.inf]
        zp = 3
        save(f"quantize_{dt}", "quantize", dict(scale=s, zero_point=zp, dtype=dt), x=x,
             out=torch_ref.quantize(x, s, zp, dt))
        sc = np.array([s, f32(0.031), f32(0.5)])
        xc = np.stack([x, x * 2, x / 3]).astype(np.float32)
        save(f"quantize_pc_{dt}", "quantize_pc", dict(dtype=dt, axis=0), x=xc, scale=sc, zero_point=np.array([3, 0, 1]),
             out=torch_ref.quantize(xc, sc, np.array([3, 0, 1]), dt, axis=0))

    # conv: generic, grouped, depthwise fast path (pair saturation), pointwise, 1-d, 3-d; per-tensor and per-channel
    convs = [
        ("conv2d_generic", (2, 6, 9, 9), (4, 6, 3, 3), 1, (2, 1), (1, 2), (1, 2), True),
        ("conv2d_grouped_pc", (1, 8, 7, 7), (6, 4, 3, 3), 2, (1, 1), (1, 1), (1, 1), True),
        ("conv2d_depthwise_sat", (1, 16, 8, 8), (16, 1, 3, 3), 16, (1, 1), (1, 1), (1, 1), False),
        ("conv2d_pointwise", (2, 20, 5, 5), (7, 20, 1, 1), 1, (1, 1), (0, 0), (1, 1), True),
        ("conv1d", (2, 5, 17), (6, 5, 3), 1, (2,), (1,), (2,), True),
        ("conv3d", (1, 4, 5, 6, 6), (5, 4, 3, 3, 3), 1, (1, 1, 1), (1, 1, 1), (1, 1, 1), True),
    ]
    for name, xs, ws, g, st, pad, dil, pc in convs:
        x = rng.integers(0, 256, size=xs).astype(np.uint8)
        w = rng.integers(-128, 128, size=ws).astype(np.int8)
        o = ws[0]
        sw = np.exp(rng.uniform(-7, -3, size=o)).astype(np.float32).astype(np.float64) if pc else f32(0.004)
        zw = rng.integers(-5, 6, size=o) if pc else 0
        sx, zx, sy, zy = f32(0.02), int(rng.integers(0, 256)), f32(0.3), int(rng.integers(0, 256))
        bias = (rng.normal(size=o) * 2).astype(np.float32)
        out = torch_ref.conv(x, sx, zx, w, sw, zw, pc, bias, sy, zy, st, pad, dil, g, False)
        save(name, "conv", dict(x_scale=sx, x_zero_point=zx, out_scale=sy, out_zero_point=zy, stride=st, padding=pad,
                                dilation=dil, groups=g, per_channel=pc), x=x, w=w, w_scale=np.asarray(sw),
             w_zero_point=np.asarray(zw), bias=bias, out=out)

    # linear with bias ties (weight 1, multiplier 1): the FMA bias fold decides
    o = 64
    sx = f32(0.017)
    atw = np.float32(np.float32(sx) * np.float32(0.01))
    bias = ((rng.integers(-40, 40, size=o) + 0.5) * np.float64(atw)).astype(np.float32)
    x = rng.integers(100, 140, size=(8, 1)).astype(np.uint8)
    w = np.ones((o, 1), np.int8)
    out = torch_ref.linear(x, sx, 120, w, f32(0.01), 0, False, bias, float(atw), 100, False)
    save("linear_bias_ties", "linear", dict(x_scale=sx, x_zero_point=120, out_scale=float(atw), out_zero_point=100,
                                            per_channel=False), x=x, w=w, w_scale=np.asarray(f32(0.01)),
         w_zero_point=np.asarray(0), bias=bias, out=out)

    # elementwise, power-of-two scales (exact ties), channels-last, > 64 elements per block
    v = rng.integers(0, 256, size=(1, 13, 9, 7)).astype(np.uint8)
    u = rng.integers(0, 256, size=(1, 13, 9, 7)).astype(np.uint8)
    ta = torch_ref.qtensor(v, 2.0**-5, 17).contiguous(memory_format=torch.channels_last)
    tb = torch_ref.qtensor(u, 2.0**-5, 40).contiguous(memory_format=torch.channels_last)
    save("add_relu_cl", "add", dict(a_scale=2.0**-5, a_zero_point=17, b_scale=2.0**-5, b_zero_point=40,
                                    out_scale=2.0**-4, out_zero_point=13, relu=True, memory_format="channels_last"),
         a=v, b=u, out=torch.ops.quantized.add_relu(ta, tb, 2.0**-4, 13).int_repr().numpy())
    save("mul_cl", "mul", dict(a_scale=2.0**-5, a_zero_point=17, b_scale=2.0**-5, b_zero_point=40,
                               out_scale=2.0**-6, out_zero_point=13, relu=False, memory_format="channels_last"),
         a=v, b=u, out=torch.ops.quantized.mul(ta, tb, 2.0**-6, 13).int_repr().numpy())
    save("hardswish_cl", "hardswish", dict(scale=2.0**-5, zero_point=17, out_scale=2.0**-6, out_zero_point=7,
                                           memory_format="channels_last"),
         a=v, out=torch.ops.quantized.hardswish(ta, 2.0**-6, 7).int_repr().numpy())
    save("sigmoid_cl", "sigmoid", dict(scale=2.0**-5, zero_point=17, memory_format="channels_last"),
         a=v, out=torch.sigmoid(ta).int_repr().numpy())
    # pooling, both kernels
    save("avg_pool_cl", "avg_pool", dict(scale=2.0**-5, zero_point=17, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                                         ceil_mode=True, count_include_pad=False, memory_format="channels_last"),
         a=v, out=F.avg_pool2d(ta, 3, 2, 1, True, False).int_repr().numpy())
    tn = torch_ref.qtensor(v, 2.0**-5, 17)
    save("avg_pool_nchw", "avg_pool", dict(scale=2.0**-5, zero_point=17, kernel=(2, 2), stride=(2, 2), padding=(0, 0),
                                           ceil_mode=False, count_include_pad=True, memory_format="contiguous"),
         a=v, out=F.avg_pool2d(tn, 2, 2).int_repr().numpy())
    save("adaptive_avg_pool_cl", "adaptive_avg_pool", dict(scale=2.0**-5, zero_point=17, output_size=(3, 2),
                                                           memory_format="channels_last"),
         a=v, out=F.adaptive_avg_pool2d(ta, (3, 2)).int_repr().numpy())
    save("max_pool_cl", "max_pool", dict(scale=2.0**-5, zero_point=17, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                                         memory_format="channels_last"),
         a=v, out=F.max_pool2d(ta, 3, 2, 1).int_repr().numpy())
    print(f"wrote {len(os.listdir(OUT))} files to {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
