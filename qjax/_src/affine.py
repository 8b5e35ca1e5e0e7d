"""The affine quantization rules on raw arrays: torch 2.13's quantize / dequantize arithmetic (fbgemm build).

This is the numerics below :class:`~qjax.QArray` (which imports :func:`dequantize_values` for its
``dequantize`` method) and :mod:`qjax.quantize` (the QArray-level API, which re-exports these):
nothing here imports either, so neither imports the other back.

Both quantize paths multiply by the float32 reciprocal ``inv = fl32(1 / fl32(scale))`` (never
divide) and add the zero point *before* rounding half to even, but they round a different number of
times: per-tensor ``quint8`` / ``qint8`` is FBGEMM's ``QuantizeAvx2<T, LEGACY=true>`` (one rounding,
``_mm256_fmadd_ps``), per-channel and ``qint32`` the scalar ``fbgemm::Quantize<T, LEGACY=true>`` (two);
see :mod:`qjax.quantize` for the details.  Dequantize is ``fl32(float(int32(q - zp)) * scale)`` per
tensor and ``fl32(fl32(float(q) - float(zp)) * scale)`` per channel, where torch's double scale makes the
product ``fl32(fl64(k * d))`` (:mod:`qjax.float64`, for scales that are not float32-valued).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import float32 as f32x
from . import float64 as f64
from .dtypes import QDType, qint32

__all__ = ["reciprocal", "round_half_even", "clamp_to_int", "quantize_fused", "quantize_unfused", "channel_shape",
           "quantize_values", "dequantize_values", "integer_zero_point"]

# FBGEMM: "the largest int32 value less than int32_max that is exactly representable in float"
_INT32_FLOAT_MAX = np.float32(2**31 - 128)


def reciprocal(scale):
    """``fl32(1.0f / fl32(scale))``: the inverse scale every torch CPU quantize kernel multiplies by."""
    return f32x.div_rn(1.0, scale)


def round_half_even(v):
    """Round float32 to the nearest integer, ties to even (``nearbyint``, ``cvtps2dq``)."""
    return jnp.round(v)


def clamp_to_int(r, qmin: int, qmax: int, storage):
    """Clamp an integral float32 to ``[qmin, qmax]`` and convert (no overflow: the clamp is in float)."""
    lo = np.float32(qmin)
    # 2**31 - 1 is not a float32; the largest float32 below it is 2**31 - 128
    hi = np.float32(qmax) if qmax < 2**24 else np.float32(2**31 - 128)
    q = jnp.clip(r, lo, hi).astype(jnp.int32)
    if qmax >= 2**24:
        q = jnp.where(r >= np.float32(2**31), jnp.int32(qmax), q)
    return q.astype(storage)


def quantize_fused(x, inv, zp, qmin: int, qmax: int, storage):
    """Per-tensor AVX2 rule: ``clamp(rne(min(fma(x, inv, float(zp)), 2**31-128)), qmin, qmax)``."""
    v = f32x.fma(x, inv, jnp.asarray(zp).astype(jnp.float32))
    v = jnp.where(v < _INT32_FLOAT_MAX, v, _INT32_FLOAT_MAX)  # _mm256_min_ps: NaN -> the cap
    return clamp_to_int(round_half_even(v), qmin, qmax, storage)


def quantize_unfused(x, inv, zp, qmin: int, qmax: int, storage):
    """Scalar rule: ``clamp(rne(fl32(fl32(x * inv) + float(zp))), qmin, qmax)``; NaN gives 0.

    The clamp is ``std::min<double>(std::max<double>(v, qmin), qmax)``, which lets NaN
    through; converting that NaN to the integer type gives 0x80000000, whose low
    bits are 0 for 8-bit types (INT32_MIN for qint32).
    """
    # the product is native (it cannot be contracted with the add, f32x.uncontracted); a
    # subnormal product, flushed to zero by XLA's CPU backend, adds to the same sum as the exact one
    v = f32x.uncontracted(jnp.asarray(x, jnp.float32) * jnp.asarray(inv, jnp.float32)) + jnp.asarray(zp).astype(
        jnp.float32)
    q = clamp_to_int(round_half_even(v), qmin, qmax, jnp.int32)
    nan_value = jnp.int32(-(2**31)) if qmax >= 2**24 else jnp.int32(0)
    return jnp.where(jnp.isnan(v), nan_value, q).astype(storage)


def channel_shape(ndim: int, axis: int):
    """The shape that broadcasts a per-channel vector along ``axis`` of an ``ndim``-d array."""
    return tuple(-1 if i == axis else 1 for i in range(ndim))


def integer_zero_point(z, dtype: QDType):
    """A zero point as the kernels use it: ``clamp(rne(z), qmin, qmax)`` as int32.

    The one rounding rule for float zero points (learned in QAT, held by modules): torch's learnable
    fake-quant rounds its float zero point half to even and clamps it into the dtype's range
    (``_LearnableFakeQuantize``: ``zero_point.round().clamp(quant_min, quant_max)``).
    """
    # host values stay on the host (numpy: the same round-half-even and clamp), so callers deciding static
    # facts from them (torch's x86 dispatch on the weight zero points) get concrete integers even under jit
    xp = np if isinstance(z, (np.ndarray, np.generic, int, float)) else jnp
    return xp.clip(xp.round(xp.asarray(z, np.float32)), dtype.qmin, dtype.qmax).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("dtype", "axis"))
def quantize_values(x, scale, zero_point, dtype, axis):
    """The integers of ``quantize(x, scale, zero_point, dtype, axis)`` (float32 ``x``, float32 scale(s), int32
    zero point(s); no checks): the fused rule per tensor (quint8 / qint8), the unfused one otherwise."""
    inv = reciprocal(scale)
    if axis is None:
        rule = quantize_unfused if dtype == qint32 else quantize_fused
        return rule(x, inv, zero_point, dtype.qmin, dtype.qmax, dtype.storage)
    shp = channel_shape(x.ndim, axis)
    return quantize_unfused(
        x, inv.reshape(shp), zero_point.reshape(shp), dtype.qmin, dtype.qmax, dtype.storage
    )


@functools.partial(jax.jit, static_argnames=("axis",))
def dequantize_values(values, scale, zero_point, axis, scale64=None):
    """Float32 ``(values - zero_point) * scale`` rounded as torch rounds it (float32 scale(s), int32 zero point(s);
    ``scale64`` the per-channel scales' double words, None where they are float32-valued)."""
    if axis is None:
        # ATen dequantize_val: scale * float(int32(q - zp)); the int32 difference is
        # exact for qint32 too, where float(q) - float(zp) would round twice
        return (values.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale
    # per-channel (QuantizedOpKernels.cpp dequantize_per_channel_affine_kernel):
    # (static_cast<float>(q) - zp) * scales_data[c] with double scales, stored as float: fl32(fl64(k * d));
    # for a float32-valued d the double product is exact and this is the float32 product
    shp = channel_shape(values.ndim, axis)
    v = values.astype(jnp.float32) - zero_point.astype(jnp.float32).reshape(shp)
    if scale64 is None:
        return v * scale.reshape(shp)
    d = jnp.broadcast_to(scale64.reshape(shp + (2,)), v.shape + (2,))
    p = f64.product_to_f32(f64.words_from_f32(jnp.abs(v)), d)
    return jnp.where(v == 0, jnp.float32(0), jnp.where(v < 0, -p, p))
