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
torch multiplies per-channel values by its *double* scales (``fl32(fl64(k * d))``): qjax does too
with the double kept on the QArray (``scale64``, :mod:`qjax.float64`) when a scale is not
float32-valued, and multiplies by the float32 scale otherwise (the same value).  Per-tensor
kernels round the scale to float32.

The rules on raw arrays (and the zero-point rounding of float zero points) live in
:mod:`qjax.affine`, below :class:`~qjax.QArray`; this module is their QArray-level API.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .affine import (channel_shape, clamp_to_int, dequantize_values, integer_zero_point, quantize_fused,
                     quantize_unfused, quantize_values, reciprocal, round_half_even)
from .checks import QuantizationError, check_axis, check_scale, check_zero_point
from .dtypes import as_qdtype
from .qarray import QArray, as_f32, as_i32, scale_words

__all__ = [
    "quantize",
    "dequantize",
    "reciprocal",
    "quantize_fused",
    "quantize_unfused",
    "round_half_even",
    "clamp_to_int",
    "channel_shape",
    "quantize_values",
    "dequantize_values",
    "integer_zero_point",
]


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
    # torch.quantize_per_tensor / per_channel cast the scale to float (the values use fl32 only); the
    # double is kept for later ops that compute with it (qjax.float64)
    return QArray(quantize_values(x, s, z, dtype, axis), s, z, dtype, axis, check=False,
                  scale64=scale_words(scale))


def dequantize(q: QArray):
    """Float32 values of ``q``: ``(q - zero_point) * scale``, rounded as torch rounds it."""
    if not isinstance(q, QArray):
        raise TypeError(f"dequantize expects a QArray, got {type(q).__name__}")
    return q.dequantize()
