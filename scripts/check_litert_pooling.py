"""Sweep LiteRT's int8 AVERAGE_POOL_2D / MAX_POOL_2D / MEAN / HARD_SWISH / LOGISTIC / TANH / SOFTMAX against
ai-edge-litert's interpreter with each op resolver.

Per op it prints ``mismatches / outputs`` of ``LiteRT(kernels)`` against the interpreter run with the same
family (the number that must be 0; an op the XNNPACK delegate does not take is computed with the optimized
rule, as the importer does), the tie outputs among them where the op has ties, and how often the families'
interpreter outputs differ from each other (how much the data tells them apart).

* LUT ops (HARD_SWISH, LOGISTIC, TANH): every one of the 256 int8 inputs, for ``--luts`` random qparams per
  op plus the qparams where the builtin and XNNPACK tables differ, and TANH qparams with a table product just
  below one half (both searched on the host).
* Pools: random shapes, filters, strides, SAME / VALID, fused activations, odd-valued tie data (window sums
  on exact halves) and RELU6 bounds on exact halves.
* MEAN: random shapes / axes / keep_dims / qparams, tie data (n = 2, 4 with equal scales).
* SOFTMAX: random rows (wide and narrow value ranges), betas.

Usage: ``python scripts/check_litert_pooling.py [--luts N] [--cases N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.engines.test_litert_pooling import (  # noqa: E402
    ALL_INT8, ENGINES, build_mean, build_pool, build_unary, family_used, qarray, tie_input)
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.qops import tflite_activations as ta  # noqa: E402
from qjax._src.qops.tflite_common import explicit_padding  # noqa: E402

FAMILIES = litert_runtime.KERNELS
F32 = np.float32
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


class Tally:
    def __init__(self):
        self.mis = collections.defaultdict(lambda: [0, 0])
        self.ties = collections.defaultdict(lambda: [0, 0])
        self.cross = collections.defaultdict(int)
        self.models = collections.defaultdict(int)

    def add(self, op, want, got, ties=None):
        self.models[op] += 1
        for k in FAMILIES:
            g, w = np.asarray(got[k]).reshape(-1), np.asarray(want[k]).reshape(-1)
            self.mis[(op, k)][0] += int(np.count_nonzero(g != w))
            self.mis[(op, k)][1] += w.size
            if ties is not None:
                t = np.asarray(ties).reshape(-1)
                self.ties[(op, k)][0] += int(np.count_nonzero((g != w) & t))
                self.ties[(op, k)][1] += int(np.count_nonzero(t))
        for a, b in (("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack")):
            self.cross[(op, a, b)] += int(np.count_nonzero(np.asarray(want[a]) != np.asarray(want[b])))

    def report(self):
        ops = sorted({op for op, _ in self.mis})
        for op in ops:
            line = [f"{op:16s} {self.models[op]:5d} models"]
            for k in FAMILIES:
                m, n = self.mis[(op, k)]
                s = f"{k}: {m}/{n}"
                if (op, k) in self.ties:
                    tm, tn = self.ties[(op, k)]
                    s += f" (ties {tm}/{tn})"
                line.append(s)
            print("  ".join(line))
            print(" " * 17 + "interpreter families differ: " + ", ".join(
                f"{a[:3]}/{b[:3]} {self.cross[(op, a, b)]}" for a, b in
                (("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack"))))
        total = sum(m for m, _ in self.mis.values())
        print(f"TOTAL mismatches: {total} / {sum(n for _, n in self.mis.values())}")
        return total


def run_all(model, x):
    return {k: litert_runtime.run(model, [x], k)[0] for k in FAMILIES}


BELOW_HALF = np.nextafter(F32(0.5), F32(0))


def tanh_below_half(rng, n, tries: int = 20000):
    """TANH qparams whose builtin table product ``fl(tanhf(x) * fl(1/s_out))`` is the float just below one half at
    some input (searched on the host: ``s_out`` from ``s_in``, a few ulps around): TfLiteRound gives 0 there, a
    float32 ``floor(v + 0.5)`` 1 -- LOGISTIC cannot land there (``1/(1 + e)`` skips that value at 1/256)."""
    found = []
    for _ in range(tries):
        if len(found) >= n:
            break
        s_in, d = F32(rng.uniform(0.003, 0.05)), int(rng.integers(1, 20))
        y = ta.tr.libm("tanhf", np.asarray([F32(s_in * F32(d))], F32))[0]
        inv0 = F32(BELOW_HALF / y)
        for k in range(-3, 4):
            inv = F32(inv0 + F32(k) * np.spacing(inv0))
            s_out = F32(F32(1) / inv)
            if F32(F32(1) / s_out) == inv and F32(y * inv) == BELOW_HALF:
                found.append(((float(s_in), 0), (float(s_out), int(rng.integers(-128, 128)))))
                break
    return found


def lut_sweep(rng, tally, n):
    """HARD_SWISH / LOGISTIC / TANH over all 256 inputs."""
    splits = {"logistic": [], "tanh": []}
    tries = 0
    while (len(splits["logistic"]) < n // 4 or len(splits["tanh"]) < n // 4) and tries < 400 * n:
        tries += 1
        q = (float(F32(rng.uniform(0.002, 0.3))), int(rng.integers(-128, 128)))
        for kind, out_q in (("logistic", (1 / 256, -128)), ("tanh", (1 / 128, 0))):
            if len(splits[kind]) < n // 4 and np.any(ta.lut_builtin(kind, *q, *out_q) != ta.lut_xnnpack(kind, *q, *out_q)):
                splits[kind].append(q)
    for kind, op, method in (("logistic", "LOGISTIC", "tfl_logistic"), ("tanh", "TANH", "tfl_tanh"),
                             ("hard_swish", "HARD_SWISH", "tfl_hard_swish")):
        cases = []
        for i in range(n):
            in_q = (float(F32(rng.uniform(0.002, 0.5))), int(rng.integers(-128, 128)))
            if op == "LOGISTIC":
                out_q = (1 / 256, -128)
            elif op == "TANH":
                out_q = (1 / 128, 0) if i % 2 else (float(F32(rng.uniform(0.003, 0.05))), int(rng.integers(-60, 60)))
            else:
                out_q = (float(F32(in_q[0] * rng.uniform(0.2, 1.5))), int(rng.integers(-128, 128)))
            cases.append((in_q, out_q))
        for q in splits.get(kind, []):
            cases.append((q, (1 / 256, -128) if op == "LOGISTIC" else (1 / 128, 0)))
        if op == "TANH":
            cases += tanh_below_half(rng, max(n // 4, 1))
        for in_q, out_q in cases:
            try:
                model = build_unary(op, ALL_INT8.shape, in_q, out_q)
                want = run_all(model, ALL_INT8)
            except (ValueError, RuntimeError):
                continue  # Prepare fails (e.g. HARD_SWISH with a multiplier >= 1): no reference to compare
            got = {k: getattr(ENGINES[family_used(k, model)], method)(qarray(ALL_INT8, in_q), *out_q).values
                   for k in FAMILIES}
            tally.add(op, want, got)
    return {k: len(v) for k, v in splits.items()}


POOL_SHAPES = [(1, 5, 6, 3), (2, 7, 7, 2), (1, 9, 8, 20), (1, 4, 4, 1)]
MEAN_CASES = [((1, 4, 5, 6), (1, 2), True), ((2, 3, 3, 4), (1, 2), False), ((1, 4, 5, 6), (3,), True),
              ((2, 3, 5, 4), (1,), False), ((1, 2, 2, 40), (1, 2), True), ((2, 6, 4), (2,), True),
              ((1, 7, 7, 24), (1, 2), True), ((1, 2, 1, 33), (1, 2), True), ((3, 5, 4), (0, 2), False)]


def pool_sweep(rng, tally, n):
    for i in range(n):
        shape = POOL_SHAPES[i % len(POOL_SHAPES)]
        filt = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = "SAME" if i % 2 else "VALID"
        if padding == "VALID" and (filt[0] > shape[1] or filt[1] > shape[2]):
            padding = "SAME"
        activation = ACTIVATIONS[i % 4]
        in_q = (float(F32(rng.uniform(0.005, 0.1))), int(rng.integers(-40, 40)))
        if i % 5 == 4:  # a RELU6 bound on an exact half
            k = int(rng.integers(1, 30))
            in_q = (float(F32(6.0 / (k + 0.5))), int(rng.integers(-128, 90)))
            activation = "RELU6"
        out_q = in_q
        ties = i % 3 == 0
        x = tie_input(rng, shape) if ties else rng.integers(-128, 128, size=shape).astype(np.int8)
        pads = explicit_padding(padding, shape[1:3], filt, stride)
        for kind, method in (("AVERAGE_POOL_2D", "tfl_avg_pool"), ("MAX_POOL_2D", "tfl_max_pool")):
            model = build_pool(kind, shape, filt, stride, padding, in_q, out_q, activation)
            want = run_all(model, x)
            got = {k: getattr(ENGINES[family_used(k, model)], method)(qarray(x, in_q), filt, stride, pads, *out_q,
                                                                        activation).values for k in FAMILIES}
            tie_mask = None
            if kind == "AVERAGE_POOL_2D":
                s, c = _sum_count(x, filt, stride, pads)
                tie_mask = 2 * (np.abs(s) % c) == c
            tally.add(kind, want, got, tie_mask)


def _sum_count(x, filt, stride, pads):
    from qjax._src.qops.tflite_pooling import window_sum_count
    s, c = window_sum_count(np.asarray(x, np.int32), filt, stride, pads)
    return np.asarray(s), np.broadcast_to(np.asarray(c), np.shape(s))


def mean_sweep(rng, tally, n):
    for i in range(n):
        shape, axes, keep = MEAN_CASES[i % len(MEAN_CASES)]
        in_q = (float(F32(rng.uniform(0.01, 0.2))), int(rng.integers(-128, 128)))
        ties = i % 2 == 0
        out_q = in_q if ties else (float(F32(in_q[0] * rng.uniform(0.3, 3))), int(rng.integers(-128, 128)))
        x = tie_input(rng, shape) if ties else rng.integers(-128, 128, size=shape).astype(np.int8)
        model = build_mean(shape, axes, keep, in_q, out_q)
        want = run_all(model, x)
        got = {k: ENGINES[family_used(k, model)].tfl_mean(qarray(x, in_q), axes, keep, *out_q).values
               for k in FAMILIES}
        cnt = int(np.prod([shape[a] for a in axes]))
        tie_mask = None
        if ties:  # equal scales: (sum - n z) / n on an exact half
            s = x.astype(np.int64).sum(axis=axes, keepdims=keep) - cnt * in_q[1]
            tie_mask = 2 * (np.abs(s) % cnt) == cnt
        tally.add("MEAN", want, got, tie_mask)


SOFTMAX_SHAPES = [(64, 10), (16, 3, 17), (200, 4), (8, 100)]


def softmax_sweep(rng, tally, n):
    for i in range(n):
        shape = SOFTMAX_SHAPES[i % len(SOFTMAX_SHAPES)]
        in_q = (float(F32(rng.uniform(0.005, 0.5))), int(rng.integers(-60, 60)))
        beta = float(F32([1.0, 0.5, 2.0, rng.uniform(0.1, 3.0)][i % 4]))
        x = rng.integers(-128, 128, size=shape)
        if i % 3 == 1:
            x = x // 16
        x = x.astype(np.int8)
        model = build_unary("SOFTMAX", shape, in_q, (1 / 256, -128), beta=beta)
        want = run_all(model, x)
        got = {k: ENGINES[family_used(k, model)].tfl_softmax(qarray(x, in_q), beta, 1 / 256, -128).values
               for k in FAMILIES}
        tally.add("SOFTMAX", want, got)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--luts", type=int, default=200, help="random qparams per LUT op (all 256 inputs each)")
    p.add_argument("--cases", type=int, default=60, help="models per pool / mean / softmax op")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    tally = Tally()
    t0 = time.time()
    splits = lut_sweep(rng, tally, a.luts)
    print(f"LUT splits (qparams where the builtin and XNNPACK tables differ) included: {splits}")
    pool_sweep(rng, tally, a.cases)
    mean_sweep(rng, tally, a.cases)
    softmax_sweep(rng, tally, a.cases)
    total = tally.report()
    print(f"{time.time() - t0:.0f} s")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
