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

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ..affine import integer_zero_point
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


def _range(dtype, quant_min, quant_max):
    dt = as_qdtype(dtype)
    lo = dt.qmin if quant_min is None else int(quant_min)
    hi = dt.qmax if quant_max is None else int(quant_max)
    if not dt.qmin <= lo < hi <= dt.qmax:
        raise ValueError(f"quant_min={quant_min}, quant_max={quant_max}: need {dt.qmin} <= quant_min < quant_max <= "
                         f"{dt.qmax} ({dt.name})")
    return dt, lo, hi


def soft_weight(w, v, scale, zero_point, dtype="qint8", axis=0, quant_min=None, quant_max=None):
    """``s * (clip(floor(w/s) + h(V) + z, qmin, qmax) - z)``; ``quant_min``/``quant_max`` narrow the range
    (e.g. -8, 7 for 4-bit weights in int8 containers)."""
    dt, qmin, qmax = _range(dtype, quant_min, quant_max)
    if jnp.ndim(scale) == 0:
        axis = None
    shp = _bshape(w, axis)
    z = integer_zero_point(zero_point, dt).astype(jnp.float32)
    s, z = jnp.reshape(scale, shp), (jnp.reshape(z, shp) if z.ndim else z)
    q = jnp.clip(jax.lax.stop_gradient(_floor(w, scale, axis)) + rectified_sigmoid(v) + z, qmin, qmax)
    return (q - z) * s


def hard_weight(w, v, scale, zero_point, dtype="qint8", axis=0, quant_min=None, quant_max=None) -> QArray:
    """The integer weights after AdaRound: ``floor(w/s) + [V >= 0]``, clamped to ``[quant_min, quant_max]`` (the
    dtype's range by default; the zero point rounded half to even, as :func:`soft_weight` sees it)."""
    dt, qmin, qmax = _range(dtype, quant_min, quant_max)
    if jnp.ndim(scale) == 0:
        axis = None
    shp = _bshape(w, axis)
    z = integer_zero_point(zero_point, dt).astype(jnp.float32)
    if axis is not None:
        z = jnp.broadcast_to(z, (w.shape[axis % w.ndim],))
    q = _floor(w, scale, axis) + (v >= 0).astype(jnp.float32) + jnp.reshape(z, shp if z.ndim else ())
    q = jnp.clip(q, qmin, qmax).astype(dt.storage)
    return QArray(q, jnp.asarray(scale, jnp.float32), z.astype(jnp.int32), dt, None if axis is None else axis % w.ndim)


def regularizer(v, beta):
    return jnp.sum(1.0 - jnp.abs(2.0 * rectified_sigmoid(v) - 1.0) ** beta)


def beta_schedule(step, total, warmup=0.2, start=20.0, end=2.0):
    """β: ``start`` during the warm-up fraction, then linear decay to ``end`` (AdaRound's annealing)."""
    t = jnp.clip((step / total - warmup) / (1.0 - warmup), 0.0, 1.0)
    return end + (start - end) * (1.0 - t)


def reconstruct(w, scale, zero_point, x, forward: Callable, *, dtype="qint8", axis=0, steps=1000, lr=1e-2,
                reg_weight=0.01, warmup=0.2, v0=None, quant_min=None, quant_max=None):
    """Optimize AdaRound's ``V`` for ``forward(weight, x)`` (a layer); returns ``(V, losses)``.

    The reconstruction target is ``forward(w, x)`` with the float weights; the regularizer is
    off during the warm-up and then pushes ``h(V)`` to 0 or 1 while ``β`` anneals.  The optimisation
    is one jitted ``lax.scan``, compiled once per ``forward`` object and shapes (pass the same
    function for every call with the same layer shape to reuse the compilation).
    """
    _range(dtype, quant_min, quant_max)  # checks the arguments
    v = init_v(w, scale, axis) if v0 is None else v0
    cfg = (forward, dtype, axis, int(steps), float(lr), float(reg_weight), float(warmup), quant_min, quant_max)
    return _reconstruct(cfg, w, scale, zero_point, x, v)


@functools.partial(jax.jit, static_argnums=(0,))
def _reconstruct(cfg, w, scale, zero_point, x, v):
    forward, dtype, axis, steps, lr, reg_weight, warmup, quant_min, quant_max = cfg
    target = forward(w, x)
    opt = optax.adam(lr)

    def loss_fn(v, step):
        wq = soft_weight(w, v, scale, zero_point, dtype, axis, quant_min, quant_max)
        rec = jnp.mean((forward(wq, x) - target) ** 2)
        on = (step >= warmup * steps).astype(jnp.float32)
        return rec + on * reg_weight * regularizer(v, beta_schedule(step, steps, warmup)), rec

    def body(carry, step):
        v, st = carry
        (_, rec), g = jax.value_and_grad(loss_fn, has_aux=True)(v, step)
        upd, st = opt.update(g, st, v)
        return (optax.apply_updates(v, upd), st), rec

    (v, _), recs = jax.lax.scan(body, (v, opt.init(v)), jnp.arange(steps, dtype=jnp.float32))
    return v, recs
