"""In-graph derivation of integer-only hardware parameters, bit-identical to the float64 offline one.

The offline derivation (``derive_layer``, ``derive_multiplier`` and ``round_offline`` of
:mod:`qjax.hardware`, :func:`~qjax.requant.fixed_point.quantize_multiplier`) computes a layer's
integers with numpy in float64.  The functions here compute the same integers inside a jitted /
vmapped graph with 32-bit integer lanes only: no callback, no ``jax_enable_x64``, no float
arithmetic at all.

Functions (``O`` channels; all outputs int32 unless said):

* :func:`derive_layer_traced` ``(x_scale, w_scale, out_scale, bias, O, spec)``
  ``-> (bias_q (O,) | None, m0 (O,), shift (O,))``
* :func:`derive_add_traced` ``(a_scale, b_scale, out_scale, spec) -> {m0_a, shift_a, m0_b, shift_b, m0, shift}``
* :func:`derive_multiplier_traced` ``(a, b, y, spec) -> (m0, shift)`` of ``M = a*b/y`` (broadcast);
  :func:`derive_multiplier_flags` adds the bool flags ``flushed``, ``saturated``;
* :func:`round_bias_flags` ``(bias, x_scale, w_scale, mode) -> (bias_q, overflow bool)``;
* :func:`float64_quotient` ``(a, b, y) -> Float64`` and :func:`quantize_float64_multiplier`
  ``(f, bits, shift_range, dyadic)`` (spec fields as data: one graph for many specs),
  :func:`round_float64` ``(f, negative, mode)``: the steps;
* :func:`check_derivable`, :func:`check_derivable_add`: the offline errors, for concrete inputs.

**What float64 computes.**  Every input is a float32 scale or bias.  A positive float32 is
``a = A * 2**ea`` with an integer mantissa ``A`` in ``[2**23, 2**24)`` (subnormals normalised);
float64 holds 53 bits, so

* ``f64(sx) * f64(sw) = X*W * 2**(ex+ew)`` is exact (a 48-bit product);
* ``m = f64(sx) * f64(sw) / f64(sy)`` is the exact quotient ``X*W / Y`` rounded **once** to 53
  bits, to nearest even (IEEE division is correctly rounded; no float64 overflow or underflow
  can occur for float32 inputs: every value stays within ``[2**-460, 2**260]``);
* ``v = f64(b) / (f64(sx) * f64(sw))`` is ``B / (X*W)`` rounded once to 53 bits (RNE).

TFLite ADD's three multipliers are of the same form: ``sa / (2 max(sa, sb)) = sa * 0.5 / max``
and ``2 max / (2**20 sy) = max * 2**-19 / sy`` (``0.5`` and ``2**-19`` are exact float32).

**How it is computed here.**  The quotient ``N * 2**s / D`` (``N`` the numerator mantissa
product, ``D`` the denominator mantissas, ``s`` static so that the quotient has 55..58 bits) is
long division in radix ``2**8`` on uint32 lanes: a remainder ``r < D < 2**24`` takes the next
byte as ``256 r + byte < 2**32`` and the digit is the exact uint32 quotient by ``D``.  A
denominator of two mantissas divides twice, byte stream into byte stream
(``floor(floor(n / X) / W) = floor(n / (X W))``, and the remainder is zero iff both are).
The quotient (a ``(hi, lo)`` uint32 pair) and its sticky bit (remainder non-zero) are rounded
to 53 bits to nearest even: the float64 ``Q * 2**E``, ``Q`` in ``[2**52, 2**53)``.

Then, exactly as numpy does on that float64 (``u = 53 - bits``):

* **multiplier** (``quantize_multiplier``): ``frexp(m) = (Q / 2**53, E + 53)``;
  ``r = floor(Q / 2**u + 1/2)`` (``q * 2**bits + 0.5`` is exact in float64, so this is round
  half up of the exact ``Q``), carry when ``r = 2**bits``; gemmlowp/single store
  ``M0 = r * 2**(31 - bits)`` (``2**30`` on carry) and ``shift = E + 53 + carry``, dyadic stores
  ``m = r`` (``2**(bits-1)`` on carry) and the right shift ``e = bits - (E + 53 + carry)``;
* **flush** (``derive_multiplier``): with ``n`` the total right shift and ``n_max`` the largest
  the spec's ``shift_range`` allows, ``over = max(n - n_max, 0)``; where ``over > 0`` the
  multiplier becomes ``floor(ldexp(m, n_max - k) + 0.5) * 2**k`` (``k = 0`` for dyadic, else
  ``max(31 - bits - over, 0)``) and ``n = n_max``;
* **bias** (``round_offline``): ``v = +-Q * 2**E`` rounded to an integer with the spec's mode,
  ties decided on the exact fraction.

A float64 rounding written ``floor(v + 0.5)`` (the flush above; ``round_offline`` once did so
too) differs from exact half-up only at ``v = 0.5 - 2**-54``, the largest double below one half
(``v + 0.5`` rounds to ``1.0``); :func:`round_float64` reproduces it with ``float_add=True``.
No quotient here can produce that value: it needs ``N / D = 2**p (1 - d)`` with
``2**-54 <= d <= 3 * 2**-54`` for integer mantissas ``N, D < 2**48``, so ``2**p D - N``
(``p >= 0``) or ``D - 2**-p N`` (``p < 0``) would be an integer strictly between 0 and 1.

**Cases numpy raises for** cannot raise in a traced function; they return (and report with a
bool flag in the ``*_flags`` functions):

* a multiplier that needs more *left* shift than ``shift_range`` allows: saturated to the
  largest multiplier the spec holds (``M0 = (2**bits - 1) * 2**(31 - bits)``, or
  ``m = 2**bits - 1`` dyadic, at the smallest allowed right shift);
* ``|bias_q| >= 2**31`` (or an infinite bias): saturated to ``INT32_MIN`` / ``INT32_MAX``;
  a NaN bias gives ``0`` (numpy casts NaN to int32 unspecified; :func:`check_derivable` rejects it);
* ``stochastic`` bias rounding: not supported (needs host randomness); raises ``ValueError`` at
  trace time, the spec being static.

:func:`check_derivable` / :func:`check_derivable_add` raise numpy's ``QuantizationError``
(same message: they run the numpy derivation) for concrete inputs and do nothing under a trace.

Scales must be positive finite float32 (:func:`qjax.checks.check_scale`); other values give
meaningless integers.  Nothing here does float arithmetic (XLA on CPU flushes subnormals to zero
in float ops, even in ``max``): subnormal scales and biases are exact too, given as float32
(a float64 argument is rounded to float32 by the conversion).  ``spec`` and ``out_channels``
are static (Python) arguments.

The long division is a ``fori_loop`` (10-13 digits): unrolled, XLA's algebraic simplifier on CPU
reports a circular simplification loop on this graph.  Cost: about 800 jaxpr equations and
roughly 0.4-0.5 s of XLA CPU compile per layer (measured on a shared 2-core machine).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import int64 as i64
from ..checks import QuantizationError, check_scale, is_concrete
from ..float32 import mul_rn
from .derive import derive_add, derive_layer
from .integer_only import ADD_LEFT_SHIFT

__all__ = [
    "Float64",
    "float64_quotient",
    "quantize_float64_multiplier",
    "derive_multiplier_flags",
    "derive_multiplier_traced",
    "round_bias_flags",
    "round_float64",
    "derive_layer_traced",
    "derive_add_traced",
    "check_derivable",
    "check_derivable_add",
]

_U32 = jnp.uint32
_I32 = jnp.int32
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class Float64(NamedTuple):
    """A positive float64 ``(hi * 2**32 + lo) * 2**exponent`` with a 53-bit mantissa, or zero.

    ``hi`` uint32 (< 2**21), ``lo`` uint32, ``exponent`` int32; ``hi == lo == 0`` means zero.
    """

    hi: jnp.ndarray
    lo: jnp.ndarray
    exponent: jnp.ndarray


# -- unsigned 64-bit pairs on uint32 lanes ------------------------------------------------------------

def _shl32(x, n):
    """``x << n`` for uint32 ``x`` and any ``n >= 0`` (0 when ``n >= 32``; no reliance on XLA's rule)."""
    if isinstance(n, int):  # a static shift needs no select
        return x << _U32(n) if n < 32 else jnp.zeros_like(x)
    n = jnp.asarray(n, _I32)
    return jnp.where(n >= 32, _U32(0), x << jnp.clip(n, 0, 31).astype(_U32))


def _shr32(x, n):
    if isinstance(n, int):
        return x >> _U32(n) if n < 32 else jnp.zeros_like(x)
    n = jnp.asarray(n, _I32)
    return jnp.where(n >= 32, _U32(0), x >> jnp.clip(n, 0, 31).astype(_U32))


def _shr64(hi, lo, n):
    """``(hi, lo) >> n`` (logical) for any ``n >= 0``."""
    if isinstance(n, int):
        return (_shr32(hi, n), _shr32(hi, n - 32)) if n >= 32 else (_shr32(hi, n), _shr32(lo, n) | _shl32(hi, 32 - n))
    n = jnp.asarray(n, _I32)
    return _shr32(hi, n), jnp.where(n >= 32, _shr32(hi, n - 32), _shr32(lo, n) | _shl32(hi, 32 - n))


def _bit(hi, lo, n):
    """Bit ``n`` (``n >= 0``; 0 beyond bit 63) of the pair, as bool."""
    return (_shr64(hi, lo, n)[1] & _U32(1)) == 1


def _low_nonzero(hi, lo, n):
    """``(hi, lo) mod 2**n != 0`` for any ``n >= 0``."""
    n = jnp.asarray(n, _I32)
    mask_lo = jnp.where(n >= 32, _U32(0xFFFFFFFF), _shl32(_U32(1), n) - _U32(1))
    mask_hi = jnp.where(n >= 64, _U32(0xFFFFFFFF), jnp.where(n > 32, _shl32(_U32(1), n - 32) - _U32(1), _U32(0)))
    return ((lo & mask_lo) != 0) | ((hi & mask_hi) != 0)


def _bit_length(hi, lo):
    return jnp.where(hi != 0, 64 - lax.clz(hi).astype(_I32), 32 - lax.clz(lo).astype(_I32))


# -- float32 -> integer mantissa and exponent ---------------------------------------------------------

def _decompose(x):
    """``|x| = mant * 2**exp`` with ``mant`` uint32 in ``[2**23, 2**24)`` (0 for zero), the sign, non-finite."""
    bits = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), _U32)
    negative = (bits >> 31) == 1
    biased = ((bits >> 23) & _U32(0xFF)).astype(_I32)
    frac = bits & _U32(0x7FFFFF)
    normal = biased > 0
    mant = jnp.where(normal, frac | _U32(0x800000), frac)
    exp = jnp.where(normal, biased - 150, -149)
    # a subnormal's mantissa is shifted up to 24 bits (its value is unchanged)
    lz = jnp.where(mant == 0, 0, lax.clz(mant).astype(_I32) - 8)
    return mant << lz.astype(_U32), exp - lz, negative, biased == 255


def _mul24(a, b):
    """Exact product of two uint32 values below ``2**24`` as a ``(hi, lo)`` uint32 pair (below ``2**48``)."""
    hi, lo = i64.mul32(lax.bitcast_convert_type(a, _I32), lax.bitcast_convert_type(b, _I32))
    return lax.bitcast_convert_type(hi, _U32), lo


def _bytes(hi, lo, count):
    """The low ``count`` bytes of a pair, most significant first."""
    out = []
    for i in reversed(range(count)):
        word = hi if i >= 4 else lo
        out.append((word >> _U32(8 * (i % 4))) & _U32(0xFF))
    return out


def _long_divide(num_bytes, divisors):
    """``floor(n / prod(divisors))`` as a pair and whether a remainder is left (radix 2**8, see module doc)."""
    shape = jnp.broadcast_shapes(*(jnp.shape(v) for v in list(num_bytes) + list(divisors)))
    divisors = [jnp.broadcast_to(d, shape) for d in divisors]
    stacked = jnp.stack([jnp.broadcast_to(b, shape) for b in num_bytes])

    def step(i, carry):  # one radix-256 digit (a loop, not unrolled: it keeps the compile small)
        rems, hi, lo = carry
        digit = stacked[i]
        new = []
        for r, d in zip(rems, divisors):
            r = (r << 8) | digit  # r < d < 2**24 before the shift: no overflow
            digit = r // d
            new.append(r - digit * d)
        return tuple(new), (hi << 8) | (lo >> 24), (lo << 8) | digit

    zero = jnp.zeros(shape, _U32)
    rems, hi, lo = lax.fori_loop(0, len(num_bytes), step, ((zero,) * len(divisors), zero, zero))
    sticky = rems[0] != 0
    for r in rems[1:]:
        sticky = sticky | (r != 0)
    return hi, lo, sticky


def _round53(hi, lo, sticky, exponent):
    """``(hi, lo) * 2**exponent`` (plus a sticky fraction) rounded to 53 bits, to nearest even."""
    length = _bit_length(hi, lo)
    sh = jnp.clip(length - 53, 1, 31)  # the quotients here have 55..58 bits
    qh, ql = _shr64(hi, lo, sh)
    half = _bit(hi, lo, sh - 1)
    below = _low_nonzero(hi, lo, sh - 1) | sticky
    up = half & (below | ((ql & _U32(1)) == 1))
    ql2 = ql + up.astype(_U32)
    qh = qh + (ql2 < ql).astype(_U32)
    carry = qh == _U32(2**21)  # rounded up to 2**53
    qh = jnp.where(carry, _U32(2**20), qh)
    zero = length == 0
    e = exponent + sh + carry.astype(_I32)
    return Float64(jnp.where(zero, _U32(0), qh), jnp.where(zero, _U32(0), ql2), jnp.where(zero, 0, e))


def _quotient(num, den):
    """The float64 ``prod(num) / prod(den)`` of float32 magnitudes (``num``: 1-2 factors, ``den``: 1-2)."""
    nm = [_decompose(a)[:2] for a in num]
    dm = [_decompose(a)[:2] for a in den]
    k, j = len(num), len(den)
    s = 54 - 23 * k + 24 * j  # quotient * 2**s in (2**54, 2**(54+k+j)): 53 bits, a round bit, and more
    pre, zero_bytes = s % 8, s // 8
    if k == 1:
        hi, lo = jnp.zeros_like(nm[0][0]), nm[0][0] << pre  # < 2**31
        head = _bytes(hi, lo, 4)
    else:
        hi, lo = _mul24(nm[0][0], nm[1][0])
        if pre:
            hi, lo = (hi << pre) | (lo >> (32 - pre)), lo << pre
        head = _bytes(hi, lo, 6 + (pre > 0))  # < 2**(48 + pre)
    tail = [jnp.zeros_like(head[0])] * zero_bytes
    qh, ql, sticky = _long_divide(head + tail, [d[0] for d in dm])
    exponent = sum(e for _, e in nm) - sum(e for _, e in dm) - s
    return _round53(qh, ql, sticky, exponent)


def float64_quotient(a, b, y) -> Float64:
    """The float64 ``f64(a) * f64(b) / f64(y)`` of float32 ``a, b, y > 0`` (broadcast), exactly."""
    return _quotient([a, b], [y])


# -- rounding a float64 to an integer (numpy's round_offline) -----------------------------------------

def round_float64(f: Float64, negative, mode: str, float_add: bool = False):
    """``(round_offline(+-f, mode) as int32, |result| >= 2**31)`` (``negative`` bool; saturated).

    Ties are decided on the exact fraction; ``float_add=True`` instead reproduces numpy's
    ``floor(|v| + 0.5)`` / ``ceil(v - 0.5)`` (see the module doc), as ``derive_multiplier``'s flush uses.
    """
    t = -f.exponent  # |v| = Q * 2**-t, Q in [2**52, 2**53)
    big = t <= 21  # |v| >= 2**31 before any rounding
    tc = jnp.clip(t, 22, 64)
    integer = _shr64(f.hi, f.lo, tc)[1]  # < 2**31
    half = _bit(f.hi, f.lo, tc - 1)
    below = _low_nonzero(f.hi, f.lo, tc - 1)
    frac_any = half | below
    frac_above_half = half & below
    frac_half = half & ~below
    # numpy's float64 |v| + 0.5 rounds up to 1.0 only for |v| = 0.5 - 2**-54 (see the module doc)
    quirk = (t == 54) & (f.hi == _U32(2**21 - 1)) & (f.lo == _U32(0xFFFFFFFF)) & float_add
    pos = ~negative
    if mode == "half_even":
        up = frac_above_half | (frac_half & ((integer & _U32(1)) == 1))
    elif mode == "half_away":
        up = half | quirk
    elif mode == "half_up":  # floor(v + 0.5)
        up = jnp.where(pos, half | quirk, frac_above_half)
    elif mode == "half_down":  # ceil(v - 0.5)
        up = jnp.where(pos, frac_above_half, half | quirk)
    elif mode == "floor":
        up = negative & frac_any
    elif mode == "ceil":
        up = pos & frac_any
    elif mode == "toward_zero":
        up = jnp.zeros_like(half)
    else:  # stochastic included: the bias functions reject it first (_check_bias_mode)
        raise ValueError(f"rounding={mode!r} is unknown")
    mag = integer + up.astype(_U32)
    zero = (f.hi == 0) & (f.lo == 0)
    overflow = ~zero & (big | (mag >= _U32(2**31)))
    value = lax.bitcast_convert_type(mag, _I32)
    value = jnp.where(negative, -value, value)
    value = jnp.where(overflow, jnp.where(negative, INT32_MIN, INT32_MAX), value)
    return jnp.where(zero, 0, value).astype(_I32), overflow


# -- the multiplier ----------------------------------------------------------------------------------

def quantize_float64_multiplier(f: Float64, bits, shift_range, dyadic):
    """``(m0, shift, flushed, saturated)`` of the float64 multiplier ``f`` (``derive_multiplier``'s rules).

    Args:
      f: a positive :class:`Float64` (from :func:`float64_quotient`).
      bits: ``multiplier_bits`` (2..31); shift_range: ``(lo, hi)``; dyadic: bool, ``True`` for
        the dyadic style, else gemmlowp/single (the same integers).  All three may be Python
        values or int32 / bool arrays broadcasting with ``f`` (one graph for many specs).

    Returns:
      ``m0``, ``shift`` int32; ``flushed`` bool: more right shift needed than ``shift_range``
      allows, low bits lost (numpy's ``lost`` counts these); ``saturated`` bool: more left shift
      needed (numpy raises), the spec's largest multiplier returned instead.
    """
    bits = jnp.asarray(bits, _I32)
    lo_r, hi_r = (jnp.asarray(v, _I32) for v in shift_range)
    dyadic = jnp.asarray(dyadic, bool)
    u = 53 - bits  # 22..51: the bits frexp's q * 2**bits drops
    half_hi = jnp.where(u - 1 >= 32, _shl32(_U32(1), u - 33), _U32(0))
    half_lo = jnp.where(u - 1 >= 32, _U32(0), _shl32(_U32(1), u - 1))
    lo_sum = f.lo + half_lo
    hi_sum = f.hi + half_hi + (lo_sum < f.lo).astype(_U32)
    r = _shr64(hi_sum, lo_sum, u)[1]  # floor(q * 2**bits + 0.5) <= 2**bits, exact (module doc)
    one_bits = _shl32(_U32(1), bits)
    carry = r == one_bits
    e = f.exponent + 53 + carry.astype(_I32)
    # both styles as a total right shift n of the product (M ~= m0 * 2**-n) and its allowed range
    m0 = jnp.where(dyadic, jnp.where(carry, one_bits >> 1, r),
                   jnp.where(carry, _U32(2**30), _shl32(r, 31 - bits)))
    n = jnp.where(dyadic, bits - e, 31 - e)
    n_min = jnp.where(dyadic, lo_r, 31 - hi_r)
    n_max = jnp.where(dyadic, hi_r, 31 - lo_r)
    saturated = n < n_min
    over = jnp.maximum(n - n_max, 0)
    flushed = over > 0
    # a flushed multiplier is rounded once from m itself: floor(ldexp(m, n_max - k) + 0.5) * 2**k
    k = jnp.where(dyadic, 0, jnp.maximum(31 - bits - over, 0))
    shifted = Float64(f.hi, f.lo, f.exponent + n_max - k)
    rf, _ = round_float64(shifted, jnp.zeros_like(flushed), "half_up", float_add=True)  # < 2**30: no overflow
    m0 = jnp.where(flushed, _shl32(lax.bitcast_convert_type(rf, _U32), k), m0)
    n = jnp.minimum(n, n_max)
    largest = jnp.where(dyadic, one_bits - 1, _shl32(one_bits - 1, 31 - bits))
    m0 = jnp.where(saturated, largest, m0)
    n = jnp.where(saturated, n_min, n)
    stored = jnp.where(dyadic, n, 31 - n)
    return lax.bitcast_convert_type(m0, _I32), stored.astype(_I32), flushed, saturated


def derive_multiplier_flags(a, b, y, spec):
    """:func:`derive_multiplier_traced` plus two bool flags: ``(m0, shift, flushed, saturated)``.

    ``flushed``: the multiplier needed more right shift than ``spec.shift_range`` allows and lost
    low bits (numpy's ``lost`` counts these); ``saturated``: it needed more left shift (numpy
    raises) and is the spec's largest multiplier instead.
    """
    return quantize_float64_multiplier(float64_quotient(a, b, y), spec.multiplier_bits, spec.shift_range,
                                       spec.multiplier == "dyadic")


def derive_multiplier_traced(a, b, y, spec):
    """``(m0, shift)`` int32 of the real multiplier ``M = f64(a) * f64(b) / f64(y)`` under ``spec``.

    Args:
      a, b, y: float32 arrays (broadcast together), positive and finite.
      spec: the :class:`~qjax.hardware.HardwareSpec` (static).

    Returns:
      ``m0`` and ``shift`` int32 of the broadcast shape: bit-identical to
      ``qjax.hardware.convert.derive_multiplier(f64(a) * f64(b) / f64(y), spec)`` wherever that
      does not raise; saturated where it would (see the module doc).
    """
    m0, shift, _, _ = derive_multiplier_flags(a, b, y, spec)
    return m0, shift


def _check_bias_mode(mode: str):
    if mode == "stochastic":
        raise ValueError("stochastic bias rounding needs host randomness: derive it offline "
                         "(qjax.hardware.convert(..., key=...))")


def _bias_from_float64(f: Float64, bias, mode: str):
    mant, _, negative, nonfinite = _decompose(bias)
    value, overflow = round_float64(f, negative, mode)
    nan = nonfinite & (mant != _U32(0x800000))
    value = jnp.where(nonfinite, jnp.where(nan, 0, jnp.where(negative, INT32_MIN, INT32_MAX)), value)
    return value.astype(_I32), overflow | nonfinite


def round_bias_flags(bias, x_scale, w_scale, mode: str):
    """``(bias_q int32, overflow bool)``: ``round_offline(f64(b) / (f64(sx) * f64(sw)), mode)``, saturated.

    ``overflow`` marks ``|bias_q| >= 2**31``, an infinite bias or a NaN bias (``bias_q = 0``).
    """
    _check_bias_mode(mode)
    return _bias_from_float64(_quotient([bias], [x_scale, w_scale]), bias, mode)


def derive_layer_traced(x_scale, w_scale, out_scale, bias, out_channels: int, spec):
    """The integer parameters of one conv/linear layer, in the graph.

    Args:
      x_scale, out_scale: float32 scalars; w_scale: float32 scalar or ``(O,)``;
      bias: float32 ``(O,)`` or ``None``; out_channels: ``O`` (static); spec: static.

    Returns:
      ``(bias_q, m0, shift)``: ``bias_q`` int32 ``(O,)`` (``None`` without a bias), ``m0`` and
      ``shift`` int32 ``(O,)`` — bit-identical to ``derive_layer(...)[:3]`` where that does not
      raise, saturated where it would (module doc).
    """
    if bias is not None:
        _check_bias_mode(spec.bias_rounding)
    shape = (out_channels,)
    sx = jnp.broadcast_to(jnp.asarray(x_scale, jnp.float32), shape)
    sw = jnp.broadcast_to(jnp.asarray(w_scale, jnp.float32), shape)
    sy = jnp.broadcast_to(jnp.asarray(out_scale, jnp.float32), shape)
    if getattr(spec, "per_tensor_product", "float64") == "float32" and jnp.ndim(w_scale) == 0:
        # M = f64(fl32(sx*sw)) / f64(sy): the float32 product, times an exact 1
        m0, shift = derive_multiplier_traced(mul_rn(sx, sw), jnp.ones_like(sx), sy, spec)
    else:
        m0, shift = derive_multiplier_traced(sx, sw, sy, spec)
    bq = None
    if bias is not None:
        bq, _ = round_bias_flags(jnp.broadcast_to(jnp.asarray(bias, jnp.float32), shape), sx, sw, spec.bias_rounding)
    return bq, m0, shift


_ADD_TAGS = ("_a", "_b", "")


def _add_terms(a_scale, b_scale, out_scale):
    """The three ADD multipliers as one stacked ``(a, b, y)`` triple (leading axis: ``_ADD_TAGS``)."""
    sa, sb, sy = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in (a_scale, b_scale, out_scale)))
    # max on the bit patterns (ordered like the values for positive floats): XLA's float max on CPU
    # flushes subnormals to zero
    big = lax.bitcast_convert_type(jnp.maximum(lax.bitcast_convert_type(sa, _I32), lax.bitcast_convert_type(sb, _I32)),
                                   jnp.float32)
    half, out = jnp.full_like(sa, 0.5), jnp.full_like(sa, 2.0 ** (1 - ADD_LEFT_SHIFT))
    # sa / (2 max) = sa * 0.5 / max; 2 max / (2**20 sy) = max * 2**-19 / sy (exact float32 factors);
    # stacked so the three share one graph
    return jnp.stack([sa, sb, big]), jnp.stack([half, half, out]), jnp.stack([big, big, sy])


def derive_add_traced(a_scale, b_scale, out_scale, spec) -> dict:
    """TFLite ADD's three multipliers (``sa / 2max``, ``sb / 2max``, ``2max / (2**20 sy)``), in the graph.

    Args:
      a_scale, b_scale, out_scale: float32 scalars (or broadcastable arrays); spec: static.

    Returns:
      ``dict(m0_a, shift_a, m0_b, shift_b, m0, shift)`` int32, bit-identical to the offline ADD
      derivation (``hardware.convert``; saturated where that raises).
    """
    m0, shift = derive_multiplier_traced(*_add_terms(a_scale, b_scale, out_scale), spec)
    out = {}
    for i, tag in enumerate(_ADD_TAGS):
        out["m0" + tag], out["shift" + tag] = m0[i], shift[i]
    return out


# -- errors for concrete inputs -------------------------------------------------------------------------
# Concrete inputs are on the host: the checks run the offline float64 derivation itself (numpy, no
# compilation per shape), whose errors the traced functions' saturations stand in for.

def check_derivable(x_scale, w_scale, out_scale, bias, out_channels: int, spec, where: str = ""):
    """Raise ``derive_layer``'s ``QuantizationError`` for concrete inputs it rejects, else return its
    ``(bias_q or None, m0, shift)`` (numpy int32: the integers the traced derivation computes); None under a trace.

    Also rejects non-positive / non-finite scales (:func:`qjax.checks.check_scale`), a NaN bias
    and ``stochastic`` bias rounding (``ValueError``).
    """
    args = (x_scale, w_scale, out_scale) + (() if bias is None else (bias,))
    if not all(is_concrete(v) for v in args):
        return None
    for name, v in (("x_scale", x_scale), ("w_scale", w_scale), ("out_scale", out_scale)):
        check_scale(np.asarray(v, np.float32), name)
    if bias is not None:
        _check_bias_mode(spec.bias_rounding)
        if np.any(np.isnan(np.asarray(bias, np.float32))):
            raise QuantizationError(f"{where}: bias must not be NaN")
    return derive_layer(x_scale, w_scale, out_scale, bias, out_channels, spec, where)[:3]


def check_derivable_add(a_scale, b_scale, out_scale, spec, where: str = ""):
    """Raise the ADD derivation's ``QuantizationError`` for concrete inputs it rejects, else return its
    multipliers (numpy int32 scalars, as :func:`derive_add_traced` computes them); None under a trace."""
    if not all(is_concrete(v) for v in (a_scale, b_scale, out_scale)):
        return None
    for name, v in (("a_scale", a_scale), ("b_scale", b_scale), ("out_scale", out_scale)):
        check_scale(np.asarray(v, np.float32), name)
    return derive_add(a_scale, b_scale, out_scale, spec, where)[0]
