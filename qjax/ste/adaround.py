"""AdaRound: learn for every weight whether it rounds up or down (Nagel et al. 2020, "Up or Down?").

With ``s``/``z`` the weight scale and zero point (per tensor or per output channel) and
``V`` a float per weight:

    h(V)     = clip(sigmoid(V) * (ζ - γ) + γ, 0, 1)          ζ = 1.1, γ = -0.1  (rectified sigmoid)
    w_soft   = s * (clip(floor(w / s) + h(V) + z, qmin, qmax) - z)
    reg(V)   = Σ 1 - |2 h(V) - 1|^β                            β annealed from 20 to 2
    w_int    = clip(floor(w / s) + [V >= 0] + z, qmin, qmax)   (the hard choice, after training)

``V`` starts where ``h(V)`` equals the fractional part of ``w / s`` (so ``w_soft = w`` inside
the range).  :func:`reconstruct` minimizes ``||f(w_soft, x) - f(w, x)||² + λ·reg(V)`` with
optax; :func:`hard_weight` returns the integer weights as a :class:`~qjax.QArray`, which the
integer kernels (and :func:`qjax.ste.conv` after :func:`qjax.dequantize`) use exactly.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ..dtypes import as_qdtype
from ..float32 import div_rn
from ..qarray import QArray

__all__ = ["rectified_sigmoid", "init_v", "soft_weight", "hard_weight", "regularizer", "beta_schedule",
           "reconstruct", "ZETA", "GAMMA"]

ZETA, GAMMA = 1.1, -0.1


def _bshape(w, axis):
    return () if axis is None else tuple(-1 if i == axis % w.ndim else 1 for i in range(w.ndim))


def _floor(w, scale, axis):
    return jnp.floor(div_rn(w, jnp.reshape(scale, _bshape(w, axis))))


def rectified_sigmoid(v):
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_v(w, scale, axis=0):
    """``V`` with ``h(V) = w/s - floor(w/s)``."""
    if jnp.ndim(scale) == 0:
        axis = None
    s = jnp.reshape(scale, _bshape(w, axis))
    frac = div_rn(w, s) - _floor(w, scale, axis)
    frac = jnp.clip(frac, 0.01, 0.99)  # keep V finite
    return -jnp.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)


def soft_weight(w, v, scale, zero_point, dtype="qint8", axis=0):
    dt = as_qdtype(dtype)
    if jnp.ndim(scale) == 0:
        axis = None
    shp = _bshape(w, axis)
    z = jnp.round(jnp.asarray(zero_point, jnp.float32))
    s, z = jnp.reshape(scale, shp), (jnp.reshape(z, shp) if z.ndim else z)
    q = jnp.clip(jax.lax.stop_gradient(_floor(w, scale, axis)) + rectified_sigmoid(v) + z, dt.qmin, dt.qmax)
    return (q - z) * s


def hard_weight(w, v, scale, zero_point, dtype="qint8", axis=0) -> QArray:
    """The integer weights after AdaRound: ``floor(w/s) + [V >= 0]``, clamped (the zero point rounded half to even,
    as :func:`soft_weight` sees it once the optimisation rounds it)."""
    dt = as_qdtype(dtype)
    if jnp.ndim(scale) == 0:
        axis = None
    shp = _bshape(w, axis)
    z = jnp.round(jnp.asarray(zero_point, jnp.float32))
    if axis is not None:
        z = jnp.broadcast_to(z, (w.shape[axis % w.ndim],))
    q = _floor(w, scale, axis) + (v >= 0).astype(jnp.float32) + jnp.reshape(z, shp if z.ndim else ())
    q = jnp.clip(q, dt.qmin, dt.qmax).astype(dt.storage)
    return QArray(q, jnp.asarray(scale, jnp.float32), z.astype(jnp.int32), dt, None if axis is None else axis % w.ndim)


def regularizer(v, beta):
    return jnp.sum(1.0 - jnp.abs(2.0 * rectified_sigmoid(v) - 1.0) ** beta)


def beta_schedule(step, total, warmup=0.2, start=20.0, end=2.0):
    """β: ``start`` during the warm-up fraction, then linear decay to ``end`` (AdaRound's annealing)."""
    t = jnp.clip((step / total - warmup) / (1.0 - warmup), 0.0, 1.0)
    return end + (start - end) * (1.0 - t)


def reconstruct(w, scale, zero_point, x, forward: Callable, *, dtype="qint8", axis=0, steps=1000, lr=1e-2,
                reg_weight=0.01, warmup=0.2, v0=None):
    """Optimize AdaRound's ``V`` for ``forward(weight, x)`` (a layer); returns ``(V, losses)``.

    The reconstruction target is ``forward(w, x)`` with the float weights; the regularizer is
    off during the warm-up and then pushes ``h(V)`` to 0 or 1 while ``β`` anneals.
    """
    target = forward(w, x)
    v = init_v(w, scale, axis) if v0 is None else v0
    opt = optax.adam(lr)

    def loss_fn(v, step):
        rec = jnp.mean((forward(soft_weight(w, v, scale, zero_point, dtype, axis), x) - target) ** 2)
        on = (step >= warmup * steps).astype(jnp.float32)
        return rec + on * reg_weight * regularizer(v, beta_schedule(step, steps, warmup)), rec

    @jax.jit
    def run(v):
        def body(carry, step):
            v, st = carry
            (_, rec), g = jax.value_and_grad(loss_fn, has_aux=True)(v, step)
            upd, st = opt.update(g, st, v)
            return (optax.apply_updates(v, upd), st), rec

        (v, _), recs = jax.lax.scan(body, (v, opt.init(v)), jnp.arange(steps, dtype=jnp.float32))
        return v, recs

    return run(v)
