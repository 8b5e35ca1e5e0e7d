"""Dynamic quantization: torch 2.13's ``quantized::linear_dynamic`` (``nnqd.Linear``), bit for bit.

``aten/src/ATen/native/quantized/cpu/qlinear_dynamic.cpp`` quantizes the float input *per call*
with qparams chosen from its own range, runs the u8 x s8 GEMM, and returns float32:

1. ``x_min, x_max`` of the whole input (``fbgemm::FindMinMax``; qnnpack ``min()`` / ``max()``);
2. :func:`choose_qparams` — ``quant_utils::ChooseQuantizationParams(x_min, x_max, 0, 255,
   preserve_sparsity=false, force_scale_power_of_two=false, reduce_range)``
   (``cpu/QuantUtils.h``), computed in **double**: with ``a = max(x_max, 0)``, ``b = -min(x_min, 0)``,
   ``n = qmax - qmin`` (255, or 127 with ``reduce_range``: qmin/qmax halved)

   * ``S = fl64(fl64(a + b) / n)`` (``(double(max) - min) / (qmax - qmin)``);
   * ``fl32(S) == 0`` or ``1.0f / fl32(S)`` infinite: ``S = 0.1``;
   * ``S < 6.1e-5f``: ``S = double(6.1e-5f)`` and the range is stretched in float32 (``min == 0``:
     ``max = 6.1e-5f * n``; ``max == 0``: ``min = -6.1e-5f * n``; else both times
     ``fl32(6.1e-5f / fl32(S_old))``);
   * zero point: ``clamp(nearbyint(fl64(b / S)), qmin, qmax)`` — torch picks ``qmin - min/S`` or
     ``qmax - max/S`` by the smaller error term; the two differ by rounding only, and wherever
     the pick could change the integer (``b > 0``) it is the first one;
   * the scale torch uses is ``fl32(S)``.

   Doubles are emulated here with 32-bit integer lanes (uint32 ``(hi, lo)`` pairs, restoring
   division; no float op, no ``jax_enable_x64``): every quotient is the exact quotient rounded
   once to 53 bits, half to even, like the IEEE double operation.  Exactness domain: outputs are
   exact for every finite input; the qparams themselves for inputs whose range ``a + b`` is a
   normal float32 above ``2**-118`` (below it torch works with subnormal scales that XLA's CPU
   flushes, but then every input quantizes to the zero point and the outputs are the same);
3. the input quantized by fbgemm's ``QuantizeAvx2<uint8_t, LEGACY>`` (``PackAWithQuantRowOffset``;
   qnnpack calls ``at::quantize_per_tensor``, the same kernel): ``clamp(rne(fma(x, fl32(1/s), zp)),
   0, 255)``;
4. the exact int32 accumulator ``sum_k (x - zx)(w - zw)`` (:func:`qjax.kernels.linear.linear_accumulate`);
5. the float output — :func:`float_output_fbgemm`, FBGEMM ``requantizeForFloatAvx2``
   (``src/QuantUtilsAvx2.cc``, also its column tail): ``fma(fl32(acc), fl32(s * sw[o]), bias[o])``,
   ``fl32(fl32(acc) * fl32(s * sw[o]))`` without bias, then ``max(0, .)`` for ReLU;
   :func:`float_output_qnnpack` (``q8gemm_dq`` SSE2: mul then add, two roundings):
   ``fl32(fl32(fl32(acc) * fl32(s * sw[o])) + bias[o])``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..affine import quantize_fused, reciprocal
from ..kernels.linear import linear_accumulate

__all__ = ["linear_dynamic", "input_qparams", "linear_quantized_input", "choose_qparams", "quantize_input", "float_output_fbgemm", "float_output_qnnpack",
           "choose_qparams_numpy", "SMALL_SCALE"]

_U32 = jnp.uint32
_I32 = jnp.int32
SMALL_SCALE = np.float32(6.1e-5)  # QuantUtils.h SMALL_SCALE_THRESHOLD (a float constant)


# -- unsigned 64-bit pairs (hi, lo) on uint32 lanes ----------------------------------------------------

def _shl(h, l, n):
    """``(h, l) << n`` for a traced ``0 <= n < 64``."""
    n = jnp.asarray(n, _I32)
    big = n >= 32
    m = jnp.clip(n, 0, 31).astype(_U32)
    m2 = jnp.clip(n - 32, 0, 31).astype(_U32)
    carry = jnp.where(n == 0, _U32(0), l >> jnp.clip(32 - n, 1, 31).astype(_U32))
    hs = jnp.where(big, l << m2, (h << m) | carry)
    ls = jnp.where(big, _U32(0), l << m)
    return hs, ls


def _shr(h, l, n):
    """``(h, l) >> n`` (logical) and whether a one-bit was shifted out, for a traced ``n >= 0``."""
    n = jnp.asarray(n, _I32)
    m = jnp.clip(n, 0, 31).astype(_U32)
    m2 = jnp.clip(n - 32, 0, 31).astype(_U32)
    carry = jnp.where(n == 0, _U32(0), h << jnp.clip(32 - n, 1, 31).astype(_U32))
    hs = jnp.where(n >= 32, _U32(0), h >> m)
    ls = jnp.where(n >= 64, _U32(0), jnp.where(n >= 32, h >> m2, (l >> m) | carry))
    ones = _U32(0xFFFFFFFF)
    mask_l = jnp.where(n >= 32, ones, (_U32(1) << m) - _U32(1))
    mask_h = jnp.where(n >= 64, ones, jnp.where(n >= 32, (_U32(1) << m2) - _U32(1), _U32(0)))
    return hs, ls, ((l & mask_l) | (h & mask_h)) != 0


def _add(ah, al, bh, bl):
    lo = al + bl
    return ah + bh + (lo < al).astype(_U32), lo


def _sub(ah, al, bh, bl):
    return ah - bh - (al < bl).astype(_U32), al - bl


def _ge(ah, al, bh, bl):
    return (ah > bh) | ((ah == bh) & (al >= bl))


def _bit_length(h, l):
    return jnp.where(h != 0, 64 - lax.clz(h).astype(_I32), 32 - lax.clz(l).astype(_I32))


def _round(h, l, sticky, bits: int):
    """Round the integer ``(h, l)`` (plus a sticky fraction) to ``bits`` significant bits, half to even.

    Returns the mantissa pair (below ``2**bits``; zero stays zero) and the power of two it is scaled by.
    """
    sh = jnp.maximum(_bit_length(h, l) - bits, 0)
    # the half bit and everything under it, read off one shift by sh - 1
    ph, pl, under = _shr(h, l, jnp.maximum(sh - 1, 0))
    half = ((pl & _U32(1)) == 1) & (sh > 0)
    qh = jnp.where(sh > 0, ph >> 1, ph)
    ql = jnp.where(sh > 0, (pl >> 1) | (ph << 31), pl)
    up = half & (under | sticky | ((ql & _U32(1)) == 1))
    qh, ql = _add(qh, ql, _U32(0), up.astype(_U32))
    carry = _bit_length(qh, ql) > bits
    qh, ql = jnp.where(carry, qh >> 1, qh), jnp.where(carry, (ql >> 1) | (qh << 31), ql)
    return qh, ql, sh + carry.astype(_I32)


def _divide(nh, nl, num_bits: int, zeros, dh, dl, max_zeros: int):
    """``floor(n * 2**zeros / d)`` and whether a remainder is left: restoring binary division.

    ``n`` has at most ``num_bits`` bits, ``d < 2**62`` and the quotient must fit 64 bits; ``zeros`` is
    traced, at most ``max_zeros``.
    """
    # the barriers keep XLA from fusing the surrounding code into the loop (it compiled ~3x slower)
    nh, nl, zeros, dh, dl = lax.optimization_barrier((nh, nl, jnp.asarray(zeros, _I32), dh, dl))

    def step(i, carry):
        rh, rl, qh, ql = carry
        pos = num_bits - 1 - i
        bit = jnp.where(pos >= 32, nh >> jnp.clip(pos - 32, 0, 31).astype(_U32), nl >> jnp.clip(pos, 0, 31).astype(_U32))
        bit = jnp.where(pos >= 0, bit & _U32(1), _U32(0))
        active = i < num_bits + zeros
        th, tl = (rh << 1) | (rl >> 31), (rl << 1) | bit  # r < d < 2**62: no overflow
        ge = _ge(th, tl, dh, dl)
        sh, sl = _sub(th, tl, dh, dl)
        th, tl = jnp.where(ge, sh, th), jnp.where(ge, sl, tl)
        uh, ul = (qh << 1) | (ql >> 31), (ql << 1) | ge.astype(_U32)
        return (jnp.where(active, th, rh), jnp.where(active, tl, rl),
                jnp.where(active, uh, qh), jnp.where(active, ul, ql))

    z = jnp.zeros((), _U32)
    rh, rl, qh, ql = lax.optimization_barrier(lax.fori_loop(0, num_bits + max_zeros, step, (z, z, z, z)))
    return qh, ql, (rh | rl) != 0


def _decompose(x):
    """``x >= 0`` float32 as ``mant * 2**exp`` (``mant`` uint32 in ``[2**23, 2**24)``; zero: mant 0)."""
    bits = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), _U32) & _U32(0x7FFFFFFF)
    biased = (bits >> 23).astype(_I32)
    frac = bits & _U32(0x7FFFFF)
    mant = jnp.where(biased > 0, frac | _U32(0x800000), frac)
    exp = jnp.where(biased > 0, biased - 150, -149)
    lz = jnp.where(mant == 0, 0, lax.clz(mant).astype(_I32) - 8)  # subnormals normalised
    return mant << lz.astype(_U32), exp - lz


def _to_float32(h, l, exp):
    """The float32 nearest ``(h, l) * 2**exp`` (normal results; the mantissa has at most 53 bits)."""
    mh, ml, sh = _round(h, l, jnp.zeros((), bool), 24)
    e = exp + sh
    bits = ((e + 150).astype(_U32) << 23) | (ml & _U32(0x7FFFFF))
    return lax.bitcast_convert_type(jnp.where((mh | ml) == 0, _U32(0), bits), jnp.float32)


def _lt(ah, al, ae, bh, bl, be):
    """``a < b`` for two 53-bit-normalised positive doubles (mantissa in ``[2**52, 2**53)``) or zeros."""
    a_zero = (ah | al) == 0
    b_zero = (bh | bl) == 0
    lt = (ae < be) | ((ae == be) & ~_ge(ah, al, bh, bl))
    return jnp.where(a_zero, ~b_zero, jnp.where(b_zero, False, lt))


def _normalise53(h, l, e):
    """Shift a nonzero mantissa of at most 53 bits up to exactly 53 bits."""
    up = jnp.where((h | l) == 0, 0, 53 - _bit_length(h, l))
    h, l = _shl(h, l, up)
    return h, l, e - up


def choose_qparams(x_min, x_max, *, reduce_range):
    """``ChooseQuantizationParams(x_min, x_max, 0, 255, false, false, reduce_range)`` of float32 scalars.

    Returns ``(scale float32, zero_point int32)`` scalars; see the module docstring for the rule.
    ``reduce_range`` is a bool, or a traced bool scalar.
    Integer arithmetic only (traceable; a few hundred scalar ops in two loops).
    """
    # qmax as data (reduce_range may be traced: one compiled graph serves both)
    qmax = jnp.where(jnp.asarray(reduce_range, bool), 127, 255).astype(_I32)
    n = qmax  # qmin = 0
    a = jnp.maximum(jnp.asarray(x_max, jnp.float32), 0.0)
    b = -jnp.minimum(jnp.asarray(x_min, jnp.float32), 0.0)
    am, ae = _decompose(a)
    bm, be = _decompose(b)
    # D = fl64(a + b): the larger operand shifted up by 37 bits (61 bits), the smaller aligned below it
    # (bits shifted out kept as a sticky flag), rounded once to 53 bits
    a_big = (bm == 0) | ((am != 0) & (ae >= be))
    lm, le = jnp.where(a_big, am, bm), jnp.where(a_big, ae, be)
    sm, se = jnp.where(a_big, bm, am), jnp.where(a_big, be, ae)
    zu = jnp.zeros((), _U32)
    bh, bl = _shl(zu, lm, 37)
    d = jnp.where(sm == 0, 0, le - se)
    sh_, sl_ = _shl(zu, sm, jnp.clip(37 - d, 0, 37))
    rh, rl, lost = _shr(zu, sm, jnp.clip(d - 37, 0, 64))
    small_h, small_l = jnp.where(d <= 37, sh_, rh), jnp.where(d <= 37, sl_, rl)
    sticky = (d > 37) & lost
    th, tl = _add(bh, bl, small_h, small_l)
    dh, dl, dsh = _round(th, tl, sticky, 53)
    d_exp = le - 37 + dsh
    dh, dl, d_exp, a, b = lax.optimization_barrier((dh, dl, d_exp, a, b))  # stages apart: XLA compiles them fast
    # S = fl64(D / n): 11 more bits of quotient than D has (> 55 in all), rounded once
    qh, ql, rem = _divide(dh, dl, 53, 11, zu, n.astype(_U32), 11)
    s_h, s_l, ssh = _round(qh, ql, rem, 53)
    s_h, s_l, s_e = _normalise53(s_h, s_l, d_exp - 11 + ssh)
    s_h, s_l, s_e = lax.optimization_barrier((s_h, s_l, s_e))
    # fl32(S) == 0 or 1.0f / fl32(S) == inf  <=>  S <= 2**-128 + 2**-150 (fl32(S) <= 2**-128)
    tiny = ~_lt(jnp.asarray(2**20, _U32) | zu, jnp.asarray(2**30, _U32), jnp.asarray(-180, _I32), s_h, s_l, s_e)
    small_m, small_e = _decompose(SMALL_SCALE)
    smh, sml = _shl(zu, small_m, 29)
    small = ~tiny & _lt(s_h, s_l, s_e, smh, sml, small_e - 29)
    s32_exact = _to_float32(s_h, s_l, s_e)
    scale = jnp.where(tiny, np.float32(0.1), jnp.where(small, SMALL_SCALE, s32_exact))
    # the stretched min (QuantUtils.h "Cut off small scale"), float32 ops
    amp = f32x.div_rn(SMALL_SCALE, s32_exact)
    # plain float products: nothing is added to them, so XLA has no multiply-add to contract
    b_small = jnp.where(a == 0, SMALL_SCALE * n.astype(jnp.float32), b * amp)
    b_small = jnp.where(b == 0, np.float32(0), b_small)
    b_used = jnp.where(small, b_small, b)
    scale, small, tiny, b_used = lax.optimization_barrier((scale, small, tiny, b_used))
    um, ue = _decompose(b_used)
    vh, vl, ve = jnp.where(small, smh, s_h), jnp.where(small, sml, s_l), jnp.where(small, small_e - 29, s_e)
    # Z = floor(b / S * 2**54): the fraction of b / S to 54 bits (b / S <= ~256, so Z < 2**63)
    shift = ue - ve + 54
    zq_h, zq_l, zrem = _divide(zu, um, 24, jnp.clip(shift, 0, 93), vh, vl, 93)
    # fl64(b / S): Z rounded to 53 significant bits (values below 1/2 round to zero points of 0 anyway)
    zq_h, zq_l, zrem = lax.optimization_barrier((zq_h, zq_l, zrem))
    wh, wl, wsh = _round(zq_h, zq_l, zrem, 53)
    wh, wl = _shl(wh, wl, jnp.minimum(wsh, 63))
    # nearbyint at the 2**-54 grid: integer part, half bit, anything below
    ih, il, _ = _shr(wh, wl, 54)
    half = (_shr(wh, wl, 53)[1] & _U32(1)) == 1
    below = _shr(wh, wl, 53)[2]
    up = half & (below | ((il & _U32(1)) == 1))
    zp = jnp.minimum(il, _U32(2**20)).astype(_I32) + up.astype(_I32)
    zp = jnp.where((ih != 0) | (shift > 93), qmax, zp)
    zp = jnp.where((shift < 0) | tiny | (b_used == 0) | (um == 0), 0, zp)
    return scale, jnp.clip(zp, 0, qmax).astype(_I32)


def choose_qparams_numpy(x_min, x_max, *, reduce_range: bool):
    """numpy twin of :func:`choose_qparams` (float64 is numpy's own): ``(scale float32, zero_point int)``."""
    qmin, qmax = (0, 127) if reduce_range else (0, 255)
    mn, mx = min(np.float32(x_min), np.float32(0)), max(np.float32(x_max), np.float32(0))
    s = (np.float64(mx) - np.float64(mn)) / (qmax - qmin)
    with np.errstate(divide="ignore", over="ignore"):
        if np.float32(s) == 0 or np.isinf(np.float32(1) / np.float32(s)):
            s = 0.1
    if s < np.float64(SMALL_SCALE):
        org = np.float32(s)
        s = np.float64(SMALL_SCALE)
        if mn == 0:
            mx = np.float32(SMALL_SCALE * np.float32(qmax - qmin))
        elif mx == 0:
            mn = np.float32(-SMALL_SCALE * np.float32(qmax - qmin))
        else:
            amp = np.float32(SMALL_SCALE / org)
            mn, mx = np.float32(mn * amp), np.float32(mx * amp)
    z_min, z_max = qmin - np.float64(mn) / s, qmax - np.float64(mx) / s
    e_min, e_max = abs(qmin) - abs(np.float64(mn) / s), abs(qmax) - abs(np.float64(mx) / s)
    z = z_min if e_min < e_max else z_max
    z = qmin if z < qmin else qmax if z > qmax else int(np.rint(z))
    return np.float32(s), int(z)


def quantize_input(x, scale, zero_point):
    """The uint8 activations: ``clamp(rne(fma(x, fl32(1 / scale), zp)), 0, 255)`` (``QuantizeAvx2`` LEGACY)."""
    return quantize_fused(jnp.asarray(x, jnp.float32), reciprocal(scale), zero_point, 0, 255, jnp.uint8)


def _multiplier(x_scale, w_scale, out_channels):
    # fl32(Aq_scale * Bq_scale[o]): one multiply, both float
    return f32x.mul_rn(jnp.asarray(x_scale, jnp.float32), jnp.broadcast_to(jnp.asarray(w_scale, jnp.float32),
                                                                           (out_channels,)))


def float_output_fbgemm(acc, x_scale, w_scale, bias, relu: bool):
    """``requantizeForFloatAvx2``: ``fma(fl32(acc), fl32(sx*sw), bias)`` (or the product alone), ReLU after."""
    m = _multiplier(x_scale, w_scale, acc.shape[-1])
    accf = acc.astype(jnp.float32)
    y = f32x.mul_rn(accf, m) if bias is None else f32x.fma(accf, m, jnp.asarray(bias, jnp.float32))
    return jnp.maximum(y, 0.0) if relu else y


def float_output_qnnpack(acc, x_scale, w_scale, bias, relu: bool):
    """QNNPACK's dynamic GEMM output: ``fl32(fl32(acc) * fl32(sx*sw))`` then ``+ bias`` (two roundings)."""
    m = _multiplier(x_scale, w_scale, acc.shape[-1])
    y = f32x.mul_rn(acc.astype(jnp.float32), m)
    if bias is not None:
        y = y + jnp.asarray(bias, jnp.float32)
    return jnp.maximum(y, 0.0) if relu else y


def linear_dynamic(x, w, w_scale, w_zero_point, bias, *, relu: bool, reduce_range, saturation, float_output):
    """``quantized::linear_dynamic``: per-call qparams, u8 x s8 GEMM, float output (module docstring).

    ``x`` float32 ``(..., K)`` (not empty), ``w`` int8 ``(O, K)`` with ``w_scale`` / ``w_zero_point`` scalar or
    ``(O,)``, ``bias`` float32 ``(O,)`` or None; ``saturation`` as for
    :func:`~qjax.kernels.linear.linear_accumulate`; ``float_output`` :func:`float_output_fbgemm` or
    :func:`float_output_qnnpack`.  Returns float32 ``(..., O)``.
    """
    x = jnp.asarray(x, jnp.float32)
    scale, zero_point = input_qparams(x, reduce_range=reduce_range)
    return linear_quantized_input(x, scale, zero_point, w, w_scale, w_zero_point, bias, relu=relu,
                                  saturation=saturation, float_output=float_output)


def input_qparams(x, *, reduce_range):
    """The activation qparams of one call: :func:`choose_qparams` of the whole input's min and max."""
    return choose_qparams(jnp.min(x), jnp.max(x), reduce_range=reduce_range)


def linear_quantized_input(x, scale, zero_point, w, w_scale, w_zero_point, bias, *, relu: bool, saturation,
                           float_output):
    """Steps 3-5 of :func:`linear_dynamic` with the input's qparams given."""
    xq = quantize_input(x, scale, zero_point)
    acc = linear_accumulate(xq, zero_point, w, w_zero_point, saturation=saturation)
    return float_output(acc, scale, w_scale, bias, relu)
