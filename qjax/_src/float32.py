"""Exact float32 arithmetic that XLA cannot silently re-fuse.

XLA on CPU (and GPU) contracts ``a * b + c`` into a fused multiply-add whenever the
multiply and the add land in the same fused loop, and whether they do depends on
its fusion heuristics.  A fused and an unfused multiply-add differ in the last bit
for about a quarter of random float32 inputs, and torch's kernels use *both*:
per-tensor quantize and fbgemm's per-tensor bias fold are fused (``vfmadd``),
per-channel quantize and observers are unfused.  A bit-exact library therefore
cannot write ``a * b + c`` and hope.

XLA also rewrites ``x / broadcast(b)`` into a multiplication by ``1 / b`` and
``(x + C) - C`` into ``x`` for constants ``C``; :func:`div_rn` and :func:`two_sum`
keep those rewrites away with optimization barriers.

The functions here are immune to contraction by construction: every float
multiply whose result reaches an add is *exact* (its product fits in 24 bits), and
a fused multiply-add of an exact product equals the unfused one.  The only inexact
product, the correctly rounded ``fl32(a * b)``, is computed in integer arithmetic
(:func:`mul_rn`), so no float multiply exists that XLA could fuse.

Exactness domain: finite inputs whose partial products do not fall below the
float32 normal range (``|a*b| >= 2**-100`` or ``a*b == 0``).  XLA's CPU backend
flushes subnormals to zero, so nothing finer can be exact there anyway; all
callers in qjax only use these results after rounding to an integer, where that
range is irrelevant (see each caller).

References: T. J. Dekker, "A floating-point technique for extending the available
precision" (1971) for the exact product; S. Boldo and G. Melquiond, "Emulation of
FMA and correctly rounded sums: proved algorithms using rounding to odd",
IEEE Trans. Computers 57(4), 2008 (Algorithm 5) for the fused multiply-add.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["uncontracted", "mul_rn", "div_rn", "two_sum", "two_product", "add_round_to_odd", "fma", "mul_add",
           "fma32_numpy"]

_U32 = jnp.uint32
_F32 = jnp.float32


def _bits(x):
    return lax.bitcast_convert_type(x, _U32)


def _from_bits(b):
    return lax.bitcast_convert_type(b, _F32)


def _u(v):
    return jnp.asarray(v, _U32)


def uncontracted(x):
    """``x`` unchanged, as a value no later float add can be contracted with.

    XLA (and LLVM below it) contracts ``fmul`` followed by ``fadd`` into an FMA.  Here the
    float passes through ``bitcast -> umin(bits, 0xFFFFFFFE) -> bitcast``: the minimum changes
    only the bit pattern ``0xFFFFFFFF`` (a negative NaN; a NaN stays a NaN), so every value is
    returned as is, but neither XLA's simplifier nor LLVM can prove the minimum an identity, and
    an add whose operand is not an ``fmul`` has nothing to fuse with.  So
    ``uncontracted(a * b) + c`` is exactly ``fl32(fl32(a*b) + c)``: one vector min instead of
    :func:`mul_rn`'s ~40 integer operations (``tests/test_float32.py`` checks 0 differences on
    inputs where the contracted form differs).  It also hides the product from XLA's
    reassociation of ``(x * c1) * c2`` with constants.

    Exactness domain: XLA's CPU backend flushes subnormals, so products below the float32
    normal range are zero here (as they are for any later op on a :func:`mul_rn` result).
    """
    u = lax.bitcast_convert_type(jnp.asarray(x, _F32), _U32)
    return lax.bitcast_convert_type(jnp.minimum(u, _u(0xFFFFFFFE)), _F32)


def mul_rn(a, b):
    """``fl32(a * b)``, correctly rounded (half to even), without a float multiply.

    Both operands are decoded into 24-bit integer significands and exponents; the
    48-bit significand product is formed exactly from 12-bit halves in uint32,
    normalised with ``clz`` and rounded half-to-even into the result's bits
    (subnormal results included).  Because the result is produced by a bitcast
    and not by ``fmul``, a later ``+`` cannot be contracted with it.

    Non-finite operands and overflowing products fall back to the float product
    (they give inf/NaN either way).
    """
    a = jnp.asarray(a, _F32)
    b = jnp.asarray(b, _F32)
    a, b = jnp.broadcast_arrays(a, b)
    ba, bb = _bits(a), _bits(b)
    sign = (ba ^ bb) & _u(0x80000000)
    ea = (ba >> 23) & _u(0xFF)
    eb = (bb >> 23) & _u(0xFF)
    ma = jnp.where(ea != 0, (ba & _u(0x7FFFFF)) | _u(0x800000), ba & _u(0x7FFFFF))
    mb = jnp.where(eb != 0, (bb & _u(0x7FFFFF)) | _u(0x800000), bb & _u(0x7FFFFF))
    # value(a) = ma * 2**(ea' - 150) with ea' = max(ea, 1) (subnormals have exponent 1)
    ea_ = jnp.maximum(ea, _u(1)).astype(jnp.int32)
    eb_ = jnp.maximum(eb, _u(1)).astype(jnp.int32)

    # exact 48-bit product P = hi * 2**24 + lo with hi, lo < 2**24
    a1, a0 = ma >> 12, ma & _u(0xFFF)
    b1, b0 = mb >> 12, mb & _u(0xFFF)
    hh = a1 * b1  # < 2**24
    mid = a1 * b0 + a0 * b1  # < 2**25
    ll = a0 * b0  # < 2**24
    lo = ll + ((mid & _u(0xFFF)) << 12)  # < 2**25
    hi = hh + (mid >> 12) + (lo >> 24)
    lo = lo & _u(0xFFFFFF)

    # normalise so that the top set bit of P is bit 47: shift left by L
    lz_hi = lax.clz(hi).astype(jnp.int32) - 8  # leading zeros inside the 24-bit limb
    lz_lo = lax.clz(lo).astype(jnp.int32) - 8
    L = jnp.where(hi != 0, lz_hi, 24 + lz_lo)
    Lu = jnp.clip(L, 0, 47).astype(_U32)
    small = Lu < 24
    s1 = jnp.where(small, Lu, _u(0))
    n_hi = jnp.where(
        small,
        ((hi << s1) | (lo >> (_u(24) - s1))) & _u(0xFFFFFF),
        (lo << (Lu - _u(24))) & _u(0xFFFFFF),
    )
    n_lo = jnp.where(small, (lo << s1) & _u(0xFFFFFF), _u(0))
    # value = n_hi * 2**(E - 150) * (1 + n_lo / 2**24 / n_hi ...), biased exponent:
    E = ea_ + eb_ - 126 - L

    # normal result: round the 48-bit value to 24 bits, half to even
    half = _u(0x800000)
    up = (n_lo > half) | ((n_lo == half) & ((n_hi & _u(1)) == 1))
    mant = n_hi + up.astype(_U32)
    carry = mant == _u(0x1000000)
    mant = jnp.where(carry, _u(0x800000), mant)
    E_n = E + carry.astype(jnp.int32)
    normal_bits = (jnp.clip(E_n, 1, 254).astype(_U32) << 23) | (mant & _u(0x7FFFFF))

    # subnormal result (E < 1): shift right by s = 1 - E more before rounding
    s = jnp.clip(1 - E, 1, 25).astype(_U32)
    q = n_hi >> s
    rem = n_hi & ((_u(1) << s) - _u(1))
    halfs = _u(1) << (s - _u(1))
    up_s = (rem > halfs) | ((rem == halfs) & ((n_lo != 0) | ((q & _u(1)) == 1)))
    sub_bits = jnp.where(1 - E >= 25, _u(0), q + up_s.astype(_U32))

    zero = (ma == 0) | (mb == 0)
    mag = jnp.where(zero, _u(0), jnp.where(E >= 1, normal_bits, sub_bits))
    result = _from_bits(sign | mag)
    special = (ea == 0xFF) | (eb == 0xFF) | (E_n > 254)
    return jnp.where(special, a * b, result)


def div_rn(a, b):
    """``fl32(a / b)``, correctly rounded, also when ``b`` is a scalar or constant.

    XLA's algebraic simplifier rewrites ``x / broadcast(b)`` into
    ``x * broadcast(1 / b)`` (two roundings; ~18% of quotients change), e.g. a
    per-channel ``atw / out_scale``.  Broadcasting the divisor to the full shape
    behind an optimization barrier leaves it nothing to rewrite.
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, _F32), jnp.asarray(b, _F32))
    return a / lax.optimization_barrier(b)


def two_sum(a, b):
    """Knuth's error-free sum: ``s = fl32(a + b)`` and ``e`` with ``s + e == a + b`` exactly.

    Only additions, so there is nothing to contract.  XLA's algebraic simplifier
    does rewrite ``(x + C) - C`` to ``x`` when ``C`` is a compile-time constant (a
    closed-over zero point, say), which would zero the error term; the
    optimization barrier on ``s`` hides the sum's structure from it.
    """
    s = lax.optimization_barrier(a + b)
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _split12(x):
    """Veltkamp split without a multiply: ``x = hi + lo``, hi with 12 and lo with 11 significant bits.

    Rounding the significand at bit 12 (add half, mask) gives the same splitting
    property Dekker's product needs; ``x - hi`` is exact (same binade grid).
    """
    hi = _from_bits((_bits(x) + _u(0x800)) & _u(0xFFFFF000))
    return hi, x - hi


def two_product(a, b):
    """Exact product: ``h = fl32(a*b)`` (via :func:`mul_rn`) and ``l`` with ``h + l == a*b``.

    ``l`` follows Dekker: every partial product of the split operands is exact
    (12x12, 12x11, 11x11 bits), so contracting any of them into the following
    additions changes nothing, and Dekker's theorem makes every addition exact.
    """
    a = jnp.asarray(a, _F32)
    b = jnp.asarray(b, _F32)
    h = mul_rn(a, b)
    ah, al = _split12(a)
    bh, bl = _split12(b)
    l = (((ah * bh - h) + ah * bl) + al * bh) + al * bl
    finite = jnp.isfinite(h)
    return h, jnp.where(finite, l, jnp.zeros_like(l))


def add_round_to_odd(a, b):
    """``a + b`` rounded to odd: exact results unchanged, inexact ones get an odd last bit.

    ``s = fl32(a+b)`` is the nearest float; when inexact, the true sum lies strictly
    between ``s`` and its neighbour in the direction of the error, and the odd one of
    the two is the round-to-odd result.
    """
    s, e = two_sum(a, b)
    sb = _bits(s)
    inexact_even = (e != 0) & ((sb & _u(1)) == 0)
    same_sign = (s >= 0) == (e >= 0)
    fixed = jnp.where(same_sign, sb + _u(1), sb - _u(1))
    return _from_bits(jnp.where(inexact_even, fixed, sb))


def fma(a, b, c):
    """Correctly rounded fused multiply-add ``fl32(a*b + c)`` (one rounding, half to even).

    Boldo-Melquiond emulation: ``(h, l) = a*b`` exactly, ``(th, tl) = c + h`` exactly,
    ``v = RO(tl + l)`` (round to odd), result ``fl32(th + v)``.  Rounding to odd keeps
    the sticky information that makes the final round-to-nearest correct.
    This is what x86 ``vfmadd231ps`` computes, independent of XLA's fusion.

    Exact where the split halves and partial products of Dekker's product stay normal (XLA flushes
    subnormals): ``|a|, |b| >= 2**-103`` and ``|a*b| >= 2**-90`` (or ``a*b == 0``), with a result that is
    zero or at least ``2**-126`` in magnitude (real models' scales, accumulators and biases lie far inside).
    Below that the low part of the product loses bits (``tests/test_float32.py::test_fma_property``).
    """
    a = jnp.asarray(a, _F32)
    b = jnp.asarray(b, _F32)
    c = jnp.asarray(c, _F32)
    h, l = two_product(a, b)
    th, tl = two_sum(c, h)
    v = add_round_to_odd(tl, l)
    r = th + v
    ok = jnp.isfinite(h) & jnp.isfinite(c) & jnp.isfinite(th)
    # an exactly-zero result takes IEEE's sign rule for sums (a*b == -c is then exact: h == a*b)
    return jnp.where(ok & (r != 0), r, h + c)


def mul_add(a, b, c):
    """Unfused multiply-add ``fl32(fl32(a*b) + c)`` (two roundings), immune to contraction."""
    return mul_rn(a, b) + jnp.asarray(c, _F32)


# -- the host twin (numpy) --------------------------------------------------------------------------------

def fma32_numpy(a, b, c):
    """Correctly rounded float32 ``a*b + c``: exact float64 product, sum rounded to odd, then to float32."""
    a = np.asarray(a, np.float32).astype(np.float64)
    b = np.asarray(b, np.float32).astype(np.float64)
    c = np.asarray(c, np.float32).astype(np.float64)
    p = a * b
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        fix = (err != 0) & ((s.view(np.int64) & 1) == 0) & np.isfinite(s)
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return s.astype(np.float32)
