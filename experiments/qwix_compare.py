"""Experiment 4 — peer comparison: Qwix QAT vs qjax QAT on the same models, data, steps and optimizer.

    .venv/bin/pip install -e '.[qwix]'                         # benchmark-only extra (qwix==0.1.8)
    .venv/bin/python -m experiments.qwix_compare               # -> results/qwix_compare.json + .png
    .venv/bin/python -m experiments.qwix_compare --quick

Both start from the same float weights (experiment 1's torch float model) and run the same QAT: batch 128,
Adam with cosine decay from 3e-4 (qjax's scales: 1e-5), the same batches (same seed), jitted steps.

* **qjax**: ``qjax.nn`` model, torch-identical MinMax observers on 512 calibration samples, LSQ QAT whose
  forward is the fbgemm integer path; evaluated in integer mode (what fbgemm / ``qnn.to_torch`` deploys).
* **Qwix** (``QtProvider`` + ``QtRule(weight_qtype=int8, act_qtype=int8)``): Qwix's quantized training on a
  plain ``flax.nnx`` model (symmetric absmax int8 weights per channel, *dynamic-range* int8 activations, its
  default on XLA); evaluated with Qwix's own quantized forward, which is its deployment model.

The two libraries quantize activations differently (static affine uint8 with observer ranges vs dynamic
symmetric int8 per batch), so accuracy is "each library's recommended int8 QAT recipe", not identical math.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import common as C


class FlaxNet(nnx.Module):
    """The float torch model as plain flax.nnx layers (channels-last), for Qwix."""

    def __init__(self, tm, x_nchw):
        import torch

        mods = list(tm.body)
        with torch.no_grad():
            h = torch.from_numpy(x_nchw[:1])
            for m in mods:
                if isinstance(m, torch.nn.Flatten):
                    break
                h = m(h)
        conv_out = tuple(h.shape[1:])
        layers, relus, flat_seen = [], [], False
        r = nnx.Rngs(0)
        for i, m in enumerate(mods):
            relu = i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.ReLU)
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
                w = m.weight.detach().numpy()
                nd = w.ndim - 2
                l = nnx.Conv(m.in_channels, m.out_channels, tuple(m.kernel_size), strides=tuple(m.stride),
                             padding=[(p, p) for p in m.padding], rngs=r)
                l.kernel.set_value(jnp.asarray(np.transpose(w, tuple(range(2, 2 + nd)) + (1, 0))))
                l.bias.set_value(jnp.asarray(m.bias.detach().numpy()))
            elif isinstance(m, torch.nn.Linear):
                k = m.weight.detach().numpy().T
                if flat_seen:
                    idx = np.arange(k.shape[0]).reshape(conv_out)
                    k = k[np.moveaxis(idx, 0, -1).reshape(-1)]
                    flat_seen = False
                l = nnx.Linear(m.in_features, m.out_features, rngs=r)
                l.kernel.set_value(jnp.asarray(k))
                l.bias.set_value(jnp.asarray(m.bias.detach().numpy()))
            elif isinstance(m, torch.nn.Flatten):
                flat_seen = True
                l = "flatten"
            else:
                continue
            layers.append(l)
            relus.append(relu)
        self.layers = nnx.List([l for l in layers if l != "flatten"])
        self.plan = tuple(("flatten", False) if l == "flatten" else ("layer", rl) for l, rl in zip(layers, relus))

    def __call__(self, x):
        it = iter(self.layers)
        for kind, relu in self.plan:
            if kind == "flatten":
                x = x.reshape(x.shape[0], -1)
                continue
            x = next(it)(x)
            if relu:
                x = jax.nn.relu(x)
        return x


def qwix_model(tm, xtr, xtr_cl, qtype=jnp.int8):
    import qwix

    rules = [qwix.QtRule(module_path=".*", weight_qtype=qtype, act_qtype=qtype)]
    return qwix.quantize_model(FlaxNet(tm, xtr[:1]), qwix.QtProvider(rules), jnp.asarray(xtr_cl[:4]))


def run_one(name, seed, steps, log):
    import qjax.nn as qnn

    xtr, ytr, xte, yte = C.load_data(name)
    xtr_cl, xte_cl = C.channels_last(xtr), C.channels_last(xte)
    tm = C.train_float(name, seed, xtr, ytr)
    r = dict(dataset=name, seed=seed, float=float((C.torch_logits(tm, xte).argmax(-1) == yte).mean()))
    # the flax port of the float model is the same function
    fn = FlaxNet(tm, xtr[:1])
    r["flax_float"] = C.accuracy(fn, xte_cl, yte)[0]

    # qjax: observers -> LSQ QAT on the fbgemm integer path -> integer-mode evaluation
    net = C.qnn_from_torch_float(tm, xtr[:1])
    C.calibrate(net, xtr_cl[np.random.default_rng(seed).permutation(len(xtr))[:512]])
    qnn.convert(net, from_observers=True)
    r["qjax_ptq"] = C.accuracy(net, xte_cl, yte)[0]
    qnn.prepare_qat(net, from_observers=False)
    t = time.perf_counter()
    _, r["qjax_step_s"] = C.qat(net, xtr_cl, ytr, steps, seed, qparam_lr=1e-5)
    r["qjax_qat_wall_s"] = time.perf_counter() - t
    qnn.convert(net)
    r["qjax_qat"] = C.accuracy(net, xte_cl, yte)[0]

    # Qwix: QtProvider int8 QAT, the same batches and optimizer
    qm = qwix_model(tm, xtr, xtr_cl)
    r["qwix_before_qat"] = C.accuracy(qm, xte_cl, yte)[0]
    t = time.perf_counter()
    _, r["qwix_step_s"] = C.qat(qm, xtr_cl, ytr, steps, seed)
    r["qwix_qat_wall_s"] = time.perf_counter() - t
    r["qwix_qat"] = C.accuracy(qm, xte_cl, yte)[0]
    log(f"{name} seed {seed}: float {r['float']:.4f} qjax PTQ {r['qjax_ptq']:.4f} QAT {r['qjax_qat']:.4f} "
        f"({1e3 * r['qjax_step_s']:.1f} ms/step) | qwix before {r['qwix_before_qat']:.4f} QAT {r['qwix_qat']:.4f} "
        f"({1e3 * r['qwix_step_s']:.1f} ms/step)")
    return r


def qwix_int4_status(name="mnist1d"):
    """Does Qwix's int4 QAT run on this CPU backend? (the error message, verbatim, if not)."""
    try:
        xtr, ytr, xte, _ = C.load_data(name)
        tm = C.torch_model(name, 0).eval()
        qm = qwix_model(tm, xtr, C.channels_last(xtr), jnp.int4)
        np.asarray(qm(jnp.asarray(C.channels_last(xte[:4]))))
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported verbatim
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"


ROWS = [("float (torch)", "float"), ("float (flax port, used by Qwix)", "flax_float"),
        ("qjax PTQ (observers, fbgemm integers)", "qjax_ptq"), ("qjax LSQ QAT → fbgemm integers", "qjax_qat"),
        ("Qwix int8 before QAT (dynamic-range)", "qwix_before_qat"), ("Qwix int8 QAT", "qwix_qat")]


def table(res):
    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    by = {d: [r for r in res["runs"] if r["dataset"] == d] for d in names}
    lines = ["| | " + " | ".join(f"{d} ({len(by[d])} seeds)" for d in names) + " |", "|---|" + "---|" * len(names)]
    for label, k in ROWS:
        lines.append(f"| {label}, accuracy % | " + " | ".join(C.fmt([r[k] for r in by[d]]) for d in names) + " |")
    for label, k in (("qjax QAT step time, ms", "qjax_step_s"), ("Qwix QAT step time, ms", "qwix_step_s")):
        lines.append(f"| {label} | " + " | ".join(
            f"{1e3 * np.mean([r[k] for r in by[d]]):.1f} ± {1e3 * np.std([r[k] for r in by[d]], ddof=1):.1f}"
            if len(by[d]) > 1 else f"{1e3 * by[d][0][k]:.1f}" for d in names) + " |")
    lines += ["", f"Qwix int4 (`QtRule(weight_qtype=int4, act_qtype=int4)`) on this CPU: `{res['qwix_int4']}`"]
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    w = 0.35
    for i, (lab, k, st) in enumerate((("qjax", "qjax_qat", "qjax_step_s"), ("Qwix", "qwix_qat", "qwix_step_s"))):
        ms = [C.mean_std([r[k] for r in res["runs"] if r["dataset"] == d]) for d in names]
        axes[0].bar(np.arange(len(names)) + (i - 0.5) * w, [100 * m for m, _ in ms], w,
                    yerr=[100 * s for _, s in ms], capsize=3, label=lab + " QAT (int8)")
        ts = [C.mean_std([r[st] for r in res["runs"] if r["dataset"] == d]) for d in names]
        axes[1].bar(np.arange(len(names)) + (i - 0.5) * w, [1e3 * m for m, _ in ts], w,
                    yerr=[1e3 * s for _, s in ts], capsize=3, label=lab)
    fl = [100 * np.mean([r["float"] for r in res["runs"] if r["dataset"] == d]) for d in names]
    axes[0].scatter(np.arange(len(names)), fl, marker="_", s=600, color="k", label="float", zorder=3)
    axes[0].set_ylim(min(fl) - 10, 100)
    for ax, yl in zip(axes, ("test accuracy (%)", "QAT step time (ms, batch 128, 1 XLA thread, loaded VM)")):
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(yl)
        ax.legend(fontsize=8)
    axes[0].set_title("accuracy after the same QAT steps")
    axes[1].set_title("step time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    import qwix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--datasets", default="digits,mnist1d")
    a = ap.parse_args(argv)
    seeds, steps = (1, 10) if a.quick else (a.seeds, a.steps)
    t0 = time.perf_counter()
    runs = [run_one(d, s, steps, C.log) for d in a.datasets.split(",") for s in range(seeds)]
    res = dict(experiment="qwix_compare", qwix=qwix.__version__, qat_steps=steps, seeds=seeds,
               qwix_int4=qwix_int4_status(), environment=C.environment(), runs=runs)
    res["wall_s"] = time.perf_counter() - t0
    print(table(res))
    if not a.quick:
        C.save_json("qwix_compare.json", res)
        plot(res, C.RESULTS + "/qwix_compare.png")
    C.log(f"wall {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
