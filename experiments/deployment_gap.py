"""Experiment 1 — the deployment gap: float vs torch fbgemm PTQ vs qjax PTQ vs qjax QAT (fbgemm / integer-only).

    .venv/bin/python -m experiments.deployment_gap            # full run -> results/deployment_gap.json + .png
    .venv/bin/python -m experiments.deployment_gap --quick    # smoke run (1 seed, few steps), results not saved

Per dataset (sklearn digits, 2-d CNN; mnist1d, 1-d CNN) and seed:

1. train the float model in torch; accuracy ``float``;
2. torch eager PTQ (``torch.ao.quantization`` fuse/prepare/convert, fbgemm default qconfig, 512 calibration
   samples); accuracy ``torch fbgemm PTQ``;
3. ``qjax.from_torch`` and ``qjax.nn.from_qmodel`` of that converted model: mismatching output integers and
   predictions against torch (must be 0); accuracy ``qjax PTQ``;
4. the same PTQ model run under integer-only arithmetic (``gemmlowp``: TFLite's fixed-point requantization;
   ``dyadic8``: 8-bit dyadic multipliers) without retraining;
5. QAT in qjax starting from torch's PTQ model (its int8 weights and scales), forward = the deployed integers,
   LSQ scales, Adam; once with fbgemm arithmetic (evaluated on fbgemm; exported back to torch with
   ``qnn.to_torch`` and compared), once per hardware spec (trained and evaluated under that spec).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import common as C

SPECS = ("gemmlowp", "dyadic8")


def qjax_hardware_consistency(qm, net, x, spec):
    """qjax.hardware.convert of the imported QModel vs the qjax.nn model in integer mode under the same spec."""
    from qjax import hardware

    hw = hardware.convert(qm, x[:2], spec)
    y_hw = np.asarray(hw(x))
    y_nn = np.asarray(net(C.channels_last(x)))
    return int((y_hw != y_nn).sum())


def run_one(name, seed, steps, log):
    import qjax.nn as qnn
    import torch

    xtr, ytr, xte, yte = C.load_data(name)
    xtr_cl, xte_cl = C.channels_last(xtr), C.channels_last(xte)
    r = dict(dataset=name, seed=seed)
    t0 = time.perf_counter()
    tm = C.train_float(name, seed, xtr, ytr)
    r["float"] = float((C.torch_logits(tm, xte).argmax(-1) == yte).mean())
    r["float_train_s"] = time.perf_counter() - t0
    calib = xtr[np.random.default_rng(seed).permutation(len(xtr))[:512]]
    tq = C.torch_ptq(tm, calib)
    p_torch = C.torch_logits(tq, xte).argmax(-1)
    r["torch_ptq"] = float((p_torch == yte).mean())

    qm, net, cmp = C.import_and_compare(tq, xte)
    r["compare"] = cmp
    r["qjax_ptq"] = float((np.asarray(qm(xte)).argmax(-1) == yte).mean())
    log(f"{name} seed {seed}: float {r['float']:.4f} torch PTQ {r['torch_ptq']:.4f} qjax PTQ {r['qjax_ptq']:.4f} "
        f"mismatches {cmp}")

    def fresh():
        return qnn.from_qmodel(qm, xte[:2], engine=qjax_fbgemm())

    # PTQ under integer-only hardware arithmetic (no retraining)
    r["hw_ptq"], r["hw_consistency_mismatch"] = {}, {}
    for spec in SPECS:
        from qjax.hardware import get_spec

        n = C.set_arithmetic(fresh(), spec, get_spec(spec).quantize_rounding)
        r["hw_ptq"][spec] = C.accuracy(n, xte_cl, yte)[0]
        r["hw_consistency_mismatch"][spec] = qjax_hardware_consistency(qm, n, xte, spec)

    # QAT with fbgemm arithmetic
    n = fresh()
    qnn.prepare_qat(n, from_observers=False)
    losses, dt = C.qat(n, xtr_cl, ytr, steps, seed, qparam_lr=1e-5)
    qnn.convert(n)
    r["qat_fbgemm"], p_qat = C.accuracy(n, xte_cl, yte)
    r["qat_fbgemm_step_s"] = dt
    r["qat_fbgemm_loss"] = [losses[0], losses[-1]]
    # export the QAT model back to torch: same predictions on torch's own fbgemm kernels?
    if xte.ndim == 4:  # qnn.to_torch exports 2-d models only
        back = qnn.to_torch(n)
        torch.backends.quantized.engine = "fbgemm"
        with torch.no_grad():
            y_back = back(torch.from_numpy(xte)).numpy()
        y_q = np.asarray(n(xte_cl))
        r["qat_to_torch_float_mismatch"] = int((y_back != y_q).sum())
        r["qat_to_torch_pred_mismatch"] = int((y_back.argmax(-1) != p_qat).sum())
    # the fbgemm-QAT model deployed on hardware arithmetic it was not trained for
    r["qat_fbgemm_on_hw"] = {}
    for spec in SPECS:
        from qjax.hardware import get_spec

        C.set_arithmetic(n, spec, get_spec(spec).quantize_rounding)
        qnn.convert(n)
        r["qat_fbgemm_on_hw"][spec] = C.accuracy(n, xte_cl, yte)[0]

    # QAT under each hardware spec, evaluated under it
    r["qat_hw"], r["qat_hw_step_s"] = {}, {}
    for spec in SPECS:
        from qjax.hardware import get_spec

        n = C.set_arithmetic(fresh(), spec, get_spec(spec).quantize_rounding)
        qnn.prepare_qat(n, from_observers=False)
        _, dt = C.qat(n, xtr_cl, ytr, steps, seed, qparam_lr=1e-5)
        qnn.convert(n)
        r["qat_hw"][spec] = C.accuracy(n, xte_cl, yte)[0]
        r["qat_hw_step_s"][spec] = dt
    log(f"{name} seed {seed}: hw PTQ {r['hw_ptq']} QAT fbgemm {r['qat_fbgemm']:.4f} QAT hw {r['qat_hw']} "
        f"({time.perf_counter() - t0:.0f} s)")
    return r


def qjax_fbgemm():
    import qjax

    return qjax.Fbgemm.host()


ROWS = [("float (torch)", lambda r: r["float"]),
        ("torch eager fbgemm PTQ", lambda r: r["torch_ptq"]),
        ("qjax PTQ (from_torch import)", lambda r: r["qjax_ptq"]),
        ("qjax PTQ on gemmlowp (no retraining)", lambda r: r["hw_ptq"]["gemmlowp"]),
        ("qjax PTQ on dyadic8 (no retraining)", lambda r: r["hw_ptq"]["dyadic8"]),
        ("qjax QAT fbgemm → fbgemm", lambda r: r["qat_fbgemm"]),
        ("qjax QAT fbgemm → deployed on gemmlowp", lambda r: r["qat_fbgemm_on_hw"]["gemmlowp"]),
        ("qjax QAT fbgemm → deployed on dyadic8", lambda r: r["qat_fbgemm_on_hw"]["dyadic8"]),
        ("qjax QAT gemmlowp → gemmlowp", lambda r: r["qat_hw"]["gemmlowp"]),
        ("qjax QAT dyadic8 → dyadic8", lambda r: r["qat_hw"]["dyadic8"])]


def table(res):
    """Markdown: accuracy mean ± std over seeds, one column per dataset; then the exactness counts."""
    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    by = {d: [r for r in res["runs"] if r["dataset"] == d] for d in names}
    n_seeds = {d: len(v) for d, v in by.items()}
    lines = ["| accuracy (%) | " + " | ".join(f"{d} ({n_seeds[d]} seeds)" for d in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, f in ROWS:
        lines.append(f"| {label} | " + " | ".join(C.fmt([f(r) for r in by[d]]) for d in names) + " |")
    lines += ["", "| torch PTQ vs qjax (summed over seeds) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    keys = [("output integers compared", "outputs"),
            ("mismatching output integers, `qjax.from_torch`", "from_torch_int_mismatch"),
            ("mismatching predictions, `qjax.from_torch`", "from_torch_pred_mismatch"),
            ("mismatching output integers, `qnn.from_qmodel`", "qnn_int_mismatch"),
            ("mismatching predictions, `qnn.from_qmodel`", "qnn_pred_mismatch")]
    for label, k in keys:
        lines.append(f"| {label} | " + " | ".join(str(sum(r["compare"][k] for r in by[d])) for d in names) + " |")
    lines.append("| `qjax.hardware.convert` vs `qnn` integer mode, gemmlowp + dyadic8 (output mismatches) | "
                 + " | ".join(str(sum(sum(r["hw_consistency_mismatch"].values()) for r in by[d])) for d in names)
                 + " |")
    lines.append("| QAT model → `qnn.to_torch` → torch fbgemm vs qjax (output mismatches) | "
                 + " | ".join(str(sum(r["qat_to_torch_float_mismatch"] for r in by[d]))
                              if all("qat_to_torch_float_mismatch" in r for r in by[d]) else "n/a (1-d: to_torch "
                              "exports 2-d only)" for d in names) + " |")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.6), squeeze=False)
    for ax, d in zip(axes[0], names):
        runs = [r for r in res["runs"] if r["dataset"] == d]
        ms = [C.mean_std([f(r) for r in runs]) for _, f in ROWS]
        y = np.arange(len(ROWS))[::-1]
        colors = ["#777"] + ["#c44"] * 2 + ["#e96"] * 2 + ["#48c"] * 3 + ["#2a6"] * 2
        ax.barh(y, [100 * m for m, _ in ms], xerr=[100 * s for _, s in ms], color=colors, capsize=3)
        ax.set_yticks(y, [l for l, _ in ROWS], fontsize=8)
        lo = min(100 * m - 100 * s for m, s in ms)
        ax.set_xlim(max(0, lo - 3), 100 * max(m + s for m, s in ms) + 1.5)
        ax.set_xlabel("test accuracy (%)")
        ax.set_title(f"{d}: mean ± std over {len(runs)} seeds")
        for yi, (m, sd) in zip(y, ms):
            ax.text(100 * (m + sd), yi, f"  {100 * m:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 QAT steps, nothing saved")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--datasets", default="digits,mnist1d")
    a = ap.parse_args(argv)
    seeds, steps = (1, 20) if a.quick else (a.seeds, a.steps)
    t0 = time.perf_counter()
    runs = [run_one(d, s, steps, C.log) for d in a.datasets.split(",") for s in range(seeds)]
    res = dict(experiment="deployment_gap", qat_steps=steps, seeds=seeds, wall_s=time.perf_counter() - t0,
               environment=C.environment(), runs=runs)
    print(table(res))
    if not a.quick:
        C.save_json("deployment_gap.json", res)
        plot(res, C.RESULTS + "/deployment_gap.png")
    C.log(f"wall {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
