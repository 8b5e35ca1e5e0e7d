"""An imported ``.tflite`` checked against LiteRT's interpreter: ``qjax verify model.tflite`` and
``qjax explain --model model.tflite`` (:mod:`qjax.verify` and the CLI call these).

* :func:`sample_inputs` — inputs of the model's input dtypes: float inputs uniform over the range of the
  QUANTIZE that reads them (its output dtype's, int8 or uint8, 10 % past it: saturation) with half the rows exact rounding ties
  ``(k + 1/2) * scale``; int8 / uint8 inputs uniform integers with rows of extremes.
* :func:`verify_tflite` — batches through the QModel and :func:`qjax.interop.litert_runtime.invoked`, counting
  outputs whose bits differ; for the first mismatching batch the first node whose integers differ from the
  interpreter's tensor (read with ``experimental_preserve_all_tensors``; tensors inside an XNNPACK partition
  are not readable and are skipped).
* :func:`explain_tflite` — one output integer of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED node step by
  step: its taps, the int32 accumulator, the node's family's requantization (the engine's own rule and
  Prepare-time parameters, :func:`qjax.requant.tflite.requant_params`) next to the other two families'
  and the exact rational value ``acc * sx * sw / sy``.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import os
import time

import jax
import numpy as np

from ..engines import LiteRT
from ..engines import litert_gemm
from ..qarray import QArray
from ..requant import tflite as rq
from . import litert_runtime
from .tflite import from_tflite, read_model

__all__ = ["TFLiteCheckError", "sample_inputs", "verify_tflite", "first_divergence", "compare_intermediates",
           "explain_tflite",
           "describe_requantization", "is_tflite", "load_tflite_inputs"]

# the rules requant_params names -> the requant.tflite functions computing them
_REQUANT = {"reference": rq.requantize_reference, "half_up": rq.requantize_half_up,
            "optimized_depthwise": rq.requantize_optimized_depthwise, "double_float": rq.requantize_double_float,
            "xnnpack": rq.requantize_xnnpack_fp32}


def _litert(data: bytes, inputs, kernels: str, *, preserve_all_tensors: bool = False):
    """:func:`qjax.interop.litert_runtime.invoked`, the interpreter's errors (a model it cannot prepare, a batch
    a fixed shape refuses) as one-line :class:`TFLiteCheckError` naming the model."""
    try:
        return litert_runtime.invoked(data, inputs, kernels, preserve_all_tensors=preserve_all_tensors)
    except (RuntimeError, ValueError) as e:
        raise TFLiteCheckError("model", f"LiteRT's interpreter ({kernels} kernels) refuses it on inputs of shapes "
                                        f"{[tuple(np.shape(x)) for x in inputs]}: {e}") from None


def _litert_outputs(data: bytes, inputs, kernels: str) -> list:
    it = _litert(data, inputs, kernels)
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


@functools.lru_cache(maxsize=None)
def _jitted_rule(rule):
    """One compile per rule (run op by op, the int64 emulation compiles ~100 tiny programs)."""
    return jax.jit(_REQUANT[rule])


class TFLiteCheckError(ValueError):
    """A user error: ``arg`` names the argument, the message the rule (one line)."""

    def __init__(self, arg: str, rule: str):
        self.arg, self.rule = arg, " ".join(str(rule).split())
        super().__init__(f"{arg}: {self.rule}")


def is_tflite(model) -> bool:
    """``model`` is a ``.tflite`` path (``str`` or any ``os.PathLike``) or flatbuffer bytes (``TFL3``
    identifier)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model[4:8]) == b"TFL3"
    if not isinstance(model, (str, os.PathLike)):
        return False
    try:
        model = os.fspath(model)
    except TypeError:  # a PathLike of bytes
        return False
    if isinstance(model, str) and model.endswith(".tflite"):
        return True
    if isinstance(model, str):
        try:
            with open(model, "rb") as f:
                return f.read(8)[4:8] == b"TFL3"
        except OSError:
            return False
    return False


# -- inputs -----------------------------------------------------------------------------------------------------


def _input_quantize(qm, k):
    """``(scale, zero_point, dtype)`` of the QUANTIZE reading float input ``k`` (dtype its output's, "int8" or
    "uint8"), or None."""
    src = f"tfl_input{k}"
    for n in qm.nodes:
        if n.op == "tfl_quantize" and any(getattr(a, "name", None) == src for a in n.args):
            cfg = n.config()
            scale, zp = cfg["out_qparams"]
            return float(scale), int(zp), str(cfg.get("dtype", "int8"))
    return None


def sample_inputs(qm, rng, n: int) -> list:
    """One array per model input, ``n`` samples each (see the module doc)."""
    out = []
    for k, (_, shape, dtype) in enumerate(qm.info["input_specs"]):
        shape = (n,) + tuple(shape[1:])
        if dtype == "float32":
            scale, zp, qdtype = _input_quantize(qm, k) or (1.0 / 32, 0, "int8")
            q = np.iinfo(np.dtype(qdtype))  # the QUANTIZE's output range: uint8 [0, 255] with its zero point
            lo, hi = (q.min - zp) * scale, (q.max - zp) * scale
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            x = rng.uniform(mid - 1.1 * half, mid + 1.1 * half, shape).astype(np.float32)
            ties = ((rng.integers(q.min, q.max + 1, shape) - zp + 0.5) * np.float64(scale)).astype(np.float32)
            x[n // 2:] = ties[n // 2:]
        else:
            info = np.iinfo(np.dtype(dtype))
            x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
            if n >= 4:
                x[-1] = np.where(rng.random(shape[1:]) < 0.5, info.min, info.max)
        out.append(x)
    return out


def load_tflite_inputs(inputs, specs) -> list:
    """A ``.npy`` (one-input models), ``.npz`` (one array per input, in the file's order) or a list of arrays,
    checked against the model's input dtypes and per-sample shapes."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = os.fspath(inputs)
        try:
            z = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as e:  # qjax never unpickles: an object array is not an input
            why = "numpy would read it as a pickle, which qjax never does" if "pickle" in str(e) else str(e)
            raise TFLiteCheckError("inputs", f"{inputs!r} is not a .npy / .npz file of arrays ({why})") from None
        arrays = [z[f] for f in z.files] if hasattr(z, "files") else [z]
    else:
        arrays = [np.asarray(a) for a in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    if len(arrays) != len(specs):
        raise TFLiteCheckError("inputs", f"the model takes {len(specs)} input(s), the file holds {len(arrays)}")
    out = []
    for k, (a, (_, shape, dtype)) in enumerate(zip(arrays, specs)):
        if tuple(a.shape[1:]) != tuple(shape[1:]):
            raise TFLiteCheckError("inputs", f"input {k} has per-sample shape {tuple(a.shape[1:])}; the model takes "
                                             f"{tuple(shape[1:])}")
        if dtype == "float32" and np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
        elif a.dtype != np.dtype(dtype):
            raise TFLiteCheckError("inputs", f"input {k} has dtype {a.dtype}; the model takes {dtype}")
        out.append(a)
    if len({a.shape[0] for a in out}) > 1:
        raise TFLiteCheckError("inputs", "the inputs hold different numbers of samples")
    return out


# -- comparing --------------------------------------------------------------------------------------------------


def _as_list(out):
    return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]


def _output_steps(qm) -> list:
    """Per output: the integer step its differences are counted in (1 for integer outputs; the DEQUANTIZE's
    input scale for float ones)."""
    by_name = {n.name: n for n in qm.nodes}
    outs = qm.output if isinstance(qm.output, tuple) else (qm.output,)
    steps = []
    for r in outs:
        src = by_name[by_name[r.name].args[0].name]
        steps.append(float(src.config()["in_qparams"][0][0]) if src.op == "tfl_dequantize" else 1.0)
    return steps


def compare_outputs(got, want, steps):
    """``(outputs, mismatches, max |delta| in integer steps, index of the first mismatch)``."""
    total = bad = 0
    worst, first = 0.0, None
    for k, (g, w, step) in enumerate(zip(got, want, steps)):
        if g.shape != w.shape:
            raise TFLiteCheckError("model", f"output {k}: qjax's shape {g.shape} differs from LiteRT's {w.shape}")
        total += w.size
        diff = (g.view(np.int32) != w.view(np.int32)) if g.dtype == np.float32 else (g != w)
        n = int(diff.sum())
        if n:
            bad += n
            d = np.abs(g.astype(np.float64) - w.astype(np.float64))[diff]
            worst = max(worst, float(np.nanmax(d)) / step if d.size else 0.0)
            if first is None:
                first = (k,) + tuple(int(i) for i in np.argwhere(diff)[0])
    return total, bad, worst, first


def compare_intermediates(qm, data: bytes, inputs, kernels: str) -> list:
    """Every node's output vs the interpreter's tensor (``experimental_preserve_all_tensors``), in execution
    order: ``[(node, mismatches, size, first index or None, qjax value, LiteRT value)]``.  XNNPACK-delegated
    operators' tensors are skipped (the delegate does not write them back)."""
    it = _litert(data, inputs, kernels, preserve_all_tensors=True)
    _, values = qm.capture(*inputs)
    skip = set(qm.info.get("delegated", ()))
    rows = []
    for n in qm.nodes:
        cfg = n.config()
        tensor = dict(cfg.get("tensors", ())).get("output")
        if tensor is None or cfg.get("op_index") in skip:
            continue
        v = values[n.name]
        got = np.asarray(v.values if isinstance(v, QArray) else v)
        want = it.get_tensor(tensor)
        if got.shape != want.shape:
            continue
        diff = (got.view(np.int32) != want.view(np.int32)) if got.dtype == np.float32 else (got != want)
        idx = tuple(int(i) for i in np.argwhere(diff)[0]) if diff.any() else None
        rows.append((n, int(diff.sum()), int(diff.size), idx, None if idx is None else got[idx].item(),
                     None if idx is None else want[idx].item()))
    return rows


def first_divergence(qm, data: bytes, inputs, kernels: str):
    """The first node (in execution order) whose output differs from the interpreter's tensor, as a dict (node,
    source, mismatches, size, index, qjax, litert) — or None (:func:`compare_intermediates`)."""
    for n, bad, size, idx, got, want in compare_intermediates(qm, data, inputs, kernels):
        if bad:
            return dict(node=n.name, source=n.source, mismatches=bad, size=size, index=idx, qjax=got, litert=want)
    return None


def verify_tflite(model, *, kernels=None, n=256, batch_size=64, seed=0, inputs=None, qmodel=None,
                  max_batches=None) -> dict:
    """Compare the import of ``model`` with LiteRT's interpreter (op resolver ``kernels``, default
    ``"xnnpack"``; with ``qmodel``, the kernels it was imported with — another ``kernels`` is refused) batch by
    batch.

    Returns a dict of the :class:`qjax.verify.VerifyReport` fields (``torch_seconds``: the interpreter's time).
    Random inputs (:func:`sample_inputs`) are seeded per batch (``default_rng([seed, batch])``); every batch
    is zero-padded to ``batch_size`` for qjax (one compile), the interpreter runs the real rows.  A model whose
    batch is pinned (``meta["fixed_batch"]``: LiteRT refuses another batch) runs at that batch: a last partial
    batch is zero-padded for both, and the outputs of the real rows are counted (all of an output whose first
    axis is not the batch's).  Interpreter errors are one-line :class:`TFLiteCheckError` (``"model"``).
    """
    data = read_model(model)
    t0 = time.perf_counter()
    if qmodel is None:
        qm = from_tflite(data, kernels=kernels or "xnnpack")
    else:
        qm = qmodel
        if qm.info.get("source") != "tflite":
            raise TFLiteCheckError("qmodel", "is not an import of a .tflite model (qjax.from_tflite)")
        if kernels is not None and kernels != qm.info["kernels"]:
            raise TFLiteCheckError("kernels", f"{kernels!r}, but the qmodel was imported with "
                                              f"kernels={qm.info['kernels']!r}; import it with from_tflite(..., "
                                              f"kernels={kernels!r}) or leave kernels unset")
    specs = qm.info["input_specs"]
    if int(batch_size) < 1:
        raise TFLiteCheckError("batch_size", f"{batch_size} is not a positive batch size")
    arrays = load_tflite_inputs(inputs, specs) if inputs is not None else None
    total_n = arrays[0].shape[0] if arrays is not None else int(n)
    if total_n < 1:
        raise TFLiteCheckError("n", f"{n} is not a positive number of inputs")
    batch_size = min(int(batch_size), total_n)
    # a fixed-shape RESHAPE / TRANSPOSE_CONV / constant activation pins the batch (LiteRT refuses another one)
    fixed = qm.info.get("fixed_batch")
    batch_size = fixed or batch_size
    batches = -(-total_n // batch_size)
    steps = _output_steps(qm)

    def batch(k):
        lo, hi = k * batch_size, min((k + 1) * batch_size, total_n)
        if arrays is not None:
            return [a[lo:hi] for a in arrays]
        return sample_inputs(qm, np.random.default_rng([seed, k]), hi - lo)

    def padded(xs):
        m = xs[0].shape[0]
        return [np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)]) if m < batch_size else x
                for x in xs]

    first = batch(0)
    _as_list(qm(*padded(first)))  # compile outside the timing
    compile_s = time.perf_counter() - t0
    rep = dict(outputs=0, mismatches=0, max_abs_step=0.0, samples=total_n, batch_size=batch_size, devices=1,
               qjax_seconds=0.0, torch_seconds=0.0, first_divergence=None, engine=f"litert:{qm.info['kernels']}",
               batches=batches, batches_done=0, compile_seconds=compile_s)
    t_loop = time.perf_counter()
    todo = batches if max_batches is None else min(batches, int(max_batches))
    for k in range(todo):
        xs = first if k == 0 else batch(k)
        m = xs[0].shape[0]
        if fixed:  # the interpreter runs the padded batch too (the only batch it takes)
            xs = padded(xs)
        t1 = time.perf_counter()
        got = _as_list(qm(*padded(xs)))
        t2 = time.perf_counter()
        want = _litert_outputs(data, xs, qm.info["kernels"])
        t3 = time.perf_counter()
        if fixed:  # count the real rows' outputs (all of an output without the batch axis first)
            want = [w[:m] if w.shape[:1] == (batch_size,) else w for w in want]
        got = [g[:w.shape[0]] if g.ndim and w.ndim else g for g, w in zip(got, want)]
        outs, bad, worst, index = compare_outputs(got, want, steps)
        rep["outputs"] += outs
        rep["mismatches"] += bad
        rep["max_abs_step"] = max(rep["max_abs_step"], worst)
        rep["qjax_seconds"] += t2 - t1
        rep["torch_seconds"] += t3 - t2
        rep["batches_done"] += 1
        if bad and rep["first_divergence"] is None:
            fd = first_divergence(qm, data, xs, qm.info["kernels"]) or dict(
                node="(output)", source="", mismatches=bad, size=outs, index=index, qjax=None, litert=None)
            fd.update(batch=k, torch=fd.pop("litert"))
            rep["first_divergence"] = fd
    rep["wall_seconds"] = time.perf_counter() - t_loop
    return rep


# -- explain ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TFLiteExplanation:
    """One output integer of a LiteRT GEMM node, step by step (see :func:`explain_tflite`)."""

    node: str
    source: str
    op: str
    index: tuple
    kernels: str
    x_taps: np.ndarray  # input integers read (padding cells hold the zero point)
    w_taps: np.ndarray
    x_scale: float
    x_zero_point: int
    w_scale: float
    bias: int | None
    out_scale: float
    out_zero_point: int
    activation: str
    acc: int  # sum (x - zx) * w + bias, exact
    exact: fractions.Fraction  # acc * sx * sw / sy, the real value in output steps (before + zy)
    families: dict  # kernels -> dict(rule, params, rounded, output)
    qjax_output: int
    litert_output: int | None

    def __str__(self) -> str:
        return render_explanation(self)


def _taps_conv(x, w, index, geometry, depthwise):
    n, oh, ow, o = index
    kh, kw, cg, cout = w.shape
    groups = geometry.groups
    og = cout // groups
    g = o // og
    xs, ws = [], []
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                ih = oh * geometry.strides[0] - geometry.padding[0][0] + i * geometry.dilation[0]
                iw = ow * geometry.strides[1] - geometry.padding[1][0] + j * geometry.dilation[1]
                inside = 0 <= ih < x.shape[1] and 0 <= iw < x.shape[2]
                xs.append(int(x[n, ih, iw, g * cg + c]) if inside else None)
                ws.append(int(w[i, j, c, o]))
    return xs, ws


def describe_requantization(engine, op, acc, sx, sw, sy, zy, activation, n_out, channel, groups=1) -> dict:
    """What ``engine`` (a :class:`~qjax.engines.LiteRT`) computes from the int32 accumulator ``acc`` of output
    channel ``channel``: its rule, the channel's Prepare-time parameters, the requantized value and the final
    clamped integer — with the engine layer's own rule and parameters (``requant_params``)."""
    rule, params = litert_gemm.requant_params(engine.kernels, op, sx, sw, sy, n_out, groups)
    accs = np.full((n_out,), acc, np.int32)  # one row: every channel's parameters, this accumulator
    r = int(np.asarray(_jitted_rule(rule)(accs, *params))[channel])
    lo, hi = (int(np.asarray(v)) for v in litert_gemm.output_range(rule, activation, sy, zy))
    return dict(rule=rule, params=tuple(np.asarray(p).reshape(-1)[channel if np.size(p) > 1 else 0].item()
                                        for p in params),
                rounded=r, output=int(np.clip(r + zy, lo, hi)), range=(lo, hi))


def explain_tflite(qm, node_name: str, inputs, index) -> TFLiteExplanation:
    """Trace output element ``index`` (``(n, h, w, c)`` for a conv, ``(row, o)`` for FULLY_CONNECTED's flattened
    output) of node ``node_name`` of an imported model on ``inputs`` (one array per model input)."""
    try:
        node = qm.node(node_name)
    except KeyError as e:
        raise TFLiteCheckError("layer", e.args[0]) from None
    if node.op not in ("tfl_conv", "tfl_fully_connected"):
        raise TFLiteCheckError("layer", f"node {node_name!r} is a {node.op} ({node.source}); explain traces "
                                        "CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED nodes")
    cfg, p = node.config(), qm.params[node.name]
    conv = node.op == "tfl_conv"
    index = tuple(int(i) for i in index)
    if len(index) != (4 if conv else 2):
        raise TFLiteCheckError("index", f"{index}: give {'n,h,w,c (4 numbers)' if conv else 'row,o (2 numbers)'} "
                                        f"for a {node.op} node")
    src = node.args[0].name
    _, values = qm.capture(*inputs, names=(src, node.name))
    xv = np.asarray(values[src].values).astype(np.int64)
    yv = np.asarray(values[node.name].values)
    w = np.asarray(p["weight"].values).astype(np.int64)
    (sx, zx), (sy, zy) = cfg["in_qparams"][0], cfg["out_qparams"]
    wscale = np.asarray(cfg["w_scale"].value, np.float32).reshape(-1)
    if conv:
        op = "DEPTHWISE_CONV_2D" if cfg["depthwise"] else "CONV_2D"
        n_out, groups = w.shape[3], cfg["geometry"].groups
    else:
        op, (n_out, k), groups = "FULLY_CONNECTED", w.shape, 1
        xv = xv.reshape(-1, k)
        yv = yv.reshape(-1, n_out)
    if any(not 0 <= i < s for i, s in zip(index, yv.shape)):
        raise TFLiteCheckError("index", f"{index} is not an element of the node's output of shape {yv.shape} "
                                        f"({'n,h,w,c' if conv else 'row,o'})")
    o = index[-1]
    if conv:
        xs, ws = _taps_conv(xv, w, index, cfg["geometry"], cfg["depthwise"])
    else:
        xs, ws = [int(v) for v in xv[index[0]]], [int(v) for v in w[o]]
    bias = None if p.get("bias") is None else int(np.asarray(p["bias"])[o])
    acc = sum((zx if xi is None else xi) * wi - zx * wi for xi, wi in zip(xs, ws)) + (bias or 0)
    sw = float(wscale[o] if wscale.size > 1 else wscale[0])
    exact = fractions.Fraction(acc) * fractions.Fraction(float(np.float32(sx))) * fractions.Fraction(
        float(np.float32(sw))) / fractions.Fraction(float(np.float32(sy)))
    engine = cfg["engine"]
    fams = {}
    for kernels in litert_runtime.KERNELS:
        fams[kernels] = describe_requantization(LiteRT(kernels), op, acc, sx, wscale, sy, zy, cfg["activation"],
                                                n_out, o, groups)
    fams["this"] = describe_requantization(engine, op, acc, sx, wscale, sy, zy, cfg["activation"], n_out, o, groups)
    out_tensor = dict(cfg["tensors"])["output"]
    litert_value = None
    if cfg["op_index"] not in set(qm.info.get("delegated", ())):  # a delegated op's tensor is not written back
        it = _litert(qm.info["tflite_model"], inputs, qm.info["kernels"], preserve_all_tensors=True)
        t = it.get_tensor(out_tensor)
        litert_value = int(t.reshape(yv.shape)[index])
    return TFLiteExplanation(
        node=node.name, source=node.source, op=op, index=index, kernels=engine.kernels,
        x_taps=np.array([zx if v is None else v for v in xs]), w_taps=np.array(ws), x_scale=float(sx),
        x_zero_point=int(zx), w_scale=sw, bias=bias, out_scale=float(sy), out_zero_point=int(zy),
        activation=cfg["activation"], acc=int(acc), exact=exact, families=fams, qjax_output=int(yv[index]),
        litert_output=litert_value)


_RULE_TEXT = {
    "reference": "gemmlowp double rounding: RoundingDivideByPOT(SRDHM(acc * 2^max(shift,0), M0), max(-shift,0)) "
                 "(SRDHM nudge half away, RDBPOT half away)",
    "half_up": "double rounding, both steps half up (ruy / NEON vqrdmulh + vrshl)",
    "optimized_depthwise": "depthwise: half up on channels < 8*(C//8), the reference rule on the C mod 8 tail",
    "double_float": "(int32) round(double(acc) * M), M = double(sx) * double(sw) / double(sy)",
    "xnnpack": "float32: rint(fl32(acc) * fl32(fl32(sx*sw)/sy)), ties to even",
}


def render_explanation(e: TFLiteExplanation) -> str:
    L = [f"qjax explain: {e.op} node {e.node} ({e.source}), kernels {e.kernels}, output element "
         f"[{', '.join(map(str, e.index))}]", ""]
    taps = e.x_taps.size
    show = min(taps, 12)
    more = " ..." if taps > show else ""
    L.append(f"inputs  x (int8, scale sx={e.x_scale:.9g}, zero point zx={e.x_zero_point}), {taps} taps: "
             f"{' '.join(map(str, e.x_taps[:show].tolist()))}{more}")
    L.append(f"weights w (int8, symmetric, scale sw={e.w_scale:.9g}): {' '.join(map(str, e.w_taps[:show].tolist()))}"
             f"{more}")
    L.append(f"bias    {e.bias if e.bias is not None else 'none'} (int32, scale sx*sw)")
    L.append(f"output  scale sy={e.out_scale:.9g}, zero point zy={e.out_zero_point}, fused {e.activation}")
    L.append("")
    L.append(f"  1. accumulator  acc = sum (x - zx) * w + bias = {e.acc}  (int32)")
    L.append(f"  2. exact value  acc * sx * sw / sy = {float(e.exact):.9f}"
             + ("  (a rounding tie: the families may part here)" if e.exact.denominator == 2 else ""))
    this = e.families["this"]
    L.append(f"  3. {e.kernels} requantization ({this['rule']}): {_RULE_TEXT[this['rule']]}")
    L.append(f"     parameters {this['params']} -> {this['rounded']}; + zy = {this['rounded'] + e.out_zero_point}; "
             f"clamp to [{this['range'][0]}, {this['range'][1]}] -> {this['output']}")
    L.append(f"  qjax returns {e.qjax_output}" + (f"; LiteRT's interpreter returns {e.litert_output}"
                                                    if e.litert_output is not None else
                                                    " (the XNNPACK delegate does not expose this tensor)"))
    L.append("")
    L.append("the same accumulator under each kernel family:")
    for k in litert_runtime.KERNELS:
        f = e.families[k]
        L.append(f"  {k:10s} {f['rule']:20s} -> {f['output']}")
    return "\n".join(L)
