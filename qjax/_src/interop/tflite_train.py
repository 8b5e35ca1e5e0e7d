"""Quantization-aware training of an imported ``.tflite`` model with its LiteRT family's exact arithmetic.

``qat = TFLiteQAT(qm)`` (``qm`` from :func:`qjax.from_tflite`) makes the model's CONV_2D, DEPTHWISE_CONV_2D,
TRANSPOSE_CONV and FULLY_CONNECTED parameters trainable floats::

    params = qat.init()                  # {node: {"kernel": w_q · s_w, "bias": b_q · fl32(s_x · s_w)}}
    y = qat.apply(params, *inputs)       # float32 outputs, forward = the integer model bit for bit
    qm2 = qat.to_qmodel(params)          # the integer QModel those params quantize to
    qjax.to_tflite(qm2)                  # ... written back: LiteRT computes qm2's integers

**Forward** (:meth:`TFLiteQAT.apply`): the params are quantized as TFLite's converter quantizes
(``tensorflow/lite/tools/optimize/quantization_utils.cc``) at the model's recorded scales, and the QModel runs
on them — every node on its family's engine, so the outputs are the integers LiteRT computes from the written
file, dequantized ``(q - z_y) · s_y`` (float outputs as they are):

* weights (``SymmetricPerChannelQuantizeValues``): ``w_q = clamp(TfLiteRound(w / s_w[c]), -127, 127)`` —
  ``TfLiteRound`` is ``std::round`` (half away from zero); the converter multiplies by ``127 / max|w|``, the
  inverse it derived its ``s_w = max|w| / 127`` from (two float32 roundings, no ``max|w|`` kept in the file); at
  a given ``s_w`` the quotient here is the correctly rounded float32 division — the two can differ only where
  ``w / s_w`` lies within an ulp of a half.  Either way the integers written are the ones the forward used;
* biases (``SymmetricPerChannelBiasQuantize``): ``b_q = clamp(TfLiteRound(b · fl32(1.0 / fl32(s_x · s_w[c]))),
  -(2^31 - 1), 2^31 - 1)`` — the bias scale is the float32 product, its inverse the double quotient rounded to
  float32, the product with ``b`` float32 (and the clamp at float32's largest value below ``2^31``).

``init`` is their inverse: the integer model's forward at ``init()`` is the imported model's, bit for bit
(``w_q · s_w / s_w`` rounds back to ``w_q``; a bias above ``2^24`` in magnitude has no exact float32 and may
come back a few units off — such a model says so in :attr:`TFLiteQAT.inexact_biases`).

**Backward**: one :func:`qjax.ste.exact.exact_forward` for the whole model — the gradient is that of a float
*surrogate* of the same graph (:meth:`TFLiteQAT.surrogate`): float ops (``lax.conv_general_dilated``, dot
products, the float activations), the weights fake-quantized per channel, the biases float (their rounding,
at ``s_x · s_w``, is far below the output's), every quantized tensor fake-quantized at its recorded scale and
zero point, each rounding differentiated as a clipped straight-through estimator (gradient 1 inside the tensor's
range, 0 outside); the backward pass re-runs the surrogate (its forward is not kept: the integer model's is
what the loss saw).  Scales and zero points stay the recorded ones:
LiteRT derives its multipliers from them at ``Prepare`` time (the QModel's nodes hold them as static
configuration), so they are not trained here.

Pure and jittable (``jax.jit(qat.apply)``, ``jax.grad``), deterministic, no callbacks.  Lives in interop (the
tools layer) beside the importer and :func:`qjax.to_tflite` because it is defined by the ``tfl_*`` node ops and
the flatbuffer's quantization; the format-independent machinery is :mod:`qjax.ste.exact`'s.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..float32 import div_rn, uncontracted
from ..graph.model import Ref, node_args, substitute, thaw
from ..graph.ops_tflite import pad_fill, reshape_target, squeeze_axes
from ..qarray import QArray
from ..qops.tflite_common import explicit_padding
from ..rounding import round_float
from ..ste.exact import exact_forward, zero_cotangent
from .tflite import output_qparams

__all__ = ["TFLiteQAT", "quantize_weight", "quantize_bias", "TRAINABLE_OPS"]

#: the node ops whose weights and biases become trainable floats
TRAINABLE_OPS = ("tfl_conv", "tfl_transpose_conv", "tfl_fully_connected")
#: float32's largest value below 2**31: the float clamp before the int32 cast (the converter's SafeCast saturates)
_I32_F32_MAX = 2147483520.0


def quantize_weight(kernel, scale, axis):
    """``clamp(round_half_away(kernel / scale[c]), -127, 127)`` as int8; ``scale`` per channel along ``axis``
    (or a scalar for ``axis=None``), float32 division (``div_rn``: no reciprocal rewrite)."""
    s = jnp.asarray(scale, jnp.float32)
    if axis is not None:
        shp = [1] * jnp.ndim(kernel)
        shp[axis] = -1
        s = s.reshape(shp)
    q = round_float(div_rn(jnp.asarray(kernel, jnp.float32), s), "half_away")
    return jnp.clip(q, -127, 127).astype(jnp.int8)


def bias_scales(x_scale, w_scale):
    """``(fl32(s_x · s_w), fl32(1.0 / double(fl32(s_x · s_w))))`` on the host (numpy): the bias scale and the
    inverse the converter multiplies by (``SymmetricPerChannelBiasQuantize``; 0 for a zero scale)."""
    sb = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(sb == 0, 0.0, 1.0 / sb.astype(np.float64)).astype(np.float32)
    return sb, inv


def quantize_bias(bias, inv_scale):
    """``clamp(round_half_away(fl32(bias · inv_scale)), ±(2^31 - 1))`` as int32 (see the module doc)."""
    # uncontracted: the rounding subtracts trunc(x) from the product, which XLA would fuse into an unrounded FMA
    q = round_float(uncontracted(jnp.asarray(bias, jnp.float32) * jnp.asarray(inv_scale, jnp.float32)), "half_away")
    return jnp.clip(q, -_I32_F32_MAX, _I32_F32_MAX).astype(jnp.int32)


def _fake_quant(y, qparams, dtype):
    """The surrogate's fake quantization of a float tensor at ``(scale, zero point)``: ``(clamp(round(y / s) + z)
    - z) · s``, a clipped straight-through estimator (gradient 1 inside ``[(qmin - z) s, (qmax - z) s]``).

    Its value only steers the estimator (the forward pass is the integer model's), so it rounds with plain
    ``jnp.round``: a few ops per tensor, where the exact rules would multiply the backward pass's graph."""
    if qparams is None:
        return y
    s, z = np.float32(qparams[0]), float(qparams[1])
    info = np.iinfo(np.dtype(dtype))
    lo, hi = (info.min - z) * s, (info.max - z) * s
    yc = jnp.clip(y, lo, hi)
    q = jnp.clip(jnp.round(y / s) + z, info.min, info.max)
    return yc + lax.stop_gradient((q - z) * s - yc)


def _activation(y, activation):
    if activation == "RELU":
        return jnp.maximum(y, 0.0)
    if activation == "RELU6":
        return jnp.clip(y, 0.0, 6.0)
    if activation == "RELU_N1_TO_1":
        return jnp.clip(y, -1.0, 1.0)
    return y


def _dequant(q: QArray):
    return (q.values.astype(jnp.float32) - jnp.asarray(q.zero_point, jnp.float32)) * jnp.asarray(q.scale,
                                                                                                   jnp.float32)


class TFLiteQAT:
    """Trainable float parameters of a ``tfl_*`` QModel (see the module doc).

    Attributes:
      model: the QModel (from :func:`qjax.from_tflite`).
      trainable: the names of the nodes whose ``kernel`` / ``bias`` are trained.
      inexact_biases: nodes whose int32 biases exceed ``2^24`` in magnitude (``init`` cannot hold them exactly).
    """

    def __init__(self, qm):
        meta = dict(qm.meta)
        if "tflite_model" not in meta:
            raise ValueError("TFLiteQAT: qm must be a QModel from qjax.from_tflite (tfl_* nodes, meta['tflite_model'])")
        missing = sorted({n.op for n in qm.nodes if n.op not in _SURROGATES})
        if missing:
            raise ValueError(f"TFLiteQAT: no float surrogate for the node ops {missing} (the gradient needs one)")
        self.model = qm
        self.trainable = tuple(n.name for n in qm.nodes if n.op in TRAINABLE_OPS)
        self._qparams = output_qparams(qm.nodes)
        # one trainable leaf per flatbuffer tensor: nodes reading one weight (or bias) tensor share its leaf, held
        # by the first of them (training them apart would write two different values into one tensor)
        self._owner = {}
        first = {}
        for name in self.trainable:
            tensors = dict(qm.node(name).config()["tensors"])
            for key, leaf in (("weight", "kernel"), ("bias", "bias")):
                if key in tensors:
                    self._owner[(name, leaf)] = first.setdefault((key, tensors[key]), name)
        self._bias_inv, self._bias_scale = {}, {}
        self.inexact_biases = []
        for name in self.trainable:
            cfg, p = qm.node(name).config(), qm.params[name]
            if p.get("bias") is not None:
                sb, inv = bias_scales(cfg["in_qparams"][0][0], np.asarray(p["weight"].scale, np.float32))
                self._bias_scale[name], self._bias_inv[name] = sb, inv
                if np.any(np.abs(np.asarray(p["bias"], np.int64)) > 2**24):
                    self.inexact_biases.append(name)
        self._outputs = thaw(qm.output)
        self._quantize_jit = jax.jit(self.quantized_params)

    def leaves(self, params, name) -> dict:
        """Node ``name``'s ``{"kernel", "bias"}`` in ``params`` (a shared tensor's leaf from the node holding it)."""
        out = {}
        for leaf in ("kernel", "bias"):
            owner = self._owner.get((name, leaf))
            if owner is not None and leaf in params.get(owner, {}):
                out[leaf] = params[owner][leaf]
        return out

    # hashable by identity: the static rule of exact_forward
    __hash__ = object.__hash__

    # -- parameters ------------------------------------------------------------------------------------
    def init(self) -> dict:
        """``{node: {"kernel": float32, "bias": float32}}`` (no ``bias`` where the node has none; a weight or bias
        tensor read by several nodes is one leaf, under the first of them): the imported
        integers dequantized (weights ``w_q · s_w`` in qjax's layout — HWIO, depthwise ``(KH, KW, 1, C·M)``,
        FC ``(O, K)`` —, biases ``b_q · fl32(s_x · s_w)``)."""
        out = {}
        for name in self.trainable:
            p = self.model.params[name]
            w = p["weight"]
            s = np.asarray(w.scale, np.float32)
            if w.axis is not None:
                shp = [1] * np.ndim(w.values)
                shp[w.axis] = -1
                s = s.reshape(shp)
            leaves = {}
            if self._owner[(name, "kernel")] == name:
                leaves["kernel"] = jnp.asarray((np.asarray(w.values, np.float32) * s).astype(np.float32))
            if name in self._bias_scale and self._owner[(name, "bias")] == name:
                leaves["bias"] = jnp.asarray((np.asarray(p["bias"], np.float32) * self._bias_scale[name])
                                             .astype(np.float32))
            if leaves:
                out[name] = leaves
        return out

    def quantized_params(self, params) -> dict:
        """The QModel's params with ``params`` quantized (weights int8 at their scales, biases int32)."""
        new = dict(self.model.params)
        for name in self.trainable:
            p, tp = dict(new[name]), self.leaves(params, name)
            w = p["weight"]
            p["weight"] = w.with_values(quantize_weight(tp["kernel"], w.scale, w.axis))
            if name in self._bias_inv:
                p["bias"] = quantize_bias(tp["bias"], self._bias_inv[name])
            new[name] = p
        return new

    def to_qmodel(self, params):
        """The integer QModel ``params`` quantize to (concrete: ready for :func:`qjax.to_tflite`)."""
        q = jax.tree_util.tree_map(np.asarray, self._quantize_jit(params))  # jitted: eager dispatch is slow
        return self.model.with_params(q)

    # -- forward: the integer model ------------------------------------------------------------------
    def _exact(self, params, *inputs):
        """``(float outputs, integer outputs)`` of the integer model on ``params``."""
        # QModel.apply: the node ops in order, each node's integers in a buffer of their own
        ints = self.model.apply(self.quantized_params(params), *inputs)
        outs = self._outputs if isinstance(self._outputs, tuple) else (self._outputs,)
        env = dict(zip((r.name for r in outs), ints if isinstance(self._outputs, tuple) else (ints,)))

        def as_float(ref):
            v = env[ref.name]
            qp = self._qparams.get(ref.name)
            if qp is None:
                return jnp.asarray(v, jnp.float32)
            return (v.astype(jnp.float32) - np.float32(qp[1])) * np.float32(qp[0])

        floats = jax.tree_util.tree_map(as_float, self._outputs, is_leaf=lambda r: isinstance(r, Ref))
        return floats, ints

    def integers(self, params, *inputs):
        """The integer model's outputs on ``params`` (what LiteRT computes from ``to_tflite(to_qmodel(params))``)."""
        return self._exact(params, *inputs)[1]

    def apply(self, params, *inputs):
        """The model's float32 outputs (integer outputs dequantized ``(q - z) · s``) with the trained ``params``:
        the integer model bit for bit; differentiable (the surrogate's gradient, see the module doc)."""
        y, _ = exact_forward(self, params, *inputs)
        return y

    # exact_forward's rule
    def exact(self, params, *inputs):
        return self._exact(params, *inputs)

    def forward(self, params, *inputs):
        return self._exact(params, *inputs), (params, inputs)

    def backward(self, res, g):
        params, inputs = res
        floats = [jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) for x in inputs]

        def f(p, *fx):
            it = iter(fx)
            xs = [next(it) if fl else x for x, fl in zip(inputs, floats)]
            return self.surrogate(p, *xs)

        _, vjp = jax.vjp(f, params, *[x for x, fl in zip(inputs, floats) if fl])
        cts = vjp(g)
        it = iter(cts[1:])
        return (cts[0],) + tuple(next(it) if fl else zero_cotangent(x) for x, fl in zip(inputs, floats))

    # -- backward: the float surrogate ---------------------------------------------------------------
    def surrogate(self, params, *inputs):
        """The float surrogate whose gradient :meth:`apply` returns (its outputs approximate ``apply``'s)."""
        env = dict(zip(self.model.inputs, inputs))
        for node in self.model.nodes:
            cfg, p = node.config(), self.model.params.get(node.name)
            args = node_args(node, env)
            tp = self.leaves(params, node.name) if node.name in self.trainable else None
            env[node.name] = _SURROGATES[node.op](self, node, cfg, p, tp, *args)
        return substitute(self._outputs, env)


# -- surrogate ops: float values, the recorded qparams -----------------------------------------------------


def _fq_out(qat, node, y, cfg):
    return _fake_quant(y, qat._qparams[node.name], cfg.get("dtype", np.int8) if node.op == "tfl_quantize"
                       else np.int8)


def _s_input(qat, node, cfg, p, tp, x):
    if cfg["qparams"] is None:
        return jnp.asarray(x, jnp.float32)
    s, z = cfg["qparams"]
    return (jnp.asarray(x).astype(jnp.float32) - np.float32(z)) * np.float32(s)


def _s_output(qat, node, cfg, p, tp, x):
    return x


def _s_const(qat, node, cfg, p, tp):
    return _dequant(p["value"])


def _fq_weight(kernel, w):
    """The weight's fake quantization at its scales (symmetric, [-127, 127]), clipped STE (plain rounding)."""
    s = jnp.asarray(w.scale, jnp.float32)
    if w.axis is not None:
        shp = [1] * kernel.ndim
        shp[w.axis] = -1
        s = s.reshape(shp)
    kc = jnp.clip(kernel, -127.0 * s, 127.0 * s)
    return kc + lax.stop_gradient(jnp.clip(jnp.round(kernel / s), -127, 127) * s - kc)


def _weights(qat, node, p, tp):
    if tp is None:  # not trained (cannot happen for conv / FC, kept for safety)
        return _dequant(p["weight"]), (None if p.get("bias") is None else
                                       jnp.asarray(p["bias"], jnp.float32) * qat._bias_scale[node.name])
    w = _fq_weight(tp["kernel"], p["weight"])
    return w, tp.get("bias")  # the bias's rounding (at s_x * s_w) is far below the output's: the float bias


def _s_conv(qat, node, cfg, p, tp, x):
    w, b = _weights(qat, node, p, tp)
    g = cfg["geometry"]
    pad = g.padding
    if tuple(x.shape[1:3]) != tuple(cfg["in_spatial"]):
        pad = explicit_padding(cfg["padding_mode"], tuple(x.shape[1:3]), cfg["kernel"], g.strides, g.dilation)
    y = lax.conv_general_dilated(x, w, tuple(g.strides), tuple(tuple(q) for q in pad), rhs_dilation=tuple(g.dilation),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=int(g.groups))
    if b is not None:
        y = y + b
    return _fq_out(qat, node, _activation(y, cfg["activation"]), cfg)


def _s_transpose_conv(qat, node, cfg, p, tp, x):
    """TRANSPOSE_CONV: every input cell adds ``x · w`` into a ``((H - 1) s + K, (W - 1) s + K)`` canvas, cropped to
    the model's ``output_shape`` from ``total // 2`` (``total = max((H - 1) s + K - OH, 0)``, TFLite's padding) —
    as a convolution of the stride-dilated input with the spatially flipped HWIO kernel."""
    w, b = _weights(qat, node, p, tp)
    kh, kw = w.shape[:2]
    (sh, sw), (_, oh, ow, _) = cfg["strides"], cfg["output_shape"]
    full = lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((kh - 1, kh - 1), (kw - 1, kw - 1)), lhs_dilation=(sh, sw),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ph = max((x.shape[1] - 1) * sh + kh - oh, 0) // 2
    pw = max((x.shape[2] - 1) * sw + kw - ow, 0) // 2
    y = full[:, ph:ph + oh, pw:pw + ow]
    if b is not None:
        y = y + b
    return _fq_out(qat, node, _activation(y, cfg["activation"]), cfg)


def _s_fully_connected(qat, node, cfg, p, tp, x):
    w, b = _weights(qat, node, p, tp)
    o, k = w.shape
    size = math.prod(x.shape)
    y = x.reshape(size // k, k) @ w.T
    if b is not None:
        y = y + b
    if cfg["keep_num_dims"]:
        y = y.reshape(tuple(x.shape[:-1]) + (o,))
    return _fq_out(qat, node, _activation(y, cfg["activation"]), cfg)


def _s_binary(qat, node, cfg, p, tp, a, b):
    a = _dequant(p["const_a"]) if a is None else a
    b = _dequant(p["const_b"]) if b is None else b
    y = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply}[cfg["kind"]](a, b)
    return _fq_out(qat, node, _activation(y, cfg["activation"]), cfg)


def _s_concat(qat, node, cfg, p, tp, xs):
    return _fq_out(qat, node, _activation(jnp.concatenate(list(xs), axis=cfg["axis"]), cfg["activation"]), cfg)


def _s_quantize(qat, node, cfg, p, tp, x):
    return _fake_quant(x, qat._qparams[node.name], cfg["dtype"])


def _s_dequantize(qat, node, cfg, p, tp, x):
    return x


def _s_unary(qat, node, cfg, p, tp, x):
    kind = cfg["kind"]
    if kind == "hard_swish":
        y = x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0
    elif kind == "logistic":
        y = jax.nn.sigmoid(x)
    elif kind == "tanh":
        y = jnp.tanh(x)
    else:
        y = jax.nn.softmax(x * np.float32(cfg["beta"]), axis=-1)
    return _fq_out(qat, node, y, cfg)


def _s_pool(qat, node, cfg, p, tp, x):
    pad = explicit_padding(cfg["padding_mode"], tuple(x.shape[1:3]), cfg["filter"], cfg["strides"])
    window, strides = (1,) + tuple(cfg["filter"]) + (1,), (1,) + tuple(cfg["strides"]) + (1,)
    padding = ((0, 0),) + tuple(tuple(q) for q in pad) + ((0, 0),)
    if cfg["kind"] == "max":
        y = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)
    else:  # TFLite averages over the cells inside the input (the padding is not counted)
        total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
        count = lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0, lax.add, window, strides,
                                  padding)
        y = total / count
    return _fq_out(qat, node, _activation(y, cfg["activation"]), cfg)


def _s_mean(qat, node, cfg, p, tp, x):
    return _fq_out(qat, node, jnp.mean(x, axis=tuple(cfg["axes"]), keepdims=bool(cfg["keep_dims"])), cfg)


def _s_shape(qat, node, cfg, p, tp, x):
    kind = cfg["kind"]
    if kind == "reshape":
        return x.reshape(reshape_target(cfg, x.shape))
    if kind == "squeeze":
        return jnp.squeeze(x, axis=squeeze_axes(cfg["axes"], x.shape))
    if kind == "transpose":
        return jnp.transpose(x, cfg["perm"])
    qp = qat._qparams[node.name]
    fill = 0.0 if qp is None else (float(pad_fill(cfg["pad_value"], qp[1])) - float(qp[1])) * float(qp[0])
    return jnp.pad(x, cfg["paddings"], constant_values=jnp.asarray(fill, x.dtype))


_SURROGATES = {"tfl_input": _s_input, "tfl_output": _s_output, "tfl_const": _s_const, "tfl_conv": _s_conv,
               "tfl_transpose_conv": _s_transpose_conv, "tfl_fully_connected": _s_fully_connected, "tfl_binary": _s_binary, "tfl_concat": _s_concat,
               "tfl_quantize": _s_quantize, "tfl_dequantize": _s_dequantize, "tfl_unary": _s_unary,
               "tfl_pool": _s_pool, "tfl_mean": _s_mean, "tfl_shape": _s_shape}
