"""Rounding modes, for every place integer arithmetic rounds (quantize, bias, requantization).

Modes: ``half_even`` (torch, fbgemm), ``half_away`` (from zero; gemmlowp's RoundingDivideByPOT),
``half_up`` (ties toward +inf; TFLite's single-rounding shift), ``half_down`` (ties toward -inf),
``floor``, ``ceil``, ``toward_zero`` and ``stochastic`` (round up with probability equal to the
fraction; needs an explicit PRNG ``key``).

:func:`round_float` rounds float32 values to integral float32 values; it never adds 0.5 (which
rounds wrongly for the float just below 0.5) but splits off the exact fraction ``x - trunc(x)``.
:func:`round_offline` is the same rounding on the host (numpy float64), for offline
parameter derivation; :func:`round_shift_right` divides an exact 64-bit integer (see :mod:`qjax.int64`) by ``2**e``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import int64 as i64

__all__ = ["MODES", "check_mode", "round_float", "round_offline", "round_shift_right"]

MODES = ("half_even", "half_away", "half_up", "half_down", "floor", "ceil", "toward_zero", "stochastic")


def check_mode(mode: str, argname: str = "rounding") -> str:
    if mode not in MODES:
        raise ValueError(f"{argname}={mode!r}; use one of {MODES}")
    return mode


def _round_integral(x, mode, xp, uniform):
    """``x`` rounded to integral values with ``mode``, in array module ``xp`` (jax.numpy or numpy).

    Never adds 0.5 (which rounds the float just below 0.5 up): the fraction ``x - trunc(x)`` is
    exact (``x`` and ``trunc(x)`` share the binade's grid), so ties are decided on it exactly.
    ``uniform()``: uniform samples of ``x``'s shape in [0, 1), for ``stochastic``.
    """
    if mode == "half_even":
        return xp.round(x)
    if mode == "floor":
        return xp.floor(x)
    if mode == "ceil":
        return xp.ceil(x)
    t = xp.trunc(x)
    if mode == "toward_zero":
        return t
    if mode == "stochastic":
        f = xp.floor(x)
        return f + (uniform() < (x - f)).astype(x.dtype)
    frac = x - t
    sign = xp.where(x < 0, -1.0, 1.0).astype(x.dtype)
    away = xp.abs(frac) > 0.5
    tie = xp.abs(frac) == 0.5
    if mode == "half_away":
        tie_up = xp.ones_like(tie)
    elif mode == "half_up":
        tie_up = x > 0
    else:  # half_down
        tie_up = x < 0
    return t + sign * (away | (tie & tie_up)).astype(x.dtype)


def round_float(x, mode: str = "half_even", key=None):
    """Round float32 ``x`` to integral values with ``mode`` (``key`` for ``stochastic``)."""
    check_mode(mode)
    x = jnp.asarray(x, jnp.float32)
    if mode == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs an explicit PRNG key")
    return _round_integral(x, mode, jnp, lambda: jax.random.uniform(key, x.shape, jnp.float32))


def round_offline(v, mode: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Round float64 ``v`` with ``mode`` on the host (numpy), as offline parameter derivation does
    (exact for ``|v| < 2**52``; ``stochastic`` draws from ``rng``)."""
    check_mode(mode)
    v = np.asarray(v, np.float64)
    if mode == "stochastic" and rng is None:
        raise ValueError("stochastic bias rounding needs a key (convert(..., key=...))")
    return _round_integral(v, mode, np, lambda: rng.random(v.shape))


def round_shift_right(v, e, mode: str = "half_even", key=None):
    """``round(v / 2**e)`` for an exact 64-bit ``v = (hi, lo)`` and shift ``0 <= e <= 62``, as int32 (wrapping).

    ``stochastic`` compares the dropped bits with uniform random bits (the top 32 of them
    when ``e > 32``).
    """
    check_mode(mode)
    e = jnp.asarray(e, jnp.int32)
    q = i64.to_int32_wrap(i64.shift_right(v, e))
    if mode == "floor":
        return q
    has_e = e > 0
    rh, rl = i64.low_bits(v, e)
    nonzero = has_e & ((rh != 0) | (rl != 0))
    if mode == "ceil":
        return q + nonzero.astype(jnp.int32)
    negative = i64.is_negative(v)
    if mode == "toward_zero":
        return q + (negative & nonzero).astype(jnp.int32)
    if mode == "stochastic":
        if key is None:
            raise ValueError("rounding='stochastic' needs an explicit PRNG key")
        bits = jax.random.bits(key, q.shape, jnp.uint32)
        # compare the dropped e bits with e uniform random bits (top 32 when e > 32)
        top = jnp.where(e > 32, i64.shift_right((rh, rl), jnp.maximum(e - 32, 0))[1], rl)
        width = jnp.minimum(e, 32).astype(jnp.uint32)
        rnd = jnp.where(width >= 32, bits, bits >> (jnp.uint32(32) - jnp.maximum(width, jnp.uint32(1))))
        return q + (has_e & (rnd < top)).astype(jnp.int32)
    cmp = jnp.where(has_e, i64.compare_low(v, jnp.maximum(e, 1)), -1)
    above, tie = cmp > 0, cmp == 0
    if mode == "half_up":
        up = above | tie
    elif mode == "half_down":
        up = above
    elif mode == "half_away":
        up = above | (tie & ~negative)
    else:  # half_even
        up = above | (tie & ((q & 1) == 1))
    return q + up.astype(jnp.int32)
