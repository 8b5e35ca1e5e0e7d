"""Benchmark: qjax jitted quantized conv/linear (int in -> int out, requant included) vs torch fbgemm.

    python scripts/bench_conv.py [--repeat 15] [--threads N]

Both run in this process on the same inputs; each timing is the median of
``--repeat`` runs after warm-up, and the ratio is qjax / torch (lower is better).
qjax is timed in torch layout (NCHW, as a torch user calls it) and channels-last
(NHWC, as a Flax user calls it); both outputs are checked equal to torch's first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

LAYERS = [
    # name, kind, N, C, O, spatial, kernel, stride, pad, groups
    ("conv3x3 64->64 8x56x56", "conv", 8, 64, 64, (56, 56), (3, 3), 1, 1, 1),
    ("conv1x1 256->64 8x56x56", "conv", 8, 256, 64, (56, 56), (1, 1), 1, 0, 1),
    ("depthwise3x3 144 8x56x56", "conv", 8, 144, 144, (56, 56), (3, 3), 1, 1, 144),
    ("conv3x3 s2 64->128 8x56x56", "conv", 8, 64, 128, (56, 56), (3, 3), 2, 1, 1),
    ("conv1d k3 64->64 8x1024", "conv", 8, 64, 64, (1024,), (3,), 1, 1, 1),
    ("linear 1024->1024 b256", "linear", 256, 1024, 1024, (), (), 1, 0, 1),
]


def median_time(fn, repeat):
    fn()
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", default=None, help="substring filter on layer names")
    args = ap.parse_args(argv)

    import jax
    import torch

    import qjax

    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "fbgemm"
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} fbgemm, "
          f"{args.threads} threads, median of {args.repeat}")
    print(f"{'layer':32s} {'torch ms':>9s} {'qjax NCHW':>10s} {'ratio':>6s} {'qjax NHWC':>10s} {'ratio':>6s}")
    rows = []
    for name, kind, n, c, o, sp, k, s, p, g in LAYERS:
        if args.only and args.only not in name:
            continue
        sx, zx, sy, zy = 0.02, 7, 0.05, 120
        sw = rng.uniform(0.001, 0.01, size=o)
        x = rng.integers(0, 128, size=(n, c) + sp).astype(np.uint8)  # reduce_range activations
        w = rng.integers(-127, 128, size=(o, c // g) + k).astype(np.int8)
        b = rng.normal(size=o).astype(np.float32)
        qx_t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), sx, zx)
        qw_t = torch._make_per_channel_quantized_tensor(torch.from_numpy(w), torch.tensor(sw),
                                                        torch.zeros(o, dtype=torch.long), 0)
        xq = qjax.QArray(x, sx, zx, qjax.quint8)
        wq = qjax.QArray(w, sw, np.zeros(o, np.int32), qjax.qint8, axis=0)
        if kind == "conv":
            nd = len(sp)
            packed = getattr(torch.ops.quantized, f"conv{nd}d_prepack")(qw_t, torch.from_numpy(b), [s] * nd, [p] * nd, [1] * nd, g)
            op = getattr(torch.ops.quantized, f"conv{nd}d")

            def run_torch():
                return op(qx_t, packed, sy, zy)

            f_nchw = jax.jit(lambda xv, wq, b: qjax.conv(qjax.QArray(xv, sx, zx, qjax.quint8, check=False), wq, b,
                                                         scale=sy, zero_point=zy, stride=s, padding=p, groups=g).values)
            w_cl = np.transpose(w, tuple(range(2, 2 + nd)) + (1, 0))
            wq_cl = qjax.QArray(w_cl, sw, np.zeros(o, np.int32), qjax.qint8, axis=-1)
            x_cl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
            f_nhwc = jax.jit(lambda xv, wq, b: qjax.conv(qjax.QArray(xv, sx, zx, qjax.quint8, check=False), wq, b,
                                                         scale=sy, zero_point=zy, stride=s, padding=p, groups=g,
                                                         channels_last=True).values)
            xj, xj_cl = jax.device_put(x), jax.device_put(x_cl)
            want = run_torch().int_repr().numpy()
            assert (np.asarray(f_nchw(xj, wq, b)) == want).all(), f"{name}: qjax NCHW != torch"
            assert (np.moveaxis(np.asarray(f_nhwc(xj_cl, wq_cl, b)), -1, 1) == want).all(), f"{name}: qjax NHWC != torch"
            t_cl = median_time(lambda: f_nhwc(xj_cl, wq_cl, b).block_until_ready(), args.repeat)
        else:
            packed = torch.ops.quantized.linear_prepack(qw_t, torch.from_numpy(b))

            def run_torch():
                return torch.ops.quantized.linear(qx_t, packed, sy, zy)

            f_nchw = jax.jit(lambda xv, wq, b: qjax.linear(qjax.QArray(xv, sx, zx, qjax.quint8, check=False), wq, b,
                                                           scale=sy, zero_point=zy).values)
            xj = jax.device_put(x)
            want = run_torch().int_repr().numpy()
            assert (np.asarray(f_nchw(xj, wq, b)) == want).all(), f"{name}: qjax != torch"
            t_cl = None
        t_torch = median_time(run_torch, args.repeat)
        t_q = median_time(lambda: f_nchw(xj, wq, b).block_until_ready(), args.repeat)
        rows.append((name, t_torch, t_q, t_cl))
        cl = f"{t_cl * 1e3:10.2f} {t_cl / t_torch:6.2f}" if t_cl is not None else f"{'-':>10s} {'-':>6s}"
        print(f"{name:32s} {t_torch * 1e3:9.2f} {t_q * 1e3:10.2f} {t_q / t_torch:6.2f} {cl}", flush=True)
    best = [min(r[2], r[3] or r[2]) / r[1] for r in rows]
    print(f"median ratio (best layout per layer): {statistics.median(best):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
