"""Exact forward, estimator backward: the one ``custom_vjp`` of qjax's differentiable quantized ops.

A quantized op in training returns what deployment computes — the engine's integers and their
dequantization — while its gradient is that of a float *surrogate*, ``fq(f(x̂, ...); s, z)``, the
float op followed by a fake quantization whose estimator (:mod:`qjax.ste.estimators`) decides how
the rounding is differentiated::

    forward:   (y, yq) = rule.exact(*args)                    # yq: the integers, y = (yq - z)·s
    backward:  d args  = VJP of the surrogate at args, from rule.forward's residuals

A *rule* is a static (hashable or closure-holding) object with three methods:

* ``exact(*args) -> (y, yq)`` — the primal (no residuals: what runs outside ``grad``);
* ``forward(*args) -> ((y, yq), residuals)`` — the same outputs plus what the backward pass needs
  (computed once here, so the surrogate is never re-run);
* ``backward(residuals, dy) -> cotangents of args`` — ``dy`` is the cotangent of ``y`` (the integers
  ``yq`` are not differentiable); non-differentiable arguments (integers, PRNG keys) get
  :func:`zero_cotangent`.

:func:`qjax.ste.conv` / :func:`qjax.ste.linear` (surrogate ``fq(relu?(conv(fq(x), fq(w)) + b))``) and
the :mod:`qjax.nn` elementwise modules (surrogate ``fq(f(values))``) are such rules.  Both end in the
output's fake quantization, whose residual and backward are :func:`output_residuals` /
:func:`output_backward`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from .fake_quant import FakeQuantConfig, fake_quant_backward, fake_quant_forward

__all__ = ["exact_forward", "output_residuals", "output_backward", "zero_cotangent"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def exact_forward(rule, *args):
    """``rule.exact(*args)``: ``(dequantized output, output integers)``, differentiable as ``rule``'s surrogate."""
    return rule.exact(*args)


def _exact_fwd(rule, *args):
    return rule.forward(*args)


def _exact_bwd(rule, res, g):
    return tuple(rule.backward(res, g[0]))  # g[1]: the output integers' (float0) cotangent


exact_forward.defvjp(_exact_fwd, _exact_bwd)


def output_residuals(cfg: FakeQuantConfig, y, s, z):
    """What the output fake quantization ``fq(y; s, z)``'s backward needs: ``(y, ŷ, s, z, None)``.

    ``ŷ = fq(y)`` (the surrogate's own rounding of the float ``y``, not the engine's integers: those
    differ from it wherever ``y/s`` lies within the float op's rounding error of a half-integer) is
    read by estimators that learn the scale only, so it is computed for those only.
    """
    yh = fake_quant_forward(cfg, y, s, z, None) if cfg.estimator.learn_scale else None
    return (y, yh, s, z, None)


def output_backward(cfg: FakeQuantConfig, res, g):
    """``(dy, ds, dz)``: the output fake quantization's VJP at :func:`output_residuals`' ``res``."""
    dy, ds, dz, _ = fake_quant_backward(cfg, res, g)
    return dy, ds, dz


def zero_cotangent(v):
    """The cotangent of a non-differentiable argument: ``None`` for ``None``, else float0 zeros of its shape."""
    return None if v is None else np.zeros(np.shape(v), jax.dtypes.float0)
