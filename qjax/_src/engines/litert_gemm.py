"""LiteRT's CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV, per kernel family (a mixin of ``LiteRT``).

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

with ``M_c = double(sx) * double(sw_c) / double(sy)``; TRANSPOSE_CONV requantizes as DEPTHWISE_CONV_2D (its
optimized kernel ends in the same ``optimized_ops::Quantize``).  The kernels derive their multipliers at Prepare
time: here on the host from concrete scales (checked), or in the graph from traced ones (the same integers;
:func:`requant_params`), except under XNNPACK, whose Prepare refuses scales >= 256: it needs concrete scales.
The arithmetic is jitted with the geometry static.
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
from ..kernels.conv_transpose import conv_transpose_accumulate
from ..kernels.linear import linear_accumulate
from ..qarray import QArray
from ..qops.tflite_common import activation_range, activation_range_xnnpack, explicit_padding
from ..requant import tflite as rq
from .base import refuse

__all__ = ["LiteRTGemm", "output_range", "gemm_rule", "requant_params", "XNNPACK_MAX_REQUANT_SCALE"]

_I32 = jnp.int32


#: XNNPACK's qs8 convolution / fully-connected / deconvolution operators refuse a requantization scale
#: ``sx * sw_c / sy >= 256`` (``src/operators/convolution-nhwc.c``, ``fully-connected-nc.c``,
#: ``deconvolution-nhwc.c``: "requantization scale ... is greater or equal to 256.0"): the delegate then fails to
#: prepare the model (measured: the interpreter raises), so such an op has no LiteRT result
XNNPACK_MAX_REQUANT_SCALE = 256.0

OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def gemm_rule(kernels: str, op: str, groups: int = 1) -> str:
    """The requantization rule (a name of :data:`qjax._src.requant.tflite.RULES`) the ``kernels`` family applies
    to ``op``: the one place a GEMM op's arithmetic is chosen.

    reference: gemmlowp fixed point (``reference_integer_ops``), FULLY_CONNECTED in double (``double_float``);
    optimized: half up (ruy), but grouped CONV_2D runs on ``kReference`` only (``conv.cc``) and DEPTHWISE_CONV_2D /
    TRANSPOSE_CONV (``optimized_integer_ops::TransposeConvV2``) end in ``optimized_ops::Quantize``
    (``optimized_depthwise``); xnnpack: float32 (``xnnpack``)."""
    if op not in OPS:
        raise ValueError(f"op={op!r}; use one of {OPS}")
    if kernels == "xnnpack":
        return "xnnpack"
    if kernels == "reference":
        return "double_float" if op == "FULLY_CONNECTED" else "reference"
    if op == "CONV_2D" and groups != 1:
        return "reference"
    return "optimized_depthwise" if op in ("DEPTHWISE_CONV_2D", "TRANSPOSE_CONV") else "half_up"


def requant_params(kernels: str, op: str, x_scale, w_scale, out_scale, n: int, groups: int = 1):
    """``(rule, params)``: the family's rule for ``op`` (:func:`gemm_rule`) and its per-channel ``(n,)``
    parameters (:func:`qjax._src.requant.tflite.requant_params`).

    The optimized per-tensor FULLY_CONNECTED derives its multiplier from the float32 product ``fl32(sx * sw)``
    (``fully_connected.cc`` Prepare calls ``GetQuantizedConvolutionMultipler`` when the filter has one scale);
    TRANSPOSE_CONV takes CONV_2D's multipliers (``PopulateConvolutionQuantizationParams``).  Raises ValueError
    where the kernels cannot prepare: XNNPACK with a scale ``>= 256`` (:data:`XNNPACK_MAX_REQUANT_SCALE`), and,
    XNNPACK's check needing the values, with traced scales; the fixed-point rules with a left shift over 30."""
    rule = gemm_rule(kernels, op, groups)
    concrete = all(is_concrete(v) for v in (x_scale, w_scale, out_scale))
    if rule == "xnnpack" and not concrete:
        raise ValueError("XNNPACK fails to prepare a requantization scale >= 256, which traced scales cannot be "
                         "checked for: pass concrete scales")
    per_tensor = int(np.prod(np.shape(w_scale))) == 1  # TFLite: per channel iff the filter has > 1 scale
    float_product = rule == "half_up" and op == "FULLY_CONNECTED" and per_tensor
    params = rq.requant_params(rule, x_scale, w_scale, out_scale, n, float_product)
    if rule == "xnnpack" and np.any(params[0] >= XNNPACK_MAX_REQUANT_SCALE):
        raise ValueError(f"requantization scale sx*sw/sy = {float(np.max(params[0])):.7g} >= 256: XNNPACK "
                         "fails to prepare it (the interpreter refuses the model)")
    return rule, params


def output_range(rule: str, activation: str, out_scale, out_zero_point):
    """``(lo, hi)`` int32: the fused activation's clamp as the rule's kernels compute it (XNNPACK rounds the
    float bounds to even, the builtin kernels half away: ``qops.tflite_common.activation_range``)."""
    if rule == "xnnpack":
        return activation_range_xnnpack(activation, out_scale, out_zero_point)
    return activation_range(activation, out_scale, out_zero_point)


def _requantize(acc, rule, params, zy, lo, hi):
    return jnp.clip(rq.RULES[rule](acc, *params) + zy, lo, hi)  # + zy wraps in int32, as the kernels' C


def _signed_to_offset(xv, zx):
    """int8 ``x`` as uint8 ``x + 128`` with zero point ``zx + 128`` (the uint8 accumulators' convention)."""
    return lax.bitcast_convert_type(xv, jnp.uint8) ^ jnp.uint8(0x80), jnp.asarray(zx, _I32) + 128


@functools.partial(jax.jit, static_argnames=("rule", "strides", "padding", "dilation", "groups"))
def _conv_int8(xv, zx, wv, bias, params, zy, lo, hi, *, rule, strides, padding, dilation, groups):
    xu, zu = _signed_to_offset(xv, zx)
    acc = conv_accumulate(xu, zu, wv, 0, strides=strides, padding=padding, dilation=dilation, groups=groups)
    return _requantize(acc + bias, rule, params, zy, lo, hi).astype(jnp.int8)


@functools.partial(jax.jit, static_argnames=("rule", "strides", "crop", "out_spatial"))
def _transpose_conv_int8(xv, zx, wv, bias, params, zy, lo, hi, *, rule, strides, crop, out_spatial):
    xu, zu = _signed_to_offset(xv, zx)
    kernel = wv.shape[:2]
    full = tuple((n - 1) * s + k for n, s, k in zip(xu.shape[1:3], strides, kernel))
    # the full scatter out[i*s + k] cropped to [pad_lo, pad_lo + out): symmetric padding pad_lo, the end moved
    # by a (possibly negative) output padding
    acc = conv_transpose_accumulate(xu, zu, jnp.transpose(wv, (2, 3, 0, 1)), 0, strides=strides, padding=crop,
                                    output_padding=tuple(2 * p + o - f for p, o, f in zip(crop, out_spatial, full)),
                                    dilation=(1, 1), groups=1)
    return _requantize(acc + bias, rule, params, zy, lo, hi).astype(jnp.int8)


@functools.partial(jax.jit, static_argnames=("rule",))
def _fc_int8(xv, zx, wv, bias, params, zy, lo, hi, *, rule):
    xu, zu = _signed_to_offset(xv, zx)
    acc = linear_accumulate(xu, zu, wv, 0)
    return _requantize(acc + bias, rule, params, zy, lo, hi).astype(jnp.int8)


def _check_operands(op, x, w, bias, n, w_axis):
    if x.dtype is not qint8 or w.dtype is not qint8:
        raise ValueError(f"{op}: x and w must be qint8 QArrays (int8 activations and weights), got "
                         f"{x.dtype.name} and {w.dtype.name}")
    if x.per_channel:
        raise ValueError(f"{op}: x must be quantized per tensor")
    if w.per_channel and w.axis != w_axis:
        raise ValueError(f"{op}: per-channel weights must be quantized along axis {w_axis}, got axis={w.axis}")
    if is_concrete(w.zero_point) and np.any(np.asarray(w.zero_point) != 0):
        raise ValueError(f"{op}: int8 weights must be symmetric (zero point 0), as LiteRT's int8 kernels require")
    if bias is None:
        return jnp.zeros((n,), _I32)
    bias = jnp.asarray(bias)
    if bias.dtype != jnp.int32 or bias.shape != (n,):
        raise ValueError(f"{op}: bias must be int32 of shape ({n},), got {bias.dtype} {bias.shape}")
    return bias


def _scale(v):
    """A float32 scale: numpy when concrete (derived on the host), else the tracer."""
    return np.float32(np.asarray(v)) if is_concrete(v) else jnp.asarray(v, jnp.float32)


def _output(values, out_scale, out_zero_point):
    return QArray(values, jnp.asarray(out_scale, jnp.float32), jnp.asarray(out_zero_point, jnp.int32), qint8,
                  check=False)


class LiteRTGemm:
    """GEMM ops of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks the family."""

    def _requant_params(self, op, x_scale, w_scale, out_scale, n, groups=1):
        try:
            return requant_params(self.kernels, op, x_scale, w_scale, out_scale, n, groups)
        except ValueError as e:
            refuse(self, op, str(e))

    def _tfl_conv(self, op, x, w, bias, out_scale, out_zero_point, geometry, activation):
        n = w.shape[-1]
        bias = _check_operands(op, x, w, bias, n, 3)
        sy = _scale(out_scale)
        rule, params = self._requant_params(op, x.scale, w.scale, sy, n, geometry.groups)
        lo, hi = output_range(rule, activation, sy, out_zero_point)
        values = _conv_int8(x.values, x.zero_point, w.values, bias, tuple(jnp.asarray(p) for p in params),
                            jnp.asarray(out_zero_point, _I32), lo, hi, rule=rule,
                            strides=tuple(geometry.strides), padding=tuple(map(tuple, geometry.padding)),
                            dilation=tuple(geometry.dilation), groups=int(geometry.groups))
        return _output(values, sy, out_zero_point)

    def tfl_conv(self, x, w, bias, out_scale, out_zero_point, geometry, activation="NONE"):
        """CONV_2D: ``x`` QArray qint8 ``(N, H, W, C)`` per tensor; ``w`` QArray qint8 ``(KH, KW, C/groups, O)``
        (HWIO) per channel (``axis=3``) or per tensor; ``bias`` int32 ``(O,)`` (scale ``x.scale * w.scale``)
        or None; ``geometry`` a :class:`~qjax.engines.ConvGeometry` with explicit padding; ``activation``
        one of ``qops.tflite_common.ACTIVATIONS`` -> QArray qint8 ``(N, OH, OW, O)``."""
        if w.ndim != 4 or x.ndim != 4 or x.shape[-1] != w.shape[2] * geometry.groups or w.shape[3] % geometry.groups:
            raise ValueError(f"CONV_2D: x {tuple(x.shape)} (NHWC) and w {tuple(w.shape)} (HWIO) need "
                             f"C == w.shape[2] * groups and O a multiple of groups ({geometry.groups})")
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
        sy = _scale(out_scale)
        rule, params = self._requant_params(op, x.scale, w.scale, sy, n)
        lo, hi = output_range(rule, activation, sy, out_zero_point)
        values = _fc_int8(x.values, x.zero_point, w.values, bias, tuple(jnp.asarray(p) for p in params),
                          jnp.asarray(out_zero_point, _I32), lo, hi, rule=rule)
        return _output(values, sy, out_zero_point)

    def tfl_transpose_conv(self, x, w, bias, out_scale, out_zero_point, output_shape, strides, padding,
                           activation="NONE"):
        """TRANSPOSE_CONV: ``x`` QArray qint8 ``(N, H, W, C)``; ``w`` QArray qint8 HWIO ``(KH, KW, C, O)`` (TFLite's
        OHWI filter transposed ``(1, 2, 3, 0)``) per channel (``axis=3``) or per tensor; ``bias`` int32 ``(O,)``
        or None; ``output_shape`` the op's ``(N, OH, OW, O)``; ``strides`` ``(sh, sw)``; ``padding`` ``"SAME"`` /
        ``"VALID"`` -> QArray qint8 ``output_shape``.

        ``out[n, y, x, o] = sum x[n, i, j, c] * w[ky, kx, c, o]`` over ``y = i*sh - pad_top + ky`` (likewise
        ``x``), ``pad_top`` the SAME/VALID padding of a forward convolution from ``(OH, OW)`` (``kernels/
        transpose_conv.cc``, ``ComputePaddingHeightWidth``); requantized as CONV_2D's multipliers with the
        family's rule (optimized: ``optimized_ops::Quantize``'s channel blocks, as DEPTHWISE_CONV_2D)."""
        op = "TRANSPOSE_CONV"
        out_shape = tuple(int(d) for d in output_shape)
        if (w.ndim != 4 or x.ndim != 4 or x.shape[-1] != w.shape[2] or len(out_shape) != 4
                or out_shape[0] != x.shape[0] or out_shape[3] != w.shape[3]):
            raise ValueError(f"{op}: x {tuple(x.shape)} (NHWC), w {tuple(w.shape)} (HWIO, I == C) and output_shape "
                             f"{out_shape} (N, OH, OW, O) do not fit")
        n = w.shape[-1]
        bias = _check_operands(op, x, w, bias, n, 3)
        sy = _scale(out_scale)
        rule, params = self._requant_params(op, x.scale, w.scale, sy, n)
        strides = tuple(int(s) for s in strides)
        crop = tuple(lo for lo, _ in explicit_padding(padding, out_shape[1:3], w.shape[:2], strides))
        lo, hi = output_range(rule, activation, sy, out_zero_point)
        values = _transpose_conv_int8(x.values, x.zero_point, w.values, bias, tuple(jnp.asarray(p) for p in params),
                                      jnp.asarray(out_zero_point, _I32), lo, hi, rule=rule, strides=strides,
                                      crop=crop, out_spatial=out_shape[1:3])
        return _output(values, sy, out_zero_point)
