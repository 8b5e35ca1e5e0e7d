"""Fake quantization whose forward pass *is* the integer quantization, with a chosen gradient estimator.

``fake_quantize(x, s, z, dtype)`` returns ``dequantize(quantize(x, s, round(z), dtype))`` computed by
:func:`qjax.quantize` / :func:`qjax.dequantize` (torch's exact float32 rules, bit for bit) — or, with
``rounding=mode``, by the integer-only hardware input rule ``clamp(round_mode(x / s) + z)`` of
:mod:`qjax.hardware` — and differentiates through the estimator of :mod:`qjax.ste.estimators`.
``s`` and ``z`` are float arrays (``z`` is rounded half to even and clamped into the dtype's range
in the forward pass, as torch's learnable fake-quant does: :func:`qjax.affine.integer_zero_point`), scalar or per channel along ``axis``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ..buffers import own_buffer
from ..dtypes import QDType, as_qdtype
from ..float32 import div_rn
from ..affine import channel_shape, dequantize_values, integer_zero_point, quantize_values
from ..rounding import round_float
from .estimators import Estimator, get_estimator

__all__ = ["fake_quantize", "FakeQuantConfig", "integer_zero_point", "fake_quant_forward",
           "fake_quant_backward"]


@dataclasses.dataclass(frozen=True)
class FakeQuantConfig:
    dtype: QDType
    axis: int | None
    estimator: Estimator
    rounding: str | None = None


def _integers(cfg: FakeQuantConfig, x, s, z, key):
    """The forward pass's integers (the dtype's storage type; int32 under a hardware rounding) and zero point."""
    zi = integer_zero_point(z, cfg.dtype)
    if cfg.rounding is None:
        q = quantize_values(x, s, zi, cfg.dtype, cfg.axis)
    else:
        shp = () if cfg.axis is None else channel_shape(x.ndim, cfg.axis)
        r = round_float(div_rn(x, s.reshape(shp)), cfg.rounding, key)
        q = jnp.clip(jnp.clip(r, -1e6, 1e6).astype(jnp.int32) + zi.reshape(shp), cfg.dtype.qmin, cfg.dtype.qmax)
    return q, zi


def fake_quant_forward(cfg: FakeQuantConfig, x, s, z, key):
    """The forward pass's value ``dequantize(quantize(x; s, integer_zero_point(z)))`` (float32), no estimator."""
    q, zi = _integers(cfg, x, s, z, key)
    return dequantize_values(q, s, zi, cfg.axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fake_quant(cfg, x, s, z, key):
    return fake_quant_forward(cfg, x, s, z, key)


def _fq_fwd(cfg, x, s, z, key):
    y = fake_quant_forward(cfg, x, s, z, key)
    return y, (x, y, s, z, key)


def fake_quant_backward(cfg: FakeQuantConfig, res, g):
    """The estimator's VJP: ``(dx, ds, dz, dkey)`` for the cotangent ``g`` of ``y = fake_quant_forward(x, s, z)``.

    ``res = (x, y, s, z, key)``; ``y`` is read only by estimators that learn the scale (LSQ's
    ``(ŷ - x)/s``), so callers that use another estimator may pass ``None``.
    """
    x, y, s, z, key = res
    shp = () if cfg.axis is None else channel_shape(x.ndim, cfg.axis)
    sb, zb = s.reshape(shp), integer_zero_point(z, cfg.dtype).astype(jnp.float32).reshape(shp)
    factor = cfg.estimator.factor(x.size, cfg.dtype.qmax)
    r = None
    if cfg.rounding is not None:  # the forward's own unclamped integer decides what was clamped
        r = zb + round_float(div_rn(x, sb), cfg.rounding, key)
    dx, ds, dz = cfg.estimator.grads(g, x, y, sb, zb, cfg.dtype.qmin, cfg.dtype.qmax, factor, r)
    if cfg.axis is None:
        ds, dz = jnp.sum(ds), jnp.sum(dz)
    else:
        other = tuple(i for i in range(x.ndim) if i != cfg.axis)
        ds, dz = jnp.sum(ds, axis=other), jnp.sum(dz, axis=other)
    kz = None if key is None else jnp.zeros(key.shape, jax.dtypes.float0)
    return dx, ds.reshape(s.shape), dz.reshape(z.shape), kz


_fake_quant.defvjp(_fq_fwd, fake_quant_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fake_quant_integers(cfg, x, s, z, key):
    q, zi = _integers(cfg, x, s, z, key)
    q = own_buffer(q.astype(cfg.dtype.storage), s)  # the next integer op reads these integers, not x again
    return dequantize_values(q, s, zi, cfg.axis), q


def _fqi_fwd(cfg, x, s, z, key):
    y, q = _fake_quant_integers(cfg, x, s, z, key)
    return (y, q), (x, y, s, z, key)


def _fqi_bwd(cfg, res, g):
    return fake_quant_backward(cfg, res, g[0])  # the integers are not differentiable


_fake_quant_integers.defvjp(_fqi_fwd, _fqi_bwd)


def fake_quantize(x, scale, zero_point, dtype="quint8", axis=None, estimator="lsq", rounding=None, key=None,
                  return_integers=False):
    """Quantize-dequantize ``x`` exactly as the integer path, differentiable through ``estimator``.

    Args:
      x: float array.
      scale: float32 scalar or ``(x.shape[axis],)``; learnable with ``LSQ``/``LSQPlus``.
      zero_point: float scalar or vector (rounded in the forward pass); learnable with ``LSQPlus``.
      dtype: ``quint8``, ``qint8`` or ``qint32``.
      axis: channel axis for per-channel quantization.
      estimator: an :class:`~qjax.ste.estimators.Estimator` or ``"ste"``, ``"clipped"``, ``"lsq"``,
        ``"lsq_plus"``.
      rounding: ``None`` for torch's quantize rule, or a :mod:`qjax.rounding` mode for the
        integer-only hardware rule (``"stochastic"`` needs ``key``).
      return_integers: also return the integers (the dtype's storage type; not differentiable), which
        :func:`qjax.ste.conv` / :func:`qjax.ste.linear` take as ``x_integers`` instead of quantizing again.

    Returns:
      float32 array like ``x``: the dequantized integers (and, with ``return_integers``, the integers).
    """
    from ..checks import check_scale

    dtype = as_qdtype(dtype)
    check_scale(scale, "scale")
    x = jnp.asarray(x, jnp.float32)
    if axis is not None:
        axis = axis % x.ndim
        want = (x.shape[axis],)
        for value, name in ((scale, "scale"), (zero_point, "zero_point")):
            if jnp.shape(value) != want:
                raise ValueError(f"{name} has shape {jnp.shape(value)}; per-channel along axis {axis} needs {want}")
    else:
        for value, name in ((scale, "scale"), (zero_point, "zero_point")):
            if jnp.ndim(value) != 0:
                raise ValueError(f"{name} has shape {jnp.shape(value)}; per-tensor (axis=None) needs a scalar")
    cfg = FakeQuantConfig(dtype, axis, get_estimator(estimator), rounding)
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key")
    fq = _fake_quant_integers if return_integers else _fake_quant
    return fq(cfg, x, jnp.asarray(scale, jnp.float32), jnp.asarray(zero_point, jnp.float32), key)
