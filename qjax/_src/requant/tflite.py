"""LiteRT's (TFLite's) int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED requantization, per kernel family.

An op's int32 accumulator ``acc = sum (x - zx) * w + bias`` (per output channel ``c``) becomes
``y = clamp(R_c(acc) + zy, act_min, act_max)``.  The families differ in ``R_c`` and in how its
parameters come from the float32 scales ``sx``, ``sw_c``, ``sy``:

* **reference** (``OpResolverType.BUILTIN_REF``):

  - CONV_2D, DEPTHWISE_CONV_2D: ``M_c = double(sx) * double(sw_c) / double(sy)`` (``kernel_util.cc``,
    ``PopulateConvolutionQuantizationParams``; per-tensor weights repeat ``sw_0``), ``(M0_c, shift_c) =
    QuantizeMultiplier(M_c)`` (``frexp``, ``M0 = round_half_away(q * 2**31)``), and ``R_c`` is
    ``MultiplyByQuantizedMultiplier`` (``internal/common.h``, double rounding):
    ``RoundingDivideByPOT(SRDHM(acc * 2**max(shift,0), M0), max(-shift,0))`` — SRDHM's nudge
    ``2**30`` / ``1 - 2**30`` with truncating division, RDBPOT half away from zero
    (``reference_integer_ops/conv.h``, ``depthwise_conv.h``).
  - FULLY_CONNECTED: no fixed point at all since LiteRT commit 9213607 ("Make the fully_connected ref
    kernel do requant in float", 2025-04, in 2.2.0 and 2.3.0): ``R_c(acc) = (int32) round(double(acc) *
    M_c)`` with the double ``M_c`` as above (``reference_integer_ops/fully_connected.h``,
    ``FullyConnected`` / ``FullyConnectedPerChannel`` with scales): one double product, rounded to
    nearest even, then C ``round`` (half away), cast to int32 (x86: ``INT32_MIN`` where it overflows), the zero
    point added in int32 (wrapping).  :func:`requantize_double_float` computes it exactly for every ``M_c``.

* **optimized** (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``): the same ``(M0_c, shift_c)`` except for
  per-tensor FULLY_CONNECTED, whose multiplier is ``double(fl32(sx * sw)) / double(sy)`` — a float32
  product (``kernel_util.cc``, ``GetQuantizedConvolutionMultipler``, called by ``fully_connected.cc``'s
  Prepare when the filter has one scale).  ``R_c`` rounds both steps half up
  (:func:`requantize_half_up`): gemmlowp's ``SRDHM(a, b) = floor((a*b + 2**30) / 2**31)`` (it already rounds
  ties up), then ``floor((v + 2**(e-1)) / 2**e)`` where the reference rounds half away.  CONV_2D and FULLY_CONNECTED end in ``cpu_backend_gemm``'s x86 GEMM:
  this double half-up rounding is what ai-edge-litert 2.3.0 computes (black-box: 0 mismatches over 3e5
  outputs with ties, where the symmetric gemmlowp rounding and the single rounding ``(acc * M0 +
  2**(30-shift)) >> (31-shift)`` of ``TFLITE_SINGLE_ROUNDING`` and of ruy's newest ``kernel_avx512.cc`` fail);
  DEPTHWISE_CONV_2D ends in ``optimized_ops::Quantize`` (``optimized_ops.h``), whose NEON code (built on x86
  through NEON_2_SSE, ``neon_check.h``) does ``vqrdmulhq_s32`` + ``vrshlq_s32`` (both half up) on blocks of
  8 channels and calls the reference ``MultiplyByQuantizedMultiplier`` on the ``C mod 8`` channels left
  over — so a depthwise op's last ``C mod 8`` channels round as the reference kernels do.

* **xnnpack** (``AUTO``, the ops XNNPACK delegates): float32 requantization
  (``src/qs8-gemm``/``qs8-dwconv`` ``fp32`` microkernels, params from ``src/microparams-init.c``):
  ``scale_c = fl32(fl32(sx * sw_c) / sy)`` (``input_scale * kernel_scale / output_scale``) and
  ``R_c(acc) = rint(fl32(fl32(acc) * scale_c))`` (``cvtps2dq``: ties to even).  Its clamp bounds come
  from ``xnn_qs8_quantize(f) = lrintf(clamp(fl32(f / sy) + zy, -128, 127))`` (ties to even; see
  :func:`qjax.qops.tflite_common.activation_range_xnnpack`) where the builtin kernels round half away.

All functions take int32 accumulators (any shape, channel last) and return int32.  :func:`requant_params`
derives a rule's parameters as the kernels' Prepare does: on the host (numpy, float64) from concrete
scales, or in the graph (:mod:`~qjax._src.requant.derive_traced`'s exact float64 quotient on 32-bit lanes)
from traced ones — the same integers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import int64 as i64
from ..checks import is_concrete
from ..float32 import div_rn, mul_rn
from .derive_traced import float64_quotient, quantize_float64_multiplier
from .fixed_point import multiply_by_quantized_multiplier, quantize_multiplier, srdhm

__all__ = [
    "RULES",
    "requant_params",
    "effective_scales",
    "tflite_quantize_multipliers",
    "tflite_quantize_multiplier",
    "tflite_quantize_multiplier_traced",
    "fixed_point_multipliers",
    "rounding_shift_half_up",
    "xnnpack_scales",
    "fc_reference_scales",
    "requantize_reference",
    "requantize_half_up",
    "requantize_optimized_depthwise",
    "requantize_double_float",
    "requantize_xnnpack_fp32",
]

_I32 = jnp.int32
_U32 = jnp.uint32


def _f32(v):
    return np.asarray(v, np.float32)


def effective_scales(sx, sw, sy, n: int, float_product: bool = False) -> np.ndarray:
    """``M_c`` float64 ``(n,)``: ``double(sx) * double(sw_c) / double(sy)``, or with ``float_product``
    ``double(fl32(sx * sw)) / double(sy)`` (``GetQuantizedConvolutionMultipler``)."""
    sx, sw, sy = _f32(sx), np.broadcast_to(_f32(sw), (n,)), _f32(sy)
    if float_product:
        prod = (sx * sw).astype(np.float32).astype(np.float64)  # the float32 product, then widened
    else:
        prod = sx.astype(np.float64) * sw.astype(np.float64)  # exact: 24 x 24 bits
    return prod / sy.astype(np.float64)


def tflite_quantize_multipliers(eff) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``QuantizeMultiplier(double)`` (``quantization_util.cc``) on the host: ``(M0, shift)`` int32 numpy
    arrays with ``eff ~= M0 * 2**(shift - 31)`` (:func:`~qjax._src.requant.fixed_point.quantize_multiplier`:
    ``frexp``, ``M0 = round_half_away(q * 2**31)``); zero, and multipliers needing a right shift over 31, become
    ``(0, 0)`` (its ``shift < -31`` flush).  The one host copy of this rule (GEMM, ADD, MUL, MEAN, SOFTMAX, ...)."""
    eff = np.asarray(eff, np.float64)
    zero = eff == 0
    m0, shift = quantize_multiplier(np.where(zero, 1.0, eff))
    flushed = zero | (shift < -31)
    return np.where(flushed, 0, m0).astype(np.int32), np.where(flushed, 0, shift).astype(np.int32)


def tflite_quantize_multiplier(real: float) -> tuple[int, int]:
    """:func:`tflite_quantize_multipliers` of one double: ``(M0, shift)`` Python ints."""
    m0, shift = tflite_quantize_multipliers(np.float64(real))
    return int(m0), int(shift)


def tflite_quantize_multiplier_traced(f):
    """:func:`tflite_quantize_multipliers` in the graph, of an exact float64 quotient ``f``
    (:func:`~qjax._src.requant.derive_traced.float64_quotient`): ``(M0, shift)`` int32, flushed alike (a
    multiplier needing a left shift over 30 saturates, unchecked: :func:`fixed_point_multipliers` refuses it)."""
    m0, shift, flushed, _ = quantize_float64_multiplier(f, 31, (-31, 30), False)
    return jnp.where(flushed, 0, m0), jnp.where(flushed, 0, shift)


def fixed_point_multipliers(eff) -> tuple[np.ndarray, np.ndarray]:
    """The GEMM ops' ``(M0, shift)`` (:func:`tflite_quantize_multipliers`) of effective scales that must be
    finite and > 0, and need no left shift over 30 (TFLite's kernels overflow there)."""
    eff = np.asarray(eff, np.float64)
    if np.any(eff <= 0) or np.any(~np.isfinite(eff)):
        raise ValueError(f"effective scales must be finite and > 0 (sx * sw / sy), got {eff}")
    m0, shift = tflite_quantize_multipliers(eff)
    if np.any(shift > 30):
        raise ValueError(f"effective scales {eff} need a left shift > 30: TFLite's kernels overflow there")
    return m0, shift


def xnnpack_scales(sx, sw, sy, n: int) -> np.ndarray:
    """XNNPACK's requantization scales float32 ``(n,)``: ``fl32(fl32(sx * sw_c) / sy)``."""
    sx, sw, sy = _f32(sx), np.broadcast_to(_f32(sw), (n,)), _f32(sy)
    return ((sx * sw).astype(np.float32) / sy).astype(np.float32)


def requantize_reference(acc, m0, shift):
    """gemmlowp double rounding (``MultiplyByQuantizedMultiplier``), per channel (last axis)."""
    return multiply_by_quantized_multiplier(acc, jnp.asarray(m0, _I32), jnp.asarray(shift, _I32))


def rounding_shift_half_up(x, e):
    """NEON ``vrshlq_s32`` by ``-e`` (``e >= 0``): ``floor((x + 2**(e-1)) / 2**e)``, ``x`` for ``e = 0``, without
    the intermediate overflow of ``x + 2**(e-1)`` (the instruction rounds in wider precision)."""
    e = jnp.asarray(e, _I32)
    em1 = jnp.maximum(e - 1, 0)
    return jnp.where(e > 0, (x >> e) + ((x >> em1) & 1), x)


def requantize_half_up(acc, m0, shift):
    """The optimized kernels' double rounding: ``RSHR_up(SRDHM(acc << left, M0), right)``.

    The first step is gemmlowp's SRDHM itself (:func:`~qjax._src.requant.fixed_point.srdhm`: ``vqrdmulhq_s32``
    and ruy's high multiply round ``a*b / 2**31`` half up too -- gemmlowp's nudge ``1 - 2**30`` for negative
    products with a truncating division is the same integer); only the second step differs from the reference
    ``MultiplyByQuantizedMultiplier``: the right shift rounds half up (:func:`rounding_shift_half_up`, ``vrshl``)
    where gemmlowp's ``RoundingDivideByPOT`` rounds half away from zero.  ``left = max(shift, 0)`` (a wrapping
    shift, as ``vshlq_s32`` and ruy), ``right = max(-shift, 0)``."""
    shift = jnp.asarray(shift, _I32)
    x = jnp.left_shift(jnp.asarray(acc, _I32), jnp.maximum(shift, 0))
    return rounding_shift_half_up(srdhm(x, jnp.asarray(m0, _I32)), jnp.maximum(-shift, 0))


def requantize_optimized_depthwise(acc, m0, shift):
    """``optimized_ops::Quantize`` for DEPTHWISE_CONV_2D: half up on channels ``< 8 * (C // 8)``, the
    reference double rounding on the ``C mod 8`` channels after them (``C = acc.shape[-1]``)."""
    c = acc.shape[-1]
    simd = np.arange(c) < 8 * (c // 8)
    return jnp.where(simd, requantize_half_up(acc, m0, shift), requantize_reference(acc, m0, shift))


#: the largest and smallest exponents ``e`` of ``eff = M * 2**(e - 53)`` kept: below ``-31`` every product rounds
#: to 0 (``|acc| * eff < 1/2``), and above ``93`` every non-zero one overflows the int32 cast
_FC_E_MIN, _FC_E_MAX = -31, 93


def fc_reference_scales(eff) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(m_hi, m_lo, e)`` int32 ``(n,)`` for :func:`requantize_double_float`: ``eff = M * 2**(e - 53)`` with
    the 53-bit integer significand ``M = m_hi * 2**31 + m_lo`` (every finite ``eff > 0``; ``M = 0`` where
    ``eff < 2**-32``, whose products all round to 0)."""
    eff = np.asarray(eff, np.float64)
    if np.any(eff <= 0) or np.any(~np.isfinite(eff)):
        raise ValueError(f"effective scales must be finite and > 0 (sx * sw / sy), got {eff}")
    q, e = np.frexp(eff)
    m = np.where(e < _FC_E_MIN, 0, (q * 2.0**53).astype(np.int64))  # exact: a double's significand
    e = np.clip(e, _FC_E_MIN, _FC_E_MAX)
    return (m >> 31).astype(np.int32), (m & (2**31 - 1)).astype(np.int32), e.astype(np.int32)


def _limbs_u(a):
    return lax.bitcast_convert_type(jnp.asarray(a, _I32), _U32)


def _shift96(limbs, s):
    """``floor(L * 2**s)`` of a 96-bit unsigned ``L`` (three uint32 limbs, low first) for ``-95 <= s <= 95``,
    wrapping modulo ``2**96``."""
    s = jnp.asarray(s, _I32)
    n = jnp.abs(s)
    words, bits = n >> 5, (n & 31).astype(_U32)
    zero = jnp.zeros(jnp.broadcast_shapes(*(jnp.shape(v) for v in limbs), jnp.shape(s)), _U32)

    def get(i):
        return limbs[i] + zero if 0 <= i < 3 else zero

    def by_words(sign):  # limb i of L shifted by whole words (sign +1: toward the top)
        return [jnp.select([words == w for w in range(3)], [get(i - sign * w) for w in range(3)], zero)
                for i in range(3)]

    wl, wr = by_words(1), by_words(-1)
    back = _U32(32) - jnp.maximum(bits, _U32(1))
    out = []
    for i in range(3):
        below = wl[i - 1] if i > 0 else zero
        above = wr[i + 1] if i < 2 else zero
        shl = (wl[i] << bits) | jnp.where(bits == 0, _U32(0), below >> back)
        shr = (wr[i] >> bits) | jnp.where(bits == 0, _U32(0), above << back)
        out.append(jnp.where(s >= 0, shl, shr))
    return tuple(out)


def _gt96(a, b):
    """``a > b`` for 96-bit unsigned limb triples (low first)."""
    return (a[2] > b[2]) | ((a[2] == b[2]) & ((a[1] > b[1]) | ((a[1] == b[1]) & (a[0] > b[0]))))


def _limbs_of(v: int):
    return tuple(np.uint32((v >> (32 * i)) & (2**32 - 1)) for i in range(3))


# ``Q >= _OVERFLOW`` iff ``round(RN64(p)) >= 2**31`` (``Q = floor(p * 2**55)``): ``RN64(p) >= 2**31 - 1/2`` iff
# ``p >= 2**31 - 1/2 - 2**-23`` (half a double ulp below; the tie goes to ``2**31 - 1/2``, an even significand)
_OVERFLOW = 2**86 - 2**54 - 2**32
#: ``(_OVERFLOW - 1) >> d`` for ``d`` in 0..95, as limbs: the overflow test of a product shifted by ``d`` fewer bits
_OVERFLOW_TABLE = np.asarray([_limbs_of((_OVERFLOW - 1) >> d) for d in range(96)], np.uint32)  # (96, 3)


def requantize_double_float(acc, m_hi, m_lo, e):
    """``(int32) round(RN64(double(acc) * eff))`` exactly, ``eff = M * 2**(e - 53)`` (:func:`fc_reference_scales`).

    With ``u = |acc|``, ``p = u * eff`` and ``k = floor(p)``: ``RN64`` (to nearest even) can move ``p`` onto
    the representable ``k + 1/2`` (and C ``round`` then goes up) iff ``p >= k + 1/2 - h_k``, ``h_k`` half a
    double ulp just below ``k + 1/2`` (``2**(bitlen(k) - 54)``, ``2**-55`` for ``k = 0``; the midpoint rounds
    to ``k + 1/2``, whose significand is even).  So ``round = k + [frac(p) >= 1/2 - h_k]``, decided exactly on
    ``Q = floor(u * M * 2**(e + 2)) = floor(p * 2**55)`` (a 96-bit product of 32-bit limbs): ``k = Q >> 55``,
    up iff ``Q mod 2**55 >= 2**54 - h_k * 2**55``.  Every ``eff`` is exact (``eff >= 1`` too, which the
    kernel computes as well): where ``|round| >= 2**31`` the kernel's ``static_cast<int32_t>`` overflows and
    x86's ``cvttsd2si`` gives ``INT32_MIN`` (then the zero point is added, wrapping, as in C on x86), and so
    does this.  ``|acc| = 2**31`` is taken as ``2**31 - 1``.
    """
    acc = jnp.asarray(acc, _I32)
    e = jnp.asarray(e, _I32)
    u = jnp.where(acc < 0, -jnp.maximum(acc, -(2**31 - 1)), acc)  # |acc| as int32
    # A = u * m_lo (< 2**62), B = u * m_hi (< 2**53): P = B * 2**31 + A (< 2**84) as three uint32 limbs
    ah, al = i64.mul32(u, m_lo)
    bh, bl = i64.mul32(u, m_hi)
    ah, bh, bl = _limbs_u(ah), _limbs_u(bh), _limbs_u(bl)
    b0 = bl << 31
    b1 = (bl >> 1) | (bh << 31)
    b2 = bh >> 1
    l0 = b0 + al
    c0 = (l0 < al).astype(_U32)
    s1 = b1 + ah
    c1 = (s1 < ah).astype(_U32)
    l1 = s1 + c0
    c1 = c1 + (l1 < c0).astype(_U32)
    l2 = b2 + c1
    p = (l0, l1, l2)
    # Q = P * 2**(e + 2) (exact below the overflow bound, where Q < 2**86); the overflow test compares P * 2**12
    # (< 2**96) with the bound shifted down by the d = e - 10 bits not applied
    q = _shift96(p, e + 2)
    d = jnp.clip(e - 10, 0, 95)
    bound = tuple(jnp.asarray(_OVERFLOW_TABLE[:, i])[d] for i in range(3))
    overflow = ~_gt96(bound, _shift96(p, jnp.minimum(e + 2, 12)))  # P * 2**min(e+2, 12) > (bound - 1) >> d
    q0, q1, q2 = q
    k = ((q2 << 9) | (q1 >> 23)).astype(_I32)  # Q >> 55 < 2**31 when not overflowing
    r_hi, r_lo = q1 & _U32(2**23 - 1), q0
    c = jnp.where(k == 0, 0, 33 - lax.clz(k))  # log2(h_k * 2**55): bitlen(k) + 1 (<= 32), or 0 for k = 0
    thr_lo = jnp.where(c >= 32, _U32(0), _U32(0) - (_U32(1) << jnp.minimum(c, 31).astype(_U32)))  # 2**32 - 2**c
    up = (r_hi > _U32(2**22 - 1)) | ((r_hi == _U32(2**22 - 1)) & (r_lo >= thr_lo))
    n = k + up.astype(_I32)
    return jnp.where(overflow, jnp.int32(-(2**31)), jnp.where(acc < 0, -n, n))


def requantize_xnnpack_fp32(acc, scale):
    """``rint(fl32(fl32(acc) * scale))`` as int32 (ties to even); ``|value| > 2**24`` saturates to ``±2**24``
    (beyond every int8 clamp; XNNPACK clamps to ``output_max - zp`` in float before converting)."""
    v = mul_rn(jnp.asarray(acc, _I32).astype(jnp.float32), jnp.asarray(scale, jnp.float32))
    v = jnp.clip(v, -(2.0**24), 2.0**24)
    return jnp.rint(v).astype(_I32)


# -- a rule's parameters, from concrete (host) or traced (in-graph) scales ---------------------------------------

#: the requantization rules by name: ``RULES[rule](acc, *params)`` with ``params`` from :func:`requant_params`
RULES = {"reference": requantize_reference, "half_up": requantize_half_up,
         "optimized_depthwise": requantize_optimized_depthwise, "double_float": requantize_double_float,
         "xnnpack": requantize_xnnpack_fp32}


def requant_params(rule: str, x_scale, w_scale, out_scale, n: int, float_product: bool = False):
    """The per-channel ``(n,)`` parameters of ``RULES[rule]`` (the arguments after the accumulator), as the
    kernels' Prepare derives them from the float32 scales (which kernels use which rule is the engine's choice:
    :mod:`qjax._src.engines.litert_gemm`).

    ``"xnnpack"``: ``(scale,)`` of :func:`xnnpack_scales`; ``"double_float"``: :func:`fc_reference_scales` of
    :func:`effective_scales`; the fixed-point rules: :func:`fixed_point_multipliers` of :func:`effective_scales`
    (``float_product``: the multiplier of ``GetQuantizedConvolutionMultipler``, ``double(fl32(sx * sw)) /
    double(sy)``).  Concrete scales are derived with numpy (effective scales a rule cannot take raise
    ValueError); traced ones in the graph (the same integers; a fixed-point multiplier needing a left shift
    over 30 saturates there, unchecked).
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}; use one of {tuple(RULES)}")
    if all(is_concrete(v) for v in (x_scale, w_scale, out_scale)):
        sx, sy = np.asarray(x_scale, np.float32), np.asarray(out_scale, np.float32)
        sw = np.asarray(w_scale, np.float32).reshape(-1)
        if rule == "xnnpack":
            return (xnnpack_scales(sx, sw, sy, n),)
        eff = effective_scales(sx, sw, sy, n, float_product)
        return fc_reference_scales(eff) if rule == "double_float" else fixed_point_multipliers(eff)
    sx, sy = jnp.asarray(x_scale, jnp.float32), jnp.asarray(out_scale, jnp.float32)
    sw = jnp.broadcast_to(jnp.asarray(w_scale, jnp.float32).reshape(-1), (n,))
    if rule == "xnnpack":
        return (div_rn(mul_rn(sx, sw), sy),)  # input_scale * kernel_scale / output_scale in float32
    f = float64_quotient(mul_rn(sx, sw), jnp.float32(1.0), sy) if float_product else float64_quotient(sx, sw, sy)
    if rule == "double_float":  # M = (hi * 2**32 + lo), eff = M * 2**exponent = M * 2**(e - 53)
        m_hi = lax.bitcast_convert_type((f.hi << 1) | (f.lo >> 31), _I32)
        m_lo = lax.bitcast_convert_type(f.lo & _U32(2**31 - 1), _I32)
        e = f.exponent + 53
        small = e < _FC_E_MIN  # every product rounds to 0 (fc_reference_scales)
        return (jnp.where(small, 0, m_hi), jnp.where(small, 0, m_lo), jnp.clip(e, _FC_E_MIN, _FC_E_MAX))
    return tflite_quantize_multiplier_traced(f)
