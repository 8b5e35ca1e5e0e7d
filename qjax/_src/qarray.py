"""``QArray``: integer values with their quantization parameters, as a JAX pytree.

A QArray carries ``values`` (uint8 / int8 / int32 storage), ``scale`` (float32,
scalar or per-channel vector), ``zero_point`` (int32, same shape as ``scale``) as
leaves, and the quantized ``dtype`` and channel ``axis`` as static metadata, so it
passes through ``jit``, ``vmap``, ``grad`` (of functions of its float leaves) and
``tree_map`` like any pytree.

``scale`` is stored in float32 because every torch CPU kernel uses
``float(scale)``: fbgemm, qnnpack and the quantize kernels all convert torch's
double ``q_scale()`` to float before any arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .affine import dequantize_values
from .checks import QuantizationError, check_axis, check_scale, check_zero_point, is_concrete
from .dtypes import as_qdtype

__all__ = ["QArray", "as_f32", "as_i32"]


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
    """

    __slots__ = ("values", "scale", "zero_point", "dtype", "axis")

    def __init__(self, values, scale, zero_point, dtype, axis=None, *, check: bool = True):
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
        self.values = values
        self.scale = as_f32(scale)
        self.zero_point = as_i32(zero_point)
        self.dtype = dtype
        self.axis = axis

    # -- pytree -----------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.values, self.scale, self.zero_point), (self.dtype, self.axis)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.values, obj.scale, obj.zero_point = children
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

    def int_repr(self):
        """The integer values (like torch's ``int_repr()``)."""
        return self.values

    def dequantize(self):
        return dequantize_values(self.values, self.scale, self.zero_point, self.axis)

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

