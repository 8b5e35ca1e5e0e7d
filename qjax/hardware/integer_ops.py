"""Integer-only layer arithmetic under a :class:`~qjax.hardware.HardwareSpec` (jit/vmap-able).

Every function here takes the *derived* integer parameters (int8 weights, int32 bias,
fixed-point multiplier ``m0`` and ``shift``, zero points) and touches no float except the
model input's quantization — the arithmetic an INT8 accelerator without a float unit runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .. import int64 as i64
from ..dtypes import quint8
from ..float32 import div_rn
from ..kernels.conv import conv_accumulate
from ..kernels.linear import linear_accumulate
from ..qarray import QArray
from ..requant.fixed_point import (dyadic_multiply, multiply_single_rounding, rounding_divide_by_pot, srdhm)
from ..rounding import round_float, round_shift_right
from .spec import HardwareSpec

__all__ = ["narrow_accumulator", "apply_multiplier", "requantize_integer", "conv_integer", "linear_integer",
           "add_integer", "quantize_input", "ADD_LEFT_SHIFT"]

ADD_LEFT_SHIFT = 20  # TFLite's quantized ADD: inputs are scaled by 2**20 before rescaling


def narrow_accumulator(a, bits: int, overflow: str):
    """``a`` (int32) held in a ``bits``-bit register: two's-complement wrap or saturation."""
    if bits >= 32:
        return a
    if overflow == "wrap":
        s = 32 - bits
        return jnp.right_shift(jnp.left_shift(a, s), s)  # sign-extend the low `bits` bits
    return jnp.clip(a, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def apply_multiplier(a, m0, shift, spec: HardwareSpec, key=None):
    """``round(a * M)`` for the fixed-point ``M`` given by ``(m0, shift)`` in ``spec``'s style (int32).

    A result beyond int32 wraps (gemmlowp's left shift like NEON ``vshl``; single/dyadic keep the low 32
    bits); it only happens for multipliers > 1 on accumulators whose output is clamped anyway.
    """
    mode = spec.requant_rounding
    if spec.multiplier == "gemmlowp":
        # TFLite MultiplyByQuantizedMultiplier: left shift before SRDHM, RoundingDivideByPOT after
        shift = jnp.asarray(shift, jnp.int32)
        left, right = jnp.maximum(shift, 0), jnp.maximum(-shift, 0)
        h = srdhm(jnp.left_shift(a, left), m0)
        if mode == "half_away":
            return rounding_divide_by_pot(h, right)
        return round_shift_right(i64.from_int32(h), right, mode, key)
    if spec.multiplier == "single":
        return multiply_single_rounding(a, m0, shift, mode, key)
    return dyadic_multiply(a, m0, shift, mode, key)


def requantize_integer(acc, bias_q, m0, shift, out_zero_point, spec: HardwareSpec, relu=False, key=None):
    """``clamp(round((narrow(acc + bias_q)) * M) + zy, lo, hi)``, channels on the last axis of ``acc``."""
    if bias_q is None:
        a = acc
    elif spec.accumulator_overflow == "saturate":  # add exactly (64-bit), then saturate: no wrapped sign
        a = i64.to_int32_saturate(i64.add(i64.from_int32(acc), i64.from_int32(jnp.broadcast_to(bias_q, acc.shape))))
    else:
        a = acc + bias_q  # two's-complement wrap, the same as wrapping at every step
    a = narrow_accumulator(a, spec.accumulator_bits, spec.accumulator_overflow)
    r = apply_multiplier(a, m0, shift, spec, key)
    lo, hi = spec.output_range or (0, 255)
    zy = jnp.asarray(out_zero_point, jnp.int32)
    lo = jnp.maximum(lo, zy) if relu else jnp.int32(lo)
    # clip before adding zy so that a huge r cannot wrap
    return jnp.clip(r, lo - zy, hi - zy) + zy


def _qarray(values, p):
    return QArray(values.astype(jnp.uint8), p["scale"], p["zero_point"], quint8, None, check=False)


@functools.partial(jax.jit, static_argnames=("spec", "geometry", "relu"))
def _conv_values(x, zx, w, zw, bias_q, m0, shift, zy, key, *, spec, geometry, relu):
    from ..ops import _channels_to_first, _channels_to_last, _weight_to_last

    xl, wl = _channels_to_last(x), _weight_to_last(w)
    acc = conv_accumulate(xl, zx, wl, zw, strides=geometry.strides, padding=geometry.padding,
                          dilation=geometry.dilation, groups=geometry.groups)
    out = requantize_integer(acc, bias_q, m0, shift, zy, spec, relu, key)
    return _channels_to_first(out)


def conv_integer(xq: QArray, p: dict, *, spec: HardwareSpec, geometry, relu: bool, key=None) -> QArray:
    """Integer-only conv, torch layout ``(N, C, *spatial)``; ``p`` holds the derived parameters."""
    w = p["weight"]
    v = _conv_values(xq.values, xq.zero_point, w.values, w.zero_point, p["bias_q"], p["m0"], p["shift"],
                     p["zero_point"], key, spec=spec, geometry=geometry, relu=relu)
    return _qarray(v, p)


@functools.partial(jax.jit, static_argnames=("spec", "relu"))
def _linear_values(x, zx, w, zw, bias_q, m0, shift, zy, key, *, spec, relu):
    acc = linear_accumulate(x, zx, w, zw)
    return requantize_integer(acc, bias_q, m0, shift, zy, spec, relu, key)


def linear_integer(xq: QArray, p: dict, *, spec: HardwareSpec, relu: bool, key=None) -> QArray:
    """Integer-only linear layer ``(..., K) -> (..., O)``."""
    w = p["weight"]
    v = _linear_values(xq.values, xq.zero_point, w.values, w.zero_point, p["bias_q"], p["m0"], p["shift"],
                       p["zero_point"], key, spec=spec, relu=relu)
    return _qarray(v, p)


def add_integer(a: QArray, b: QArray, p: dict, *, spec: HardwareSpec, relu: bool, key=None) -> QArray:
    """TFLite's integer ADD (``reference_ops::AddElementwise``) with ``spec``'s multiplier style::

        a' = round((qa - za) * 2**20 * Ma),  b' = round((qb - zb) * 2**20 * Mb)
        q  = clamp(round((a' + b') * Mo) + zy)

    with ``Ma = sa / (2 max(sa, sb))``, ``Mb`` likewise, ``Mo = 2 max(sa, sb) / (2**20 sy)``.
    """
    ka = kb = ko = None
    if key is not None:
        ka, kb, ko = jax.random.split(key, 3)
    xa = jnp.left_shift(a.values.astype(jnp.int32) - a.zero_point, ADD_LEFT_SHIFT)
    xb = jnp.left_shift(b.values.astype(jnp.int32) - b.zero_point, ADD_LEFT_SHIFT)
    sa = apply_multiplier(xa, p["m0_a"], p["shift_a"], spec, ka)
    sb = apply_multiplier(xb, p["m0_b"], p["shift_b"], spec, kb)
    r = apply_multiplier(sa + sb, p["m0"], p["shift"], spec, ko)
    lo, hi = spec.output_range or (0, 255)
    zy = p["zero_point"]
    lo = jnp.maximum(lo, zy) if relu else jnp.int32(lo)
    return _qarray(jnp.clip(r, lo - zy, hi - zy) + zy, p)


def quantize_input(x, p: dict, *, spec: HardwareSpec, key=None) -> QArray:
    """The host's quantization of the model input: ``clamp(round(x / s) + z, 0, 255)`` in ``spec``'s rounding."""
    q = round_float(div_rn(jnp.asarray(x, jnp.float32), p["scale"]), spec.quantize_rounding, key)
    q = jnp.clip(q, -256.0, 512.0).astype(jnp.int32) + p["zero_point"]
    return _qarray(jnp.clip(q, 0, 255), p)
