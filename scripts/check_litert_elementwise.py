"""Sweep: qjax's LiteRT ADD / SUB / MUL / QUANTIZE / requantize / DEQUANTIZE vs ai-edge-litert, per family.

Prints, per op and kernel family, mismatching outputs / outputs (and how many of the outputs come from
tie-seeking cases: power-of-two scale ratios, half-integer quotients); the XNNPACK rows count only nodes
the delegate took.  Then the same data scored with every *other* family's rule (rule j vs interpreter k):
non-zero counts there show the data tell the families apart.
Usage: python scripts/check_litert_elementwise.py [cases_per_op]
"""

from __future__ import annotations

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from qjax._src.interop import litert_runtime as lr  # noqa: E402
from tests.engines import test_litert_elementwise as t  # noqa: E402

SHAPES = [((4, 1000), (4, 1000)), ((1, 8, 8, 61), (61,)), ((1, 16, 16, 1), (1, 16, 16, 17)), ((7, 1, 97), (1, 5, 1)),
          ((2, 999), (2, 999))]


def main(cases: int = 24):
    rng = np.random.default_rng(2026)
    counts = {}
    cross = {}

    def score(op, rule, k, got, want):
        c = cross.setdefault((op, rule, k), [0, 0])
        c[0] += int(np.sum(np.asarray(got).view(np.uint8) != np.asarray(want).view(np.uint8)))
        c[1] += np.asarray(want).size

    def add(op, k, bad, n, ties):
        c = counts.setdefault((op, k), [0, 0, 0])
        c[0] += bad
        c[1] += n
        c[2] += n if ties else 0

    for kind in ("ADD", "SUB", "MUL"):
        for i in range(cases):
            sa, sb = SHAPES[i % len(SHAPES)]
            ties = i % 3 != 2
            if ties:  # power-of-two ratios, or multiples of 0.01 (inexact multipliers, real ties)
                a, b, qa, qb, qy = t.tie_binary_case(rng, kind, sa, sb, decimal=i % 3 == 1)
            else:
                qa = (np.float32(rng.uniform(0.002, 0.3)), int(rng.integers(-128, 128)))
                qb = (np.float32(rng.uniform(0.002, 0.3)), int(rng.integers(-128, 128)))
                qy = (np.float32(rng.uniform(0.01, 0.5) if kind != "MUL" else qa[0] * qb[0] * rng.uniform(2.5, 40)),
                      int(rng.integers(-128, 128)))
                if i % 6 == 5:  # large output/input ratios: the optimized NEON bodies' int16 wrapping
                    qy = (np.float32(max(qa[0], qb[0]) / rng.uniform(60, 250) if kind != "MUL"
                                     else qa[0] * qb[0] / rng.uniform(0.6, 4)), qy[1])
                a = rng.integers(-128, 128, sa).astype(np.int8)
                b = rng.integers(-128, 128, sb).astype(np.int8)
            act = list(t.ACT)[i % 4]
            out = t.run_binary(kind, a, b, qa, qb, qy, act)
            for k, bad in t.mismatches(out).items():
                add(kind, k, bad, out[k][0].size, ties)
            for rule in out:
                for k in out:
                    if rule != k:
                        score(kind, rule, k, out[rule][1], out[k][0])
    for i in range(cases):
        shape = (3, 1001 + i)
        dtype = np.int8 if i % 2 == 0 else np.uint8
        name = np.dtype(dtype).name
        s = np.float32(2.0 ** -int(rng.integers(1, 8))) if i % 3 == 0 else np.float32(rng.uniform(0.001, 0.5))
        z = int(rng.integers(-128, 128)) if dtype == np.int8 else int(rng.integers(0, 256))
        x = t._quantize_inputs(rng, shape, s)
        qmodel = t.convert_model("QUANTIZE", shape, np.float32, dtype, None, (s, z))
        dmodel = t.convert_model("DEQUANTIZE", shape, dtype, np.float32, (s, z), None)
        v = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, shape).astype(dtype)
        so = np.float32(s * 2.0 ** int(rng.integers(-3, 3))) if i % 2 == 0 else np.float32(rng.uniform(0.002, 0.5))
        dout = [np.int8, np.uint8][(i // 2) % 2]
        zo = int(rng.integers(-128, 128)) if dout == np.int8 else int(rng.integers(0, 256))
        rmodel = t.convert_model("QUANTIZE", shape, dtype, dout, (s, z), (so, zo))
        rdelegated = 0 in lr.delegated_ops(rmodel)
        qv = t._qa(v, (s, z), t.qint8 if dtype == np.int8 else t.quint8)
        for k in lr.KERNELS:
            want_q, want_d = lr.run(qmodel, [x], k)[0], lr.run(dmodel, [v], k)[0].view(np.uint32)
            got = np.asarray(t.LiteRT(k).tfl_quantize(x, s, z, name).values)
            add("QUANTIZE", k, int(np.sum(got != want_q)), got.size, True)
            deq = np.asarray(t.LiteRT(k).tfl_dequantize(qv)).view(np.uint32)
            add("DEQUANTIZE", k, int(np.sum(deq != want_d)), deq.size, False)
            for rule in lr.KERNELS:
                if rule != k:
                    score("QUANTIZE", rule, k, t.LiteRT(rule).tfl_quantize(x, s, z, name).values, want_q)
                    score("DEQUANTIZE", rule, k, np.asarray(t.LiteRT(rule).tfl_dequantize(qv)).view(np.uint32), want_d)
            rule = k if (k != "xnnpack" or rdelegated) else "optimized"
            want = lr.run(rmodel, [v], k)[0]
            got = np.asarray(t.LiteRT(rule).tfl_requantize(qv, so, zo, np.dtype(dout).name).values)
            add("REQUANTIZE", k + ("" if rule == k else "(not delegated: optimized)"),
                int(np.sum(got != want)), got.size, i % 2 == 0)
            for other in lr.KERNELS:
                if other != rule and (other != "xnnpack" or rdelegated):
                    got = t.LiteRT(other).tfl_requantize(qv, so, zo, np.dtype(dout).name).values
                    score("REQUANTIZE", other, k, got, want)
    print(f"{'op':<12}{'family':<40}{'mismatches':>12}{'outputs':>10}{'tie-case outputs':>18}")
    for (op, k), (bad, n, ties) in sorted(counts.items()):
        print(f"{op:<12}{k:<40}{bad:>12}{n:>10}{ties:>18}")
    print(f"\n{'op':<12}{'rule':<12}{'vs interpreter':<16}{'mismatches':>12}{'outputs':>10}")
    for (op, rule, k), (bad, n) in sorted(cross.items()):
        print(f"{op:<12}{rule:<12}{k:<16}{bad:>12}{n:>10}")
    return 0 if all(c[0] == 0 for c in counts.values()) else 1


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("cases", nargs="?", type=int, default=24, help="random models per op and shape (default 24)")
    sys.exit(main(parser.parse_args().cases))
