"""Observers: the same batches give torch 2.13's min/max state, scale and zero point, to the bit."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qjax import observers as obs

pytestmark = pytest.mark.torch

ADVERSARIAL = {
    "constant": lambda rng, shape: np.full(shape, 0.37, np.float32),
    "zeros": lambda rng, shape: np.zeros(shape, np.float32),
    "all_negative": lambda rng, shape: -np.abs(rng.standard_normal(shape)).astype(np.float32) - 0.5,
    "all_positive": lambda rng, shape: np.abs(rng.standard_normal(shape)).astype(np.float32) + 3,
    "huge": lambda rng, shape: (rng.standard_normal(shape) * 1e30).astype(np.float32),
    "tiny": lambda rng, shape: (rng.standard_normal(shape) * 1e-12).astype(np.float32),
    "random": lambda rng, shape: (rng.standard_normal(shape) * rng.uniform(0.01, 100)).astype(np.float32),
}

KINDS = {
    "MinMaxObserver": (obs.min_max, False, False),
    "MovingAverageMinMaxObserver": (obs.moving_average_min_max, True, False),
    "PerChannelMinMaxObserver": (obs.per_channel_min_max, False, True),
    "MovingAveragePerChannelMinMaxObserver": (obs.moving_average_per_channel_min_max, True, True),
}


def _torch_observer(kind, **kw):
    import torch
    from torch.ao.quantization import observer as tobs

    kw = dict(kw)
    kw["dtype"] = getattr(torch, kw["dtype"])
    kw["qscheme"] = getattr(torch, kw["qscheme"])
    return getattr(tobs, kind)(**kw)


@settings(max_examples=30)
@given(kind=st.sampled_from(sorted(KINDS)), data_kind=st.sampled_from(sorted(ADVERSARIAL)),
       seed=st.integers(0, 2**31), dtype=st.sampled_from(["quint8", "qint8"]), symmetric=st.booleans(),
       reduce_range=st.booleans(), custom=st.integers(0, 3), batches=st.integers(1, 4), c=st.floats(0.001, 0.5))
def test_observer_qparams_equal_torch(kind, data_kind, seed, dtype, symmetric, reduce_range, custom, batches, c):
    import torch

    make, moving, per_channel = KINDS[kind]
    if symmetric and reduce_range and dtype == "quint8":
        reduce_range = False  # torch refuses (tested below)
    qscheme = ("per_channel_" if per_channel else "per_tensor_") + ("symmetric" if symmetric else "affine")
    kw = dict(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range)
    if custom:  # custom ranges torch keeps as given (only reduce_range halves them)
        ranges = {"quint8": [(0, 127), (0, 255), (0, 200)], "qint8": [(-128, 127), (-127, 127), (-100, 27)]}
        lo, hi = ranges[dtype][custom - 1]
        kw.update(quant_min=lo, quant_max=hi)
    if moving:
        kw["averaging_constant"] = float(np.float32(c))
    if per_channel:
        kw["ch_axis"] = 1
    t = _torch_observer(kind, **kw)
    o = make(**kw)
    rng = np.random.default_rng(seed)
    state = o.init()
    update = jax.jit(o.update)
    for _ in range(batches):
        x = ADVERSARIAL[data_kind](rng, (3, 4, 5)) if rng.uniform() < 0.7 else ADVERSARIAL["random"](rng, (3, 4, 5))
        t(torch.from_numpy(x))
        state = update(state, x)
    np.testing.assert_array_equal(np.asarray(state["min_val"]), t.min_val.numpy())
    np.testing.assert_array_equal(np.asarray(state["max_val"]), t.max_val.numpy())
    ts, tz = t.calculate_qparams()
    s, z = jax.jit(o.qparams)(state)
    np.testing.assert_array_equal(np.asarray(s).reshape(-1), ts.numpy().reshape(-1))
    np.testing.assert_array_equal(np.asarray(z).reshape(-1), tz.numpy().reshape(-1))


def test_no_data_and_errors():
    o = obs.min_max()
    s, z = o.qparams(o.init())
    assert float(s) == 1.0 and int(z) == 0
    with pytest.raises(ValueError, match="symmetric"):
        obs.min_max("quint8", "per_tensor_symmetric", reduce_range=True)
    with pytest.raises(ValueError, match="qscheme"):
        obs.min_max(qscheme="per_channel_affine")
    with pytest.raises(ValueError, match="include 0"):
        obs.min_max(quant_min=3, quant_max=100)
