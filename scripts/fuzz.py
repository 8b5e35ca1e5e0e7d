"""Long randomized comparison of qjax.conv / qjax.linear against torch 2.13's quantized kernels.

    python scripts/fuzz.py --outputs 10000000 --seed 0 [--engine fbgemm|qnnpack|onednn|x86] [--double-scales]

Draws random layers (conv1d/2d/3d: generic, grouped, depthwise fast-path and not,
GConv-shaped, pointwise; linear), random qparams (per-tensor/per-channel, symmetric
and asymmetric weights, full and reduced activation range, bias, ReLU), runs torch
and qjax (jitted) on each, and prints ``N mismatches of M outputs`` overall and per
kind.  Exit status 1 if any output differs.  ``--engine`` selects torch's engine and the
qjax engine that models it (fbgemm and x86 at this machine's ISA); onednn draws symmetric
weights (its prepack requires them) and, with x86, skips the two shape families for which
oneDNN 3.12 returns uninitialised memory (``tests/engines/test_engines_torch.py``).  qjax
runs on JAX's default device (a GPU where jaxlib has one), torch on the CPU.

``--double-scales``: torch's scales are doubles; every case then gets double scales that are not
float32-valued (the drawn ones moved by up to 1e-3 relative), and every other case is a near-tie
case of the double arithmetic (``tests/requant/test_onednn.py`` ``double_tie_case`` for onednn / x86
/ fbgemm, ``tests/requant/test_qnnpack.py`` ``bias_tie_case`` for qnnpack); the tie cases also count
how many outputs the float32-first rule would get wrong there (``float32-first-would-mismatch``).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import qjax  # noqa: E402
from qjax._src.kernels.fbgemm_paths import host_isa  # noqa: E402
from tests import helpers, torch_ref  # noqa: E402  (the tests' torch oracle)
from tests.engines.test_engines_torch import onednn_garbage  # noqa: E402

ENGINES = {"fbgemm": lambda: helpers.HOST_FBGEMM, "qnnpack": qjax.engines.Qnnpack, "onednn": qjax.engines.Onednn,
           "x86": lambda: qjax.engines.X86(isa=host_isa())}


def uses_onednn(engine, case):
    if isinstance(engine, qjax.engines.Onednn):
        return True
    if isinstance(engine, qjax.engines.X86) and case["kind"] != "linear":
        return isinstance(engine.for_layer(np.asarray(case["zw"]), case["groups"]), qjax.engines.Onednn)
    return False


def random_case(rng):
    kind = rng.choice(["generic", "grouped", "depthwise_fast", "depthwise_other", "gconv", "pointwise", "linear"],
                      p=[0.2, 0.12, 0.16, 0.1, 0.12, 0.12, 0.18])
    if kind == "linear":
        k, o = int(rng.integers(1, 1025)), int(rng.integers(1, 257))
        m = int(rng.integers(1, 65))
        case = dict(kind=kind, in_channels=k, out_channels=o, x_shape=(m, k), w_shape=(o, k))
    else:
        nd = int(rng.choice([1, 2, 3], p=[0.2, 0.6, 0.2])) if kind not in ("depthwise_fast", "gconv") else int(rng.choice([2, 3], p=[0.75, 0.25]))
        big = {1: 64, 2: 24, 3: 8}[nd]
        if kind == "depthwise_fast":
            g = int(rng.choice([8, 16, 32, 64]))
            c, o = g, g * int(rng.choice([1, 2]))
            k = int(rng.choice([3, 5] if nd == 3 else [3, 5, 7]))
            kernel = (int(rng.choice([3, 5])), k, k) if nd == 3 else (k, k)
            stride = (int(rng.choice([1, 2])),) * nd
            pad, dil = tuple((kk - 1) // 2 for kk in kernel), (1,) * nd
        elif kind == "gconv":
            cpg = int(rng.choice([2, 4, 8, 16]))
            g = {2: 8, 4: 4, 8: 2, 16: 1}[cpg] * int(rng.integers(1, 5))
            c = o = cpg * g
            kernel, pad, dil = (3,) * nd, (1,) * nd, (1,) * nd
            stride = (int(rng.choice([1, 2])),) * nd
        elif kind == "pointwise":
            g, c, o = 1, int(rng.integers(1, 129)), int(rng.integers(1, 129))
            kernel, stride, pad, dil = (1,) * nd, (1,) * nd, (0,) * nd, (1,) * nd
        else:
            if kind == "generic":
                g, c, o = 1, int(rng.integers(1, 33)), int(rng.integers(1, 33))
            elif kind == "grouped":
                g = int(rng.integers(2, 9))
                c, o = g * int(rng.integers(1, 5)), g * int(rng.integers(1, 5))
            else:
                g = c = int(rng.integers(1, 40))
                o = c * int(rng.integers(1, 3))
            kmax = {1: 7, 2: 5, 3: 3}[nd]
            kernel = tuple(int(rng.integers(1, kmax + 1)) for _ in range(nd))
            stride = tuple(int(rng.integers(1, 4)) for _ in range(nd))
            pad = tuple(int(rng.integers(0, 3)) for _ in range(nd))
            dil = tuple(int(rng.integers(1, 3)) for _ in range(nd))
        # fbgemm's 3-d depthwise kernels corrupt the heap when a spatial dim is smaller than
        # the kernel (torch aborts); keep those layers at least kernel-sized
        lows = [kk if (kind == "depthwise_fast" and nd == 3) else max(d * (kk - 1) + 1 - 2 * p, 1)
                for kk, p, d in zip(kernel, pad, dil)]
        spatial = tuple(int(rng.integers(lo, max(lo, big) + 1)) for lo in lows)
        n = int(rng.integers(1, 5))
        case = dict(kind=kind, nd=nd, groups=g, in_channels=c, out_channels=o, kernel=kernel, stride=stride,
                    padding=pad, dilation=dil, x_shape=(n, c) + spatial, w_shape=(o, c // g) + kernel)
    from tests.strategies import _qparams

    return _qparams(rng, case, per_channel=bool(rng.random() < 0.5), wzp=bool(rng.random() < 0.4),
                    full_range=bool(rng.random() < 0.5), has_bias=bool(rng.random() < 0.75),
                    relu=bool(rng.random() < 0.3))


def with_double_scales(rng, case):
    """The case with its scales replaced by nearby doubles that are not float32-valued."""
    def move(v):
        return np.asarray(v, np.float64) * (1 + rng.uniform(-1e-3, 1e-3, np.shape(v)))
    case = dict(case, sx=float(move(case["sx"])), sy=float(move(case["sy"])))
    case["sw"] = move(case["sw"]) if case["per_channel"] else float(move(case["sw"]))
    return case


def double_tie_case(rng, engine, stats):
    """A near-tie case of torch's double arithmetic for ``engine`` (see the module docstring)."""
    from tests.requant import test_onednn as tie_onednn
    from tests.requant import test_qnnpack as tie_qnnpack

    if engine == "qnnpack":
        case = tie_qnnpack.bias_tie_case(rng, bool(rng.random() < 0.5))
        case.update(kind="linear", in_channels=case["x"].shape[-1])
        case["_float32_first"] = tie_qnnpack.model(case, double=False)
        return case
    op = "linear" if rng.random() < 0.5 else "conv"
    case = tie_onednn.double_tie_case(rng, op, bool(rng.random() < 0.5))
    if op == "linear":
        case.update(kind="linear", in_channels=case["x"].shape[-1])
    else:
        case.update(kind="depthwise_other", nd=2, in_channels=tie_onednn.G, kernel=(3, 3),
                    x_shape=case["x"].shape, w_shape=case["w"].shape)
    if engine == "onednn" or (engine == "x86" and op == "conv"):  # oneDNN's epilogue (x86: G = 96 <= 100)
        f32 = tie_onednn.double_factors(case["sx"], case["sw"], case["sy"], op, case["per_channel"],
                                        tie_onednn._r32)
        case["_float32_first"] = tie_onednn.epilogue(case["acc"], case["bias"], case["zy"], f32)
    return case


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outputs", type=int, default=1_000_000, help="stop after this many compared outputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=600.0)
    ap.add_argument("--engine", choices=sorted(ENGINES), default="fbgemm")
    ap.add_argument("--double-scales", action="store_true", help="torch-style double scales and near-tie cases")
    args = ap.parse_args(argv)
    torch_ref.set_engine(args.engine)
    engine = ENGINES[args.engine]()
    rng = np.random.default_rng(args.seed)
    stats = collections.defaultdict(lambda: [0, 0, 0])
    total = mism = cases = 0
    t0 = time.time()
    while total < args.outputs and time.time() - t0 < args.max_minutes * 60:
        if args.double_scales and cases % 2 == 1:
            case = double_tie_case(rng, args.engine, stats)
        else:
            case = random_case(rng)
            if args.double_scales:
                case = with_double_scales(rng, case)
        if args.engine == "onednn":
            case["zw"] = np.zeros_like(case["zw"])  # torch's onednn prepack requires symmetric weights
        if case["kind"] != "linear" and uses_onednn(engine, case) and onednn_garbage(case):
            stats["onednn-garbage-skipped"][2] += 1  # torch's output is uninitialised memory here
            continue
        try:
            want = helpers.torch_linear(case) if case["kind"] == "linear" else helpers.torch_conv(case)
        except RuntimeError:
            stats["torch-rejected"][2] += 1  # a configuration torch itself refuses
            continue
        got = (helpers.qjax_linear(case, engine=engine) if case["kind"] == "linear"
               else helpers.qjax_conv(case, engine=engine))
        bad = int((got.astype(np.int64) != want.astype(np.int64)).sum())
        key = f"{case['kind']}{'' if case['kind'] == 'linear' else str(case['nd']) + 'd'}"
        if "acc" in case:
            key = "double-tie-" + key
        if "_float32_first" in case:
            w32 = stats["float32-first-would-mismatch"]
            w32[0] += int((case["_float32_first"].reshape(-1) != want.reshape(-1)).sum())
            w32[1] += want.size
            w32[2] += 1
        s = stats[key]
        s[0] += bad
        s[1] += want.size
        s[2] += 1
        total += want.size
        mism += bad
        cases += 1
        if bad:
            print(f"MISMATCH case {cases}: {bad} of {want.size}: "
                  f"{ {k: v for k, v in case.items() if k not in ('x', 'w', 'bias', 'sw', 'zw', 'acc', '_float32_first')} }",
                  flush=True)
        if cases % 50 == 0:
            print(f"[{time.time() - t0:7.0f}s] {cases} cases, {mism} mismatches of {total} outputs", flush=True)
    for k in sorted(stats):
        s = stats[k]
        print(f"  {k:24s} {s[0]} mismatches of {s[1]} outputs ({s[2]} cases)")
    print(f"{mism} mismatches of {total} outputs ({cases} cases, {time.time() - t0:.0f}s, seed {args.seed}, "
          f"engine {args.engine}{', double scales' if args.double_scales else ''}, qjax on {jax.devices()[0].platform})")
    return 1 if mism else 0


if __name__ == "__main__":
    sys.exit(main())
