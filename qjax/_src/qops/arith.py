"""The dequantize / quantize / requantize building blocks of ATen's quantized CPU kernels.

Each comes in the two forms ``cpu_kernel_vec`` uses (``aten/src/ATen/cpu/vec/vec256/vec256_qint.h``
for the vector lambda, ``AffineQuantizerBase.cpp`` / ``fbgemm::Quantize`` for the scalar one)::

    dequantize_vec(q)    = fma(s, float(q), fl32(s * -z))          Vectorized::dequantize (premultiplied)
    dequantize_scalar(q) = fl32(s * float(int32(q - z)))           dequantize_val
    quantize_vec(y)      = clamp(wrap32(rne(min(fl32(y*inv), 2**31-128)) + z))   QuantizeAvx2: rounds, THEN adds z
    quantize_scalar(y)   = clamp(rne(fl32(fl32(y*inv) + z)))       quantize_val (LEGACY): adds z, then rounds
    requantize_vec(c)    = clamp(wrap32(rne(fl32(float(c)*m)) + z))   RequantizeAvx2 (int32 -> 8 bit)
    requantize_scalar(c) = clamp(lrint64(fl32(float(c)*m)) + z)       requantize_from_int

The vector quantize wraps on overflow: a huge positive value with ``z >= 128`` comes
out as ``qmin``; the scalar forms saturate.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..buffers import own_buffer
from ..quantize import quantize_unfused
from ..requant.fbgemm import round_to_int32_cvtps2dq

__all__ = [
    "dequantize_vec",
    "dequantize_scalar",
    "quantize_vec",
    "quantize_scalar",
    "requantize_vec",
    "requantize_scalar",
    "select_path",
]

_F32 = jnp.float32
_CAP = np.float32(2**31 - 128)


def _byte_table(q, scale, zero_point, formula):
    """``formula(q)`` for 8-bit ``q`` and per-tensor qparams as a 256-entry table gathered at ``q``.

    The dequantize formulas' exact float emulation (an FMA without a float multiply) costs
    ~60 integer operations per element; evaluated on the 256 possible values instead and
    looked up, the values are the same and a quantized add of two 64x56x56 batches of 4 went
    from ~20 ms to under 1 ms.  Other inputs (wider dtypes, per-channel qparams) evaluate
    the formula directly.
    """
    if q.dtype not in (jnp.uint8, jnp.int8) or np.ndim(scale) or np.ndim(zero_point) or q.size <= 256:
        return formula(q)
    codes = np.arange(256, dtype=np.uint8)  # table index = the byte's bit pattern
    table = own_buffer(formula(jnp.asarray(codes.view(np.int8) if q.dtype == jnp.int8 else codes)), q)
    index = lax.bitcast_convert_type(q, jnp.uint8) if q.dtype == jnp.int8 else q
    return table.at[index.astype(jnp.int32)].get(mode="promise_in_bounds")


def dequantize_vec(q, scale, zero_point):
    s = jnp.asarray(scale, _F32)

    def formula(q):
        return f32x.fma(s, q.astype(_F32), f32x.mul_rn(s, -jnp.asarray(zero_point).astype(_F32)))

    return _byte_table(q, scale, zero_point, formula)


def dequantize_scalar(q, scale, zero_point):
    def formula(q):
        d = (q.astype(jnp.int32) - jnp.asarray(zero_point, jnp.int32)).astype(_F32)
        return f32x.mul_rn(jnp.asarray(scale, _F32), d)

    return _byte_table(q, scale, zero_point, formula)


def _product(a, b):
    """``fl32(a * b)`` as a native product that only reaches a rounding to integer.

    Equal to :func:`qjax.float32.mul_rn` there: XLA cannot contract it with a later add
    (:func:`qjax.float32.uncontracted`), and the one difference, a subnormal product that
    XLA's CPU backend flushes to zero, rounds to the same integer.
    """
    return f32x.uncontracted(jnp.asarray(a, _F32) * jnp.asarray(b, _F32))


def quantize_vec(y, inv, zero_point, qmin, qmax):
    t = _product(y, inv)
    t = jnp.where(t < _CAP, t, _CAP)  # _mm256_min_ps: NaN -> the cap
    r = round_to_int32_cvtps2dq(t) + jnp.asarray(zero_point, jnp.int32)  # int32 add wraps, as in vpaddd
    return jnp.clip(r, qmin, qmax)


def quantize_scalar(y, inv, zero_point, qmin, qmax):
    return quantize_unfused(y, inv, zero_point, qmin, qmax, jnp.int32)


def requantize_vec(c, multiplier, zero_point, qmin, qmax):
    r = round_to_int32_cvtps2dq(_product(c.astype(_F32), multiplier))
    return jnp.clip(r + jnp.asarray(zero_point, jnp.int32), qmin, qmax)


def requantize_scalar(c, multiplier, zero_point, qmin, qmax):
    # lrintf into int64 cannot overflow for float32 inputs; clamping the float first
    # keeps the int32 arithmetic exact for 8-bit outputs (|zero point| <= 255)
    r = jnp.round(_product(c.astype(_F32), multiplier))
    r = jnp.clip(r, np.float32(qmin - 512), np.float32(qmax + 512)).astype(jnp.int32)
    return jnp.clip(r + jnp.asarray(zero_point, jnp.int32), qmin, qmax)


def select_path(mask, vec, scalar):
    """Per-element choice between the two lambdas (``mask`` from :func:`qjax.qops.paths.vector_mask`)."""
    if not mask.any():
        return scalar
    if mask.all():
        return vec
    return jnp.where(jnp.asarray(mask), vec, scalar)
