"""How far a model under a hardware spec is from the model's own (fbgemm) arithmetic, per layer.

For every integer-only node two comparisons, in integer steps of that node's output:

* **isolated** — the hardware node fed the *reference* model's inputs to that node: the
  deviation this layer's arithmetic adds by itself;
* **end to end** — the hardware model run throughout: deviations accumulated up to here.

Plus the model output's deviation and, from its argmax, top-1 agreement and (with
labels) the accuracy of both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..graph import OPS, QModel, node_args, refs
from ..qarray import QArray
from .convert import HARDWARE_OPS

__all__ = ["LayerDeviation", "DeviationReport", "deviation"]


@dataclasses.dataclass
class LayerDeviation:
    node: str
    op: str
    spec: str
    outputs: int
    isolated_differ: int
    isolated_max_abs: int
    e2e_differ: int
    e2e_max_abs: int


@dataclasses.dataclass
class DeviationReport:
    spec: str
    layers: list
    output_differ: int
    output_total: int
    output_max_abs: float
    top1_agreement: float | None
    accuracy_reference: float | None
    accuracy_hardware: float | None
    samples: int

    def rows(self):
        for r in self.layers:
            yield (r.node, r.op, r.spec, r.outputs, _pct(r.isolated_differ, r.outputs), r.isolated_max_abs,
                   _pct(r.e2e_differ, r.outputs), r.e2e_max_abs)

    def __str__(self):
        head = ("layer", "op", "spec", "outputs", "isolated Δ≠0", "max|Δ|", "end-to-end Δ≠0", "max|Δ|")
        rows = [head] + [tuple(str(c) for c in row) for row in self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [f"hardware spec {self.spec} vs the imported (fbgemm) arithmetic on {self.samples} inputs"]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.rjust(w) if j >= 3 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"model output: {self.output_differ} of {self.output_total} differ "
                     f"({100 * self.output_differ / max(self.output_total, 1):.2f}%), max |Δ| {self.output_max_abs:g}"
                     " (output integer steps, or float units for a dequantized output)")
        if self.top1_agreement is not None:
            lines.append(f"top-1 agreement with fbgemm: {100 * self.top1_agreement:.2f}%")
        if self.accuracy_reference is not None:
            lines.append(f"accuracy: fbgemm {100 * self.accuracy_reference:.2f}%, "
                         f"{self.spec} {100 * self.accuracy_hardware:.2f}%")
        return "\n".join(lines)

    def to_dict(self):
        return dataclasses.asdict(self)


def _pct(k, n):
    return f"{100 * k / n:.3g}%" if k else "0"


def _ints(v):
    return np.asarray(v.values if isinstance(v, QArray) else v).astype(np.int64)


def _out(v):
    """A model output for comparison: integers of a QArray, else the (dequantized) floats in float64."""
    return _ints(v) if isinstance(v, QArray) else np.asarray(v, np.float64)


@jax.jit
def _isolated(hw: QModel, env):
    """Each hardware node applied to the reference model's values of its inputs."""
    out = {}
    for node in hw.nodes:
        if node.op in HARDWARE_OPS:
            out[node.name] = OPS[node.op](node.config(), hw.params.get(node.name), *node_args(node, env))
    return out


def deviation(reference: QModel, hardware: QModel, x, labels=None, batch_size: int = 64) -> DeviationReport:
    """Compare ``hardware`` (from :func:`qjax.hardware.convert`) with ``reference`` on inputs ``x``.

    ``labels`` (ints, one per sample) adds end-task accuracy for both models.
    """
    x = np.asarray(x, np.float32)
    specs = {k: v[1] for k, v in dict(hardware.info).get("hardware_layers", ())}
    names = [n.name for n in hardware.nodes if n.op in HARDWARE_OPS]
    ops = {n.name: n.op for n in reference.nodes}
    stats = {k: [0, 0, 0, 0, 0] for k in names}  # outputs, iso differ, iso max, e2e differ, e2e max
    ref_outs, hw_outs = [], []
    needed = set()
    for n in hardware.nodes:
        if n.op in HARDWARE_OPS:
            refs(n.args, needed)
    for start in range(0, len(x), batch_size):
        xb = jnp.asarray(x[start:start + batch_size])
        ref_y, ref_env = reference.capture(xb)
        hw_y, hw_env = hardware.capture(xb, names=tuple(names))
        full = dict(ref_env, **{reference.inputs[0]: xb})
        iso = _isolated(hardware, {k: full[k] for k in needed})
        for k in names:
            r = _ints(ref_env[k])
            di, de = np.abs(_ints(iso[k]) - r), np.abs(_ints(hw_env[k]) - r)
            s = stats[k]
            s[0] += r.size
            s[1] += int(np.count_nonzero(di))
            s[2] = max(s[2], int(di.max(initial=0)))
            s[3] += int(np.count_nonzero(de))
            s[4] = max(s[4], int(de.max(initial=0)))
        ref_outs.append(_out(ref_y))
        hw_outs.append(_out(hw_y))
    ref_all, hw_all = np.concatenate(ref_outs), np.concatenate(hw_outs)
    d = np.abs(ref_all - hw_all)
    layers = [LayerDeviation(k, ops[k], specs.get(k, "?"), *stats[k]) for k in names]
    top1 = acc_r = acc_h = None
    if ref_all.ndim == 2:
        pr, ph = ref_all.argmax(-1), hw_all.argmax(-1)
        top1 = float(np.mean(pr == ph))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            acc_r, acc_h = float(np.mean(pr == labels)), float(np.mean(ph == labels))
    return DeviationReport(str(dict(hardware.info).get("hardware")), layers, int(np.count_nonzero(d)), int(d.size),
                           float(d.max(initial=0)), top1, acc_r, acc_h, len(x))
