"""Benchmark: torchvision's quantizable models imported with ``from_torch`` — qjax forward vs torch.

    python scripts/bench_torchvision.py --threads 1 --pin 1 [--models resnet18,mobilenet_v2]
        [--engines fbgemm,x86] [--batches 16,1] [--repeat 7] [--markdown out.md] [--json out.json]
    python scripts/bench_torchvision.py --profile --models resnet18 --engines x86 --batches 16

Needs the ``bench`` extra (torchvision 0.28.0; see ``tests/torchvision_models.py`` for how it is
imported on torch+cpu).  For each model x engine x batch:

1. the float quantizable model (``torchvision.models.quantization.<name>(weights=None,
   quantize=False)``), random weights, randomized BatchNorm affine parameters and running
   statistics measured on random data (so every layer's activations stay O(1) and the
   quantization ranges are realistic), ``fuse_model()``, ``prepare`` with the engine's default
   qconfig, a few calibration batches, ``convert`` — all under ``torch.backends.quantized.engine``;
2. ``qjax.from_torch(model, x)`` (timed: *import s*), then ``jax.jit(...).lower`` (*trace+lower
   s*) and ``.compile()`` (*compile s*, XLA alone), both with jax's AOT API;
3. the check: torch's and qjax's outputs on the same float batch compared bit for bit
   (*mismatches*: output elements whose float32 bits differ), BEFORE any timing;
4. torch's forward and the compiled qjax forward timed interleaved call by call
   (``bench_common.interleaved``): median times, the median of the per-round qjax/torch ratios and
   the ratio of the fastest rounds.

A configuration that fails at any stage is a row saying where and why, and the run goes on.

``--profile`` adds, per configuration, where qjax's forward time goes: the forward is run under
``jax.profiler`` with every graph node's op inside ``jax.named_scope(<node name>)`` (metadata
only: the HLO is the same and the output is checked equal to the plain forward's), the trace's
per-thunk wall times (XLA:CPU runs one thunk per fusion / conv / copy) are joined with the
optimized HLO, and two tables are printed: time per QModel graph node (op, torch source, output
shape, ms, %, and torch's time in the same module from forward hooks) and the top XLA thunks
(fusion kind and the ops fused, shape, node).  Profile on one pinned core (``--threads 1 --pin
1``): with more threads, concurrent thunks overlap and their times add up to more than the wall
time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_common import interleaved, load_line, machine_line, one_line_error, setup_threads  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0", "googlenet",
          "inception_v3")
ENGINES = ("fbgemm", "x86", "qnnpack")


# ---------------------------------------------------------------------------------------------- one configuration


@dataclasses.dataclass
class Row:
    model: str
    engine: str
    batch: int
    size: int
    status: str = "ok"  # "ok" or "<stage> failed: <one-line reason>"
    torch_ms: float | None = None
    qjax_ms: float | None = None
    ratio: float | None = None  # median over rounds of qjax/torch in the same round
    min_ratio: float | None = None  # fastest qjax round / fastest torch round
    mismatches: int | None = None
    outputs: int | None = None
    convert_s: float | None = None  # torch: build, randomize BN, fuse, prepare, calibrate, convert
    import_s: float | None = None  # qjax.from_torch
    lower_s: float | None = None  # jax trace + lower to StableHLO
    compile_s: float | None = None  # XLA compile
    profile: dict | None = None


def _bits_mismatches(got: np.ndarray, want: np.ndarray) -> int:
    if got.shape != want.shape:
        raise ValueError(f"output shapes differ: qjax {got.shape}, torch {want.shape}")
    if got.dtype != want.dtype:
        raise ValueError(f"output dtypes differ: qjax {got.dtype}, torch {want.dtype}")
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    return int((got.view(view) != want.view(view)).sum())


def run_config(name, engine, batch, size, args, converted_cache):
    import jax
    import torch

    import qjax
    from tests.torchvision_models import build_quantized

    row = Row(name, engine, batch, size)
    stage = "build"
    try:
        key = (name, engine)
        if key not in converted_cache:
            converted_cache.clear()  # one converted model alive at a time (memory)
            t0 = time.perf_counter()
            converted_cache[key] = (build_quantized(name, engine, size, seed=args.seed, calib_batches=3, calib_batch=4),
                                   time.perf_counter() - t0)
        model, row.convert_s = converted_cache[key]
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1))
        torch.backends.quantized.engine = engine

        stage = "import"
        t0 = time.perf_counter()
        qm = qjax.from_torch(model, x, engine=engine)
        row.import_s = time.perf_counter() - t0

        stage = "trace"
        xj = jax.device_put(x.numpy())
        forward = jax.jit(lambda m, v: m(v))
        t0 = time.perf_counter()
        lowered = forward.lower(qm, xj)
        row.lower_s = time.perf_counter() - t0
        stage = "compile"
        t0 = time.perf_counter()
        compiled = lowered.compile()
        row.compile_s = time.perf_counter() - t0

        stage = "check"
        with torch.no_grad():
            want = model(x).numpy()
        got = np.asarray(compiled(qm, xj))
        row.mismatches, row.outputs = _bits_mismatches(got, want), want.size
        print(f"  {name} {engine} b{batch}: {row.mismatches} mismatches of {row.outputs} outputs "
              f"(import {row.import_s:.1f} s, trace+lower {row.lower_s:.1f} s, compile {row.compile_s:.1f} s)",
              flush=True)

        stage = "timing"
        if args.repeat > 0:
            def run_torch():
                with torch.no_grad():
                    return model(x)

            res = interleaved({"torch": run_torch, "qjax": lambda: jax.block_until_ready(compiled(qm, xj))},
                              args.repeat, "torch", warmup=args.warmup)
            (tt, _, mt), (tq, rq, mq) = res["torch"], res["qjax"]
            row.torch_ms, row.qjax_ms, row.ratio, row.min_ratio = tt * 1e3, tq * 1e3, rq, mq / mt

        if args.profile:
            stage = "profile"
            from profile_qmodel import profile_forward

            row.profile = profile_forward(qm, xj, model, x, calls=args.profile_calls, reference=got)
    except Exception as e:  # noqa: BLE001 — a failed configuration is a row, the run goes on
        from qjax.engines import EngineRefusal
        from qjax._src.graph import GraphError

        if isinstance(e, (GraphError, EngineRefusal)) and stage != "import":
            # a node op (or its engine) refusing at trace time what the importer let through
            stage = f"import failed (raised at {stage})"
        else:
            stage = f"{stage} failed"
        row.status = f"{stage}: {one_line_error(e)}"
        if args.verbose:
            traceback.print_exc()
    return row


# ---------------------------------------------------------------------------------------------- output


def tree_state() -> str:
    """The qjax checkout measured: commit and uncommitted changes under qjax/ (numbers move with them)."""
    import subprocess

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    try:
        head = subprocess.run(["git", "-C", root, "log", "-1", "--format=%h %cI"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "qjax"], capture_output=True,
                               text=True, check=True).stdout.split("\n")
        dirty = [d[3:] for d in dirty if d.strip()]
    except (OSError, subprocess.CalledProcessError):
        return "qjax checkout: unknown (no git)"
    return f"qjax at {head}" + (f", uncommitted changes in {', '.join(dirty)}" if dirty else ", clean")


def _f(v, fmt):
    return "" if v is None else format(v, fmt)


def markdown_table(rows) -> str:
    lines = ["| model | engine | batch | torch ms | qjax ms | ratio (median of rounds) | fastest-round ratio | "
             "mismatches | import s | trace+lower s | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = "" if r.size == 224 else f" ({r.size}²)"
        head = f"| {r.model}{size} | {r.engine} | {r.batch} |"
        if r.status != "ok":
            mism = "" if r.mismatches is None else f"{r.mismatches} of {r.outputs}"
            lines.append(f"{head} {r.status} | | | | {mism} | {_f(r.import_s, '.1f')} | {_f(r.lower_s, '.1f')} | "
                         f"{_f(r.compile_s, '.1f')} |")
            continue
        lines.append(f"{head} {_f(r.torch_ms, ',.1f')} | {_f(r.qjax_ms, ',.1f')} | **{_f(r.ratio, '.2f')}×** | "
                     f"{_f(r.min_ratio, '.2f')}× | {r.mismatches} of {r.outputs} | {_f(r.import_s, '.1f')} | "
                     f"{_f(r.lower_s, '.1f')} | {_f(r.compile_s, '.1f')} |")
    return "\n".join(lines)


def report(rows, header, args, done) -> str:
    legend = ("ratio: median over rounds of qjax/torch in the same round; fastest-round ratio: fastest qjax round / "
              "fastest torch round; mismatches: output elements whose float32 bits differ (checked before timing); "
              "import s: `qjax.from_torch`; trace+lower s and compile s: `jax.jit(f).lower(...)` and `.compile()`.")
    parts = [header, "", markdown_table(rows), "", legend]
    if not done:
        parts.append("\n(run in progress)")
    else:
        parts.append("\n" + load_line("at end"))
    for r in rows:
        if r.profile:
            from profile_qmodel import profile_markdown

            parts.append("")
            parts.append(profile_markdown(f"{r.model}, {r.engine}, batch {r.batch}", r.profile, top=args.top))
    return "\n".join(parts) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2",
                    help=f"comma-separated, or 'all' ({','.join(MODELS)})")
    ap.add_argument("--engines", default="fbgemm,x86", help=f"comma-separated, or 'all' ({','.join(ENGINES)})")
    ap.add_argument("--batches", default="16,1", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=224, help="input height = width (all models; inception_v3's "
                    "adaptive pooling takes 224 as well as its native 299)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--pin", type=int, default=0, help="run on the first N CPUs only (0: all)")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved timing rounds (0: check only)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also profile qjax's forward per graph node and thunk")
    ap.add_argument("--profile-calls", type=int, default=3, help="forward calls traced by --profile")
    ap.add_argument("--top", type=int, default=25, help="rows in each --profile table")
    ap.add_argument("--markdown", help="write the report (markdown) here, rewritten after every configuration")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failed configurations")
    args = ap.parse_args(argv)

    def names(value, allowed, what):
        out = list(allowed) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in out if v not in allowed]
        if bad:
            ap.error(f"--{what}: unknown {bad}; choose from {', '.join(allowed)} or 'all'")
        return out

    models, engines = names(args.models, MODELS, "models"), names(args.engines, ENGINES, "engines")
    try:
        batches = [int(b) for b in args.batches.split(",")]
        if any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        ap.error(f"--batches: expected comma-separated positive integers, got {args.batches!r}")

    setup_threads(args.threads, args.pin)
    import torch  # noqa: F401

    from tests.torchvision_models import import_torchvision

    import_torchvision()  # fail early (with its reason) if torchvision cannot be imported at all
    header = (f"torchvision quantizable models, random weights, eager convert; {machine_line(args.threads, '/'.join(engines))}; "
              f"{args.size}x{args.size} inputs, median of {args.repeat} interleaved rounds; {tree_state()}\n\n"
              f"{load_line('at start')}")
    print(header, flush=True)
    rows, cache = [], {}

    def write(done):
        text = report(rows, header, args, done)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(header=header, rows=[dataclasses.asdict(r) for r in rows]), f, indent=1)
        return text

    for name in models:
        for engine in engines:
            for batch in batches:
                row = run_config(name, engine, batch, args.size, args, cache)
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)
                write(False)
    text = write(True)
    print("\n" + text)
    bad = [f"{r.model} {r.engine} b{r.batch}" for r in rows if r.mismatches]
    if bad:  # a benchmark of a model that is not bit-exact measures nothing: fail loudly (gpu_check relies on it)
        print(f"MISMATCHES in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
