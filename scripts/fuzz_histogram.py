"""Long randomized comparison of qjax's HistogramObserver with torch 2.13's.

    python scripts/fuzz_histogram.py --cases 500 --seed 0

Each case feeds 1-6 random batches (normal, heavy-tailed, constant, one-signed, ReLU6-like, few-level,
huge, tiny, with infinities) to both observers and compares the histogram state after every batch, the
searched [min, max] and the scale / zero point.  Prints the mismatch counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from torch.ao.quantization.observer import HistogramObserver

    from qjax._src import histogram as H
    from qjax import observers as obs
    from tests.test_histogram import KINDS, _x

    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(args.seed)
    bad_state = bad_range = bad_qparams = batches = 0
    t_torch = t_qjax = 0.0
    for case in range(args.cases):
        if case and case % 50 == 0:
            print(f"  {case} cases: {bad_state + bad_range + bad_qparams} mismatches so far", flush=True)
        dtype = str(rng.choice(["quint8", "qint8"]))
        symmetric = bool(rng.integers(2))
        reduce_range = bool(rng.integers(2)) and not (symmetric and dtype == "quint8")
        bins = int(rng.choice([2048, 2048, 1024, 256, 100, 17]))
        kw = dict(bins=bins, qscheme="per_tensor_" + ("symmetric" if symmetric else "affine"), reduce_range=reduce_range)
        t = HistogramObserver(dtype=getattr(torch, dtype), **{**kw, "qscheme": getattr(torch, kw["qscheme"])})
        o = obs.histogram(dtype=dtype, **kw)
        state = H.init(bins)
        for _ in range(int(rng.integers(1, 7))):
            x = _x(str(rng.choice(KINDS)), rng, int(rng.integers(1, 20000)))
            t(torch.from_numpy(x))
            state = H.update(state, x)
            batches += 1
            if not (np.array_equal(state["histogram"], t.histogram.numpy()) and state["min_val"] == t.min_val.item()
                    and state["max_val"] == t.max_val.item()):
                bad_state += 1
        if t.min_val.item() == float("inf"):
            continue
        t0 = time.perf_counter()
        want = t._non_linear_param_search()
        ts, tz = t.calculate_qparams()
        t1 = time.perf_counter()
        got = H.search_min_max(state, t.dst_nbins)
        s, z = o.qparams(state)
        t2 = time.perf_counter()
        t_torch, t_qjax = t_torch + t1 - t0, t_qjax + t2 - t1
        bad_range += int(got != (want[0].item(), want[1].item()))
        bad_qparams += int(float(s) != ts.item() or int(z) != tz.item())
    print(f"{args.cases} cases, {batches} batches: {bad_state} state mismatches, {bad_range} searched-range "
          f"mismatches, {bad_qparams} qparams mismatches; search+qparams time torch {t_torch:.1f}s, qjax {t_qjax:.1f}s")
    return 1 if bad_state or bad_range or bad_qparams else 0


if __name__ == "__main__":
    sys.exit(main())
