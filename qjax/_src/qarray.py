"""``QArray``: integer values with their quantization parameters, as a JAX pytree.

A QArray carries ``values`` (uint8 / int8 / int32 storage), ``scale`` (float32,
scalar or per-channel vector), ``zero_point`` (int32, same shape as ``scale``) as
leaves, and the quantized ``dtype`` and channel ``axis`` as static metadata, so it
passes through ``jit``, ``vmap``, ``grad`` (of functions of its float leaves) and
``tree_map`` like any pytree.

``scale`` is stored in float32 because most torch CPU kernels use
``float(scale)``: fbgemm, qnnpack and the quantize kernels all convert torch's
double ``q_scale()`` to float before any arithmetic.  A few paths compute with
the double itself (onednn inverts it in double, see :mod:`qjax.requant.onednn`);
for them a QArray whose scale is a double that is not float32-valued also carries
``scale64``, the double's bit pattern as uint32 words ``scale.shape + (2,)``
(:mod:`qjax.float64`), as a pytree leaf; ``scale64`` is None (no leaf) for
float32-valued scales, so ``scale`` alone is exact for every engine there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .affine import dequantize_values
from .checks import QuantizationError, check_axis, check_scale, check_zero_point, is_concrete
from .dtypes import as_qdtype
from .float64 import round_to_f32_numpy, words_if_not_f32

__all__ = ["QArray", "as_f32", "as_i32", "scale_words", "as_words", "check_scale64"]


@jax.tree_util.register_pytree_node_class
class QArray:
    """Quantized array ``real ≈ (values - zero_point) * scale``.

    Args:
      values: integer array in the storage dtype of ``dtype`` (uint8 for quint8, ...).
      scale: float32 scalar (per-tensor) or vector of length ``values.shape[axis]``.
      zero_point: int32 scalar or vector matching ``scale``.
      dtype: the quantized dtype (:data:`qjax.quint8`, :data:`qjax.qint8`, :data:`qjax.qint32`).
      axis: ``None`` for per-tensor, else the channel axis of a per-channel QArray.
      check: validate values and parameters when they are concrete (default True).
      scale64: the scale(s) as IEEE doubles, uint32 words of shape ``scale.shape + (2,)``
        (:func:`qjax.float64.words`), for engines that compute with torch's double scale; default: kept
        automatically when ``scale`` is a concrete float64 (a Python float, ``np.float64``, a float64 numpy
        array) that is not float32-valued, else None.  ``scale`` must then be its float32 rounding.
    """

    __slots__ = ("values", "scale", "zero_point", "dtype", "axis", "scale64")

    def __init__(self, values, scale, zero_point, dtype, axis=None, *, check: bool = True, scale64=None):
        dtype = as_qdtype(dtype)
        values = jnp.asarray(values) if not isinstance(values, jax.core.Tracer) else values
        if check:
            if values.dtype != dtype.storage:
                raise TypeError(
                    f"values must have dtype {dtype.storage} for {dtype.name}, got {values.dtype}"
                )
            axis = check_axis(axis, values.ndim)
            check_scale(scale, "scale")
            check_zero_point(zero_point, dtype, "zero_point")
            if axis is None:
                if np.ndim(scale) != 0 or np.ndim(zero_point) != 0:
                    raise QuantizationError(
                        "a per-tensor QArray (axis=None) needs scalar scale and zero_point, got shapes "
                        f"{np.shape(scale)} and {np.shape(zero_point)}"
                    )
            else:
                n = values.shape[axis]
                if np.shape(scale) != (n,) or np.shape(zero_point) != (n,):
                    raise QuantizationError(
                        f"per-channel scale and zero_point must have shape ({n},) (values.shape[{axis}]), "
                        f"got {np.shape(scale)} and {np.shape(zero_point)}"
                    )
        if scale64 is None:
            scale64 = scale_words(scale)
        elif check:
            check_scale64(scale64, scale)
        self.values = values
        self.scale = as_f32(scale)
        self.zero_point = as_i32(zero_point)
        self.dtype = dtype
        self.axis = axis
        self.scale64 = None if scale64 is None else as_words(scale64)

    # -- pytree -----------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.values, self.scale, self.zero_point, self.scale64), (self.dtype, self.axis)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.values, obj.scale, obj.zero_point, obj.scale64 = children
        obj.dtype, obj.axis = aux
        return obj

    # -- conveniences -----------------------------------------------------------------------
    @property
    def shape(self):
        return self.values.shape

    @property
    def ndim(self):
        return self.values.ndim

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def with_values(self, values, dtype=None):
        """A QArray of new ``values`` with these quantization parameters (``scale64`` included): what ops that
        keep their input's qparams (pooling, reshapes, clamps) should return."""
        out = object.__new__(QArray)
        out.values, out.scale, out.zero_point, out.scale64 = values, self.scale, self.zero_point, self.scale64
        out.dtype, out.axis = (self.dtype if dtype is None else as_qdtype(dtype)), self.axis
        return out

    def int_repr(self):
        """The integer values (like torch's ``int_repr()``)."""
        return self.values

    def dequantize(self):
        return dequantize_values(self.values, self.scale, self.zero_point, self.axis,
                                 self.scale64 if self.axis is not None else None)

    def __repr__(self) -> str:
        if self.axis is None and is_concrete(self.scale):
            q = f"scale={float(np.asarray(self.scale)):.9g}, zero_point={int(np.asarray(self.zero_point))}"
        else:
            q = f"axis={self.axis}"
        return f"QArray({self.dtype.name}, shape={tuple(self.shape)}, {q})"


def as_f32(x):
    """float32 jax array; float64 input rounds to nearest like torch's ``static_cast<float>``."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x.astype(jnp.float32)
    # float64 -> float32 rounds to nearest, like torch's static_cast<float>(double)
    return jnp.asarray(np.asarray(x, dtype=np.float64).astype(np.float32))


def as_i32(x):
    """int32 jax array."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x.astype(jnp.int32)
    return jnp.asarray(np.asarray(x).astype(np.int32))



def scale_words(scale):
    """The double words of a concrete float64 scale that is not float32-valued, else None.

    Only host float64 values (Python floats, ``np.float64``, float64 numpy arrays: what torch hands over)
    can hold such a double; jax arrays are float32 here (no x64) and give None, as do float32 inputs.
    """
    if isinstance(scale, (jax.Array, jax.core.Tracer)):
        return None
    if isinstance(scale, float) or np.asarray(scale).dtype == np.float64:
        return words_if_not_f32(scale)
    return None


def as_words(w):
    """uint32 jax array of double words."""
    if isinstance(w, (jax.Array, jax.core.Tracer)):
        return w.astype(jnp.uint32)
    return jnp.asarray(np.asarray(w).astype(np.uint32))


def check_scale64(scale64, scale, argname: str = "scale64"):
    """``scale64`` has shape ``scale.shape + (2,)`` and (when concrete) rounds to ``scale`` in float32."""
    if np.shape(scale64) != np.shape(scale) + (2,):
        raise QuantizationError(f"{argname} must be the uint32 words of shape {np.shape(scale) + (2,)} "
                                f"(scale.shape + (2,)), got shape {np.shape(scale64)}")
    if is_concrete(scale64) and is_concrete(scale):
        if not np.array_equal(round_to_f32_numpy(np.asarray(scale64)), np.asarray(scale, np.float64).astype(np.float32)):
            raise QuantizationError(f"{argname} must round to scale in float32 (scale is fl32 of the double)")
