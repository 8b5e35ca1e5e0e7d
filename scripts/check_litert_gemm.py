"""Sweep LiteRT's int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV against ai-edge-litert's interpreter.

For every case (random geometry, scales, zero points, per-tensor / per-channel weights, fused activation;
a share of tie-seeking cases with power-of-two scales, clamp-bound ties, effective scales above 1) it runs
the interpreter with each op resolver and ``LiteRT(kernels)`` with each family's rule, and prints per op:

* ``mismatches / outputs`` of each family against its own interpreter (the number that must be 0), with
  the tie outputs (exact half-integer ``acc * M``, output inside the clamp range) among them;
* the cross table: each family's rule against every other family's interpreter output (how much the data
  tells the families apart).

Usage: ``python scripts/check_litert_gemm.py [--cases N] [--seed S] [--ops conv,dw,fc,tconv]`` (N cases per op;
~1 s each).  ``tconv`` is TRANSPOSE_CONV.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.engines.litert_gemm_cases import (  # noqa: E402
    OPS, accumulators, build_tconv_model, fc_rounding_case, interpreter_outputs, make_case, make_tconv_case,
    qjax_output, qjax_tconv_output)
from qjax._src.engines.base import EngineRefusal  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.requant.tflite import effective_scales  # noqa: E402

FAMILIES = litert_runtime.KERNELS


def _case(rng, op, i):
    kind = i % 10
    if op == "tconv":
        shape = dict(n=int(rng.integers(1, 4)), hw=(int(rng.integers(1, 9)), int(rng.integers(1, 9))),
                     c=int(rng.integers(1, 17)), o=int(rng.integers(1, 33)))
        return make_tconv_case(rng, ties=kind in (1, 2, 3, 4), shape=shape), ("ties" if kind in (1, 2, 3, 4) else "random")
    shape = {}
    if op == "fc":
        shape = dict(n=int(rng.integers(1, 257)), k=int(rng.integers(1, 97)), o=int(rng.integers(1, 33)))
    else:
        shape = dict(n=int(rng.integers(1, 5)), hw=(int(rng.integers(1, 17)), int(rng.integers(1, 17))),
                     c=int(rng.integers(1, 25) if op == "conv" else rng.integers(1, 41)))
        if op == "conv":
            shape["o"] = int(rng.integers(1, 33))
            if kind == 9:
                shape["groups"] = int(rng.integers(2, 4))
    if kind in (1, 2, 3, 4):
        return make_case(rng, op, shape=shape, ties=True), "ties"
    if kind == 5:
        return make_case(rng, op, shape=shape, clamp_ties=True), "clamp ties"
    case = make_case(rng, op, shape=shape)
    if kind == 6 and op != "fc":  # effective scales above 1: the multiplier's left shift
        case["sy"] = np.float32(case["sy"] / 16)
        return case, "eff>1"
    return case, "random"


def _ties(case, out_ref):
    acc = accumulators(case).astype(np.float64)
    m = effective_scales(case["sx"], case["sw"], case["sy"], acc.shape[-1])
    v = acc * m  # exact for the tie cases' dyadic M and small accumulators
    twice = v * 2
    tie = (np.floor(twice) == twice) & (np.abs(twice) % 2 == 1)
    return int((tie & (out_ref > -128) & (out_ref < 127)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40, help="cases per op")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops", default="conv,dw,fc,tconv", help="comma-separated: conv, dw, fc, tconv")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    total = {k: [0, 0, 0] for k in FAMILIES}  # mismatches, outputs, ties
    for op in args.ops.split(","):
        own = {k: [0, 0, 0] for k in FAMILIES}
        cross = {(a, b): 0 for a in FAMILIES for b in FAMILIES}
        kinds, refused, not_delegated = {}, 0, 0
        extra = [fc_rounding_case(a) for a in (63, 99, 127)] if op == "fc" else []
        for i in range(args.cases + len(extra)):
            case, kind = (_case(rng, op, i) if i < args.cases else (extra[i - args.cases], "double rounding"))
            if op == "tconv":
                model = build_tconv_model(case)
                outs = {k: litert_runtime.run(model, [case["x"]], k)[0] for k in FAMILIES}
                outs["xnnpack_delegated"] = 0 in litert_runtime.delegated_ops(model)
            else:
                outs = interpreter_outputs(case)
            not_delegated += not outs["xnnpack_delegated"]
            ties = _ties(case, outs["reference"])
            got = {}
            for k in FAMILIES:
                try:
                    got[k] = qjax_tconv_output(case, k) if op == "tconv" else qjax_output(case, k)
                except EngineRefusal:
                    got[k] = None
            for k in FAMILIES:
                used = k if k != "xnnpack" or outs["xnnpack_delegated"] else "optimized"
                if got[used] is None:
                    refused += 1
                    continue
                mism = int((got[used] != outs[k]).sum())
                own[k][0] += mism
                own[k][1] += outs[k].size
                own[k][2] += ties
                if mism:
                    print(f"  MISMATCH {op} {kind} kernels={k}: {mism}/{outs[k].size}", flush=True)
                for b in FAMILIES:
                    if got[k] is not None:
                        cross[(k, b)] += int((got[k] != outs[b]).sum())
            kinds[kind] = kinds.get(kind, 0) + 1
        print(f"{op}: cases {kinds}; XNNPACK did not delegate {not_delegated}; refused {refused}")
        for k in FAMILIES:
            m, n, t = own[k]
            print(f"  {k:9s}: {m} mismatches / {n} outputs ({t} ties)")
            for i, v in enumerate(own[k]):
                total[k][i] += v
        print("  cross (rule of row vs interpreter of column): " + "; ".join(
            f"{a}->{b} {cross[(a, b)]}" for a in FAMILIES for b in FAMILIES if a != b), flush=True)
    print("TOTAL " + "; ".join(f"{k}: {m} mismatches / {n} outputs ({t} ties)" for k, (m, n, t) in total.items()))
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
