"""Integer-only requantization under a :class:`~qjax.engines.HardwareSpec` (jit/vmap-able).

These functions take the *derived* integer parameters (int32 bias, fixed-point multiplier ``m0``
and ``shift``, zero points; see :mod:`qjax.requant.derive`) and touch no float — the arithmetic an
INT8 accelerator without a float unit runs after its exact integer accumulation.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import int64 as i64
from ..rounding import round_shift_right
from .fixed_point import dyadic_multiply, multiply_single_rounding, rounding_divide_by_pot, srdhm

__all__ = ["narrow_accumulator", "apply_multiplier", "requantize_integer", "clamp_output", "ADD_LEFT_SHIFT"]

ADD_LEFT_SHIFT = 20  # TFLite's quantized ADD: inputs are scaled by 2**20 before rescaling (add.cc, left_shift)


def narrow_accumulator(a, bits: int, overflow: str):
    """``a`` (int32) held in a ``bits``-bit register: two's-complement wrap or saturation."""
    if bits >= 32:
        return a
    if overflow == "wrap":
        s = 32 - bits
        return jnp.right_shift(jnp.left_shift(a, s), s)  # sign-extend the low `bits` bits
    return jnp.clip(a, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def apply_multiplier(a, m0, shift, spec, key=None):
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


def clamp_output(r, out_zero_point, spec, relu=False):
    """``clamp(r + zy, lo, hi)`` with ``[lo, hi]`` the spec's output range, a fused ReLU raising ``lo`` to ``zy``;
    clipped before adding ``zy`` so that a huge ``r`` cannot wrap."""
    lo, hi = spec.output_range or (0, 255)
    zy = jnp.asarray(out_zero_point, jnp.int32)
    lo = jnp.maximum(lo, zy) if relu else jnp.int32(lo)
    return jnp.clip(r, lo - zy, hi - zy) + zy


def requantize_integer(acc, bias_q, m0, shift, out_zero_point, spec, relu=False, key=None):
    """``clamp(round((narrow(acc + bias_q)) * M) + zy, lo, hi)``, channels on the last axis of ``acc``."""
    if bias_q is None:
        a = acc
    elif spec.accumulator_overflow == "saturate":  # add exactly (64-bit), then saturate: no wrapped sign
        a = i64.to_int32_saturate(i64.add(i64.from_int32(acc), i64.from_int32(jnp.broadcast_to(bias_q, acc.shape))))
    else:
        a = acc + bias_q  # two's-complement wrap, the same as wrapping at every step
    a = narrow_accumulator(a, spec.accumulator_bits, spec.accumulator_overflow)
    return clamp_output(apply_multiplier(a, m0, shift, spec, key), out_zero_point, spec, relu)
