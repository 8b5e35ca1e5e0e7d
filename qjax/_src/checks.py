"""Argument checks with errors that name the argument and the rule.

Checks on *values* (scale > 0, zero point in range) run when the value is
concrete (a Python number, numpy array or committed jax array).  Inside ``jit``
the values are tracers and only shapes and dtypes can be checked; validate
parameters once outside the jitted function (e.g. when a model is built).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .dtypes import QDType

__all__ = [
    "QuantizationError",
    "is_concrete",
    "check_scale",
    "check_zero_point",
    "check_axis",
    "check_float",
]


class QuantizationError(ValueError):
    """A quantization argument breaks a rule (the message names the argument)."""


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _dtype_of(x):
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def check_scale(scale, argname: str = "scale"):
    """Scales must be float, finite and > 0 (torch rejects the rest or computes garbage)."""
    dt = _dtype_of(scale)
    if not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
        raise TypeError(f"{argname} must be a real number or float array, got dtype {dt}")
    if np.ndim(scale) > 1:
        raise QuantizationError(f"{argname} must be a scalar or a 1-d per-channel vector, got shape {np.shape(scale)}")
    if is_concrete(scale):
        s = np.asarray(scale, dtype=np.float64)
        s32 = s.astype(np.float32)
        if not np.all(np.isfinite(s)) or not np.all(np.isfinite(s32)):
            raise QuantizationError(f"{argname} must be finite (no NaN/inf, and within float32 range), got {s}")
        if not np.all(s32 > 0):
            raise QuantizationError(f"{argname} must be > 0 (as float32), got {s}")


def check_zero_point(zero_point, dtype: QDType, argname: str = "zero_point"):
    """Zero points are integers inside the quantized dtype's range ``[qmin, qmax]``."""
    if np.ndim(zero_point) > 1:
        raise QuantizationError(
            f"{argname} must be a scalar or a 1-d per-channel vector, got shape {np.shape(zero_point)}"
        )
    dt = _dtype_of(zero_point)
    if is_concrete(zero_point):
        z = np.asarray(zero_point)
        if np.issubdtype(dt, np.floating):
            if not np.all(np.isfinite(z)) or not np.all(z == np.round(z)):
                raise QuantizationError(f"{argname} must be an integer, got {z}")
        elif not np.issubdtype(dt, np.integer):
            raise TypeError(f"{argname} must be an integer, got dtype {dt}")
        if np.any(z < dtype.qmin) or np.any(z > dtype.qmax):
            raise QuantizationError(
                f"{argname}={z} is outside the range of {dtype.name} [{dtype.qmin}, {dtype.qmax}]"
            )
    elif not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise TypeError(f"{argname} must be an integer, got dtype {dt}")


def check_axis(axis, ndim: int, argname: str = "axis") -> int | None:
    if axis is None:
        return None
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{argname} must be an int or None, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise QuantizationError(f"{argname}={axis} is out of range for an array of rank {ndim}")
    return int(axis) % ndim


def check_float(x, argname: str):
    dt = _dtype_of(x)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{argname} must be a float array, got dtype {dt}")
