"""Observers identical to torch 2.13's: the same data gives the same scale and zero point, to the bit.

Each observer is a triple of pure functions over explicit state (like an optax transform)::

    obs = qjax.observers.moving_average_min_max(dtype="quint8", reduce_range=True)
    state = obs.init()                       # {"min_val": +inf, "max_val": -inf}
    state = obs.update(state, x)             # jit-able; one call per calibration batch
    scale, zero_point = obs.qparams(state)   # float32, int32

Mirrors ``torch/ao/quantization/observer.py``: ``MinMaxObserver`` (running min / max),
``MovingAverageMinMaxObserver`` (``m += c * (cur - m)`` in float32, three roundings — computed with
:func:`qjax.float32.mul_rn` so XLA cannot contract it into an FMA), and their per-channel versions
(``ch_axis``), with ``_calculate_qparams``:

* affine: ``scale = max(fl32((max(max,0) - min(min,0)) / (qmax - qmin)), eps)``,
  ``zp = clamp(qmin - rne(min(min,0) / scale), qmin, qmax)``;
* symmetric: ``scale = max(fl32(max(-min(min,0), max(max,0)) / ((qmax - qmin) / 2)), eps)``,
  ``zp = 128`` for quint8 (the midpoint ``(qmin + qmax) // 2`` with a custom range), else 0;
* no data yet: ``scale = 1``, ``zp = 0`` (torch warns).

``HistogramObserver`` (torch's default activation observer): a float32 histogram of ``bins`` counts
over the running ``[min, max]``, re-binned when the range grows, and an L2-error search for the
clipping range (see :mod:`qjax.histogram` for the emulated torch primitives).  Its state is
``{"histogram", "min_val", "max_val"}``; ``update`` and ``qparams`` run the host emulation through
``jax.pure_callback``, so they work eagerly and under ``jit`` (not differentiable, as torch's).

``quant_min``/``quant_max``/``reduce_range`` follow torch's ``_calculate_qmin_qmax``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import float32 as f32x
from . import histogram as _hist
from .dtypes import QDType, as_qdtype

__all__ = ["Observer", "ObserverConfig", "min_max", "moving_average_min_max", "per_channel_min_max",
           "moving_average_per_channel_min_max", "histogram", "calculate_qmin_qmax", "calculate_qparams", "EPS"]

EPS = float(np.finfo(np.float32).eps)
QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric")


def calculate_qmin_qmax(dtype: QDType, reduce_range: bool, quant_min=None, quant_max=None) -> tuple[int, int]:
    """torch's ``_calculate_qmin_qmax`` (``torch/ao/quantization/utils.py``)."""
    if quant_min is not None and quant_max is not None:
        if not quant_min <= 0 <= quant_max:
            raise ValueError(f"quant_min={quant_min}, quant_max={quant_max}: the range must include 0 (torch's rule)")
        if quant_max - quant_min + 1 > 2**dtype.bits:
            raise ValueError(f"quant_min..quant_max spans more than {dtype.name}'s {2**dtype.bits} values")
        # torch 2.13 keeps the given bounds (only reduce_range halves them)
        qmin, qmax = (quant_min // 2, quant_max // 2) if reduce_range else (quant_min, quant_max)
        return qmin, qmax
    if dtype.name == "qint8":
        return (-64, 63) if reduce_range else (-128, 127)
    if dtype.name == "quint8":
        return (0, 127) if reduce_range else (0, 255)
    return (-(2**31), 2**31 - 1)


@dataclasses.dataclass(frozen=True)
class ObserverConfig:
    dtype: QDType
    qscheme: str
    quant_min: int
    quant_max: int
    customized_range: bool
    eps: float = EPS
    averaging_constant: float | None = None  # None: running min/max
    ch_axis: int | None = None  # None: per tensor
    bins: int | None = None  # HistogramObserver


def calculate_qparams(cfg: ObserverConfig, min_val, max_val):
    """``(scale float32, zero_point int32)`` from the observed range (torch's ``_calculate_qparams``)."""
    min_val = jnp.asarray(min_val, jnp.float32)
    max_val = jnp.asarray(max_val, jnp.float32)
    qmin, qmax = cfg.quant_min, cfg.quant_max
    empty = (min_val == jnp.inf) & (max_val == -jnp.inf)
    min_neg = jnp.minimum(min_val, 0.0)
    max_pos = jnp.maximum(max_val, 0.0)
    eps = jnp.float32(cfg.eps)
    if cfg.qscheme.endswith("symmetric"):
        max_pos = jnp.maximum(-min_neg, max_pos)
        scale = jnp.maximum(f32x.div_rn(max_pos, np.float32((qmax - qmin) / 2)), eps)
        if cfg.dtype.name == "quint8":
            zp = jnp.full(scale.shape, (qmin + qmax) // 2 if cfg.customized_range else 128, jnp.int32)
        else:
            zp = jnp.zeros(scale.shape, jnp.int32)
    else:
        scale = jnp.maximum(f32x.div_rn(max_pos - min_neg, np.float32(qmax - qmin)), eps)
        ratio = f32x.div_rn(min_neg, jnp.where(empty, 1.0, scale))
        zp = jnp.clip(qmin - jnp.round(ratio).astype(jnp.int32), qmin, qmax)
    scale = jnp.where(empty, jnp.float32(1.0), scale)
    zp = jnp.where(empty, 0, zp).astype(jnp.int32)
    return scale, zp


class Observer(NamedTuple):
    """``init() -> state``, ``update(state, x) -> state``, ``qparams(state) -> (scale, zero_point)``."""

    config: ObserverConfig
    init: Callable
    update: Callable
    qparams: Callable


def _reduce(x, ch_axis):
    x = jnp.asarray(x, jnp.float32)
    if ch_axis is None:
        return jnp.min(x), jnp.max(x)
    axes = tuple(i for i in range(x.ndim) if i != ch_axis % x.ndim)
    return jnp.min(x, axis=axes), jnp.max(x, axis=axes)


def _make(dtype, qscheme, reduce_range, quant_min, quant_max, eps, averaging_constant, ch_axis) -> Observer:
    dt = as_qdtype(dtype)
    if qscheme not in QSCHEMES:
        raise ValueError(f"qscheme={qscheme!r}; use one of {QSCHEMES}")
    if (ch_axis is None) != qscheme.startswith("per_tensor"):
        raise ValueError(f"qscheme={qscheme!r} does not match {'per-channel' if ch_axis is not None else 'per-tensor'} "
                         "observation")
    if qscheme.endswith("symmetric") and reduce_range and dt.name == "quint8":
        raise ValueError("cannot reduce range for symmetric quantization of quint8 (torch raises NotImplementedError)")
    qmin, qmax = calculate_qmin_qmax(dt, reduce_range, quant_min, quant_max)
    cfg = ObserverConfig(dt, qscheme, qmin, qmax, quant_min is not None and quant_max is not None, float(eps),
                         averaging_constant, ch_axis)
    c = None if averaging_constant is None else np.float32(averaging_constant)

    def init(channels: int | None = None):
        shape = () if ch_axis is None else (int(channels or 0),)
        return dict(min_val=jnp.full(shape, jnp.inf, jnp.float32), max_val=jnp.full(shape, -jnp.inf, jnp.float32))

    def update(state, x):
        lo, hi = _reduce(x, ch_axis)
        m, M = state["min_val"], state["max_val"]
        if ch_axis is not None and m.shape != lo.shape:  # torch: an empty per-channel state takes the first batch
            if m.size != 0:
                raise ValueError(f"observer has {m.size} channels, the input has {lo.size} along ch_axis={ch_axis}")
            return dict(min_val=lo, max_val=hi)
        if c is None:
            return dict(min_val=jnp.minimum(lo, m), max_val=jnp.maximum(hi, M))
        first = (m == jnp.inf) & (M == -jnp.inf)
        # m + c * (cur - m): three float32 roundings, no FMA (torch evaluates them one by one)
        new_m = m + f32x.mul_rn(c, lo - m)
        new_M = M + f32x.mul_rn(c, hi - M)
        return dict(min_val=jnp.where(first, lo, new_m), max_val=jnp.where(first, hi, new_M))

    def qparams(state):
        return calculate_qparams(cfg, state["min_val"], state["max_val"])

    return Observer(cfg, init, update, qparams)


def min_max(dtype="quint8", qscheme="per_tensor_affine", reduce_range=False, quant_min=None, quant_max=None,
            eps=EPS) -> Observer:
    """torch's ``MinMaxObserver``."""
    return _make(dtype, qscheme, reduce_range, quant_min, quant_max, eps, None, None)


def moving_average_min_max(averaging_constant=0.01, dtype="quint8", qscheme="per_tensor_affine", reduce_range=False,
                           quant_min=None, quant_max=None, eps=EPS) -> Observer:
    """torch's ``MovingAverageMinMaxObserver``."""
    return _make(dtype, qscheme, reduce_range, quant_min, quant_max, eps, averaging_constant, None)


def per_channel_min_max(ch_axis=0, dtype="qint8", qscheme="per_channel_affine", reduce_range=False, quant_min=None,
                        quant_max=None, eps=EPS) -> Observer:
    """torch's ``PerChannelMinMaxObserver``."""
    return _make(dtype, qscheme, reduce_range, quant_min, quant_max, eps, None, ch_axis)


def moving_average_per_channel_min_max(averaging_constant=0.01, ch_axis=0, dtype="quint8",
                                       qscheme="per_channel_affine", reduce_range=False, quant_min=None,
                                       quant_max=None, eps=EPS) -> Observer:
    """torch's ``MovingAveragePerChannelMinMaxObserver``."""
    return _make(dtype, qscheme, reduce_range, quant_min, quant_max, eps, averaging_constant, ch_axis)


def histogram(bins=2048, dtype="quint8", qscheme="per_tensor_affine", reduce_range=False, quant_min=None,
              quant_max=None, eps=EPS) -> Observer:
    """torch's ``HistogramObserver`` (per tensor only, as torch's).

    The state's histogram has ``bins`` float32 counts (at most 32768: torch sums longer ones across
    threads).  ``qparams`` runs torch's ``_non_linear_param_search`` over ``2**dtype.bits``
    destination bins and then the ``MinMaxObserver`` formulas on the ``[min, max]`` it finds.
    """
    if not isinstance(bins, (int, np.integer)) or not 0 < bins <= _hist.MAX_BINS:
        raise ValueError(f"bins={bins!r}: must be an int in 1..{_hist.MAX_BINS} (torch sums longer histograms "
                         "across threads, so its result would depend on the thread count)")
    if not qscheme.startswith("per_tensor"):
        raise ValueError(f"qscheme={qscheme!r}: HistogramObserver is per tensor only (torch raises NotImplementedError)")
    base = _make(dtype, qscheme, reduce_range, quant_min, quant_max, eps, None, None)
    cfg = dataclasses.replace(base.config, bins=int(bins))
    dst_nbins = 2**cfg.dtype.bits
    f32 = jax.ShapeDtypeStruct((), jnp.float32)
    hist_t = jax.ShapeDtypeStruct((cfg.bins,), jnp.float32)

    def init(channels: int | None = None):
        return dict(histogram=jnp.zeros((cfg.bins,), jnp.float32), min_val=jnp.float32(jnp.inf),
                    max_val=jnp.float32(-jnp.inf))

    def _host_update(hist, lo, hi, x):
        out = _hist.update(dict(histogram=np.asarray(hist), min_val=lo, max_val=hi), np.asarray(x))
        return (np.asarray(out["histogram"], np.float32), np.float32(out["min_val"]), np.float32(out["max_val"]))

    def update(state, x):
        x = jnp.asarray(x, jnp.float32)
        h, lo, hi = jax.pure_callback(_host_update, (hist_t, f32, f32), state["histogram"], state["min_val"],
                                      state["max_val"], x, vmap_method="sequential")
        return dict(histogram=h, min_val=lo, max_val=hi)

    def _host_search(hist, lo, hi):
        if lo == np.inf and hi == -np.inf:
            return np.float32(np.inf), np.float32(-np.inf)  # no data: calculate_qparams gives (1.0, 0)
        return _hist.search_min_max(dict(histogram=np.asarray(hist), min_val=lo, max_val=hi), dst_nbins)

    def qparams(state):
        lo, hi = jax.pure_callback(_host_search, (f32, f32), state["histogram"], state["min_val"], state["max_val"],
                                   vmap_method="sequential")
        return calculate_qparams(cfg, lo, hi)

    return Observer(cfg, init, update, qparams)
