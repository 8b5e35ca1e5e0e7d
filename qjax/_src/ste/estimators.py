"""Gradient estimators for fake quantization: what the backward pass of ``round`` and ``clamp`` is.

For ``q = clamp(round(x / s) + z, qmin, qmax)`` and ``x̂ = (q - z) * s``, with ``r = round(x/s) + z``
the unclamped integer (torch's backward rule: ``z + nearbyint(x * (1/s))``) and ``in = qmin <= r <= qmax``:

========  =====================  ===========================================  =========================
estimator ``∂x̂/∂x``              ``∂x̂/∂s``                                    ``∂x̂/∂z``
========  =====================  ===========================================  =========================
STE       1                      0 (scale frozen)                             0
Clipped   ``in``                 0                                            0
LSQ       ``in``                 ``in ? (x̂ - x)/s : (r<qmin ? qmin-z : qmax-z)``  0
                                 times ``g``
LSQPlus   ``in``                 as LSQ                                       ``in ? 0 : -s * g``
========  =====================  ===========================================  =========================

``g`` is LSQ's gradient scale (Esser et al. 2020, "Learned Step Size Quantization"):
``1 / sqrt(N * qmax)`` with ``N`` the number of elements quantized with that scale
(``grad_scale="auto"``, torch's ``_LearnableFakeQuantize(use_grad_scaling=True)``), or a given
float, or 1.  LSQ+ (Bhalgat et al. 2020) adds the zero point gradient; these are exactly the
formulas of torch's ``_fake_quantize_learnable_per_tensor_affine_backward``
(``aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp``).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

__all__ = ["STE", "ClippedSTE", "LSQ", "LSQPlus", "Estimator", "get_estimator"]


@dataclasses.dataclass(frozen=True)
class Estimator:
    """Base: identity gradient for x, none for the scale and zero point."""

    clip: bool = False
    learn_scale: bool = False
    learn_zero_point: bool = False
    grad_scale: object = None  # None (1), "auto" or a float

    def factor(self, n: int, qmax: int) -> float:
        if self.grad_scale is None:
            return 1.0
        if self.grad_scale == "auto":
            return 1.0 / math.sqrt(n * qmax)
        return float(self.grad_scale)

    def grads(self, g, x, xhat, s, z, qmin, qmax, factor, r=None):
        """Per-element ``(dx, ds, dz)`` for the output cotangent ``g`` (``s``/``z`` broadcast to ``x``).

        ``xhat`` is the forward output.  torch's backward recomputes it as ``(clamp(r) - z) * s``;
        at exact ties that differs from the forward pass (torch's fake-quant forward rounds
        ``x/s`` and adds ``z`` after, its quantize kernel adds ``z`` before rounding), so the
        forward's own value is used: the gradient then belongs to the function computed.  ``r`` is the
        unclamped integer (default: torch's ``z + rne(x * (1/s))``; fake quantization with another
        rounding mode passes its own).
        """
        inv = 1.0 / s
        if r is None:
            r = z + jnp.round(x * inv)
        below, above = r < qmin, r > qmax
        inside = ~(below | above)
        dx = g * inside if self.clip else g
        zeros = jnp.zeros_like(x)
        ds = dz = zeros
        if self.learn_scale:
            ds = jnp.where(inside, g * (xhat - x) * inv, g * jnp.where(below, qmin - z, qmax - z)) * factor
        if self.learn_zero_point:
            dz = jnp.where(inside, zeros, -g * s * factor)
        return dx, ds, dz


def STE() -> Estimator:
    """Straight-through: ``∂x̂/∂x = 1`` everywhere (Bengio et al. 2013)."""
    return Estimator()


def ClippedSTE() -> Estimator:
    """Straight-through inside the representable range, zero outside."""
    return Estimator(clip=True)


def LSQ(grad_scale="auto") -> Estimator:
    """Learned step size: clipped STE for x plus the LSQ scale gradient."""
    return Estimator(clip=True, learn_scale=True, grad_scale=grad_scale)


def LSQPlus(grad_scale="auto") -> Estimator:
    """LSQ plus a learnable (continuous, rounded in the forward pass) zero point."""
    return Estimator(clip=True, learn_scale=True, learn_zero_point=True, grad_scale=grad_scale)


_NAMES = {"ste": STE, "clipped": ClippedSTE, "lsq": LSQ, "lsq_plus": LSQPlus}


def get_estimator(est) -> Estimator:
    if isinstance(est, Estimator):
        return est
    if isinstance(est, str) and est in _NAMES:
        return _NAMES[est]()
    raise ValueError(f"estimator={est!r}; use an Estimator or one of {sorted(_NAMES)}")
