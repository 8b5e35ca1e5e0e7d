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

from .. import float32 as f32x
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


def dequantize_vec(q, scale, zero_point):
    s = jnp.asarray(scale, _F32)
    return f32x.fma(s, q.astype(_F32), f32x.mul_rn(s, -jnp.asarray(zero_point).astype(_F32)))


def dequantize_scalar(q, scale, zero_point):
    d = (q.astype(jnp.int32) - jnp.asarray(zero_point, jnp.int32)).astype(_F32)
    return f32x.mul_rn(jnp.asarray(scale, _F32), d)


def quantize_vec(y, inv, zero_point, qmin, qmax):
    t = f32x.mul_rn(y, inv)
    t = jnp.where(t < _CAP, t, _CAP)  # _mm256_min_ps: NaN -> the cap
    r = round_to_int32_cvtps2dq(t) + jnp.asarray(zero_point, jnp.int32)  # int32 add wraps, as in vpaddd
    return jnp.clip(r, qmin, qmax)


def quantize_scalar(y, inv, zero_point, qmin, qmax):
    return quantize_unfused(y, inv, zero_point, qmin, qmax, jnp.int32)


def requantize_vec(c, multiplier, zero_point, qmin, qmax):
    r = round_to_int32_cvtps2dq(f32x.mul_rn(c.astype(_F32), multiplier))
    return jnp.clip(r + jnp.asarray(zero_point, jnp.int32), qmin, qmax)


def requantize_scalar(c, multiplier, zero_point, qmin, qmax):
    # lrintf into int64 cannot overflow for float32 inputs; clamping the float first
    # keeps the int32 arithmetic exact for 8-bit outputs (|zero point| <= 255)
    r = jnp.round(f32x.mul_rn(c.astype(_F32), multiplier))
    r = jnp.clip(r, np.float32(qmin - 512), np.float32(qmax + 512)).astype(jnp.int32)
    return jnp.clip(r + jnp.asarray(zero_point, jnp.int32), qmin, qmax)


def select_path(mask, vec, scalar):
    """Per-element choice between the two lambdas (``mask`` from :func:`qjax.qops.paths.vector_mask`)."""
    if not mask.any():
        return scalar
    if mask.all():
        return vec
    return jnp.where(jnp.asarray(mask), vec, scalar)
