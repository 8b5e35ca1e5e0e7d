"""Exact 64-bit integer arithmetic on 32-bit lanes (no ``jax_enable_x64`` needed).

Fixed-point requantization (gemmlowp, TFLite) multiplies an int32 accumulator by an
int32 multiplier into 64 bits and rounds a shift of the product.  A value here is a pair
``(hi, lo)`` — ``hi`` int32 (the sign and upper half), ``lo`` uint32 — meaning
``hi * 2**32 + lo`` in two's complement.  Everything is exact integer arithmetic.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["from_int32", "mul32", "add", "neg", "add_int32", "shift_right", "to_int32_wrap", "to_int32_saturate",
           "is_negative", "low_bits", "compare_low"]

_U32 = jnp.uint32
_I32 = jnp.int32


def _u(x):
    return lax.bitcast_convert_type(jnp.asarray(x, _I32), _U32)


def _i(x):
    return lax.bitcast_convert_type(x, _I32)


def from_int32(x):
    x = jnp.asarray(x, _I32)
    return jnp.where(x < 0, -1, 0).astype(_I32), _u(x)


def add(a, b):
    ah, al = a
    bh, bl = b
    lo = al + bl
    carry = (lo < al).astype(_I32)
    return ah + bh + carry, lo


def neg(a):
    hi, lo = a
    nlo = ~lo + _U32(1)
    carry = (nlo == 0).astype(_I32)
    return ~hi + carry, nlo


def add_int32(a, x):
    return add(a, from_int32(x))


def mul32(a, b):
    """Exact signed product of two int32 arrays as a 64-bit pair."""
    a = jnp.asarray(a, _I32)
    b = jnp.asarray(b, _I32)
    negative = (a < 0) != (b < 0)
    ua = _u(jnp.where(a < 0, -a, a))  # |INT32_MIN| = 2**31 is fine as uint32
    ub = _u(jnp.where(b < 0, -b, b))
    a1, a0 = ua >> 16, ua & _U32(0xFFFF)
    b1, b0 = ub >> 16, ub & _U32(0xFFFF)
    ll = a0 * b0  # < 2**32
    mid1 = a1 * b0  # < 2**32
    mid2 = a0 * b1
    hh = a1 * b1  # < 2**32
    # lo = ll + ((mid1 + mid2) << 16) mod 2**32, hi = hh + ((mid1 + mid2) >> 16) + carries
    mid = mid1 + mid2
    mid_carry = (mid < mid1).astype(_U32)  # bit 32 of mid1 + mid2
    lo = ll + (mid << 16)
    lo_carry = (lo < ll).astype(_U32)
    hi = hh + (mid >> 16) + (mid_carry << 16) + lo_carry
    mag = (_i(hi), lo)
    nm = neg(mag)
    return jnp.where(negative, nm[0], mag[0]), jnp.where(negative, nm[1], mag[1])


def is_negative(a):
    return a[0] < 0


def shift_right(a, s):
    """Arithmetic (floor) shift right by ``s`` (0 <= s <= 62, array or scalar) of a 64-bit pair."""
    hi, lo = a
    s = jnp.asarray(s, _I32)
    small = s < 32
    s_small = jnp.clip(s, 0, 31).astype(_U32)
    s_big = jnp.clip(s - 32, 0, 31)
    # s < 32: lo' = (lo >> s) | (hi << (32 - s)); hi' = hi >> s
    hi_u = _u(hi)
    spill = jnp.where(s_small == 0, _U32(0), hi_u << (_U32(32) - s_small))
    lo_small = (lo >> s_small) | spill
    hi_small = hi >> s_small.astype(_I32)
    # s >= 32: lo' = hi >> (s - 32) (arithmetic), hi' = sign
    lo_big = _u(hi >> s_big)
    hi_big = jnp.where(hi < 0, -1, 0).astype(_I32)
    return jnp.where(small, hi_small, hi_big), jnp.where(small, lo_small, lo_big)


def low_bits(a, s):
    """``a mod 2**s`` as a 64-bit pair (0 <= s <= 62): the bits a right shift drops."""
    hi, lo = a
    s = jnp.asarray(s, _I32)
    s_lo = jnp.clip(s, 0, 32).astype(_U32)
    mask_lo = jnp.where(s_lo >= 32, _U32(0xFFFFFFFF), (_U32(1) << jnp.minimum(s_lo, _U32(31))) - _U32(1))
    s_hi = jnp.clip(s - 32, 0, 31).astype(_U32)
    mask_hi = jnp.where(s > 32, (_U32(1) << s_hi) - _U32(1), _U32(0))
    return _i(_u(hi) & mask_hi), lo & mask_lo


def compare_low(a, s):
    """Compare ``r = a mod 2**s`` with ``2**(s-1)`` (1 <= s <= 62): -1, 0 or +1."""
    rh, rl = low_bits(a, s)
    sm1 = jnp.asarray(s, _I32) - 1
    half_lo = jnp.where(sm1 < 32, _U32(1) << jnp.clip(sm1, 0, 31).astype(_U32), _U32(0))
    half_hi = jnp.where(sm1 >= 32, _U32(1) << jnp.clip(sm1 - 32, 0, 31).astype(_U32), _U32(0))
    rhu = _u(rh)
    gt = (rhu > half_hi) | ((rhu == half_hi) & (rl > half_lo))
    eq = (rhu == half_hi) & (rl == half_lo)
    return jnp.where(gt, 1, jnp.where(eq, 0, -1)).astype(_I32)


def to_int32_wrap(a):
    return _i(a[1])


def to_int32_saturate(a):
    hi, lo = a
    fits = ((hi == 0) & (lo < _U32(2**31))) | ((hi == -1) & (lo >= _U32(2**31)))
    return jnp.where(fits, _i(lo), jnp.where(hi < 0, jnp.int32(-(2**31)), jnp.int32(2**31 - 1)))
