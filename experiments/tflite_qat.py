"""Experiment 5 — a ``.tflite`` through QAT and back: import, train with LiteRT's exact integers, write, re-run.

    .venv/bin/python -m experiments.tflite_qat             # -> results/tflite_qat.json (+ the trained .tflite)
    .venv/bin/python -m experiments.tflite_qat --quick     # a few steps, nothing saved

The model is ``tests/tflite_models.py``'s MobileNet-style int8 flatbuffer (seeded random weights, calibrated
activations; float input ``(1, 8, 8, 3)`` -> QUANTIZE -> CONV 3x3/2 + RELU6 -> depthwise + RELU6 -> 1x1 -> an
inverted residual block with its ADD -> HARD_SWISH -> MEAN -> FULLY_CONNECTED -> SOFTMAX -> DEQUANTIZE).  The
data are scikit-learn's 8x8 digits (standardised with the training set's mean / std, the gray channel repeated
three times; the fixed 1437 / 360 split of ``experiments/common.py``).

Steps: ``qjax.from_tflite(model, kernels=...)`` (default ``xnnpack``, the interpreter's default) ->
``qjax.TFLiteQAT`` (float kernels / biases; forward = the integer model on the family's kernels, backward = the
float surrogate's straight-through gradient) -> Adam on the cross-entropy of the model's own (dequantized,
1/256-step) softmax output -> ``qjax.to_tflite`` -> LiteRT's interpreter under every family, compared with the
written file re-imported per family and with the trained QModel's own forward (mismatch counts over all test
outputs; the trained QModel is compared with every family too: 0 on its own, and the other families' counts are
the outputs that deploying on another kernel family changes).  Accuracies are the interpreter's own (argmax of
its output), before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import common as C

sys.path.insert(0, os.path.join(os.path.dirname(C.HERE), "tests"))
from tflite_models import mobilenet_style  # noqa: E402

import qjax  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402

FAMILIES = litert_runtime.KERNELS


def digits_nhwc():
    """(x_train, y_train, x_test, y_test): digits as ``(N, 8, 8, 3)`` float32, standardised on the training set."""
    xtr, ytr, xte, yte = C.load_data("digits")
    xtr, xte = C.channels_last(xtr), C.channels_last(xte)
    mu, sd = float(xtr.mean()), float(xtr.std())
    xtr, xte = ((x - mu) / sd for x in (xtr, xte))
    return (np.repeat(xtr, 3, -1).astype(np.float32), ytr, np.repeat(xte, 3, -1).astype(np.float32), yte)


def accuracy(model_bytes, x, y, kernels):
    return float(np.mean(np.argmax(litert_runtime.run(model_bytes, [x], kernels)[0], -1) == y))


def table(res) -> str:
    """The README table of ``results/tflite_qat.json`` (experiments/report.py)."""
    fams = list(res["accuracy_before"])
    own = f"trained_qmodel_{res['trained_with']}_vs_litert"
    rows = ["| | " + " | ".join(f"LiteRT {k}" for k in fams) + " |", "|---|" + "---|" * len(fams),
            "| accuracy before QAT, % | " + " | ".join(f"{100 * res['accuracy_before'][k]:.2f}" for k in fams) + " |",
            "| accuracy after QAT + to_tflite, % | " + " | ".join(f"{100 * res['accuracy_after'][k]:.2f}" for k in fams)
            + " |",
            "| written file re-imported per family vs LiteRT, mismatches | "
            + " | ".join(f"{res['mismatches'][k]['reimported_vs_litert']} / {res['test_outputs']}" for k in fams) + " |",
            f"| the trained QModel ({res['trained_with']}) vs LiteRT, mismatches | "
            + " | ".join(f"{res['mismatches'][k][own]} / {res['test_outputs']}" for k in fams) + " |"]
    return "\n".join(rows) + (f"\n\n{res['model']}, trained with the {res['trained_with']} family: {res['steps']} "
                               f"Adam steps (batch {res['batch']}, lr {res['lr']}, cosine), loss "
                               f"{res['loss_first_last'][0]:.3f} -> {res['loss_first_last'][1]:.3f}, training "
                               f"{res['train_seconds']} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="xnnpack", choices=FAMILIES, help="the family trained with")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="30 steps, nothing saved")
    args = ap.parse_args(argv)
    steps = 30 if args.quick else args.steps
    t0 = time.time()
    xtr, ytr, xte, yte = digits_nhwc()
    data = mobilenet_style(args.seed, size=8, width=args.width)
    qm = qjax.from_tflite(data, kernels=args.kernels)
    qat = qjax.TFLiteQAT(qm)

    def loss_fn(p, xb, yb):
        prob = qat.apply(p, xb)  # SOFTMAX -> DEQUANTIZE: the probabilities LiteRT computes, at 1/256
        return -jnp.mean(jnp.log(jnp.maximum(jnp.take_along_axis(prob, yb[:, None], 1)[:, 0], 1.0 / 512)))

    sched = optax.cosine_decay_schedule(args.lr, steps)
    opt = optax.adam(sched)

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    before = {k: accuracy(data, xte, yte, k) for k in FAMILIES}
    p = qat.init()
    s = opt.init(p)
    rng = np.random.default_rng(args.seed)
    losses = []
    t_train = time.time()
    for i in range(steps):
        idx = rng.integers(0, len(xtr), args.batch)
        p, s, loss = step(p, s, xtr[idx], ytr[idx])
        losses.append(float(loss))
        if i % max(steps // 10, 1) == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {np.mean(losses[-20:]):.4f}", flush=True)
    t_train = time.time() - t_train
    trained = qat.to_qmodel(p)
    out = qjax.to_tflite(trained)
    after = {k: accuracy(out, xte, yte, k) for k in FAMILIES}

    own = np.asarray(trained(xte))
    report = {"model": f"mobilenet_style(seed={args.seed}, size=8, width={args.width})", "trained_with": args.kernels,
              "steps": steps, "batch": args.batch, "lr": args.lr, "test_outputs": int(own.size),
              "accuracy_before": before, "accuracy_after": after, "mismatches": {}}
    for k in FAMILIES:
        want = litert_runtime.run(out, [xte], k)[0]
        reimported = np.asarray(qjax.from_tflite(out, kernels=k)(xte))
        # the trained QModel computes its own family's integers: 0 there; the other families' counts are the
        # outputs that deploying on another kernel family changes
        report["mismatches"][k] = {"reimported_vs_litert": int((reimported != want).sum()),
                                   f"trained_qmodel_{args.kernels}_vs_litert": int((own != want).sum())}
    report["loss_first_last"] = [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))]
    report["train_seconds"] = round(t_train, 1)
    report["wall_s"] = round(time.time() - t0, 1)
    report["seeds"], report["qat_steps"] = 1, steps
    report["load_average_1min"] = round(os.getloadavg()[0], 1)  # a shared 2-core machine: wall times vary
    for k, v in report.items():
        print(f"{k}: {v}")
    if not args.quick:
        C.save_json("tflite_qat.json", report)
        with open(os.path.join(C.RESULTS, "tflite_qat_digits.tflite"), "wb") as f:
            f.write(out)
    bad = sum(m["reimported_vs_litert"] for m in report["mismatches"].values())
    bad += report["mismatches"][args.kernels][f"trained_qmodel_{args.kernels}_vs_litert"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
