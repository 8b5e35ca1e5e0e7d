"""Sweeps of OrtFloat (ONNX Runtime's float ops between DequantizeLinear and QuantizeLinear) against onnxruntime.

Prints mismatch counts (bitwise float32) per op:
* binary Add/Sub/Mul/Div/Max/Min: all 256 x 256 dequantized pairs per scale pair, random decimal scales;
* unary Relu/Clip/HardSigmoid/HardSwish: all 256 inputs per scale, many scales;
* Conv / GlobalAveragePool / AveragePool with random exact-condition scales (m * 2**e, small odd m): mismatches and
  how many cases the exactness check refused;
* information only: realistic decimal-scale DQ -> Conv -> Q (which qjax refuses): how often exact arithmetic then
  round-half-even matches ORT's integers.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from onnx import helper  # noqa: E402

from tests.onnx_models import init, make_model, ort_run  # noqa: E402
from qjax._src.engines.base import EngineRefusal  # noqa: E402
from qjax._src.engines.onnxruntime import OnnxRuntime  # noqa: E402
from qjax._src.qarray import QArray  # noqa: E402

ENG = OnnxRuntime()


def dq(names, axis=None):
    return [helper.make_node("DequantizeLinear", [n, n + "_s", n + "_z"], [n + "_f"], **({"axis": axis[n]} if axis and n in axis else {}))
            for n in names]


def q(v, s, z, dt):
    return QArray(v, np.float32(s), np.int32(z), "quint8" if dt == np.uint8 else "qint8")


def ne(a, b):
    return int(np.sum(np.asarray(a, np.float32).view(np.uint32) != np.asarray(b, np.float32).view(np.uint32)))


def decimal_scale(rng):
    return np.float32(rng.uniform(1e-3, 0.2))


def sweep_binary(rng, n):
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min"):
        bad = tot = 0
        for i in range(n):
            dt = (np.uint8, np.int8)[i % 2]
            lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
            a = np.arange(lo, hi + 1).astype(dt).reshape(1, 256)
            b = np.arange(lo, hi + 1).astype(dt).reshape(256, 1)
            sa, sb = decimal_scale(rng), decimal_scale(rng)
            za, zb = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            m = make_model(dq(["a", "b"]) + [helper.make_node(op, ["a_f", "b_f"], ["y"])],
                           [("a", dt, [1, 256]), ("b", dt, [256, 1])], [("y", np.float32, None)],
                           [init("a_s", sa), init("a_z", np.array(za, dt)), init("b_s", sb), init("b_z", np.array(zb, dt))])
            ref = ort_run(m, [a, b])[0]
            got = ENG.ort_float_binary(op, q(a, sa, za, dt).dequantize(), q(b, sb, zb, dt).dequantize())
            fin = np.isfinite(ref)  # Div by a zero dequantized value: inf/nan both sides, compared too
            bad += ne(got, ref)
            tot += ref.size
            del fin
        print(f"{op:12s} mismatches {bad} / {tot}")


def sweep_unary(rng, n):
    for op, attrs in (("Relu", {}), ("Clip", {}), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
                      ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}), ("HardSwish", {})):
        bad = tot = 0
        for i in range(n):
            dt = (np.uint8, np.int8)[i % 2]
            lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
            x = np.arange(lo, hi + 1).astype(dt).reshape(1, 256)
            s, z = decimal_scale(rng), int(rng.integers(lo, hi + 1))
            inits, ins, kw = [init("x_s", s), init("x_z", np.array(z, dt))], ["x_f"], {}
            if op == "Clip":
                clo, chi = np.float32(rng.uniform(-3, 0)), np.float32(rng.uniform(0, 6))
                inits += [init("lo", clo), init("hi", chi)]
                ins += ["lo", "hi"]
                kw = {"lo": clo, "hi": chi}
            m = make_model(dq(["x"]) + [helper.make_node(op, ins, ["y"], **attrs)], [("x", dt, [1, 256])],
                           [("y", np.float32, None)], inits)
            ref = ort_run(m, [x])[0]
            bad += ne(ENG.ort_float_unary(op, q(x, s, z, dt).dequantize(), **attrs, **kw), ref)
            tot += ref.size
        print(f"{op + str(attrs.get('alpha', '')):12s} mismatches {bad} / {tot} (all 256 inputs x {n} scales)")


def exact_scale(rng, bits):
    m = int(rng.integers(0, 1 << bits)) * 2 + 1
    return np.float32(m * 2.0 ** int(rng.integers(-16, -6)))


def sweep_conv(rng, n):
    bad = tot = refused = 0
    for i in range(n):
        dt = (np.uint8, np.int8)[i % 2]
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        c, o, k = int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 4))
        x = rng.integers(lo, hi + 1, (1, c, 6, 7)).astype(dt)
        w = rng.integers(-127, 128, (o, c, k, k)).astype(np.int8)
        sx = exact_scale(rng, 2)
        sw = np.array([exact_scale(rng, 2) for _ in range(o)], np.float32)
        zx = int(rng.integers(lo, hi + 1))
        b = rng.integers(-2000, 2000, (o,)).astype(np.int32)
        sb = (sx * sw).astype(np.float32)
        inits = [init("x_s", sx), init("x_z", np.array(zx, dt)), init("w", w), init("w_s", sw), init("w_z", np.zeros(o, np.int8)),
                 init("b", b), init("b_s", sb), init("b_z", np.zeros(o, np.int32))]
        m = make_model(dq(["x", "w", "b"], {"w": 0, "b": 0}) + [helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["y"], pads=[1, 1, 1, 1])],
                       [("x", dt, list(x.shape))], [("y", np.float32, None)], inits)
        wq = QArray(w, sw, np.zeros(o, np.int32), "qint8", axis=0)
        bq = QArray(b, sb, np.zeros(o, np.int32), "qint32", axis=0)
        try:
            got = ENG.ort_float_conv(q(x, sx, zx, dt), wq, bq, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
        except EngineRefusal:
            refused += 1
            continue
        ref = ort_run(m, [x])[0]
        bad += ne(got, ref)
        tot += ref.size
    print(f"{'Conv exact':12s} mismatches {bad} / {tot} ({refused} of {n} random cases refused by the check)")


def sweep_means(rng, n):
    for kind in ("GlobalAveragePool", "AveragePool", "ReduceMean"):
        bad = tot = refused = 0
        for i in range(n):
            dt = (np.uint8, np.int8)[i % 2]
            lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
            x = rng.integers(lo, hi + 1, (1, 3, int(rng.integers(2, 12)), int(rng.integers(2, 12)))).astype(dt)
            s, z = exact_scale(rng, 4), int(rng.integers(lo, hi + 1))
            inits = [init("x_s", s), init("x_z", np.array(z, dt))]
            xq = q(x, s, z, dt)
            try:
                if kind == "GlobalAveragePool":
                    node = helper.make_node(kind, ["x_f"], ["y"])
                    got = ENG.ort_float_global_avg_pool(xq)
                elif kind == "AveragePool":
                    cip = i % 3 == 0
                    node = helper.make_node(kind, ["x_f"], ["y"], kernel_shape=[2, 3], strides=[1, 2], pads=[1, 1, 0, 1],
                                            count_include_pad=int(cip))
                    got = ENG.ort_float_avg_pool(xq, kernel_shape=(2, 3), strides=(1, 2), pads=(1, 1, 0, 1),
                                                 count_include_pad=int(cip))
                else:
                    inits.append(init("ax", np.array([2, 3], np.int64)))
                    node = helper.make_node(kind, ["x_f", "ax"], ["y"], keepdims=1)
                    got = ENG.ort_float_reduce_mean(xq, axes=(2, 3))
            except EngineRefusal:
                refused += 1
                continue
            m = make_model(dq(["x"]) + [node], [("x", dt, list(x.shape))], [("y", np.float32, None)], inits, opset=18)
            ref = ort_run(m, [x])[0]
            bad += ne(got, ref)
            tot += ref.size
        print(f"{kind:12s} mismatches {bad} / {tot} ({refused} of {n} refused)")


def info_realistic_conv(rng, n):
    agree = tot = proven = bad_proven = bad_unproven = 0
    for i in range(n):
        x = rng.integers(0, 256, (1, 16, 10, 10)).astype(np.uint8)
        w = rng.integers(-127, 128, (16, 16, 3, 3)).astype(np.int8)
        sx, sy, zx, zy = decimal_scale(rng), np.float32(rng.uniform(0.05, 0.5)), int(rng.integers(0, 256)), int(rng.integers(0, 256))
        sw = rng.uniform(1e-3, 1e-2, 16).astype(np.float32)
        b = rng.integers(-5000, 5000, 16).astype(np.int32)
        sb = (sx * sw).astype(np.float32)
        inits = [init("x_s", sx), init("x_z", np.array(zx, np.uint8)), init("w", w), init("w_s", sw), init("w_z", np.zeros(16, np.int8)),
                 init("b", b), init("b_s", sb), init("b_z", np.zeros(16, np.int32)), init("y_s", sy), init("y_z", np.array(zy, np.uint8))]
        nodes = dq(["x", "w", "b"], {"w": 0, "b": 0}) + [helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["yf"], pads=[1, 1, 1, 1]),
                                                         helper.make_node("QuantizeLinear", ["yf", "y_s", "y_z"], ["y"])]
        m = make_model(nodes, [("x", np.uint8, list(x.shape))], [("y", np.uint8, None)], inits)
        ref = ort_run(m, [x], optimization="basic")[0]  # keep the float Conv
        dx = ((x.astype(np.int64) - zx) * np.float64(sx)).astype(np.float32).astype(np.float64)
        dw = (w.astype(np.float64) * sw.astype(np.float64)[:, None, None, None]).astype(np.float32).astype(np.float64)
        db = (b * sb.astype(np.float64)).astype(np.float32).astype(np.float64)
        xp = np.pad(dx, ((0, 0), (0, 0), (1, 1), (1, 1)))
        acc = np.zeros((16, 10, 10))
        for di in range(3):
            for dj in range(3):
                acc += np.einsum("chw,oc->ohw", xp[0, :, di:di + 10, dj:dj + 10], dw[:, :, di, dj])
        acc += db[:, None, None]
        # exact (double, ~exact here) arithmetic then MLAS's quantize: rint(v / sy) + zy, saturate
        yq = np.clip(np.rint(acc / np.float64(sy)) + zy, 0, 255)
        agree += int(np.sum(yq == ref[0]))
        tot += ref.size
        wq = QArray(w, sw, np.zeros(16, np.int32), "qint8", axis=0)
        bq = QArray(b, sb, np.zeros(16, np.int32), "qint32", axis=0)
        y, pr = ENG.ort_float_conv_q(q(x, sx, zx, np.uint8), wq, bq, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                                     out_scale=sy, out_zero_point=zy, out_dtype="quint8")
        pr, diff = np.asarray(pr), np.asarray(y.values) != ref
        proven += int(pr.sum())
        bad_proven += int(diff[pr].sum())
        bad_unproven += int(diff[~pr].sum())
    print(f"(info) realistic DQ-Conv-Q, exact arithmetic + rint vs ORT: {agree} / {tot} agree")
    print(f"ort_float_conv_q decimal scales: proven {proven} / {tot}, mismatches among proven {bad_proven}, "
          f"among unproven {bad_unproven}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    sweep_binary(rng, max(args.cases // 4, 2))
    sweep_unary(rng, args.cases)
    sweep_conv(rng, args.cases)
    sweep_means(rng, args.cases)
    info_realistic_conv(rng, max(args.cases // 4, 2))


if __name__ == "__main__":
    main()
