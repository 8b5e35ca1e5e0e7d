"""LiteRT's (TFLite's) int8 ADD / SUB / MUL / QUANTIZE / requantize / DEQUANTIZE, one rule per kernel family.

All checked bit-exactly against ``ai-edge-litert`` 2.3.0 on x86-64 (``tests/engines/test_litert_elementwise.py``,
``scripts/check_litert_elementwise.py``).  Notation: ``x1 = a - a_zp``, ``x2 = b - b_zp`` (int32),
``QM(r) = (M, s)`` TFLite's ``QuantizeMultiplier`` of the double ``r`` (``r ~= M * 2**(s-31)``, ``M`` rounded
half away, :func:`qjax.requant.fixed_point.quantize_multiplier`), ``SRDHM`` gemmlowp's
SaturatingRoundingDoublingHighMul (``round_half_up(x*M / 2**31)``), ``RDPOT(x, e)`` gemmlowp's
RoundingDivideByPOT (half away from zero), ``RUP(x, e) = floor((x + 2**(e-1)) / 2**e)`` (NEON ``vrshl``).

**ADD / SUB, builtin kernels** (``kernels/add.cc`` / ``sub.cc`` Prepare, ``PrepareGeneralSubOp``): ``left_shift
= 20``; with ``t = 2 * max(sa, sb)`` (double of the float32 scales) ``(M1, s1) = QM(sa / t)``, ``(M2, s2) =
QM(sb / t)``, ``(Mo, so) = QM(t / (2**20 * sy))``.  Each input is scaled to ``y_i`` by one of three paths:

* ``S`` (the scalar loop: ``reference_integer_ops::AddElementwise``,
  ``MultiplyByQuantizedMultiplierSmallerThanOneExp``): ``RDPOT(SRDHM(x << 20, M), -s)``;
* ``E`` (the NEON body of ``optimized_integer_ops::AddElementwiseInt8``, on x86 through NEON_2_SSE):
  ``SRDHM(x << (20 + s), M)`` (the right shift first, exact, then one rounding);
* ``B`` (the NEON body of ``AddScalarBroadcast``): ``SRDHM(x << 20, M) >> -s`` (a truncating shift).

then ``y = RDPOT(SRDHM(y1 ± y2, Mo), -so) + y_zp`` (SUB subtracts the scaled inputs; ``reference_ops::Sub``
is the int8 SUB of both builtin families, so SUB is always ``S``), clamped to the activation range.  The
reference family is ``S`` everywhere; the optimized family's path depends on the element's position (see
:func:`optimized_binary_paths`).

**ADD / SUB, XNNPACK** (``xnn_init_qs8_add_minmax_scalar_params``, ``qs8-vadd`` microkernels; SUB is
ADD with ``b``'s scale negated, ``operators/binary-elementwise-nd.c``): ``ra = fl32(sa/sy)``, ``rb =
fl32(sb/sy)``, ``shift = 20 - exponent(max(|ra|, |rb|))``, ``Ma = lrintf(ra * 2**shift)`` (ties to even),
``Mb`` likewise (negative for SUB), ``y = ((x1*Ma + x2*Mb + 2**(shift-1)) >> shift) + y_zp`` (int32, one
rounding, ties toward +inf).

The optimized NEON bodies then narrow to int16 with ``vmovn_s32`` (wrapping), add ``y_zp`` in int16
(wrapping) and saturate to int8 — visible only when ``|y|`` passes ``2**15`` (output/input scale ratios
near 200).

**MUL**: builtin (both families; ``reference_integer_ops::MulElementwise``): ``(M, s) = QM(fl32(fl32(sa*sb)
/ sy))`` (``mul.cc`` computes the real multiplier in float32), ``y = RDPOT(SRDHM(x1*x2 << max(s,0), M),
max(-s,0)) + y_zp``; the optimized NEON bodies (``MulElementwise`` / ``MulSimpleBroadcast``, blocks of 16)
saturate that to int16 (``vqmovn_s32``) and add ``y_zp`` in int16, wrapping (:func:`mul_builtin`).
XNNPACK (``xnn_init_qs8_mul_minmax_scalar_params``, ``qs8-vmul-minmax-fp32``): ``y = rint(fl32(float(x1*x2)
* fl32(fl32(sa*sb)/sy))) + y_zp`` (ties to even).

**QUANTIZE float32 -> int8/uint8**: reference (``reference_ops::AffineQuantize``): ``round_half_away(fl32(x /
s)) + zp``; optimized (``optimized_ops::AffineQuantize``): blocks of 8 (NEON body) ``rint(fl32(x *
fl32(1.0 / (double)s))) + zp``, the tail ``round_half_away(x / (double)s) + zp``; XNNPACK (``f32-qs8-vcvt``,
``xnn_init_f32_qs8_cvt_scalar_params``): ``rint(min(fl32(x * fl32(1.0f / s)), 32767)) + zp``.  All clamp.

**QUANTIZE int8/uint8 -> int8/uint8 (requantize)**: builtin ``(M, s) = QM(si/so)``; reference
(``reference_ops::Requantize``): ``RDPOT(SRDHM(x1 << max(s,0), M), max(-s,0)) + zo``; optimized: the NEON body
(blocks of 16, ``MultiplyByQuantizedMultiplier4Rows``) ``RUP(SRDHM(x1 << max(s,0), M), max(-s,0)) + zo``, the
tail as reference.  XNNPACK (``qs8-vcvt``, ``xnn_init_qs8_cvt_scalar_params``): ``M = lrintf(256 *
fl32(si/so))``, ``y = ((x1*M + 128) >> 8) + zo``.

**DEQUANTIZE**: reference and XNNPACK: ``fl32(float(x - zp) * s)`` (``reference_ops::Dequantize`` computes
``(double)s * (x - zp)``, an exact product, rounded once to float32); optimized (``optimized_ops::Dequantize``,
NEON body, blocks of 8, ``ScaleWithNewZeroPoint`` without FMA): ``fl32(fl32(float(x) * s) + fl32(-zp * s))``
— two roundings, so it differs from reference by one ulp on many outputs; the tail is reference's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..checks import is_concrete
from ..float32 import div_rn, fma, mul_rn, uncontracted
from ..requant.derive_traced import float64_quotient
from ..requant.fixed_point import rounding_divide_by_pot, srdhm
from ..requant.tflite import (requantize_half_up, requantize_reference, tflite_quantize_multiplier,
                              tflite_quantize_multiplier_traced)
from ..rounding import round_float

__all__ = [
    "add_params_builtin",
    "add_params_xnnpack",
    "mul_multiplier_builtin",
    "mul_scale_xnnpack",
    "requant_multiplier_builtin",
    "requant_multiplier_xnnpack",
    "optimized_binary_paths",
    "block_body_mask",
    "add_builtin",
    "add_xnnpack",
    "mul_builtin",
    "mul_xnnpack",
    "quantize_reference",
    "quantize_optimized",
    "quantize_xnnpack",
    "requantize_builtin",
    "requantize_xnnpack",
    "dequantize_reference",
    "dequantize_optimized",
    "PATH_SCALAR",
    "PATH_ELEMENTWISE",
    "PATH_SCALAR_BROADCAST",
]

#: the three ways TFLite's int8 ADD scales an input (see the module doc)
PATH_SCALAR, PATH_ELEMENTWISE, PATH_SCALAR_BROADCAST = 0, 1, 2


# ---------------------------------------------------------------- host-side parameter derivation (Prepare)

def _multiplier_traced(a, b, y):
    """``QuantizeMultiplier(f64(a) * f64(b) / f64(y))`` of traced float32 scales, in the graph (the exact float64
    quotient of :mod:`qjax.requant.derive_traced`)."""
    f = float64_quotient(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(y, jnp.float32))
    return tflite_quantize_multiplier_traced(f)


def _all_concrete(*vs) -> bool:
    return all(is_concrete(v) for v in vs)


def _bit_max(a, b):
    """``max`` of positive float32 values through their bit patterns (XLA's float max flushes subnormals)."""
    ia, ib = (lax.bitcast_convert_type(jnp.asarray(v, jnp.float32), jnp.int32) for v in (a, b))
    return lax.bitcast_convert_type(jnp.maximum(ia, ib), jnp.float32)


def add_params_builtin(sa, sb, sy):
    """``((M1, s1), (M2, s2), (Mo, so))`` of ``add.cc`` / ``PrepareGeneralSubOp`` (int8, ``left_shift = 20``):
    Python ints from concrete scales, int32 arrays (in the graph) from traced ones."""
    if not _all_concrete(sa, sb, sy):
        # sa / (2 max) = sa * 0.5 / max and 2 max / (2**20 sy) = max * 2**-19 / sy: exact float32 factors
        sa, sb, sy = (jnp.asarray(v, jnp.float32).reshape(()) for v in (sa, sb, sy))
        big = _bit_max(sa, sb)
        m, sh = _multiplier_traced(jnp.stack([sa, sb, big]), jnp.array([0.5, 0.5, 2.0**-19], jnp.float32),
                                   jnp.stack([big, big, sy]))  # one graph for the three
        return tuple((m[i], sh[i]) for i in range(3))
    sa, sb, sy = (float(np.float32(v)) for v in (sa, sb, sy))
    twice = 2.0 * max(sa, sb)
    return (tflite_quantize_multiplier(sa / twice), tflite_quantize_multiplier(sb / twice),
            tflite_quantize_multiplier(twice / ((1 << 20) * sy)))


def mul_multiplier_builtin(sa, sb, sy):
    """``QuantizeMultiplier(fl32(fl32(sa * sb) / sy))``: ``mul.cc`` Prepare computes the real multiplier in
    float32 (``input1->params.scale * input2->params.scale / output->params.scale``), then widens it."""
    if not _all_concrete(sa, sb, sy):
        return _multiplier_traced(mul_scale_xnnpack(sa, sb, sy), 1.0, 1.0)
    return tflite_quantize_multiplier(float(mul_scale_xnnpack(sa, sb, sy)))


def mul_scale_xnnpack(sa, sb, sy):
    """``fl32(fl32(sa * sb) / sy)`` (also XNNPACK's ``product_output_scale``)."""
    if not _all_concrete(sa, sb, sy):
        return div_rn(mul_rn(jnp.asarray(sa, jnp.float32), jnp.asarray(sb, jnp.float32)), jnp.asarray(sy, jnp.float32))
    return np.float32(np.float32(np.float32(sa) * np.float32(sb)) / np.float32(sy))


def requant_multiplier_builtin(si, so):
    """``QuantizeMultiplier((double)si / (double)so)`` (``quantize.cc`` Prepare)."""
    if not _all_concrete(si, so):
        return _multiplier_traced(si, 1.0, so)
    return tflite_quantize_multiplier(float(np.float32(si)) / float(np.float32(so)))


def requant_multiplier_xnnpack(si, so):
    """``lrintf(256 * fl32(si / so))`` (``xnn_init_qs8_cvt_scalar_params``; ties to even)."""
    if not _all_concrete(si, so):
        return jnp.round(div_rn(jnp.asarray(si, jnp.float32), jnp.asarray(so, jnp.float32)) * 256.0).astype(jnp.int32)
    return int(np.rint(np.float32(256.0) * (np.float32(si) / np.float32(so))))


def _add_params_xnnpack_traced(sa, sb, sy, sign_b):
    ra = div_rn(jnp.asarray(sa, jnp.float32), jnp.asarray(sy, jnp.float32))
    rb = div_rn(jnp.asarray(sb, jnp.float32), jnp.asarray(sy, jnp.float32))
    big = _bit_max(ra, rb)
    exponent = (lax.bitcast_convert_type(big, jnp.int32) >> 23) - 127
    shift = 20 - exponent
    scale = lax.bitcast_convert_type(jnp.left_shift(shift + 127, 23), jnp.float32)  # 2**shift, exact
    ma = jnp.round(ra * scale).astype(jnp.int32)  # a power-of-two scaling is exact; lrintf: ties to even
    mb = jnp.round(rb * scale).astype(jnp.int32) * sign_b
    return ma, mb, shift


def add_params_xnnpack(sa, sb, sy, sign_b: int = 1):
    """``(Ma, Mb, shift)`` of ``xnn_init_qs8_add_minmax_scalar_params`` (``sign_b = -1`` for SUB).

    Raises ValueError outside XNNPACK's range (the delegate leaves such nodes to the builtin kernels);
    traced scales are derived in the graph, unchecked."""
    if not _all_concrete(sa, sb, sy):
        return _add_params_xnnpack_traced(sa, sb, sy, sign_b)
    ra = np.float32(sa) / np.float32(sy)
    rb = np.float32(np.float32(sb) * np.float32(sign_b)) / np.float32(sy)
    big = max(abs(ra), abs(rb))
    for r in (ra, rb):
        if not (2.0**-10 <= abs(float(r)) < 2.0**8):
            raise ValueError(f"input/output scale ratio {float(abs(r))!r} outside XNNPACK's [2**-10, 2**8)")
    exponent = int((np.float32(big).view(np.uint32) >> 23)) - 127
    shift = 20 - exponent
    ma = int(np.rint(np.float32(abs(ra)) * np.float32(2.0**shift)))  # exact scaling, then lrintf (ties even)
    mb = int(np.rint(np.float32(abs(rb)) * np.float32(2.0**shift)))
    return (-ma if ra < 0 else ma), (-mb if rb < 0 else mb), shift


def optimized_binary_paths(shape_a, shape_b, scalar_broadcast_block: int = 8) -> np.ndarray:
    """Which path (``PATH_*``) the optimized int8 ADD / MUL takes for each output element (numpy int8, output shape).

    Emulates ``ProcessBroadcastShapes`` and ``BinaryBroadcastFiveFold`` (``optimized_ops.h``): no broadcast —
    one ``AddElementwiseInt8`` / ``MulElementwise`` call over the flat tensor (NEON body on the first
    ``16 * (n // 16)`` elements); a fivefold broadcast with an inner extent ``y4 > 1`` — the elementwise
    function on each run of ``y4`` output elements; ``y4 == 1`` — ``AddScalarBroadcast`` (NEON body in
    blocks of ``scalar_broadcast_block = 8``) / ``MulSimpleBroadcast`` (blocks of 16) on runs of ``y3``; any
    other broadcast — ``BroadcastAdd6DSlow`` / ``BroadcastMul6DSlow`` (scalar)."""
    shape_a, shape_b = tuple(shape_a), tuple(shape_b)
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    n = int(np.prod(out_shape, dtype=np.int64))
    dims = max(len(shape_a), len(shape_b))
    ea = (1,) * (dims - len(shape_a)) + shape_a
    eb = (1,) * (dims - len(shape_b)) + shape_b

    def runs(run, block, path):
        pos = np.arange(n) % run if run > 0 else np.zeros(n, np.int64)
        return np.where(pos < (run // block) * block, path, PATH_SCALAR).astype(np.int8).reshape(out_shape)

    if ea == eb:
        return runs(n, 16, PATH_ELEMENTWISE)
    category = None
    for i in range(dims - 1, -1, -1):
        if ea[i] == eb[i]:
            continue
        if ea[i] == 1:
            category = "first"
        elif eb[i] == 1:
            category = "second"
        break
    if category is None:
        return np.zeros(out_shape, np.int8)
    sa, sb = (ea, eb) if category == "first" else (eb, ea)
    y = [1, 1, 1, 1, 1]
    i = dims - 1
    while i >= 0 and sa[i] == sb[i]:
        y[4] *= sb[i]
        i -= 1
    while i >= 0 and sa[i] == 1:
        y[3] *= sb[i]
        i -= 1
    while i >= 0 and sa[i] == sb[i]:
        y[2] *= sa[i]
        i -= 1
    while i >= 0 and sb[i] == 1:
        y[1] *= sa[i]
        i -= 1
    while i >= 0 and sa[i] == sb[i]:
        y[0] *= sb[i]
        i -= 1
    if i >= 0:  # kGenericBroadcast: reference_integer_ops::BroadcastAdd6DSlow
        return np.zeros(out_shape, np.int8)
    if y[4] > 1:
        return runs(y[4], 16, PATH_ELEMENTWISE)
    return runs(y[3], scalar_broadcast_block, PATH_SCALAR_BROADCAST)


def block_body_mask(shape, block: int) -> np.ndarray:
    """True on the elements a NEON body loop of ``block`` elements covers (the first ``block * (n // block)``
    of the flat tensor), False on the scalar tail."""
    n = int(np.prod(shape, dtype=np.int64))
    return (np.arange(n) < (n // block) * block).reshape(shape)


# ---------------------------------------------------------------- integer helpers

def _shift_left(x, e):
    """``x * 2**e`` for ``e >= 0``, ``floor(x / 2**-e)`` for ``e < 0`` (NEON ``vshl`` by a signed count)."""
    return jnp.where(e >= 0, jnp.left_shift(x, jnp.maximum(e, 0)), jnp.right_shift(x, jnp.maximum(-e, 0)))


def _wrap16(x):
    return lax.convert_element_type(lax.convert_element_type(x, jnp.int16), jnp.int32)


# ---------------------------------------------------------------- ADD / SUB / MUL

@functools.partial(jax.jit, static_argnames=("subtract",))
def add_builtin(a, b, za, zb, params, out_zp, lo, hi, subtract: bool = False, paths=None):
    """The builtin int8 ADD / SUB (see the module doc) of int8 ``a``, ``b`` (of one shape: broadcast them
    first) with zero points ``za``, ``zb``; ``params`` from :func:`add_params_builtin`; ``paths`` None (``S``
    everywhere, the reference kernels) or the optimized kernels' per-element ``PATH_*`` of
    :func:`optimized_binary_paths`; int32 clamped to ``[lo, hi]``."""
    (m1, s1), (m2, s2), (mo, so) = (tuple(jnp.asarray(v, jnp.int32) for v in p) for p in params)
    x1 = a.astype(jnp.int32) - za
    x2 = b.astype(jnp.int32) - zb

    def scaled(x, m, s):
        plain = rounding_divide_by_pot(srdhm(jnp.left_shift(x, 20), m), -s)
        if paths is None:
            return plain
        elementwise = srdhm(_shift_left(x, 20 + s), m)
        broadcast = jnp.right_shift(srdhm(jnp.left_shift(x, 20), m), -s)
        return jnp.where(paths == PATH_ELEMENTWISE, elementwise,
                         jnp.where(paths == PATH_SCALAR_BROADCAST, broadcast, plain))

    y1, y2 = scaled(x1, m1, s1), scaled(x2, m2, s2)
    raw = rounding_divide_by_pot(srdhm(y1 - y2 if subtract else y1 + y2, mo), -so)
    out = raw + jnp.int32(out_zp)
    if paths is not None:
        # the NEON bodies narrow to int16 (vmovn, wrapping), add the offset in int16, then saturate
        vec = jnp.clip(_wrap16(_wrap16(raw) + jnp.int32(out_zp)), -128, 127)
        out = jnp.where(paths == PATH_SCALAR, out, vec)
    return jnp.clip(out, lo, hi)


def _broadcast_offsets(a, b, za, zb):
    shape = jnp.broadcast_shapes(a.shape, b.shape)  # numpy broadcasting (the engine broadcasts first)
    return (jnp.broadcast_to(a.astype(jnp.int32) - za, shape), jnp.broadcast_to(b.astype(jnp.int32) - zb, shape))


@jax.jit
def add_xnnpack(a, b, za, zb, params, out_zp, lo, hi):
    """XNNPACK's qs8 ADD / SUB (``params`` from :func:`add_params_xnnpack`), int32 clamped to ``[lo, hi]``."""
    ma, mb, shift = (jnp.asarray(v, jnp.int32) for v in params)
    x1, x2 = _broadcast_offsets(a, b, za, zb)
    acc = x1 * ma + x2 * mb + jnp.left_shift(jnp.int32(1), shift - 1)
    return jnp.clip(jnp.right_shift(acc, shift) + out_zp, lo, hi)


@jax.jit
def mul_builtin(a, b, za, zb, multiplier, out_zp, lo, hi, paths=None):
    """The builtin int8 MUL: ``multiplier = (M, s)`` from :func:`mul_multiplier_builtin`; ``paths`` None
    (the reference kernels) or the optimized kernels' :func:`optimized_binary_paths` (block 16): their NEON
    bodies saturate the product to int16 (``vqmovn_s32``), add the zero point in int16 (``vaddq_s16``,
    wrapping) and saturate to int8 — the same values unless ``|M x1 x2| + |zp|`` nears ``2**15``."""
    m, s = (jnp.asarray(v, jnp.int32) for v in multiplier)
    x1, x2 = _broadcast_offsets(a, b, za, zb)
    p = jnp.left_shift(x1 * x2, jnp.maximum(s, 0))
    raw = rounding_divide_by_pot(srdhm(p, m), jnp.maximum(-s, 0))
    out = raw + out_zp
    if paths is not None:
        vec = jnp.clip(_wrap16(jnp.clip(raw, -32768, 32767) + out_zp), -128, 127)
        out = jnp.where(paths == PATH_SCALAR, out, vec)
    return jnp.clip(out, lo, hi)


@jax.jit
def mul_xnnpack(a, b, za, zb, scale, out_zp, lo, hi):
    """XNNPACK's qs8 MUL (fp32 requantization); ``scale = fl32(fl32(sa*sb)/sy)`` (a float32-valued float)."""
    x1, x2 = _broadcast_offsets(a, b, za, zb)
    acc = (x1 * x2).astype(jnp.float32)  # |x1*x2| <= 255**2: exact
    r = jnp.round(mul_rn(acc, jnp.float32(scale)))  # cvtps2dq: ties to even
    return jnp.clip(r.astype(jnp.int32) + out_zp, lo, hi)


# ---------------------------------------------------------------- QUANTIZE / requantize / DEQUANTIZE

_TWO31 = 2.0**31


def _to_int32_x86(r):
    """``static_cast<int32_t>`` / ``cvt(t)ps2dq`` of integral float32 ``r``: out of range or NaN -> INT32_MIN."""
    ok = jnp.abs(r) < _TWO31
    return jnp.where(ok, jnp.where(ok, r, 0.0).astype(jnp.int32), jnp.int32(-(2**31)))


def _round_half_away_exact_quotient(x, s):
    """``round_half_away(x / s)`` of the exact quotient (as ``TfLiteRound(x / (double)s)`` computes it).

    ``q = fl32(x/s)``; a half-integer ``q`` (float32 represents them all in range) is the exact quotient
    only if ``fma(q, s, -x) == 0``; otherwise the quotient lies on the side the residual's sign says, and
    every other ``q`` rounds like the exact quotient (the midpoints between are representable)."""
    q = div_rn(x, s)
    frac = q - jnp.floor(q)
    half = frac == 0.5
    resid = fma(q, jnp.broadcast_to(s, q.shape), -x)  # q*s - x, correctly rounded: its sign is exact
    below = resid > 0  # exact quotient < q
    inexact_half = half & (resid != 0)
    return jnp.where(inexact_half, jnp.where(below, q - 0.5, q + 0.5), round_float(q, "half_away"))


@jax.jit
def quantize_reference(x, scale, zp, qmin, qmax):
    """``reference_ops::AffineQuantize``: ``round_half_away(fl32(x / s)) + zp`` clamped (int32)."""
    r = round_float(div_rn(jnp.asarray(x, jnp.float32), jnp.float32(scale)), "half_away")
    return jnp.clip(_to_int32_x86(r) + jnp.int32(zp), qmin, qmax)


@jax.jit
def quantize_optimized(x, scale, zp, qmin, qmax):
    """``optimized_ops::AffineQuantize``: NEON body (blocks of 8) and scalar tail (see the module doc).

    The body's ``vdupq_n_f32(1.0f / scale)`` divides in double (``scale`` is a double there) and rounds to
    float32: that is the correctly rounded float32 reciprocal, as double rounding through binary64 is
    innocuous for a quotient of binary32 numbers (53 >= 2*24 + 2, Figueroa)."""
    x = jnp.asarray(x, jnp.float32)
    inverse = div_rn(jnp.float32(1.0), jnp.asarray(scale, jnp.float32))
    body = _to_int32_x86(jnp.round(mul_rn(x, inverse))) + jnp.int32(zp)  # vcvtnq: ties to even
    tail = _to_int32_x86(_round_half_away_exact_quotient(x, jnp.float32(scale))) + jnp.int32(zp)
    mask = block_body_mask(x.shape, 8)
    return jnp.clip(jnp.where(mask, body, tail), qmin, qmax)


@jax.jit
def quantize_xnnpack(x, scale, zp, qmin, qmax):
    """XNNPACK ``f32-qs8-vcvt`` / ``f32-qu8-vcvt``: ``rint(min(fl32(x * fl32(1/s)), 32767)) + zp``, saturated."""
    inv = div_rn(jnp.float32(1.0), jnp.float32(scale))
    v = mul_rn(jnp.asarray(x, jnp.float32), inv)
    v = jnp.where(jnp.isnan(v) | (v > 32767.0), 32767.0, v)  # min_ps(v, INT16_MAX) returns the bound for NaN
    r = jnp.clip(jnp.round(v), -32768.0, 32767.0).astype(jnp.int32)  # cvtps2dq, then packs (int16 saturation)
    return jnp.clip(r + jnp.int32(zp), qmin, qmax)


@functools.partial(jax.jit, static_argnames=("optimized",))
def requantize_builtin(x1, multiplier, out_zp, qmin, qmax, optimized: bool = False):
    """``reference_ops::Requantize`` (``optimized=False``: ``MultiplyByQuantizedMultiplier``) or
    ``optimized_ops::Requantize`` (its NEON body on blocks of 16 is the optimized GEMM's double half-up rounding,
    :func:`qjax._src.requant.tflite.requantize_half_up`; the tail the reference's): ``x1 = x - x_zp`` int32,
    ``multiplier = (M, s)``."""
    m, s = (jnp.asarray(v, jnp.int32) for v in multiplier)
    out = requantize_reference(x1, m, s)
    if optimized:
        out = jnp.where(block_body_mask(x1.shape, 16), requantize_half_up(x1, m, s), out)
    return jnp.clip(out + jnp.int32(out_zp), qmin, qmax)


@jax.jit
def requantize_xnnpack(x1, multiplier: int, out_zp, qmin, qmax):
    """XNNPACK ``qs8-vcvt`` / ``qu8-vcvt``: ``((x1 * M + 128) >> 8) + zo`` saturated
    (``M = lrintf(256 * fl32(si/so))``, :func:`requant_multiplier_xnnpack`)."""
    acc = x1 * jnp.asarray(multiplier, jnp.int32) + jnp.int32(128)
    return jnp.clip(jnp.right_shift(acc, 8) + jnp.int32(out_zp), qmin, qmax)


@jax.jit
def dequantize_reference(v, scale, zp):
    """``fl32((x - zp) * s)``: reference (``reference_ops::Dequantize``) and XNNPACK (``qs8-f32-vcvt``)."""
    return mul_rn((jnp.asarray(v, jnp.int32) - jnp.int32(zp)).astype(jnp.float32), jnp.float32(scale))


@jax.jit
def dequantize_optimized(v, scale, zp):
    """``optimized_ops::Dequantize``: ``fl32(fl32(x * s) + fl32(-zp * s))`` on the NEON body (blocks of 8),
    reference on the tail."""
    v = jnp.asarray(v, jnp.int32)
    s = jnp.float32(scale)
    offset = mul_rn(jnp.float32(-1.0) * jnp.asarray(zp, jnp.int32).astype(jnp.float32), s)  # exact, rounded once
    body = uncontracted(mul_rn(v.astype(jnp.float32), s)) + offset
    return jnp.where(block_body_mask(v.shape, 8), body, dequantize_reference(v, scale, zp))
