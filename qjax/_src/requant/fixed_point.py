"""Integer-only requantization: fixed-point multipliers as INT8 accelerators, gemmlowp and TFLite use them.

A real multiplier ``M = sx*sw/sy`` is replaced offline by an integer ``M0`` and a shift:
``(q, shift) = frexp(M)`` with ``q`` in [0.5, 1), ``M0 = round_half_away(q * 2**31)`` (``M0 == 2**31``
becomes ``2**30`` with ``shift + 1``).  With ``bits < 31`` the multiplier keeps only its top
``bits`` bits (``M0`` a multiple of ``2**(31 - bits)``, rounded once from ``q``).  Then, all in integers:

* ``gemmlowp`` (TFLite's default "double rounding"; gemmlowp ``fixedpoint.h``):
  ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**max(shift,0), M0), max(-shift,0))``
  where ``SRDHM(a, b) = (a*b + (a*b >= 0 ? 2**30 : 1 - 2**30)) / 2**31`` (C division, toward zero;
  ``INT32_MIN * INT32_MIN`` saturates) and ``RDPOT`` rounds half away from zero.
* ``single`` (TFLite's single-rounding build): ``(x*M0 + 2**(30-shift)) >> (31-shift)`` in 64 bits
  (ties toward +inf), or any rounding mode of :mod:`qjax.rounding`.
* ``dyadic`` (HAWQ-V3, TVM QNN): ``y = round(x * m / 2**e)`` with an unsigned integer ``m`` of ``bits``
  bits and a chosen rounding (``m = round_half_up(q * 2**bits)`` in ``[2**(bits-1), 2**bits)``,
  ``e = bits - exponent``).

Everything is exact integer arithmetic (64-bit products via :mod:`qjax.int64`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import int64 as i64
from ..rounding import round_shift_right

__all__ = [
    "quantize_multiplier",
    "srdhm",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "multiply_single_rounding",
    "dyadic_multiply",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(m, bits: int = 31, style: str = "gemmlowp"):
    """``(M0, shift)`` int64 numpy arrays for real multipliers ``m`` (numpy, double precision, offline).

    ``style="gemmlowp"``/``"single"``: ``m ~= M0 * 2**(shift - 31)`` with ``M0 < 2**31``;
    ``style="dyadic"``: ``m ~= M0 * 2**-shift`` with ``M0 < 2**bits`` (``shift`` the right shift).
    """
    if style not in ("gemmlowp", "single", "dyadic"):
        raise ValueError(f"style={style!r}; use 'gemmlowp', 'single' or 'dyadic'")
    m = np.asarray(m, np.float64)
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise ValueError(f"multipliers must be finite and > 0, got {m}")
    if not 2 <= bits <= 31:
        raise ValueError(f"bits={bits}; use 2..31")
    q, e = np.frexp(m)  # m = q * 2**e, q in [0.5, 1)
    if style == "dyadic":
        m0 = np.floor(q * 2.0 ** bits + 0.5).astype(np.int64)  # round half up, as HAWQ-V3
        carry = m0 >= 2**bits
        m0 = np.where(carry, m0 // 2, m0)
        e = e + carry
        return m0, (bits - e).astype(np.int64)
    # round once, to `bits` bits, half away from zero (TFLite's std::round); q * 2**bits is exact
    m0 = (np.floor(q * 2.0**bits + 0.5) * 2.0 ** (31 - bits)).astype(np.int64)
    carry = m0 >= 2**31
    m0 = np.where(carry, 2**30, m0)
    return m0, (e + carry).astype(np.int64)


def srdhm(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 arrays."""
    a = jnp.asarray(a, jnp.int32)
    b = jnp.asarray(b, jnp.int32)
    overflow = (a == b) & (a == INT32_MIN)
    ab = i64.mul32(a, b)
    nudge = jnp.where(i64.is_negative(ab), 1 - 2**30, 2**30).astype(jnp.int32)
    s = i64.add_int32(ab, nudge)
    pos = i64.shift_right(s, 31)
    negq = i64.neg(i64.shift_right(i64.neg(s), 31))  # division truncating toward zero
    q = jnp.where(i64.is_negative(s), i64.to_int32_wrap(negq), i64.to_int32_wrap(pos))
    return jnp.where(overflow, jnp.int32(INT32_MAX), q)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero (int32)."""
    x = jnp.asarray(x, jnp.int32)
    e = jnp.asarray(exponent, jnp.int32)
    mask = (jnp.left_shift(jnp.int32(1), e) - 1).astype(jnp.int32)
    rem = x & mask
    thr = (mask >> 1) + (x < 0).astype(jnp.int32)
    return (x >> e) + (rem > thr).astype(jnp.int32)


def multiply_by_quantized_multiplier(x, m0, shift):
    """TFLite ``MultiplyByQuantizedMultiplier`` (double rounding): see the module docstring."""
    shift = jnp.asarray(shift, jnp.int32)
    left = jnp.maximum(shift, 0)
    right = jnp.maximum(-shift, 0)
    return rounding_divide_by_pot(srdhm(jnp.left_shift(jnp.asarray(x, jnp.int32), left), m0), right)


def multiply_single_rounding(x, m0, shift, rounding: str = "half_up", key=None):
    """``round(x * M0 / 2**(31 - shift))`` from the exact 64-bit product (TFLite single rounding)."""
    prod = i64.mul32(x, m0)
    return round_shift_right(prod, 31 - jnp.asarray(shift, jnp.int32), rounding, key)


def dyadic_multiply(x, m, e, rounding: str = "half_up", key=None):
    """``round(x * m / 2**e)`` exactly (``m`` an integer multiplier, ``e >= 0`` the shift)."""
    return round_shift_right(i64.mul32(x, m), e, rounding, key)
