"""The node ops of an imported LiteRT (TFLite) model (:func:`qjax.from_tflite`).

Values are NHWC, as in the flatbuffer: quantized tensors are per-tensor :class:`~qjax.QArray` s (int8,
or uint8 at a model's edge), float tensors float32 arrays.  Every arithmetic op calls ``cfg["engine"]``
(a :class:`~qjax.engines.LiteRT`: the importer gives each operator the family that runs it in the
interpreter) and nothing else; the value-preserving ops (``tfl_shape``: RESHAPE, SQUEEZE, TRANSPOSE, PAD)
move integers and need no engine.

Quantization parameters are **static**: LiteRT derives its multipliers, shifts and tables from them once,
at ``Prepare`` time, so the importer records every operand's concrete ``(scale, zero point)`` in the node's
``cfg`` (``in_qparams``, ``w_scale``, ``out_qparams``) and the ops rebuild their operands' QArrays with
those before calling the engine (inside ``jit`` the params are tracers; the engines derive their
constants on the host).  ``p`` mirrors them (``p["scale"]``, ``p["zero_point"]``, the weight QArray's
scale) for inspection and for :func:`qjax.to_tflite`; a model whose params' qparams were changed must be
re-bound with :func:`qjax.with_tflite_qparams`.  Staleness is refused, never computed silently: the ops
refuse concrete params (``QModel.apply``) whose qparams differ from the static ones, the QModel's call and
``capture`` check its concrete params on the host before they jit (:func:`stale_qparams`, registered with
:func:`qjax.graph.model.register_param_check`), and :func:`qjax.to_tflite` refuses such a model.  (Params
traced by a caller's own ``jit`` cannot be compared: there the static qparams are what is computed.)
Integer params (weight values, biases, constant values) are ordinary leaves: change or train them freely.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import is_concrete
from ..dtypes import as_qdtype
from ..engines import ConvGeometry
from ..qarray import QArray
from ..qops.tflite_common import explicit_padding
from .model import GraphError, register_param_check
from .model import register_op as _register

def register_op(name):
    """Register a tfl node op that runs under ``jax.ensure_compile_time_eval()``: inside the QModel's ``jit``,
    arithmetic on the static qparams (the engines' Prepare-time multipliers, shifts, clamp bounds, tables) is
    computed on the host, op by op, as LiteRT's Prepare does — ``jnp`` of a constant would otherwise be a tracer
    (jax >= 0.8) that ``int()`` / ``np.asarray`` cannot read; arithmetic on the traced values is staged as
    usual."""

    def deco(fn):
        @functools.wraps(fn)
        def run(*args):
            with jax.ensure_compile_time_eval():
                return fn(*args)

        _register(name)(run)
        return fn

    return deco

__all__ = ["TFL_OPS", "stale_qparams", "reshape_target", "squeeze_axes", "pad_fill"]

#: the node ops this module registers
TFL_OPS = ("tfl_input", "tfl_output", "tfl_const", "tfl_conv", "tfl_transpose_conv", "tfl_fully_connected",
           "tfl_binary", "tfl_pool",
           "tfl_mean", "tfl_concat", "tfl_unary", "tfl_quantize", "tfl_dequantize", "tfl_shape")


# -- static qparams ---------------------------------------------------------------------------------------


def _check_same(node, what, param, static):
    """Refuse params' qparams (when concrete) that are not the node's static ones."""
    if param is None or not is_concrete(param):
        return
    got, want = np.asarray(param), np.asarray(static)
    if got.shape != want.shape or not np.array_equal(got.astype(want.dtype), want):
        raise GraphError(f"node {node}: params' {what} differ from the graph's static qparams (LiteRT derives its "
                         "multipliers from them at Prepare time); re-bind the model with "
                         "qjax.with_tflite_qparams(model, params)")


def stale_qparams(cfg, p):
    """The first of ``p``'s (concrete) qparams that differs from the node's static ones, as ``"what: params'
    value, static value"``, or None.  :func:`qjax.to_tflite` refuses a model with any (the QModel's call computes
    with the static ones: inside its ``jit`` the params are tracers and cannot be checked there)."""
    if not p:
        return None
    node = cfg.get("node")
    checks = []
    if "out_qparams" in cfg and "scale" in p:
        checks += [("output scale", p["scale"], np.float32(cfg["out_qparams"][0])),
                   ("output zero point", p["zero_point"], np.int32(cfg["out_qparams"][1]))]
    if "w_scale" in cfg and p.get("weight") is not None:
        checks.append(("weight scale", p["weight"].scale, np.asarray(cfg["w_scale"].value, np.float32)))
    for slot, key in enumerate(("const_a", "const_b")):
        if p.get(key) is not None:
            qp = cfg["in_qparams"][slot]
            checks += [(f"{key} scale", p[key].scale, np.float32(qp[0])),
                       (f"{key} zero point", p[key].zero_point, np.int32(qp[1]))]
    if p.get("value") is not None and "out_qparams" in cfg:
        checks += [("value scale", p["value"].scale, np.float32(cfg["out_qparams"][0])),
                   ("value zero point", p["value"].zero_point, np.int32(cfg["out_qparams"][1]))]
    for what, got, want in checks:
        got = np.asarray(got)
        if got.shape != np.shape(want) or not np.array_equal(got.astype(np.asarray(want).dtype), want):
            return f"node {node}: params' {what} {got.tolist()} differ from the static {np.asarray(want).tolist()}"
    return None


def _refuse_stale(cfg, p):
    problem = stale_qparams(cfg, p)
    return problem and (problem + " (LiteRT fixes them at Prepare: re-bind the model with "
                                  "qjax.with_tflite_qparams(model, params))")


for _op in TFL_OPS:
    register_param_check(_op, _refuse_stale)


def _static_qarray(values, scale, zero_point, dtype, axis=None):
    """A QArray whose ``scale`` / ``zero_point`` are host numpy values (float32 / int32), not jax arrays: inside
    ``jit`` ``jnp.asarray`` of a constant is a tracer (jax >= 0.8), and the engines derive LiteRT's Prepare-time
    constants from concrete qparams.  The values stay as given (traced or not)."""
    q = object.__new__(QArray)
    q.values, q.scale, q.zero_point, q.scale64 = values, np.asarray(scale, np.float32), np.asarray(zero_point,
                                                                                                  np.int32), None
    q.dtype, q.axis = as_qdtype(dtype), axis
    return q


def _requalified(x, qparams, node):
    """``x`` (a QArray from the previous node) with the static ``(scale, zero_point)`` its consumer recorded."""
    if qparams is None:
        if isinstance(x, QArray):
            raise GraphError(f"node {node}: a quantized input where the model has a float tensor")
        return x
    if not isinstance(x, QArray):
        raise GraphError(f"node {node}: a float input where the model has a quantized tensor")
    scale, zp = qparams
    return _static_qarray(x.values, scale, zp, x.dtype)


def _out(p, cfg):
    """The output's static ``(scale, zero point)`` as (np.float32, np.int32), checked against ``p``."""
    scale, zp = cfg["out_qparams"]
    if p:
        _check_same(cfg["node"], "output scale", p.get("scale"), np.float32(scale))
        _check_same(cfg["node"], "output zero point", p.get("zero_point"), np.int32(zp))
    return np.float32(scale), np.int32(zp)


def _weight(p, cfg):
    """The weight QArray with its static (per-channel) scale and symmetric zero points."""
    w = p["weight"]
    scale = cfg["w_scale"].value
    _check_same(cfg["node"], "weight scale", w.scale, scale)
    return _static_qarray(w.values, scale, np.zeros(np.shape(scale), np.int32), w.dtype, w.axis)


def _const(p, key, qparams, node):
    q = p[key]
    _check_same(node, f"{key} scale", q.scale, np.float32(qparams[0]))
    return _static_qarray(q.values, qparams[0], qparams[1], q.dtype)


# -- model edges ------------------------------------------------------------------------------------------


@register_op("tfl_input")
def tfl_input_node(cfg, p, x):
    """Model input ``cfg["index"]``: an array of the interpreter's input dtype (int8 / uint8 -> a QArray with the
    tensor's qparams; float32 passes through), NHWC; any batch, the other dims the model's."""
    dtype, shape = cfg["dtype"], cfg["shape"]
    got = jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    if np.dtype(got) != np.dtype(dtype):
        raise TypeError(f"input {cfg['index']}: the model takes {dtype} (as the interpreter does), got {np.dtype(got)}")
    if len(x.shape) != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]):
        raise TypeError(f"input {cfg['index']}: the model takes shape (N, {', '.join(map(str, shape[1:]))}), got "
                        f"{tuple(x.shape)}")
    batch = cfg.get("fixed_batch")
    if batch is not None and x.shape[0] != batch:
        raise GraphError(f"input {cfg['index']}: the model fixes the batch at {batch} (a fixed-shape RESHAPE, a "
                         f"TRANSPOSE_CONV's output_shape or a constant activation; LiteRT refuses other batches too), "
                         f"got {x.shape[0]}")
    if cfg["qparams"] is None:
        return jnp.asarray(x)
    scale, zp = cfg["qparams"]
    return _static_qarray(jnp.asarray(x), scale, zp, dtype)


@register_op("tfl_output")
def tfl_output_node(cfg, p, x):
    """A model output: a QArray's integers (the interpreter's int8 / uint8 tensor) or the float32 array."""
    return x.values if isinstance(x, QArray) else x


@register_op("tfl_const")
def tfl_const_node(cfg, p):
    """A constant quantized tensor read by an op that takes it as an activation (e.g. CONCATENATION)."""
    return _const(p, "value", cfg["out_qparams"], cfg["node"])


# -- GEMM ops ---------------------------------------------------------------------------------------------


def _geometry(cfg, x):
    """The recorded geometry, or TFLite's SAME/VALID padding recomputed for another spatial size."""
    g = cfg["geometry"]
    spatial = tuple(x.shape[1:3])
    if spatial == cfg["in_spatial"]:
        return g
    pad = explicit_padding(cfg["padding_mode"], spatial, cfg["kernel"], g.strides, g.dilation)
    return ConvGeometry(strides=g.strides, padding=pad, dilation=g.dilation, groups=g.groups)


@register_op("tfl_conv")
def tfl_conv_node(cfg, p, x):
    """CONV_2D / DEPTHWISE_CONV_2D (``cfg["depthwise"]``): ``x`` (N, H, W, C) -> (N, OH, OW, O)."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    w, (scale, zp) = _weight(p, cfg), _out(p, cfg)
    fn = cfg["engine"].tfl_depthwise_conv if cfg["depthwise"] else cfg["engine"].tfl_conv
    return fn(x, w, p.get("bias"), scale, zp, _geometry(cfg, x), cfg["activation"])


@register_op("tfl_transpose_conv")
def tfl_transpose_conv_node(cfg, p, x):
    """TRANSPOSE_CONV: ``x`` (N, H, W, C) -> the model's ``output_shape`` (N, OH, OW, O).  Its batch is fixed by
    the constant ``output_shape``: another input batch is refused, as the interpreter refuses it
    (``transpose_conv.cc``: ``SizeOfDimension(input, 0) != SizeOfDimension(output, 0)``)."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    w, (scale, zp) = _weight(p, cfg), _out(p, cfg)
    shape = tuple(cfg["output_shape"])
    if x.shape[0] != shape[0]:
        raise GraphError(f"node {cfg['node']}: TRANSPOSE_CONV's constant output_shape {shape} fixes the batch at "
                         f"{shape[0]}; an input of batch {x.shape[0]} is refused (LiteRT refuses it too)")
    return cfg["engine"].tfl_transpose_conv(x, w, p.get("bias"), scale, zp, shape, cfg["strides"],
                                            cfg["padding_mode"], cfg["activation"])


@register_op("tfl_fully_connected")
def tfl_fully_connected_node(cfg, p, x):
    """FULLY_CONNECTED: ``x`` (..., ) flattened to (size / K, K) as TFLite does (K = the weight's columns);
    the output (rows, O), or ``x.shape[:-1] + (O,)`` with ``keep_num_dims``."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    w, (scale, zp) = _weight(p, cfg), _out(p, cfg)
    o, k = w.shape
    size = math.prod(x.shape)
    if size % k:
        raise GraphError(f"node {cfg['node']}: FULLY_CONNECTED input of shape {tuple(x.shape)} does not flatten "
                         f"into rows of {k}")
    flat = x.with_values(x.values.reshape(size // k, k))
    y = cfg["engine"].tfl_fully_connected(flat, w, p.get("bias"), scale, zp, cfg["activation"])
    if cfg["keep_num_dims"]:
        y = y.with_values(y.values.reshape(tuple(x.shape[:-1]) + (o,)))
    return y


# -- elementwise ------------------------------------------------------------------------------------------


@register_op("tfl_binary")
def tfl_binary_node(cfg, p, a, b):
    """ADD / SUB / MUL (``cfg["kind"]``) with numpy broadcasting; a constant operand (``a`` or ``b`` None) is the
    param ``const_a`` / ``const_b``."""
    qa, qb = cfg["in_qparams"]
    a = _const(p, "const_a", qa, cfg["node"]) if a is None else _requalified(a, qa, cfg["node"])
    b = _const(p, "const_b", qb, cfg["node"]) if b is None else _requalified(b, qb, cfg["node"])
    scale, zp = _out(p, cfg)
    fn = {"add": cfg["engine"].tfl_add, "sub": cfg["engine"].tfl_sub, "mul": cfg["engine"].tfl_mul}[cfg["kind"]]
    return fn(a, b, scale, zp, cfg["activation"])


@register_op("tfl_concat")
def tfl_concat_node(cfg, p, xs):
    """CONCATENATION along ``cfg["axis"]`` (non-negative)."""
    xs = [_requalified(x, q, cfg["node"]) for x, q in zip(xs, cfg["in_qparams"])]
    scale, zp = _out(p, cfg)
    return cfg["engine"].tfl_concat(xs, cfg["axis"], scale, zp, cfg["activation"])


@register_op("tfl_quantize")
def tfl_quantize_node(cfg, p, x):
    """QUANTIZE: float32 -> QArray of ``cfg["dtype"]``, or a QArray requantized into the output's qparams."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    scale, zp = _out(p, cfg)
    if isinstance(x, QArray):
        return cfg["engine"].tfl_requantize(x, scale, zp, cfg["dtype"])
    return cfg["engine"].tfl_quantize(x, scale, zp, cfg["dtype"])


@register_op("tfl_dequantize")
def tfl_dequantize_node(cfg, p, x):
    """DEQUANTIZE: QArray -> float32."""
    return cfg["engine"].tfl_dequantize(_requalified(x, cfg["in_qparams"][0], cfg["node"]))


@register_op("tfl_unary")
def tfl_unary_node(cfg, p, x):
    """HARD_SWISH / LOGISTIC / TANH / SOFTMAX (over the last axis, ``cfg["beta"]``)."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    scale, zp = _out(p, cfg)
    eng, kind = cfg["engine"], cfg["kind"]
    if kind == "softmax":
        return eng.tfl_softmax(x, cfg["beta"], scale, zp)
    fn = {"hard_swish": eng.tfl_hard_swish, "logistic": eng.tfl_logistic, "tanh": eng.tfl_tanh}[kind]
    return fn(x, scale, zp)


# -- pooling and reductions -------------------------------------------------------------------------------


@register_op("tfl_pool")
def tfl_pool_node(cfg, p, x):
    """AVERAGE_POOL_2D / MAX_POOL_2D (``cfg["kind"]`` "avg" / "max"), TFLite's SAME/VALID padding for ``x``'s
    spatial size."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    scale, zp = _out(p, cfg)
    pad = explicit_padding(cfg["padding_mode"], tuple(x.shape[1:3]), cfg["filter"], cfg["strides"])
    fn = cfg["engine"].tfl_avg_pool if cfg["kind"] == "avg" else cfg["engine"].tfl_max_pool
    return fn(x, cfg["filter"], cfg["strides"], pad, scale, zp, cfg["activation"])


@register_op("tfl_mean")
def tfl_mean_node(cfg, p, x):
    """MEAN over ``cfg["axes"]`` (non-negative, sorted, unique)."""
    x = _requalified(x, cfg["in_qparams"][0], cfg["node"])
    scale, zp = _out(p, cfg)
    return cfg["engine"].tfl_mean(x, cfg["axes"], cfg["keep_dims"], scale, zp)


# -- value-preserving ops ---------------------------------------------------------------------------------


def reshape_target(cfg, shape):
    """RESHAPE's output shape for an input of ``shape``: the model's new shape with its one ``-1`` inferred
    (``kernels/reshape.cc``, ``GetOutputShape``); a fixed shape that does not hold the input is refused, as the
    interpreter refuses it when an input is resized."""
    target = list(cfg["shape"])
    size = math.prod(shape)
    if -1 in target:
        rest = math.prod(d for d in target if d != -1)
        if rest == 0 or size % rest:
            raise GraphError(f"node {cfg['node']}: RESHAPE of {tuple(shape)} into {tuple(cfg['shape'])}: "
                             "the sizes do not divide")
        target[target.index(-1)] = size // rest
    elif math.prod(target) != size:
        raise GraphError(f"node {cfg['node']}: RESHAPE into the model's fixed shape {tuple(target)} cannot hold an "
                         f"input of shape {tuple(shape)} (the model fixes its batch there; LiteRT refuses the "
                         "resized input too)")
    return tuple(target)


def squeeze_axes(axes, shape) -> tuple:
    """SQUEEZE's axes: the model's (non-negative), or every size-1 dim when it gives none (``squeeze.cc``)."""
    return tuple(axes) or tuple(i for i, d in enumerate(shape) if d == 1)


def pad_fill(pad_value, zero_point):
    """The integer a quantized PAD / PADV2 fills with: PADV2's constant (``pad_value``), else the input's zero
    point (``pad.cc``: ``pad_value = output->params.zero_point``; the output shares the input's qparams)."""
    return np.asarray(zero_point).reshape(()).item() if pad_value is None else pad_value


@register_op("tfl_shape")
def tfl_shape_node(cfg, p, x):
    """RESHAPE (``shape``), SQUEEZE (``axes``, empty: every size-1 dim), TRANSPOSE (``perm``), PAD / PADV2
    (``paddings`` per dim; quantized tensors are filled with :func:`pad_fill` — PADV2's ``pad_value``, for PAD
    (``pad_value`` None) the input's zero point, read at run time so that a changed zero point moves the fill
    with it —, float ones with 0.0): the values moved, the qparams kept."""
    kind = cfg["kind"]
    q = x if isinstance(x, QArray) else None
    v = q.values if q is not None else x
    if kind == "reshape":
        v = v.reshape(reshape_target(cfg, v.shape))
    elif kind == "squeeze":
        v = jnp.squeeze(v, axis=squeeze_axes(cfg["axes"], v.shape))
    elif kind == "transpose":
        v = jnp.transpose(v, cfg["perm"])
    elif kind == "pad":
        fill = pad_fill(cfg["pad_value"], q.zero_point) if q is not None else 0.0
        v = jnp.pad(v, cfg["paddings"], constant_values=jnp.asarray(fill, v.dtype))
    else:
        raise GraphError(f"unknown shape op {kind} (node {cfg.get('node')})")
    return q.with_values(v) if q is not None else v
