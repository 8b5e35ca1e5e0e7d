"""Random sweep of quantized layer_norm / group_norm / instance_norm against live torch 2.13 (one thread).

Shapes cover the vector/scalar splits of torch's AVX2 kernels (rows and channel groups around multiples of
32), both NHWC impls (H*W below / at least 512), both dtypes, several eps and scales.  Prints mismatch counts.

    python scripts/check_normalization.py [--cases 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    import qjax
    from qjax._src.qops import normalization as qn

    torch.set_num_threads(1)
    F = np.float32
    rng = np.random.default_rng(args.seed)
    totals = {}
    for i in range(args.cases):
        op = ("layer", "group", "instance")[i % 3]
        dt = (qjax.quint8, qjax.qint8)[rng.integers(2)]
        zx = int(rng.integers(dt.qmin, dt.qmax + 1))
        xs, ys = float(F(np.exp(rng.uniform(-6, -1)))), float(F(np.exp(rng.uniform(-7, -2))))
        zy = int(rng.integers(dt.qmin, dt.qmax + 1))
        eps = float(rng.choice([1e-5, 1e-6, 1e-3]))
        fmt = "contiguous"
        if op == "layer":
            shape = (int(rng.integers(1, 5)), int(rng.integers(1, 140)))
            groups, c = None, shape[-1]
        else:
            nd = int(rng.integers(3, 6))
            c = int(rng.choice([1, 3, 8, 36, 40, 64]))
            spatial = [int(rng.integers(1, 9)) for _ in range(nd - 2)]
            if nd == 4 and rng.random() < 0.5:
                fmt = "channels_last"
                if rng.random() < 0.3:
                    spatial = [16, 32]  # the NHWC kernel's float-sum impl
            shape = (int(rng.integers(1, 3)), c, *spatial)
            groups = int(rng.choice([g for g in (1, 2, 4, c) if c % g == 0])) if op == "group" else c
        spread = int(rng.choice([2, 16, 256]))
        q = np.clip(zx + rng.integers(-spread, spread + 1, shape), dt.qmin, dt.qmax).astype(dt.storage)
        g = (rng.normal(size=shape[-1] if op == "layer" else c) * 2).astype(F)
        b = rng.normal(size=g.shape).astype(F)
        tx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), xs, zx)
        if fmt == "channels_last":
            tx = tx.contiguous(memory_format=torch.channels_last)
        x = qjax.QArray(q, xs, zx, dt)
        tg, tb = torch.from_numpy(g), torch.from_numpy(b)
        if op == "layer":
            want = torch.ops.quantized.layer_norm(tx, [shape[-1]], tg, tb, eps, ys, zy)
            got = qn.layer_norm(x, (shape[-1],), g, b, eps, ys, zy)
        elif op == "group":
            want = torch.ops.quantized.group_norm(tx, groups, tg, tb, eps, ys, zy)
            got = qn.group_norm(x, groups, g, b, eps, ys, zy, memory_format=fmt)
        else:
            want = torch.ops.quantized.instance_norm(tx, tg, tb, eps, ys, zy)
            got = qn.instance_norm(x, g, b, eps, ys, zy, memory_format=fmt)
        bad = int((np.asarray(got.values) != want.int_repr().numpy()).sum())
        key = f"{op}/{fmt}"
        n_bad, n_all = totals.get(key, (0, 0))
        totals[key] = (n_bad + bad, n_all + q.size)
        if bad:
            print(f"MISMATCH {op} {shape} groups={groups} {fmt} {dt.name}: {bad} of {q.size}")
    for key, (n_bad, n_all) in sorted(totals.items()):
        print(f"{key:28s} {n_bad} mismatches of {n_all} outputs")


if __name__ == "__main__":
    main()
