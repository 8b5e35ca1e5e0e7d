"""Experiment 2 — rounding choices: accuracy vs requantization rounding mode and multiplier bits, with/without QAT.

    .venv/bin/python -m experiments.rounding            # full run -> results/rounding.json + rounding.png
    .venv/bin/python -m experiments.rounding --quick    # smoke run, nothing saved

Model: experiment 1's torch fbgemm PTQ model (mnist1d 1-d CNN by default), imported with ``qjax.from_torch``.
Arithmetic: ``tflite_single`` (one rounding of the 64-bit fixed-point product, TFLite's single-rounding build —
the style that can round stochastically) with the requantization rounding set to each mode and the multiplier
kept to 8/12/16/31 bits (``parse_spec("tflite_single:rounding=<mode>,bits=<b>")``); bias and input
quantization keep the preset's half-away rounding.

* without QAT: the PTQ model converted with ``qjax.hardware.convert`` (stochastic: a fixed key per seed);
* with QAT: ``qnn.from_qmodel`` → QAT under that spec → evaluated under that spec, for the modes at 31 bits and
  the multiplier widths at half-away (the two slices of the grid).  Stochastic rounding needs a PRNG key per call;
  ``common.make_keyed`` swaps in subclasses that pass ``key=`` to qjax.nn's layers (a fresh key per call, also
  at evaluation).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from . import common as C

MODES = ("half_even", "half_away", "floor", "toward_zero", "stochastic")
BITS = (8, 12, 16, 31)


def spec_name(mode, bits):
    return f"tflite_single:rounding={mode},bits={bits}"


def run_one(name, seed, steps, log, qat_modes, qat_bits):
    import qjax
    import qjax.nn as qnn
    from qjax import hardware

    xtr, ytr, xte, yte = C.load_data(name)
    xtr_cl, xte_cl = C.channels_last(xtr), C.channels_last(xte)
    t0 = time.perf_counter()
    tm = C.train_float(name, seed, xtr, ytr)
    calib = xtr[np.random.default_rng(seed).permutation(len(xtr))[:512]]
    tq = C.torch_ptq(tm, calib)
    qm = qjax.from_torch(tq, xte[:2], engine="fbgemm")
    r = dict(dataset=name, seed=seed, fbgemm_ptq=float((np.asarray(qm(xte)).argmax(-1) == yte).mean()), ptq={},
             qat={}, qat_errors={})
    for mode in MODES:
        for bits in BITS:
            key = jax.random.key(seed) if mode == "stochastic" else None
            hw = hardware.convert(qm, xte[:2], spec_name(mode, bits), key=key)
            r["ptq"][f"{mode}/{bits}"] = float((np.asarray(hw(xte)).argmax(-1) == yte).mean())
    log(f"{name} seed {seed} PTQ: fbgemm {r['fbgemm_ptq']:.4f} " + " ".join(f"{k} {v:.3f}" for k, v in r["ptq"].items()))
    configs = [(m, 31) for m in qat_modes] + [("half_away", b) for b in qat_bits if b != 31]
    for mode, bits in configs:
        spec = spec_name(mode, bits)
        net = qnn.from_qmodel(qm, xte[:2], engine=qjax.Fbgemm.host())
        C.set_arithmetic(net, spec, "half_away")
        if mode == "stochastic":  # a fresh PRNG key per layer call (common.make_keyed)
            C.make_keyed(net, seed)
        qnn.prepare_qat(net, from_observers=False)
        try:
            C.qat(net, xtr_cl, ytr, steps, seed, qparam_lr=1e-5)
        except Exception as e:  # reported, not hidden
            r["qat_errors"][f"{mode}/{bits}"] = f"{type(e).__name__}: {e}"
            continue
        qnn.convert(net)
        r["qat"][f"{mode}/{bits}"] = C.accuracy(net, xte_cl, yte)[0]
    log(f"{name} seed {seed} QAT: " + " ".join(f"{k} {v:.3f}" for k, v in r["qat"].items())
        + f" errors {list(r['qat_errors'])} ({time.perf_counter() - t0:.0f} s)")
    return r


def deviation(name, seeds, log):
    """How far each spec's integers are from fbgemm's on the test set: % of output integers (logits) that differ
    and % of predictions that differ, for the PTQ model of each seed (no training beyond the float model)."""
    import qjax
    from qjax import hardware

    xtr, ytr, xte, yte = C.load_data(name)
    runs = []
    for seed in range(seeds):
        tm = C.train_float(name, seed, xtr, ytr)
        tq = C.torch_ptq(tm, xtr[np.random.default_rng(seed).permutation(len(xtr))[:512]])
        qm = qjax.from_torch(tq, xte[:2], engine="fbgemm")
        y0 = np.asarray(qm(xte))
        r = dict(dataset=name, seed=seed, logits_differ={}, preds_differ={})
        for mode in MODES:
            for bits in BITS:
                key = jax.random.key(seed) if mode == "stochastic" else None
                y = np.asarray(hardware.convert(qm, xte[:2], spec_name(mode, bits), key=key)(xte))
                r["logits_differ"][f"{mode}/{bits}"] = float((y != y0).mean())
                r["preds_differ"][f"{mode}/{bits}"] = float((y.argmax(-1) != y0.argmax(-1)).mean())
        log(f"{name} seed {seed} deviation done")
        runs.append(r)
    return runs


def deviation_table(res):
    lines = []
    for d in dict.fromkeys(r["dataset"] for r in res["runs"]):
        runs = [r for r in res["runs"] if r["dataset"] == d]
        lines += [f"**{d}**, PTQ model vs torch fbgemm, {len(runs)} seeds: % of output integers (logits) that "
                  "differ / % of predictions that differ (mean)", "",
                  "| requant rounding \\ multiplier bits | " + " | ".join(str(b) for b in BITS) + " |",
                  "|---|" + "---|" * len(BITS)]
        for m in MODES:
            lines.append(f"| {m} | " + " | ".join(
                f"{100 * np.mean([r['logits_differ'][f'{m}/{b}'] for r in runs]):.1f} / "
                f"{100 * np.mean([r['preds_differ'][f'{m}/{b}'] for r in runs]):.2f}" for b in BITS) + " |")
    return "\n".join(lines)


def table(res):
    lines = []
    for d in dict.fromkeys(r["dataset"] for r in res["runs"]):
        runs = [r for r in res["runs"] if r["dataset"] == d]
        lines += [f"**{d}** — fbgemm PTQ {C.fmt([r['fbgemm_ptq'] for r in runs])} %, {len(runs)} seeds; "
                  "cells: PTQ / after QAT (accuracy %, mean ± std)", "",
                  "| requant rounding \\ multiplier bits | " + " | ".join(str(b) for b in BITS) + " |",
                  "|---|" + "---|" * len(BITS)]
        for m in MODES:
            cells = []
            for b in BITS:
                k = f"{m}/{b}"
                c = C.fmt([r["ptq"][k] for r in runs])
                if all(k in r["qat"] for r in runs):
                    c += " / **" + C.fmt([r["qat"][k] for r in runs]) + "**"
                elif any(k in r["qat_errors"] for r in runs):
                    c += " / QAT n/a†"
                cells.append(c)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        errs = {e for r in runs for e in r["qat_errors"].values()}
        if errs:
            lines += ["", "† " + "; ".join(sorted(errs))]
        lines.append("")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    fig, axes = plt.subplots(1, 2 * len(names), figsize=(11 * len(names), 4.2), squeeze=False)
    for j, d in enumerate(names):
        runs = [r for r in res["runs"] if r["dataset"] == d]
        ax = axes[0][2 * j]
        for m in MODES:
            ms = [C.mean_std([r["ptq"][f"{m}/{b}"] for r in runs]) for b in BITS]
            ax.errorbar(range(len(BITS)), [100 * a for a, _ in ms], [100 * s for _, s in ms], marker="o",
                        capsize=3, label=m)
        fb = 100 * np.mean([r["fbgemm_ptq"] for r in runs])
        ax.axhline(fb, color="k", ls="--", lw=1, label=f"fbgemm PTQ ({fb:.1f})")
        ax.set_xticks(range(len(BITS)), [str(b) for b in BITS])
        ax.set_xlabel("multiplier bits")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{d}: PTQ, requant rounding × multiplier bits", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[0][2 * j + 1]
        keys = [k for k in runs[0]["qat"] if all(k in r["qat"] for r in runs)]
        x = np.arange(len(keys))
        for off, (lab, src) in enumerate((("PTQ", "ptq"), ("QAT", "qat"))):
            ms = [C.mean_std([r[src][k] for r in runs]) for k in keys]
            ax.bar(x + (off - 0.5) * 0.38, [100 * a for a, _ in ms], 0.38, yerr=[100 * s for _, s in ms],
                   capsize=2, label=lab)
        ax.set_xticks(x, [k.replace("/", "\n").replace("_", "_\n") + " bits" for k in keys], fontsize=7)
        lo = min(100 * r[s][k] for r in runs for k in keys for s in ("ptq", "qat"))
        ax.set_ylim(max(0, lo - 5), 100 * max(max(r["qat"].values()) for r in runs) + 3)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{d}: without vs with QAT (trained and evaluated on the spec)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--datasets", default="mnist1d")
    ap.add_argument("--deviation", action="store_true",
                    help="only the integer deviation from fbgemm per spec -> results/rounding_deviation.json")
    a = ap.parse_args(argv)
    if a.deviation:
        t0 = time.perf_counter()
        runs = [r for d in a.datasets.split(",") for r in deviation(d, 1 if a.quick else a.seeds, C.log)]
        res = dict(experiment="rounding_deviation", seeds=1 if a.quick else a.seeds, qat_steps=0, runs=runs,
                   spec="tflite_single:rounding=<mode>,bits=<bits>", environment=C.environment())
        res["wall_s"] = time.perf_counter() - t0
        print(deviation_table(res))
        if not a.quick:
            C.save_json("rounding_deviation.json", res)
        return res
    seeds, steps = (1, 5) if a.quick else (a.seeds, a.steps)
    qat_modes, qat_bits = (("floor", "stochastic"), (8,)) if a.quick else (MODES, BITS)
    t0 = time.perf_counter()
    runs = [run_one(d, s, steps, C.log, qat_modes, qat_bits) for d in a.datasets.split(",") for s in range(seeds)]
    res = dict(experiment="rounding", qat_steps=steps, seeds=seeds, wall_s=time.perf_counter() - t0,
               spec="tflite_single:rounding=<mode>,bits=<bits>", environment=C.environment(), runs=runs)
    print(table(res))
    if not a.quick:
        C.save_json("rounding.json", res)
        plot(res, C.RESULTS + "/rounding.png")
    C.log(f"wall {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
