"""LiteRT's CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, per kernel family (a mixin of ``LiteRT``).

Every family computes the same exact int32 accumulator ``acc = sum (x - zx) * w + bias`` (wrapping int32,
as all three kernels' registers; padding taps contribute 0) and differs in the requantization
(:mod:`qjax._src.requant.tflite` has the formulas and the runtime sources):

============  ======================================  ==========================================
family        CONV_2D / DEPTHWISE_CONV_2D             FULLY_CONNECTED
============  ======================================  ==========================================
reference     gemmlowp double rounding of             ``round(RN64(double(acc) * M_c))``
              ``QuantizeMultiplier(M_c)``             (a double product, C ``round``)
optimized     both roundings half up (ruy);           half up; per-tensor weights derive ``M``
              depthwise: half up on channel blocks    from the float32 product ``fl32(sx*sw)``
              of 8, reference on the ``C mod 8``
              rest; grouped conv: the reference rule
xnnpack       ``rint(fl32(fl32(acc) * fl32(fl32(sx*sw_c)/sy)))``, clamp bounds rounded to even
============  ======================================  ==========================================

with ``M_c = double(sx) * double(sw_c) / double(sy)``.  The scales must be concrete (the kernels derive
their multipliers at Prepare time; :func:`qjax.from_tflite` passes concrete qparams); the values may be
traced.  The arithmetic is jitted with the geometry static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..checks import is_concrete
from ..dtypes import qint8
from ..kernels.conv import conv_accumulate
from ..kernels.linear import linear_accumulate
from ..qarray import QArray
from ..qops.tflite_common import apply_activation
from ..requant import tflite as rq
from .base import refuse

__all__ = ["LiteRTGemm", "requant_params"]

_I32 = jnp.int32


def _concrete(v, what: str, op: str) -> np.ndarray:
    if not is_concrete(v):
        raise ValueError(f"{op}: {what} must be concrete (LiteRT derives its multipliers from the scales at "
                         "Prepare time); pass concrete qparams")
    return np.asarray(jax.device_get(v))


def requant_params(kernels: str, op: str, x_scale, w_scale, out_scale, n: int, groups: int = 1):
    """``(rule, params)``: the requantization rule of :mod:`~qjax._src.requant.tflite` the ``kernels`` family
    applies to ``op`` ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and its per-channel ``(n,)``
    parameters, derived on the host as the kernel's Prepare does."""
    sw = np.asarray(w_scale, np.float32).reshape(-1)
    per_tensor = sw.size == 1  # TFLite: per channel iff the filter has more than one scale
    if kernels == "xnnpack":
        return "xnnpack", (rq.xnnpack_scales(x_scale, sw, out_scale, n),)
    if kernels == "reference" and op == "FULLY_CONNECTED":
        return "double_float", rq.fc_reference_scales(rq.effective_scales(x_scale, sw, out_scale, n))
    # GetQuantizedConvolutionMultipler (a float32 product) for per-tensor FULLY_CONNECTED only
    float_product = op == "FULLY_CONNECTED" and per_tensor
    params = rq.fixed_point_multipliers(rq.effective_scales(x_scale, sw, out_scale, n, float_product))
    if kernels == "reference" or (op == "CONV_2D" and groups != 1):  # conv.cc: grouped conv -> kReference
        return "reference", params
    return ("optimized_depthwise" if op == "DEPTHWISE_CONV_2D" else "half_up"), params


def _requantize(acc, rule, params, sy, zy, activation):
    if rule == "xnnpack":
        lo, hi = rq.xnnpack_output_range(activation, sy, zy)
        return jnp.clip(rq.requantize_xnnpack_fp32(acc, params[0]) + zy, lo, hi)
    fn = {"reference": rq.requantize_reference, "half_up": rq.requantize_half_up,
          "optimized_depthwise": rq.requantize_optimized_depthwise,
          "double_float": rq.requantize_double_float}[rule]
    return apply_activation(fn(acc, *params) + zy, activation, sy, zy)


def _signed_to_offset(xv, zx):
    """int8 ``x`` as uint8 ``x + 128`` with zero point ``zx + 128`` (the uint8 accumulators' convention)."""
    return lax.bitcast_convert_type(xv, jnp.uint8) ^ jnp.uint8(0x80), jnp.asarray(zx, _I32) + 128


@functools.partial(jax.jit, static_argnames=("rule", "strides", "padding", "dilation", "groups", "activation"))
def _conv_int8(xv, zx, wv, bias, params, sy, zy, *, rule, strides, padding, dilation, groups, activation):
    xu, zu = _signed_to_offset(xv, zx)
    acc = conv_accumulate(xu, zu, wv, 0, strides=strides, padding=padding, dilation=dilation, groups=groups)
    return _requantize(acc + bias, rule, params, sy, zy, activation).astype(jnp.int8)


@functools.partial(jax.jit, static_argnames=("rule", "activation"))
def _fc_int8(xv, zx, wv, bias, params, sy, zy, *, rule, activation):
    xu, zu = _signed_to_offset(xv, zx)
    acc = linear_accumulate(xu, zu, wv, 0)
    return _requantize(acc + bias, rule, params, sy, zy, activation).astype(jnp.int8)


def _check_operands(op, x, w, bias, n, w_axis):
    if x.dtype is not qint8 or w.dtype is not qint8:
        raise ValueError(f"{op}: x and w must be qint8 QArrays (int8 activations and weights), got "
                         f"{x.dtype.name} and {w.dtype.name}")
    if x.per_channel:
        raise ValueError(f"{op}: x must be quantized per tensor")
    if w.per_channel and w.axis != w_axis:
        raise ValueError(f"{op}: per-channel weights must be quantized along axis {w_axis}, got axis={w.axis}")
    if np.any(_concrete(w.zero_point, "w.zero_point", op) != 0):
        raise ValueError(f"{op}: int8 weights must be symmetric (zero point 0), as LiteRT's int8 kernels require")
    if bias is None:
        return jnp.zeros((n,), _I32)
    bias = jnp.asarray(bias)
    if bias.dtype != jnp.int32 or bias.shape != (n,):
        raise ValueError(f"{op}: bias must be int32 of shape ({n},), got {bias.dtype} {bias.shape}")
    return bias


def _output(values, out_scale, out_zero_point):
    return QArray(values, jnp.float32(out_scale), jnp.int32(out_zero_point), qint8, check=False)


class LiteRTGemm:
    """GEMM ops of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks the family."""

    def _tfl_conv(self, op, x, w, bias, out_scale, out_zero_point, geometry, activation):
        n = w.shape[-1]
        bias = _check_operands(op, x, w, bias, n, 3)
        sx = _concrete(x.scale, "x.scale", op)
        sy = _concrete(out_scale, "out_scale", op)
        sw = _concrete(w.scale, "w.scale", op)
        rule, params = requant_params(self.kernels, op, sx, sw, sy, n, geometry.groups)
        values = _conv_int8(x.values, x.zero_point, w.values, bias, tuple(jnp.asarray(p) for p in params),
                            jnp.float32(sy), jnp.int32(out_zero_point), rule=rule,
                            strides=tuple(geometry.strides), padding=tuple(map(tuple, geometry.padding)),
                            dilation=tuple(geometry.dilation), groups=int(geometry.groups),
                            activation=activation)
        return _output(values, sy, out_zero_point)

    def tfl_conv(self, x, w, bias, out_scale, out_zero_point, geometry, activation="NONE"):
        """CONV_2D: ``x`` QArray qint8 ``(N, H, W, C)`` per tensor; ``w`` QArray qint8 ``(KH, KW, C/groups, O)``
        (HWIO) per channel (``axis=3``) or per tensor; ``bias`` int32 ``(O,)`` (scale ``x.scale * w.scale``)
        or None; ``geometry`` a :class:`~qjax.engines.ConvGeometry` with explicit padding; ``activation``
        one of ``qops.tflite_common.ACTIVATIONS`` -> QArray qint8 ``(N, OH, OW, O)``."""
        if w.ndim != 4 or x.ndim != 4 or x.shape[-1] != w.shape[2] * geometry.groups:
            raise ValueError(f"CONV_2D: x {tuple(x.shape)} (NHWC) and w {tuple(w.shape)} (HWIO) need "
                             f"C == w.shape[2] * groups ({geometry.groups})")
        return self._tfl_conv("CONV_2D", x, w, bias, out_scale, out_zero_point, geometry, activation)

    def tfl_depthwise_conv(self, x, w, bias, out_scale, out_zero_point, geometry, activation="NONE"):
        """DEPTHWISE_CONV_2D: as :meth:`tfl_conv` with ``w`` ``(KH, KW, 1, C * M)`` and ``geometry.groups == C``
        (output channel ``c * M + m`` reads input channel ``c``, depth multiplier ``M``)."""
        c = x.shape[-1] if x.ndim == 4 else -1
        if w.ndim != 4 or w.shape[2] != 1 or geometry.groups != c or w.shape[3] % c:
            raise ValueError(f"DEPTHWISE_CONV_2D: w {tuple(w.shape)} must be (KH, KW, 1, C * M) with groups == C "
                             f"(x {tuple(x.shape)}, groups={geometry.groups})")
        return self._tfl_conv("DEPTHWISE_CONV_2D", x, w, bias, out_scale, out_zero_point, geometry, activation)

    def tfl_fully_connected(self, x, w, bias, out_scale, out_zero_point, activation="NONE"):
        """FULLY_CONNECTED: ``x`` QArray qint8 ``(N, K)``; ``w`` QArray qint8 ``(O, K)`` per channel (``axis=0``)
        or per tensor; ``bias`` int32 ``(O,)`` or None -> QArray qint8 ``(N, O)``."""
        op = "FULLY_CONNECTED"
        if w.ndim != 2 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"{op}: x {tuple(x.shape)} must end in K and w {tuple(w.shape)} be (O, K)")
        n = w.shape[0]
        bias = _check_operands(op, x, w, bias, n, 0)
        sx = _concrete(x.scale, "x.scale", op)
        sy = _concrete(out_scale, "out_scale", op)
        try:
            rule, params = requant_params(self.kernels, op, sx, _concrete(w.scale, "w.scale", op), sy, n)
        except ValueError as e:
            refuse(self, op, str(e))
        values = _fc_int8(x.values, x.zero_point, w.values, bias, tuple(jnp.asarray(p) for p in params),
                          jnp.float32(sy), jnp.int32(out_zero_point), rule=rule, activation=activation)
        return _output(values, sy, out_zero_point)
