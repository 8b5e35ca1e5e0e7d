"""IEEE doubles carried as two uint32 words, with the few exact double operations torch's kernels do on scales.

torch keeps quantization scales as C++ ``double`` (``q_scale()``, module ``.scale``, the Python-float
arguments of ``torch.ops.quantized.*`` and of the pt2e ``quantized_decomposed`` ops) and a few kernels
compute with them in double before rounding to float32.  qjax runs without ``jax_enable_x64``, so a
double is carried here as its bit pattern: a uint32 array of shape ``(..., 2)`` holding the high and
low words (``words[..., 0] = bits >> 32``, ``words[..., 1] = bits & 0xFFFFFFFF``).  Every operation is
integer arithmetic in ``jax.lax`` (shifts, compares, subtracts: no float op XLA could contract, flush or
reassociate), correctly rounded, and has a numpy twin for concrete values that is numpy's own float64:

* :func:`round_to_f32` — ``fl32(d)`` (``static_cast<float>(double)``, round half to even);
* :func:`reciprocal_to_f32` — ``fl32(fl64(1.0 / d))``: the reciprocal rounded to double, *then* to float32
  (two roundings: onednn's ``ideep::scale_t(1, 1.0 / scale)`` in ``qconv.cpp`` / ``qlinear.cpp``, and the
  pt2e decomposed quantize ``x * (1.0 / scale)`` whose Python-float factor torch casts to float32).

For a float32-valued ``d`` the double reciprocal rounded to float32 equals the float32 division
``fl32(1.0f / d)`` (Figueroa: double has more than ``2 * 24 + 2`` bits), so code holding only float32
scales is exact for those; for other doubles the two differ when ``fl64(1/d)`` lands on (or rounds onto)
a float32 midpoint (``tests/test_float64.py`` builds such doubles).

Exactness domain: positive normal doubles whose results are normal float32 (every valid scale: qjax
rejects scales that round to 0 or inf in float32).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from . import float32 as f32x

__all__ = ["words", "from_words", "words_if_not_f32", "round_to_f32", "reciprocal_to_f32", "round_to_f32_numpy",
           "reciprocal_to_f32_numpy", "reciprocal_f32"]

_U32 = jnp.uint32


def _u(v):
    return jnp.asarray(v, _U32)


# -- host side (numpy) ---------------------------------------------------------------------------

def words(d) -> np.ndarray:
    """The uint32 ``(..., 2)`` words (high, low) of float64 ``d`` (numpy)."""
    bits = np.asarray(d, np.float64).view(np.uint64)
    return np.stack([(bits >> np.uint64(32)).astype(np.uint32), (bits & np.uint64(0xFFFFFFFF)).astype(np.uint32)],
                    axis=-1)


def from_words(w) -> np.ndarray:
    """The float64 array whose words are ``w`` (numpy; the inverse of :func:`words`)."""
    w = np.asarray(w, np.uint32)
    bits = (w[..., 0].astype(np.uint64) << np.uint64(32)) | w[..., 1].astype(np.uint64)
    return bits.view(np.float64)


def words_if_not_f32(d):
    """:func:`words` of a concrete float scale that is not float32-valued, else None (float32-valued
    doubles need nothing more than their float32, see the module docstring)."""
    d = np.asarray(d, np.float64)
    if np.all(d.astype(np.float32).astype(np.float64) == d):
        return None
    return words(d)


def round_to_f32_numpy(w) -> np.ndarray:
    """``fl32(d)`` of the double(s) ``w`` (numpy twin of :func:`round_to_f32`)."""
    return from_words(w).astype(np.float32)


def reciprocal_to_f32_numpy(w) -> np.ndarray:
    """``fl32(fl64(1.0 / d))`` (numpy twin of :func:`reciprocal_to_f32`)."""
    return (np.float64(1.0) / from_words(w)).astype(np.float32)


# -- traced side (jax.lax, integers only) -------------------------------------------------------------

def _round53_to_f32(qh, ql, exp):
    """float32 ``RNE(q / 2**52) * 2**exp`` for a 53-bit integer ``q = qh * 2**32 + ql`` (``2**52 <= q < 2**53``)."""
    low = ql & _u(0x1FFFFFFF)  # the 29 bits below float32's 24
    q24 = (qh << 3) | (ql >> 29)
    half = _u(0x10000000)
    up = (low > half) | ((low == half) & ((q24 & _u(1)) == 1))
    q24 = q24 + up.astype(_U32)
    carry = q24 >> 24  # rounded up to 2**24
    q24 = jnp.where(carry == 1, _u(0x800000), q24)
    e = (exp + carry.astype(jnp.int32) + 127).astype(_U32)
    return lax.bitcast_convert_type((e << 23) | (q24 & _u(0x7FFFFF)), jnp.float32)


def _split(w):
    w = jnp.asarray(w, _U32)
    hi, lo = w[..., 0], w[..., 1]
    e = ((hi >> 20) & _u(0x7FF)).astype(jnp.int32)
    mh = (hi & _u(0xFFFFF)) | _u(0x100000)  # 53-bit significand M = mh * 2**32 + lo (normal doubles)
    return e, mh, lo


def round_to_f32(w):
    """``fl32(d)`` for doubles given as words ``(..., 2)`` -> float32 ``(...)``."""
    e, mh, lo = _split(w)
    return _round53_to_f32(mh, lo, e - 1023)


def _ge(ah, al, bh, bl):
    return (ah > bh) | ((ah == bh) & (al >= bl))


def _sub(ah, al, bh, bl):
    return ah - bh - (al < bl).astype(_U32), al - bl


def reciprocal_to_f32(w):
    """``fl32(fl64(1.0 / d))`` for doubles given as words ``(..., 2)`` -> float32 ``(...)``.

    With ``d = M * 2**(e - 1075)`` (``2**52 <= M < 2**53``): long division gives ``Q = floor(2**106 / M)``
    (54 bits for ``M > 2**52``) and its remainder; ``fl64(1/d) = RNE53(2**106 / M) * 2**(969 - e)`` rounds
    ``Q`` to 53 bits half to even (guard bit ``Q & 1``, sticky ``remainder != 0``), and
    :func:`_round53_to_f32` rounds that double to float32.  ``M = 2**52`` (a power of two) is exact.
    """
    e, mh, lo = _split(w)
    # first quotient digit: 2**53 / M is in (1, 2) for M > 2**52, so the digit is 1, remainder 2**53 - M
    rh, rl = _sub(_u(0x200000), _u(0), mh, lo)

    def step(_, carry):
        qh, ql, rh, rl = carry
        rh, rl = (rh << 1) | (rl >> 31), rl << 1  # r < M < 2**53, so 2r fits 54 bits
        bit = _ge(rh, rl, mh, lo)
        sh, sl = _sub(rh, rl, mh, lo)
        rh, rl = jnp.where(bit, sh, rh), jnp.where(bit, sl, rl)
        qh, ql = (qh << 1) | (ql >> 31), (ql << 1) | bit.astype(_U32)
        return qh, ql, rh, rl

    one = jnp.ones_like(mh)
    qh, ql, rh, rl = lax.fori_loop(0, 53, step, (jnp.zeros_like(mh), one, rh, rl))
    # Q (54 bits) -> 53 bits, half to even
    guard = ql & _u(1)
    q53h, q53l = qh >> 1, (ql >> 1) | (qh << 31)
    sticky = (rh | rl) != 0
    up = (guard == 1) & (sticky | ((q53l & _u(1)) == 1))
    q53l2 = q53l + up.astype(_U32)
    q53h = q53h + (q53l2 < q53l).astype(_U32)
    ovf = (q53h >> 21) == 1  # rounded up to 2**53
    q53h = jnp.where(ovf, _u(0x100000), q53h)
    q53l2 = jnp.where(ovf, _u(0), q53l2)
    exp = 1022 - e + ovf.astype(jnp.int32)
    power_of_two = (mh == _u(0x100000)) & (lo == 0)
    q53h = jnp.where(power_of_two, _u(0x100000), q53h)
    q53l2 = jnp.where(power_of_two, _u(0), q53l2)
    exp = jnp.where(power_of_two, 1023 - e, exp)
    return _round53_to_f32(q53h, q53l2, exp)


def reciprocal_f32(scale_f32, scale64=None):
    """``fl32(fl64(1.0 / d))`` of a scale held as float32 ``fl32(d)`` plus its words (None when ``d`` is
    float32-valued, where the float32 division is the same value); traced or concrete."""
    if scale64 is None:
        return f32x.div_rn(1.0, jnp.asarray(scale_f32, jnp.float32))
    return reciprocal_to_f32(scale64)
