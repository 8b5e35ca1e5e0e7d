"""HistogramObserver: every torch primitive it uses, and the whole observer, equal torch 2.13's to the bit."""

import warnings

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qjax._src import histogram as H
from qjax import observers as obs

pytestmark = pytest.mark.torch


def _x(kind, rng, n):
    """Batches that reach every branch: spread, heavy tails, constants, few levels, one sign, infinities."""
    if kind == "normal":
        x = rng.normal(size=n) * 10.0 ** rng.integers(-3, 3) + rng.normal()
    elif kind == "cauchy":
        x = rng.standard_cauchy(size=n)
    elif kind == "constant":
        x = np.full(n, rng.normal())
    elif kind == "negative":
        x = -rng.exponential(size=n)
    elif kind == "relu6":
        x = np.clip(rng.normal(2, 2, size=n), 0, 6)
    elif kind == "levels":  # few distinct values: many empty bins, flat stretches of the cumulative sum
        x = np.round(rng.normal(size=n) * 3)
    elif kind == "huge":
        x = rng.normal(size=n) * 1e30
    elif kind == "tiny":
        x = rng.normal(size=n) * 1e-30
    elif kind == "with_inf":
        x = rng.normal(size=n)
        x[rng.integers(0, n, size=max(1, n // 10))] = rng.choice([np.inf, -np.inf])
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


KINDS = ["normal", "cauchy", "constant", "negative", "relu6", "levels", "huge", "tiny", "with_inf"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 5000), lo_frac=st.floats(0, 0.9))
def test_cascade_sum_linspace_histc_equal_torch(seed, n, lo_frac):
    import torch

    rng = np.random.default_rng(seed)
    v = (rng.normal(size=n) * 10.0 ** rng.integers(-6, 6, size=n)).astype(np.float32)
    assert H.cascade_sum(v) == torch.from_numpy(v).sum().item()

    a = np.float32(rng.normal() * 10.0 ** int(rng.integers(-3, 3)))
    b = np.float32(a + abs(rng.normal()) * 10.0 ** int(rng.integers(-3, 3)))
    steps = int(rng.choice([2, 3, 2049, 32769, n + 1]))
    np.testing.assert_array_equal(H.linspace(a, b, steps), torch.linspace(torch.tensor(a), torch.tensor(b), steps).numpy())

    x = _x(str(rng.choice(KINDS[:-1])), rng, n)
    lo, hi = x.min(), x.max()
    lo = np.float32(lo + (hi - lo) * np.float32(lo_frac))  # some values fall outside
    bins = int(rng.choice([2048, 256, 7]))
    try:
        want = torch.histc(torch.from_numpy(x), bins, min=torch.tensor(lo), max=torch.tensor(hi)).numpy()
    except RuntimeError:  # a constant batch with |x| >= 2^53: min - 1 == max + 1 in double, torch refuses
        with pytest.raises(ValueError, match="max must be larger than min"):
            H.histc(x, bins, lo, hi)
        return
    np.testing.assert_array_equal(H.histc(x, bins, lo, hi), want)


def _torch_histogram_observer(**kw):
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    kw = dict(kw)
    kw["dtype"] = getattr(torch, kw["dtype"])
    kw["qscheme"] = getattr(torch, kw["qscheme"])
    return HistogramObserver(**kw)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
       bins=st.sampled_from([2048, 2048, 256, 100]), dtype=st.sampled_from(["quint8", "qint8"]),
       symmetric=st.booleans(), reduce_range=st.booleans(), custom=st.booleans())
def test_histogram_observer_equals_torch(seed, kinds, bins, dtype, symmetric, reduce_range, custom):
    """State after every batch (histogram, min, max), the searched range, scale and zero point."""
    import torch

    if symmetric and reduce_range and dtype == "quint8":
        reduce_range = False
    kw = dict(bins=bins, dtype=dtype, qscheme="per_tensor_" + ("symmetric" if symmetric else "affine"),
              reduce_range=reduce_range)
    if custom:
        kw.update(quant_min=0, quant_max=127) if dtype == "quint8" else kw.update(quant_min=-100, quant_max=27)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about reduce_range and infinities
        t = _torch_histogram_observer(**kw)
        o = obs.histogram(**kw)
        state = o.init()
        update = jax.jit(o.update)
        for kind in kinds:
            x = _x(kind, rng, int(rng.integers(1, 3000)))
            t(torch.from_numpy(x))
            state = update(state, x)
            np.testing.assert_array_equal(np.asarray(state["histogram"]), t.histogram.numpy())
            assert float(state["min_val"]) == t.min_val.item() and float(state["max_val"]) == t.max_val.item()
        if t.min_val.item() != float("inf"):
            want_min, want_max = t._non_linear_param_search()
            got_min, got_max = H.search_min_max({k: np.asarray(v) for k, v in state.items()}, t.dst_nbins)
            assert (got_min, got_max) == (want_min.item(), want_max.item())
        ts, tz = t.calculate_qparams()
    s, z = jax.jit(o.qparams)(state)
    assert float(s) == ts.reshape(-1)[0].item() and int(z) == tz.reshape(-1)[0].item()


def test_histogram_constant_then_wider_and_many_batches():
    """The ``orig_min == orig_max`` combine path, repeated re-binning, and a range that only grows."""
    import torch

    rng = np.random.default_rng(0)
    t, o = _torch_histogram_observer(dtype="quint8", qscheme="per_tensor_affine"), obs.histogram()
    state = o.init()
    batches = [np.full(10, 0.5, np.float32)] + [(rng.normal(size=500) * (1 + i)).astype(np.float32)
                                                 for i in range(12)]
    for x in batches:
        t(torch.from_numpy(x))
        state = o.update(state, x)
        np.testing.assert_array_equal(np.asarray(state["histogram"]), t.histogram.numpy())
    s, z = o.qparams(state)
    ts, tz = t.calculate_qparams()
    assert float(s) == ts.item() and int(z) == tz.item()


def test_histogram_errors_and_empty():
    o = obs.histogram()
    s, z = o.qparams(o.init())
    assert float(s) == 1.0 and int(z) == 0
    with pytest.raises(ValueError, match="bins"):
        obs.histogram(bins=40000)
    with pytest.raises(ValueError, match="per tensor"):
        obs.histogram(qscheme="per_channel_affine")
    with pytest.raises(ValueError, match="NaN"):
        H.update(H.init(16), np.array([1.0, np.nan], np.float32))
    st0 = H.init(16)
    assert H.update(st0, np.array([np.inf], np.float32))["min_val"] == np.inf  # only infinities: ignored
