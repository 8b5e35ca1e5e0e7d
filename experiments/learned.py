"""Experiment 3 — learned quantization: LSQ / LSQ+ vs fixed observer scales, AdaRound vs nearest, at 8/6/4 bits.

    .venv/bin/python -m experiments.learned            # full run -> results/learned.json + learned.png
    .venv/bin/python -m experiments.learned --quick    # smoke run, nothing saved

``b`` bits means weights *and* activations: per-channel symmetric weights in ``[-2**(b-1), 2**(b-1)-1]`` inside
int8 containers, activations in ``[0, 2**b-1]`` inside uint8 containers (the logits stay 8-bit).  The models are
qjax.nn Sequentials built from the float torch model of experiment 1 (fbgemm arithmetic, integer-mode
evaluation); observers are qjax's MinMax / per-channel MinMax (torch-identical) with the low-bit quant range.

Methods (all evaluated on the deployed integer path):

* ``PTQ nearest`` — observer scales, weights rounded to nearest;
* ``PTQ AdaRound`` — observer scales, weights rounded by ``qjax.ste.adaround.reconstruct`` (layer-wise, float
  inputs, 300 Adam steps per layer on 512 calibration samples);
* ``QAT fixed scales`` — QAT with the clipped STE, scales and zero points frozen at the observer's values;
* ``QAT LSQ`` — learned scales (``estimator="lsq"``; Adam at 1e-5 for scales vs 5e-4 for weights — with one shared
  rate Adam moves the ~0.01-sized scales by ~5e-4 per step and LSQ lost accuracy: ``results/learned_same_lr.json``);
* ``QAT LSQ+`` — learned scales and zero points (``estimator="lsq_plus"``).

Low-bit ranges inside the 8-bit containers are enforced by two workarounds in ``experiments/common.py``
(qjax.nn layers clamp to the container range only): :class:`~experiments.common.ActClamp` after every layer
and :func:`~experiments.common.project_weights` (clip the float weights into the range after every
optimizer step and after PTQ).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import common as C

BITS = (8, 6, 4)
QPARAM_LR = 1e-5  # Adam rate of the scales / zero points (weights: 5e-4); see README
METHODS = ("ptq_nearest", "ptq_adaround", "qat_fixed", "qat_lsq", "qat_lsq_plus")
LABELS = {"ptq_nearest": "PTQ nearest (observer scales)", "ptq_adaround": "PTQ AdaRound (observer scales)",
          "qat_fixed": "QAT, fixed observer scales", "qat_lsq": "QAT, LSQ learned scales",
          "qat_lsq_plus": "QAT, LSQ+ learned scales + zero points"}


def build(tm, xtr, bits, estimator):
    import qjax.nn as qnn

    act, wt = C.low_bit_observers(bits)
    net = C.qnn_from_torch_float(tm, xtr[:1], act_observer=act, weight_observer=wt, estimator=estimator)
    net = C.insert_act_clamps(net, bits)
    return net


def layer_inputs(net, x_cl):
    """Float inputs of every conv/dense layer (the float model run layer by layer)."""
    import qjax.nn as qnn

    qnn.set_mode(net, "float")
    h, ins = jnp.asarray(x_cl), []
    for l in net.layers:
        if isinstance(l, (C.QConv, C.QDense)):
            ins.append(h)
        h = l(h)
    return ins


def _float_layer(kind, strides, padding, relu, w, b, x):
    """A QConv/QDense in float (pure), for AdaRound's reconstruction."""
    if kind == "dense":
        y = x @ w + b
    else:
        sp = "HW" if x.ndim == 4 else "W"
        dn = lax.conv_dimension_numbers(x.shape, w.shape, ("N" + sp + "C", sp + "IO", "N" + sp + "C"))
        y = lax.conv_general_dilated(x, w, strides, [(p, p) for p in padding], dimension_numbers=dn,
                                     precision=lax.Precision.HIGHEST) + b
    return jax.nn.relu(y) if relu else y


@functools.partial(jax.jit, static_argnames=("kind", "strides", "padding", "relu", "steps"))
def _adaround_layer(w, b, s, x, *, kind, strides, padding, relu, steps):
    """qjax.ste.adaround.reconstruct's optimisation, jitted once per layer shape (reconstruct builds a new jitted
    closure on every call, which recompiles for every layer, bit width and seed)."""
    from qjax.ste import adaround

    fwd = functools.partial(_float_layer, kind, strides, padding, relu)
    return adaround.reconstruct(w, s, jnp.zeros_like(s), x, lambda wt, xx: fwd(wt, b, xx), axis=w.ndim - 1,
                                steps=steps, lr=1e-2, reg_weight=0.01)[0]


def adaround_weights(net, xcal_cl, bits, steps=300):
    """Replace every layer's kernel by AdaRound's hard integer choice (times the scale); returns #weights moved
    away from nearest."""
    from qjax.ste import adaround
    from qjax._src.quantize import quantize
    from qjax._src.dtypes import qint8

    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    ins = layer_inputs(net, xcal_cl)
    changed = 0
    for layer, x in zip(C.weighted(net), ins):
        w = layer.kernel.get_value()
        axis = w.ndim - 1
        s = layer._ws()
        z = jnp.zeros_like(s)  # symmetric weights
        kind = "dense" if isinstance(layer, C.QDense) else "conv"
        geo = dict(strides=None, padding=None) if kind == "dense" else dict(strides=tuple(layer.strides),
                                                                          padding=tuple(layer.padding))
        v = _adaround_layer(w, layer.bias.get_value(), s, x, kind=kind, relu=bool(layer.relu), steps=steps, **geo)
        hard = jnp.clip(adaround.hard_weight(w, v, s, z, axis=axis).values.astype(jnp.int32), qmin, qmax)
        near = jnp.clip(quantize(w, s, z.astype(jnp.int32), qint8, axis=axis).values.astype(jnp.int32), qmin, qmax)
        changed += int((hard != near).sum())
        layer.kernel.set_value(hard.astype(jnp.float32) * s)
        got = np.asarray(layer.quantized_weight().values, np.int32)
        assert (got == np.asarray(hard)).all(), "AdaRound weights do not round-trip through quantized_weight()"
    return changed


def run_one(name, seed, steps, log, bits_list=BITS):
    import qjax.nn as qnn

    xtr, ytr, xte, yte = C.load_data(name)
    xtr_cl, xte_cl = C.channels_last(xtr), C.channels_last(xte)
    t0 = time.perf_counter()
    tm = C.train_float(name, seed, xtr, ytr)
    r = dict(dataset=name, seed=seed, float=float((C.torch_logits(tm, xte).argmax(-1) == yte).mean()), bits={})
    xcal = xtr_cl[np.random.default_rng(seed).permutation(len(xtr))[:512]]
    for bits in bits_list:
        rb = r["bits"][str(bits)] = {}

        def calibrated(estimator):
            net = build(tm, xtr, bits, estimator)
            C.calibrate(net, xcal)
            return net

        net = calibrated("lsq")
        qnn.convert(net, from_observers=True)
        C.project_weights(net, bits)
        rb["ptq_nearest"] = C.accuracy(net, xte_cl, yte)[0]
        assert C.weight_ints_in_range(net, bits)

        net = calibrated("lsq")
        qnn.convert(net, from_observers=True)
        rb["adaround_changed"] = adaround_weights(net, xcal, bits)
        qnn.set_mode(net, "integer")
        rb["ptq_adaround"] = C.accuracy(net, xte_cl, yte)[0]
        assert C.weight_ints_in_range(net, bits)

        for method, est, train_q in (("qat_fixed", "clipped", False), ("qat_lsq", "lsq", True),
                                     ("qat_lsq_plus", "lsq_plus", True)):
            net = calibrated(est)
            qnn.prepare_qat(net)
            C.project_weights(net, bits)
            _, dt = C.qat(net, xtr_cl, ytr, steps, seed, lr=5e-4, bits=bits, train_qparams=train_q,
                          qparam_lr=QPARAM_LR)
            qnn.convert(net)
            rb[method] = C.accuracy(net, xte_cl, yte)[0]
            rb[method + "_step_s"] = dt
            assert C.weight_ints_in_range(net, bits)
        log(f"{name} seed {seed} W{bits}A{bits}: " + " ".join(f"{m} {rb[m]:.4f}" for m in METHODS)
            + f" ({time.perf_counter() - t0:.0f} s)")
    return r


def table(res):
    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    lines = []
    for d in names:
        runs = [r for r in res["runs"] if r["dataset"] == d]
        bits = list(runs[0]["bits"])
        lines += [f"**{d}** (float {C.fmt([r['float'] for r in runs])} %, {len(runs)} seeds)", "",
                  "| accuracy (%) | " + " | ".join(f"W{b}A{b}" for b in bits) + " |", "|---|" + "---|" * len(bits)]
        for m in METHODS:
            lines.append(f"| {LABELS[m]} | " + " | ".join(C.fmt([r["bits"][b][m] for r in runs]) for b in bits)
                         + " |")
        lines.append("| weights AdaRound rounds differently from nearest (mean) | "
                     + " | ".join(f"{np.mean([r['bits'][b]['adaround_changed'] for r in runs]):.0f}" for b in bits)
                     + " |")
        lines.append("")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in res["runs"]))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, d in zip(axes[0], names):
        runs = [r for r in res["runs"] if r["dataset"] == d]
        bits = list(runs[0]["bits"])
        w = 0.16
        for i, m in enumerate(METHODS):
            ms = [C.mean_std([r["bits"][b][m] for r in runs]) for b in bits]
            ax.bar(np.arange(len(bits)) + (i - 2) * w, [100 * a for a, _ in ms], w, yerr=[100 * s for _, s in ms],
                   label=LABELS[m], capsize=2)
        fm = 100 * np.mean([r["float"] for r in runs])
        ax.axhline(fm, color="k", ls="--", lw=1, label=f"float ({fm:.1f})")
        ax.set_xticks(np.arange(len(bits)), [f"W{b}A{b}" for b in bits])
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0, min(100 * r["bits"][b][m] for r in runs for b in bits for m in METHODS) - 5), 102)
        ax.set_title(f"{d}: mean ± std over {len(runs)} seeds")
        ax.legend(fontsize=6, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    global QPARAM_LR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--datasets", default="mnist1d")
    ap.add_argument("--bits", default="8,6,4")
    ap.add_argument("--qparam-lr", type=float, default=QPARAM_LR)
    ap.add_argument("--tag", default="", help="save as results/learned_<tag>.json/.png")
    a = ap.parse_args(argv)
    seeds, steps = (1, 10) if a.quick else (a.seeds, a.steps)
    t0 = time.perf_counter()
    bits = tuple(int(b) for b in a.bits.split(","))
    QPARAM_LR = a.qparam_lr
    runs = [run_one(d, s, steps, C.log, bits) for d in a.datasets.split(",") for s in range(seeds)]
    res = dict(experiment="learned", qat_steps=steps, seeds=seeds, wall_s=time.perf_counter() - t0, qparam_lr=QPARAM_LR,
               environment=C.environment(), runs=runs)
    print(table(res))
    if not a.quick:
        out = "learned" + (f"_{a.tag}" if a.tag else "")
        C.save_json(out + ".json", res)
        plot(res, C.RESULTS + f"/{out}.png")
    C.log(f"wall {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
