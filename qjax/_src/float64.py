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
  pt2e decomposed quantize ``x * (1.0 / scale)`` whose Python-float factor torch casts to float32);
* :func:`product_to_f32` — ``fl32(fl64(a * b))`` (qnnpack's bias scale ``weight.q_scale() * input_scale``,
  ``QuantUtils.h`` ``QuantizeBias``, quantized with the float cast of that double);
* :func:`words_from_f32` — the (exact) double of a float32.

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

__all__ = ["words", "from_words", "words_if_not_f32", "round_to_f32", "reciprocal_to_f32", "product_to_f32",
           "words_from_f32", "round_to_f32_numpy", "reciprocal_to_f32_numpy", "product_to_f32_numpy", "reciprocal_f32",
           "product_f32"]

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


def product_to_f32_numpy(wa, wb) -> np.ndarray:
    """``fl32(fl64(a * b))`` (numpy twin of :func:`product_to_f32`)."""
    return (from_words(wa) * from_words(wb)).astype(np.float32)


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


def words_from_f32(f):
    """The words of the double equal to float32 ``f`` (normal floats; exact)."""
    b = lax.bitcast_convert_type(jnp.asarray(f, jnp.float32), _U32)
    e = (b >> 23) & _u(0xFF)
    m = b & _u(0x7FFFFF)
    hi = (b & _u(0x80000000)) | ((e + _u(1023 - 127)) << 20) | (m >> 3)
    return jnp.stack([hi, (m & _u(7)) << 29], axis=-1)


_LIMB = 11  # 53-bit significands as five 11-bit limbs: limb products < 2**22, column sums < 2**25


def _limbs(mh, lo):
    m = [lo & _u(0x7FF), (lo >> 11) & _u(0x7FF), ((lo >> 22) | (mh << 10)) & _u(0x7FF), (mh >> 1) & _u(0x7FF),
         (mh >> 12) & _u(0x7FF)]
    return m


def product_to_f32(wa, wb):
    """``fl32(fl64(a * b))`` for doubles given as words (broadcasting) -> float32.

    The 106-bit product of the significands is formed exactly from 11-bit limbs (column sums fit uint32),
    packed into four 32-bit words, rounded to 53 bits half to even (guard bit and sticky bits below it),
    then to float32 by :func:`_round53_to_f32`.
    """
    wa, wb = jnp.broadcast_arrays(jnp.asarray(wa, _U32), jnp.asarray(wb, _U32))
    ea, ah, al = _split(wa)
    eb, bh, bl = _split(wb)
    a, b = _limbs(ah, al), _limbs(bh, bl)
    cols = [sum(a[i] * b[k - i] for i in range(max(0, k - 4), min(k, 4) + 1)) for k in range(9)]
    limbs, carry = [], jnp.zeros_like(ah)
    for c in cols:
        t = c + carry
        limbs.append(t & _u(0x7FF))
        carry = t >> _LIMB
    limbs += [carry & _u(0x7FF), carry >> _LIMB]  # P < 2**106: limbs 0..9 (the 11th is 0)
    w = [jnp.zeros_like(ah) for _ in range(4)]
    for i, limb in enumerate(limbs[:10]):
        idx, sh = divmod(_LIMB * i, 32)
        w[idx] = w[idx] | (limb << sh)
        if sh + _LIMB > 32:
            w[idx + 1] = w[idx + 1] | (limb >> (32 - sh))
    w0, w1, w2, w3 = w
    top = ((w3 >> 9) & _u(1)) == 1  # bit 105 set: P in [2**105, 2**106), else [2**104, 2**105)
    # q53 = P >> s with s = 53 (top) or 52
    lo53 = jnp.where(top, (w1 >> 21) | (w2 << 11), (w1 >> 20) | (w2 << 12))
    hi53 = jnp.where(top, (w2 >> 21) | (w3 << 11), (w2 >> 20) | (w3 << 12)) & _u(0x1FFFFF)
    guard = jnp.where(top, (w1 >> 20) & _u(1), (w1 >> 19) & _u(1))
    sticky = (w0 != 0) | ((w1 & jnp.where(top, _u(0xFFFFF), _u(0x7FFFF))) != 0)
    up = (guard == 1) & (sticky | ((lo53 & _u(1)) == 1))
    lo2 = lo53 + up.astype(_U32)
    hi53 = hi53 + (lo2 < lo53).astype(_U32)
    ovf = (hi53 >> 21) == 1
    hi53 = jnp.where(ovf, _u(0x100000), hi53)
    lo2 = jnp.where(ovf, _u(0), lo2)
    exp = ea + eb - 2046 + top.astype(jnp.int32) + ovf.astype(jnp.int32)
    return _round53_to_f32(hi53, lo2, exp)


def product_f32(a_f32, a64, b_f32, b64):
    """``fl32(fl64(a * b))`` of two scales each held as float32 plus optional words (None: float32-valued,
    where the double product of two float32s is exact and this is the correctly rounded float32 product)."""
    if a64 is None and b64 is None:
        return f32x.mul_rn(jnp.asarray(a_f32, jnp.float32), jnp.asarray(b_f32, jnp.float32))
    a64 = words_from_f32(a_f32) if a64 is None else a64
    b64 = words_from_f32(b_f32) if b64 is None else b64
    return product_to_f32(a64, b64)
