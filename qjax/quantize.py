"""Quantize and dequantize with torch 2.13's exact float32 arithmetic (fbgemm build).

Both paths multiply by the float32 reciprocal ``inv = fl32(1 / fl32(scale))`` (never
divide) and add the zero point *before* rounding half to even, but they round a
different number of times:

* per-tensor ``quint8`` / ``qint8`` — FBGEMM ``QuantizeAvx2<T, LEGACY=true>``
  (``src/QuantUtilsAvx2.cc``): ``q = clamp(rne(min(fma(x, inv, zp), 2**31-128)), qmin, qmax)``,
  one rounding (``_mm256_fmadd_ps``); NaN becomes the cap, i.e. ``qmax``.
* per-channel (any dtype) and per-tensor ``qint32`` — the scalar
  ``fbgemm::Quantize<T, LEGACY=true>`` (``include/fbgemm/QuantUtils.h``):
  ``q = clamp(rne(fl32(fl32(x * inv) + zp)), qmin, qmax)``, two roundings.

The two differ only at exact ties, which is why random tests miss it.  XLA would
contract ``x * inv + zp`` into an FMA or not depending on fusion, so both rules use
:mod:`qjax.float32`, whose results do not depend on XLA's choice.

Dequantize is ``fl32(float(int32(q - zp)) * scale)`` per tensor and
``fl32(fl32(float(q) - float(zp)) * scale)`` per channel (they differ for qint32 only).
torch multiplies per-channel values by its *double* scales; qjax stores float32
scales, which is the same whenever the scales are float32 values — as every torch
observer produces them.  Per-tensor kernels round the scale to float32 anyway.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import float32 as f32x
from .checks import QuantizationError, check_axis, check_scale, check_zero_point
from .dtypes import as_qdtype, qint32
from .qarray import QArray, as_f32, as_i32

__all__ = [
    "quantize",
    "dequantize",
    "reciprocal",
    "quantize_fused",
    "quantize_unfused",
    "round_half_even",
    "clamp_to_int",
]

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


def _channel_shape(ndim: int, axis: int):
    return tuple(-1 if i == axis else 1 for i in range(ndim))


def quantize(x, scale, zero_point, dtype, axis=None) -> QArray:
    """Quantize a float array exactly as ``torch.quantize_per_tensor`` / ``quantize_per_channel``.

    Args:
      x: float array (cast to float32, as torch's kernels read float32).
      scale: positive finite scalar, or a vector of ``x.shape[axis]`` scales.
      zero_point: integer scalar or vector inside the dtype's range.
      dtype: ``qjax.quint8``, ``qjax.qint8`` or ``qjax.qint32`` (or their names / torch dtypes).
      axis: ``None`` for per-tensor, else the channel axis.

    Returns:
      A :class:`QArray` with values of the dtype's storage type and the same shape as ``x``.
    """
    dtype = as_qdtype(dtype)
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"x must be a float array, got dtype {jnp.result_type(x)}")
    x = jnp.asarray(x, jnp.float32)
    axis = check_axis(axis, x.ndim)
    check_scale(scale)
    check_zero_point(zero_point, dtype)
    if axis is None:
        if np.ndim(scale) != 0 or np.ndim(zero_point) != 0:
            raise QuantizationError(
                "per-tensor quantize (axis=None) needs a scalar scale and zero_point; "
                f"got shapes {np.shape(scale)} and {np.shape(zero_point)} (pass axis= for per-channel)"
            )
    elif np.shape(scale) != (x.shape[axis],) or np.shape(zero_point) != (x.shape[axis],):
        raise QuantizationError(
            f"per-channel scale and zero_point must have shape ({x.shape[axis]},) = x.shape[{axis}], "
            f"got {np.shape(scale)} and {np.shape(zero_point)}"
        )
    s = as_f32(scale)
    z = as_i32(zero_point)
    return QArray(_quantize_values(x, s, z, dtype, axis), s, z, dtype, axis, check=False)


@functools.partial(jax.jit, static_argnames=("dtype", "axis"))
def _quantize_values(x, scale, zero_point, dtype, axis):
    inv = reciprocal(scale)
    if axis is None:
        rule = quantize_unfused if dtype == qint32 else quantize_fused
        return rule(x, inv, zero_point, dtype.qmin, dtype.qmax, dtype.storage)
    shp = _channel_shape(x.ndim, axis)
    return quantize_unfused(
        x, inv.reshape(shp), zero_point.reshape(shp), dtype.qmin, dtype.qmax, dtype.storage
    )


def dequantize(q: QArray):
    """Float32 values of ``q``: ``(q - zero_point) * scale``, rounded as torch rounds it."""
    if not isinstance(q, QArray):
        raise TypeError(f"dequantize expects a QArray, got {type(q).__name__}")
    return _dequantize_values(q.values, q.scale, q.zero_point, q.axis)


@functools.partial(jax.jit, static_argnames=("axis",))
def _dequantize_values(values, scale, zero_point, axis):
    if axis is None:
        # ATen dequantize_val: scale * float(int32(q - zp)); the int32 difference is
        # exact for qint32 too, where float(q) - float(zp) would round twice
        return (values.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale
    # per-channel: float(q) - float(zp), then times the (float32-valued) scale
    shp = _channel_shape(values.ndim, axis)
    v = values.astype(jnp.float32) - zero_point.astype(jnp.float32).reshape(shp)
    return v * scale.reshape(shp)

