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

# the curated names: qjax._src.observers's own __all__ (one list: a name is exported where it is defined)
from ._src.observers import *  # noqa: F401,F403
from ._src.observers import __all__  # noqa: F401
