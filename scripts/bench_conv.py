"""Benchmark: qjax jitted quantized conv/linear (int in -> int out, requant included) vs torch fbgemm.

    python scripts/bench_conv.py [--repeat 15] [--threads N]

Both run in this process on the same inputs, interleaved call by call (see
``bench_common.interleaved``): each time is the median of ``--repeat`` rounds after
warm-up, and each ratio the median over rounds of qjax / torch in the same round
(lower is better), which keeps the ratio stable when other processes load the machine.
qjax is timed in torch layout (NCHW, as a torch user calls it) and channels-last
(NHWC, as a Flax user calls it); both outputs are checked equal to torch's first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_common import interleaved, machine_line, setup_threads  # noqa: E402

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pin", type=int, default=0, help="run on the first N CPUs only (0: all)")
    ap.add_argument("--only", default=None, help="substring filter on layer names")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown (README)")
    args = ap.parse_args(argv)

    setup_threads(args.threads, args.pin)
    import jax
    import torch

    import qjax

    torch.backends.quantized.engine = "fbgemm"
    rng = np.random.default_rng(0)
    print(machine_line(args.threads) + f", median of {args.repeat} interleaved rounds")
    print("ratio = median over rounds of qjax/torch in the same round; min = ratio of the fastest rounds")
    print(f"{'layer':32s} {'torch ms':>9s} {'qjax NCHW':>10s} {'ratio':>6s} {'min':>5s} {'qjax NHWC':>10s} "
          f"{'ratio':>6s} {'min':>5s}")
    rows = []
    torch_ms = []
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
            fns = {"torch": run_torch, "nchw": lambda: f_nchw(xj, wq, b).block_until_ready(),
                   "nhwc": lambda: f_nhwc(xj_cl, wq_cl, b).block_until_ready()}
        else:
            packed = torch.ops.quantized.linear_prepack(qw_t, torch.from_numpy(b))

            def run_torch():
                return torch.ops.quantized.linear(qx_t, packed, sy, zy)

            f_nchw = jax.jit(lambda xv, wq, b: qjax.linear(qjax.QArray(xv, sx, zx, qjax.quint8, check=False), wq, b,
                                                           scale=sy, zero_point=zy).values)
            xj = jax.device_put(x)
            want = run_torch().int_repr().numpy()
            assert (np.asarray(f_nchw(xj, wq, b)) == want).all(), f"{name}: qjax != torch"
            fns = {"torch": run_torch, "nchw": lambda: f_nchw(xj, wq, b).block_until_ready()}
        res = interleaved(fns, args.repeat, "torch")
        t_torch, _, m_torch = res["torch"]
        (t_q, r_q, m_q), (t_cl, r_cl, m_cl) = res["nchw"], res.get("nhwc", (None, None, None))
        rows.append((name, r_q, m_q / m_torch, r_cl, m_cl / m_torch if m_cl else None))
        torch_ms.append(t_torch * 1e3)
        cl = (f"{t_cl * 1e3:10.2f} {r_cl:6.2f} {m_cl / m_torch:5.2f}" if t_cl is not None
              else f"{'-':>10s} {'-':>6s} {'-':>5s}")
        print(f"{name:32s} {t_torch * 1e3:9.2f} {t_q * 1e3:10.2f} {r_q:6.2f} {m_q / m_torch:5.2f} {cl}", flush=True)
    if args.markdown:
        print(f"\n| layer | torch ms | qjax NCHW / torch | (fastest rounds) | qjax NHWC / torch | (fastest rounds) |")
        print("|---|---|---|---|---|---|")
        for (name, r_q, m_q, r_cl, m_cl), t in zip(rows, torch_ms):
            cl = f"{r_cl:.2f} | {m_cl:.2f}" if r_cl is not None else "- | -"
            print(f"| {name} | {t:.2f} | {r_q:.2f} | {m_q:.2f} | {cl} |")
    best = [min(r[1], r[3] or r[1]) for r in rows]
    best_min = [min(r[2], r[4] or r[2]) for r in rows]
    print(f"best layout per layer: median ratio {statistics.median(best):.2f} (worst layer {max(best):.2f}); "
          f"min-time ratio {statistics.median(best_min):.2f} (worst layer {max(best_min):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
