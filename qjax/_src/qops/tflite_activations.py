"""LiteRT's (TFLite's) int8 HARD_SWISH, LOGISTIC, TANH and SOFTMAX arithmetic, per kernel family.

An int8 elementwise op is a function of the input integer alone, so HARD_SWISH / LOGISTIC / TANH are a
256-entry table per set of qparams, built here on the host (numpy, Python integers, the C library's
float ``expf`` / ``tanhf`` through :func:`qjax.qops.transcendental.libm`, as the kernels call them) and
gathered in JAX (:func:`apply_lut`).  Each table is checked entry by entry against the interpreter
(``scripts/check_litert_pooling.py``: all 256 inputs over many qparams).

* **LOGISTIC / TANH, builtin** (reference and optimized alike: ``kernels/activations.cc``
  ``SigmoidPrepare`` / ``TanhPrepare`` fill ``LUTPopulate<int8_t>`` for both ``kReference`` and
  ``kGenericOptimized``; ``reference/integer_ops/lut.h``): ``x = fl(s_in * float(q - z_in))``,
  ``y = 1.0f / (1.0f + expf(-x))`` or ``tanhf(x)`` in float32, ``out = clamp(TfLiteRound(fl(y *
  fl(1 / s_out))) + z_out)`` (``TfLiteRound``: half away from zero).  LOGISTIC requires
  ``s_out == 1/256`` (Prepare fails otherwise).
* **LOGISTIC / TANH, XNNPACK** (:func:`lut_xnnpack`): its reference kernel run over the 256 inputs --
  ``x = fl((q - z_in) * s_in)``, ``y = float(e / (1 + e))`` with ``e = exp(double(x))`` or ``tanhf(x)``,
  ``out = clamp(nearbyint(fl(fl(y * fl(1 / s_out)) + z_out)))`` (ties to even).
* **HARD_SWISH** (not delegated to XNNPACK; ``reference_ops::HardSwish`` in ``reference/hard_swish.h``
  with ``HardSwishPrepare``'s multipliers): int16 fixed point -- ``v = (q - z_in) * 128``; ``a =
  SRDHM16(v, M_out)`` with ``M_out`` the int16 (``DownScaleInt32ToInt16Multiplier``) of
  ``QuantizeMultiplier(fl(s_in / 128) / s_out)``; the "reluish" ``r`` = ``v`` rescaled by
  ``fl(s_in / 128) / (3 / 32768)`` (saturating left shifts around an ``SRDHM16`` for a positive
  exponent, ``RoundingDivideByPOT`` for a negative one), ``r = (r + 2**15) >> 1``; ``out =
  clamp(RoundingDivideByPOT(SaturatingDoublingHighMul16(r, a), -e_out) + z_out)`` (the last multiply
  truncates toward zero).
* **SOFTMAX, optimized** (not delegated; ``optimized_ops::PopulateSoftmaxLookupTable`` and the float
  ``optimized_ops::Softmax<int8, int8>``): ``T[d] = expf(fl(-s_in * beta) * d)`` for ``d = max - q``
  in 0..255; per row ``S = sum_j T[d_j]`` summed in float32 in row order; ``inv = 1.0f / fl(S *
  s_out)``; ``out = clamp(round_half_away(fl(T[d] * inv)) + z_out)``.
* **SOFTMAX, reference** (``reference_ops::Softmax`` in ``reference/softmax.h``, gemmlowp fixed point):
  ``(M, k) = QuantizeMultiplierGreaterThanOne(min(beta * s_in * 2**26, 2**31 - 1))`` (double),
  ``diff_min = -floor(31 * 2**26 / 2**k)``; for ``d = q - max >= diff_min``: ``E(d) =
  exp_on_negative_values<5>(SRDHM(d * 2**k, M))`` (Q0.31), the row's ``sum = sum RDPOT(E, 12)``
  (Q12.19); ``GetReciprocal(sum, 12)`` gives ``R`` (Q0.31, gemmlowp ``one_over_one_plus_x_for_x_in_0_1``)
  and ``b`` bits over one; ``out = clamp(RDPOT(SRDHM(R, E), b + 23) - 128)``; cells below ``diff_min``
  output -128.  ``E`` depends on ``d`` alone (a host table); ``R`` and ``b`` are computed per row in
  int32 here.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..float32 import div_rn, mul_rn
from ..requant.fixed_point import rounding_divide_by_pot, srdhm
from ..requant.tflite import tflite_quantize_multiplier
from ..rounding import round_float, round_offline
from . import transcendental as tr

__all__ = [
    "apply_lut",
    "lut_builtin",
    "lut_xnnpack",
    "hard_swish_params",
    "lut_hard_swish_reference",
    "softmax_optimized_table",
    "softmax_optimized",
    "softmax_reference_params",
    "softmax_reference",
]

F32 = np.float32
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def apply_lut(q, lut):
    """``lut[q + 128]``: int8 values (any integer dtype) through a 256-entry table (int32 result)."""
    return jnp.asarray(lut, jnp.int32)[jnp.asarray(q, jnp.int32) + 128]


@functools.lru_cache(maxsize=4096)
def lut_builtin(kind: str, in_scale: float, in_zero_point: int, out_scale: float, out_zero_point: int):
    """The builtin kernels' LOGISTIC (``kind="logistic"``) / TANH (``"tanh"``) table, int32 (256,)
    indexed by ``q + 128`` (module doc)."""
    q = np.arange(-128, 128)
    with np.errstate(over="ignore", invalid="ignore"):
        x = (F32(in_scale) * (q - int(in_zero_point)).astype(F32)).astype(F32)
        if kind == "logistic":
            y = (F32(1) / (F32(1) + tr.libm("expf", -x))).astype(F32)
        elif kind == "tanh":
            y = tr.libm("tanhf", x)
        else:
            raise ValueError(f"kind={kind!r}; use 'logistic' or 'tanh'")
        # TfLiteRound (std::round) of the float32 product: decided on the exact fraction (round_offline), never
        # floor(v + 0.5), which takes the float just below one half up to 1
        r = round_offline((y * (F32(1) / F32(out_scale))).astype(F32).astype(np.float64), "half_away")
    return np.clip(r + int(out_zero_point), -128, 127).astype(np.int32)


@functools.lru_cache(maxsize=4096)
def lut_xnnpack(kind: str, in_scale: float, in_zero_point: int, out_scale: float, out_zero_point: int):
    """XNNPACK's qs8 LOGISTIC (``kind="logistic"``) / TANH (``"tanh"``) table, int32 (256,) indexed by ``q + 128``.

    XNNPACK has no qs8 sigmoid / tanh kernel: ``unary-elementwise-nc.c`` (``init_lut_op_with_config``) runs
    its reference kernel (``src/reference/unary-elementwise.cc``, ``unary_ukernel_quantized``) over the 256
    inputs: ``x = fl((float(q) - float(z_in)) * s_in)``; ``SigmoidOp``: ``e = exp(double(x))``,
    ``y = float(e / (1 + e))`` (1 above 100, 0 below -100); ``TanHOp``: ``tanhf(x)``; then
    ``quantize``: ``nearbyint(fl(fl(y * fl(1 / s_out)) + float(z_out)))`` (ties to even; the zero point is
    added in float, which can round a near-half product onto the half) clamped to int8."""
    q = np.arange(-128, 128)
    with np.errstate(over="ignore", invalid="ignore"):
        x = ((q.astype(F32) - F32(int(in_zero_point))) * F32(in_scale)).astype(F32)
        if kind == "logistic":
            # std::exp(double): the C library's exp, as Python's math.exp calls it
            e = np.asarray([math.exp(v) if abs(v) <= 100 else 0.0 for v in x.astype(np.float64).tolist()])
            y = np.where(x > 100, 1.0, np.where(x < -100, 0.0, e / (1.0 + e))).astype(F32)
        elif kind == "tanh":
            y = tr.libm("tanhf", x)
        else:
            raise ValueError(f"kind={kind!r}; use 'logistic' or 'tanh'")
        v = ((y * (F32(1) / F32(out_scale))).astype(F32) + F32(int(out_zero_point))).astype(F32)
    return np.clip(np.rint(v), -128, 127).astype(np.int32)


# --- HARD_SWISH (reference_ops::HardSwish), emulated in Python integers with int16 semantics ---
# These host helpers (and the int32 ones of the reference SOFTMAX below) mirror gemmlowp's SRDHM / RDPOT, whose
# JAX forms are qjax._src.requant.fixed_point.srdhm / rounding_divide_by_pot (used where the per-row arithmetic
# runs in the graph).  They stay Python integers on purpose: a table is 256 scalar evaluations per qparams, built
# once at Prepare time on the host and lru-cached; running it through jnp would compile and dispatch a graph per
# table, and HARD_SWISH's steps are int16 (SRDHM16, SaturatingDoublingHighMul16), which fixed_point.py has not.

def _i16(v: int) -> int:
    return ((int(v) + 2**15) % 2**16) - 2**15


def _div_trunc(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _srdhm16(a: int, b: int) -> int:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int16."""
    if a == b == -(2**15):
        return 2**15 - 1
    ab = a * b
    nudge = (1 << 14) if ab >= 0 else 1 - (1 << 14)
    return _i16(_div_trunc(ab + nudge, 1 << 15))


def _sdhm16(a: int, b: int) -> int:
    """``reference_ops::SaturatingDoublingHighMul`` (int16, truncating toward zero)."""
    if a == b == -(2**15):
        return 2**15 - 1
    return _i16(_div_trunc(a * b, 1 << 15))


def _rdpot(x: int, e: int) -> int:
    """gemmlowp ``RoundingDivideByPOT`` (half away from zero)."""
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def _sat_left_shift16(v: int, amount: int) -> int:
    return max(-(2**15), min(2**15 - 1, v * (1 << amount)))


def _downscale_to_int16(m32: int) -> int:
    """``DownScaleInt32ToInt16Multiplier`` (``quantization_util.cc``)."""
    if m32 >= INT32_MAX - (1 << 15):
        return 2**15 - 1
    return (m32 + (1 << 15)) >> 16


def hard_swish_params(in_scale: float, out_scale: float):
    """``(M_out16, e_out, M_relu16, e_relu)`` of ``HardSwishPrepare`` (float32 ratios, TFLite
    ``QuantizeMultiplier`` of their doubles), or ValueError where Prepare fails (``e_out > 0``)."""
    hires = F32(F32(1.0 / 128.0) * F32(in_scale))
    m_out = F32(hires / F32(out_scale))
    m_relu = F32(hires / F32(3.0 / 32768.0))
    mo, eo = tflite_quantize_multiplier(float(m_out))
    mr, er = tflite_quantize_multiplier(float(m_relu))
    if eo > 0:
        raise ValueError(f"HARD_SWISH: input scale / 128 / output scale = {float(m_out):.6g} >= 1; "
                         "LiteRT's Prepare fails (output_multiplier_exponent > 0)")
    return _downscale_to_int16(mo), eo, _downscale_to_int16(mr), er


@functools.lru_cache(maxsize=4096)
def lut_hard_swish_reference(in_scale: float, in_zero_point: int, out_scale: float, out_zero_point: int):
    """``reference_ops::HardSwish``'s int8 table, int32 (256,) indexed by ``q + 128`` (module doc)."""
    mo, eo, mr, er = hard_swish_params(in_scale, out_scale)
    table = []
    for q in range(-128, 128):
        v = _i16(q - int(in_zero_point))
        hires = _i16(v * (1 << 7))
        pre_out = _srdhm16(hires, mo)
        r = hires
        if er > 0:
            r = _sat_left_shift16(r, er - 1)
        r = _srdhm16(r, mr)
        if er > 0:
            r = _sat_left_shift16(r, 1)
        if er < 0:
            r = _rdpot(r, -er)
        r = _i16((r + (1 << 15)) >> 1)
        pre = _sdhm16(r, pre_out)
        out = _i16(_rdpot(pre, -eo) + int(out_zero_point))
        table.append(max(-128, min(127, out)))
    return np.asarray(table, np.int32)


# --- SOFTMAX, optimized builtin kernel (float table) ---

@functools.lru_cache(maxsize=4096)
def softmax_optimized_table(in_scale: float, beta: float):
    """``PopulateSoftmaxLookupTable``: float32 (256,) ``T[d] = expf(fl(-s_in * beta) * d)``."""
    scale = F32(-F32(in_scale) * F32(beta))
    d = np.arange(256).astype(F32)
    return tr.libm("expf", (scale * d).astype(F32))


def _sum_rows_in_order(v):
    """Float32 sum over the last axis, one add at a time in index order (the kernel's loop)."""
    moved = jnp.moveaxis(v, -1, 0)

    def step(acc, col):
        return acc + col, None

    total, _ = lax.scan(step, jnp.zeros(moved.shape[1:], jnp.float32), moved)
    return total


def softmax_optimized(q, in_scale, beta, out_scale, out_zero_point):
    """SOFTMAX over the last axis by ``optimized_ops::Softmax`` (int32 in/out; module doc)."""
    table = softmax_optimized_table(float(F32(in_scale)), float(F32(beta)))
    return _softmax_optimized(q, table, F32(out_scale), np.int32(out_zero_point))


@jax.jit
def _softmax_optimized(q, table, out_scale, out_zero_point):
    q = jnp.asarray(q, jnp.int32)
    e = table[jnp.max(q, axis=-1, keepdims=True) - q]
    total = _sum_rows_in_order(e)[..., None]
    inv = div_rn(jnp.float32(1), total * out_scale)
    # TfLiteRound(T[d] * inv): the float32 product rounded once (mul_rn: no FMA into a rounding), then half away
    # from zero on its exact fraction (round_float; floor(p + 0.5) takes 0.49999997 up to 1)
    out = round_float(mul_rn(e, inv), "half_away").astype(jnp.int32)
    return jnp.clip(out + out_zero_point, -128, 127)


# --- SOFTMAX, reference kernel (gemmlowp fixed point) ---

def _srdhm32(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _div_trunc(ab + nudge, 1 << 31)


def _i32(v: int) -> int:
    return ((int(v) + 2**31) % 2**32) - 2**31


def _sat_shift_left32(x: int, e: int) -> int:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT`` for a positive exponent."""
    return max(INT32_MIN, min(INT32_MAX, x * (1 << e)))


def _exp_quarter(a: int) -> int:
    """gemmlowp ``exp_on_interval_between_negative_one_quarter_and_0_excl`` (Q0.31)."""
    constant_term, one_third = 1895147668, 715827883
    x = _i32(a + (1 << 28))
    x2 = _srdhm32(x, x)
    x3 = _srdhm32(x2, x)
    x4 = _srdhm32(x2, x2)
    x4_over_4 = _rdpot(x4, 2)
    inner = _rdpot(_i32(_srdhm32(_i32(x4_over_4 + x3), one_third) + x2), 1)
    return _i32(constant_term + _srdhm32(constant_term, _i32(x + inner)))


def _exp_on_negative_values_5(a: int) -> int:
    """gemmlowp ``exp_on_negative_values`` for a Q5.26 input (Q0.31 result)."""
    frac_bits = 26
    one_quarter = 1 << (frac_bits - 2)
    mask = one_quarter - 1
    a_mod = _i32((a & mask) - one_quarter)
    result = _exp_quarter(_sat_shift_left32(a_mod, 5))
    remainder = _i32(a_mod - a)
    for exponent, mult in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                           (2, 39332535), (3, 720401), (4, 242)):
        if remainder & (1 << (frac_bits + exponent)):
            result = _srdhm32(result, mult)
    if a == 0:
        result = INT32_MAX
    return result


def softmax_reference_params(in_scale: float, beta: float):
    """``(M, k, diff_min)`` of ``SoftmaxPrepare``'s reference branch (``PreprocessSoftmaxScaling``,
    ``CalculateInputRadius``; doubles)."""
    real = min(float(beta) * float(F32(in_scale)) * float(1 << 26), float((1 << 31) - 1))
    m, k = tflite_quantize_multiplier(real)
    if k < 0:
        raise ValueError(f"SOFTMAX: beta * input scale = {real / 2**26:.6g} is too small for LiteRT's "
                         "reference kernel (QuantizeMultiplierGreaterThanOne needs a shift >= 0)")
    radius = math.floor(1.0 * ((1 << 5) - 1) * (1 << 26) / (1 << k))
    return m, k, -radius


@functools.lru_cache(maxsize=4096)
def _softmax_reference_exp_table(in_scale: float, beta: float):
    """``(E, valid)``: for ``d = max - q`` in 0..255, ``exp_on_negative_values`` of the rescaled
    ``-d`` (int32) and whether ``-d >= diff_min``."""
    m, k, diff_min = softmax_reference_params(in_scale, beta)
    e, valid = [], []
    for d in range(256):
        diff = -d
        ok = diff >= diff_min
        valid.append(ok)
        e.append(_exp_on_negative_values_5(_srdhm32(_i32(diff * (1 << k)), m)) if ok else 0)
    return np.asarray(e, np.int32), np.asarray(valid)


def _one_over_one_plus_x(a):
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1`` on int32 raw Q0.31 values (JAX)."""
    a = jnp.asarray(a, jnp.int32)
    # RoundingHalfSum(a, One) = (a + INT32_MAX + 1) / 2 (64-bit, truncating); a >= 0 here
    half_den = (a >> 1) + np.int32(1 << 30)
    c48_17, cm32_17, one_f2 = np.int32(1515870810), np.int32(-1010580540), np.int32(1 << 29)
    x = c48_17 + srdhm(half_den, cm32_17)
    for _ in range(3):
        hdx = srdhm(half_den, x)
        one_minus = one_f2 - hdx
        prod = srdhm(x, one_minus)
        x = x + _sat_shift_left_jnp(prod, 2)
    return _sat_shift_left_jnp(x, 1)


def _sat_shift_left_jnp(x, e: int):
    lim = np.int32(INT32_MAX >> e)
    return jnp.where(x > lim, np.int32(INT32_MAX),
                     jnp.where(x < np.int32(INT32_MIN >> e), np.int32(INT32_MIN), x << e))


def _clz32(x):
    return lax.clz(jnp.asarray(x, jnp.int32))


def softmax_reference(q, in_scale, beta):
    """SOFTMAX over the last axis by ``reference_ops::Softmax<int8, int8>`` (int32 in/out; module doc;
    the output qparams are the required ``1/256``, ``-128``)."""
    e_table, valid = _softmax_reference_exp_table(float(F32(in_scale)), float(F32(beta)))
    return _softmax_reference(q, e_table, valid)


@jax.jit
def _softmax_reference(q, e_table, valid):
    q = jnp.asarray(q, jnp.int32)
    d = jnp.max(q, axis=-1, keepdims=True) - q
    ok = valid[d]
    e = e_table[d]
    acc = jnp.where(ok, rounding_divide_by_pot(e, 12), 0)
    total = jnp.sum(acc, axis=-1, keepdims=True, dtype=jnp.int32)  # FixedPoint adds wrap like int32
    headroom = _clz32(total)
    bits_over_unit = 12 - headroom
    # (uint32(x) << h) - 2**31 as int32: x << h has its top bit set, so subtracting 2**31 clears it
    shifted = lax.shift_left(total, headroom) & np.int32(INT32_MAX)
    recip = _one_over_one_plus_x(shifted)
    exponent = bits_over_unit + 31 - 8
    out = rounding_divide_by_pot(srdhm(recip, e), exponent) - 128
    return jnp.where(ok, jnp.clip(out, -128, 127), -128)
