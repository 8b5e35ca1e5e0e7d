"""torch 2.13's ``HistogramObserver`` arithmetic, reproduced to the bit on the host (numpy).

``HistogramObserver`` (``torch/ao/quantization/observer.py``) is torch's default activation observer
(``get_default_qconfig("fbgemm")``).  Its scale depends on every rounding of a long chain of float32
tensor ops and a data-dependent search, so each torch primitive it calls is emulated here with the
arithmetic the CPU kernel performs (each checked against torch in ``tests/test_histogram.py``):

* ``torch.histc`` (``aten/src/ATen/native/Histogram.cpp``, ``cpu/HistogramKernel.cpp``, the
  ``LINEAR_INTERPOLATION`` path): the range is taken in double and, when ``min == max``, widened
  by 1 or one float32 ulp, whichever is larger (``bins_edges_correction``); the edges are a float32 ``linspace``; an element ``e`` with ``lo <= e <= hi`` goes
  to bin ``trunc(fl32(fl32(fl32(e - lo) * bins) / fl32(hi - lo)))`` (the last bin also takes
  ``e == hi``).  Counts are float32 and exact while a bin receives < 2^24 values per call.
* ``torch.linspace`` (``cpu/RangeFactoriesKernel.cpp``): a scalar loop, ``start + step * i`` for the
  first half and ``end - step * (steps - 1 - i)`` for the second, with ``step = fl32(fl32(end -
  start) / (steps - 1))``.  The compiler contracts both into FMAs (measured: 0 mismatches of 37.5M
  elements with a single rounding, 4.2M without), so ``fma32_numpy`` rounds once.
* ``torch.sum`` of a float32 vector (``cpu/SumKernel.cpp``, ``cascade_sum``): 8-float vectors
  (``sum_stub`` is registered with ``REGISTER_DISPATCH``, which gives AVX512 machines the AVX2
  kernel; the default and NEON ``Vectorized<float>`` are 8 wide too — measured: 16 lanes mismatch
  on an AVX512 machine, 8 match), summed as 4 interleaved rows with the cascade of
  ``multi_row_sum``, then the scalar tail and the 8 lanes one by one.  Reductions over
  more than 32768 elements are split across threads; the observer's sums have ``bins`` elements
  (2048 by default), so ``bins`` is limited to 32768.
* ``torch.cumsum`` accumulates float32 in double (``acc_type<float, false>``) and stores float32.
* ``torch.bincount(..., weights=float32)`` adds in element order in float32.
* ``torch.div(a, b, rounding_mode="floor")``: ``c10::div_floor_floating`` (fmod, then floor with the
  0.5 correction).
* A Python float meeting a float32 tensor is rounded to float32 first (comparisons included);
  Python-level arithmetic (``alpha``, ``beta``, the bin widths, ``norm > norm_min``) is double.

The search is a data-dependent loop (up to 10^5 steps, each a 2048-element error evaluation), so
the whole observer runs on the host; :mod:`qjax.observers` wraps it in ``jax.pure_callback`` so it
can be called under ``jit``.
"""

from __future__ import annotations

import numpy as np

from .float32 import fma32_numpy

__all__ = ["init", "update", "search_min_max", "histc", "linspace", "cascade_sum",
           "MAX_BINS"]

MAX_BINS = 32768  # at::internal::GRAIN_SIZE: longer sums are split across threads
_F32 = np.float32
UPSAMPLE_RATE = 16  # HistogramObserver.upsample_rate
SUM_LANES = 8  # Vectorized<float>::size() of the kernel torch.sum runs (see the module docstring)


# ----------------------------------------------------------------------------- float32 primitives

def linspace(start, end, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32 (start / end taken as float32)."""
    start, end = _F32(start), _F32(end)
    if steps == 1:
        return np.array([start], np.float32)
    step = _F32(_F32(end - start) / _F32(steps - 1))
    idx = np.arange(steps)
    half = steps // 2
    lo = fma32_numpy(step, idx[:half].astype(np.float32), start)
    hi = fma32_numpy(-step, (steps - 1 - idx[half:]).astype(np.float32), end)
    return np.concatenate([lo, hi]).astype(np.float32)


def _row_sum(rows: np.ndarray) -> np.ndarray:
    """``row_sum`` of SumKernel.cpp over ``rows`` (shape (n, lanes)): ilp 4, cascaded levels."""
    n, lanes = rows.shape
    ilp = 4
    size = n // ilp
    part = _multi_row_sum(rows[: size * ilp].reshape(size, ilp, lanes))
    for i in range(size * ilp, n):
        part[0] = part[0] + rows[i]
    for k in range(1, ilp):
        part[0] = part[0] + part[k]
    return part[0]


def _multi_row_sum(x: np.ndarray) -> np.ndarray:
    """``multi_row_sum`` (x: (size, nrows, lanes)): 4 accumulator levels, chunks of 2^level_power."""
    size, nrows, lanes = x.shape
    num_levels = 4
    ceil_log2 = 0 if size <= 1 else int(size - 1).bit_length()
    level_power = max(4, ceil_log2 // num_levels)
    level_step = 1 << level_power
    level_mask = level_step - 1
    acc = np.zeros((num_levels, nrows, lanes), np.float32)
    i = 0
    while i + level_step <= size:
        for _ in range(level_step):
            acc[0] = acc[0] + x[i]
            i += 1
        for j in range(1, num_levels):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = 0
            if i & (level_mask << (j * level_power)):
                break
    while i < size:
        acc[0] = acc[0] + x[i]
        i += 1
    for j in range(1, num_levels):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def cascade_sum(v) -> np.float32:
    """``torch.sum`` of a contiguous float32 vector with ≤ 32768 elements (one thread)."""
    v = np.ascontiguousarray(v, np.float32).ravel()
    n = v.size
    if n > MAX_BINS:
        raise ValueError(f"cascade_sum: {n} elements; torch splits sums over {MAX_BINS} across threads")
    lanes = SUM_LANES
    if n >= lanes:  # vectorized_inner_sum
        nvec = n // lanes
        vec = _row_sum(v[: nvec * lanes].reshape(nvec, lanes))
        total = _F32(0)
        for k in range(nvec * lanes, n):
            total = _F32(total + v[k])
        for k in range(lanes):
            total = _F32(total + vec[k])
        return total
    return _F32(_row_sum(v.reshape(n, 1))[0])


def _div_floor(a: np.ndarray, b) -> np.ndarray:
    """``c10::div_floor_floating`` in float32 (b > 0 here)."""
    b = _F32(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        mod = np.fmod(a, b)
        div = ((a - mod) / b).astype(np.float32)
        div = np.where((mod != 0) & ((b < 0) != (mod < 0)), div - _F32(1), div).astype(np.float32)
        fl = np.floor(div)
        fl = np.where(div - fl > _F32(0.5), fl + _F32(1), fl).astype(np.float32)
        zero = np.copysign(_F32(0), a / b).astype(np.float32)
    return np.where(div != 0, fl, zero).astype(np.float32)


def histc(x, bins: int, lo, hi) -> np.ndarray:
    """``torch.histc(x, bins, min=lo, max=hi)`` for float32 ``x`` (counts as float32)."""
    x = np.asarray(x, np.float32).ravel()
    lo_d, hi_d = float(lo), float(hi)
    if lo_d == hi_d and x.size:
        lo_d, hi_d = float(x.min()), float(x.max())
    if lo_d == hi_d:  # bins_edges_correction (float32 input): at least one float32 ulp, at least 1
        lo_d = min(float(np.nextafter(_F32(lo_d), _F32(-np.inf))), lo_d - 1.0)
        hi_d = max(float(np.nextafter(_F32(hi_d), _F32(np.inf))), hi_d + 1.0)
    if not (np.isfinite(lo_d) and np.isfinite(hi_d)):
        raise ValueError(f"histc: range [{lo_d}, {hi_d}] is not finite")
    if not lo_d < hi_d:
        raise ValueError("histc: max must be larger than min")
    edges = linspace(lo_d, hi_d, bins + 1)
    left, right = edges[0], edges[-1]
    inside = x[(x >= left) & (x <= right)]
    pos = (((inside - left) * _F32(bins)).astype(np.float32) / _F32(right - left)).astype(np.float32)
    pos = pos.astype(np.int64)  # static_cast<int64_t>: truncation
    pos = np.where(pos == bins, bins - 1, pos)
    counts = np.bincount(pos, minlength=bins)
    if counts.max(initial=0) >= 2**24:
        raise ValueError("histc: a bin received >= 2^24 values in one call; torch's float32 counts saturate "
                         "per thread there (thread-dependent)")
    return counts.astype(np.float32)


# ----------------------------------------------------------------------------- the observer

def init(bins: int = 2048) -> dict:
    """``{"histogram": (bins,) float32 zeros, "min_val": +inf, "max_val": -inf}`` (torch's buffers)."""
    if not 0 < bins <= MAX_BINS:
        raise ValueError(f"bins={bins}: must be in 1..{MAX_BINS} (torch sums longer histograms across threads)")
    return dict(histogram=np.zeros(bins, np.float32), min_val=np.float32(np.inf), max_val=np.float32(-np.inf))


def _upscale(hist, orig_min, orig_max, new_min, new_max, bins):
    """``_upscale_histogram``: the old histogram, 16 sub-bins per bin, mapped by sub-bin mid-points."""
    h = (np.repeat(hist, UPSAMPLE_RATE) / _F32(UPSAMPLE_RATE)).astype(np.float32)
    bin_size = _F32(_F32(orig_max - orig_min) / _F32(bins * UPSAMPLE_RATE))
    mids = (linspace(orig_min, orig_max, bins * UPSAMPLE_RATE + 1)[:-1] + _F32(_F32(0.5) * bin_size)).astype(np.float32)
    bounds = linspace(new_min, new_max, bins + 1)
    bucket = np.searchsorted(bounds, mids, side="right") - 1  # bucketize(right=True) - 1
    bucket = np.clip(bucket, 0, bins - 1)
    out = np.zeros(bins, np.float32)
    np.add.at(out, bucket, h)  # float32, in element order (torch.bincount's loop)
    return out


def _combine(hist, orig_min, orig_max, upd, new_min, new_max, bins):
    if new_min == orig_min and new_max == orig_max:
        return (hist + upd).astype(np.float32)
    if orig_min == orig_max:
        value = cascade_sum(hist)
        moved = (histc(np.array([orig_min], np.float32), bins, new_min, new_max) * value).astype(np.float32)
        return (moved + upd).astype(np.float32)
    return (upd + _upscale(hist, orig_min, orig_max, new_min, new_max, bins)).astype(np.float32)


def update(state: dict, x) -> dict:
    """``HistogramObserver.forward``: fold one batch ``x`` into the histogram (returns a new state)."""
    hist = np.asarray(state["histogram"], np.float32)
    cur_min, cur_max = _F32(state["min_val"]), _F32(state["max_val"])
    bins = hist.size
    x = np.asarray(x, np.float32).ravel()
    if x.size == 0:
        return dict(histogram=hist, min_val=cur_min, max_val=cur_max)
    if np.isnan(x).any():
        raise ValueError("histogram observer: x contains NaN (torch's histc fails on a NaN range)")
    x_min, x_max = x.min(), x.max()
    if x_min == -np.inf or x_max == np.inf:  # torch warns and drops the infinities
        x = x[np.abs(x) != np.inf]
        if x.size == 0:
            return dict(histogram=hist, min_val=cur_min, max_val=cur_max)
        x_min, x_max = x.min(), x.max()
    if cur_min == np.inf or cur_max == -np.inf:
        return dict(histogram=histc(x, bins, x_min, x_max), min_val=_F32(x_min), max_val=_F32(x_max))
    new_min, new_max = min(cur_min, x_min), max(cur_max, x_max)
    upd = histc(x, bins, new_min, new_max)
    if new_min == cur_min and new_max == cur_max:
        return dict(histogram=(hist + upd).astype(np.float32), min_val=cur_min, max_val=cur_max)
    hist = _combine(hist, cur_min, cur_max, upd, new_min, new_max, bins)
    return dict(histogram=hist, min_val=_F32(new_min), max_val=_F32(new_max))


def _get_norm(delta_begin, delta_end, density):
    """``density * (end^3 - begin^3) / 3``, op by op in float32."""
    de3 = (delta_end * delta_end).astype(np.float32) * delta_end
    db3 = (delta_begin * delta_begin).astype(np.float32) * delta_begin
    norm = ((np.float32(de3) - np.float32(db3)).astype(np.float32) / _F32(3)).astype(np.float32)
    return (density * norm).astype(np.float32)


@np.errstate(over="ignore", invalid="ignore")  # huge ranges overflow to inf / NaN norms, as torch's do
def _quantization_error(hist, min_val, max_val, start_bin, end_bin, dst_nbins):
    """``_compute_quantization_error(start_bin, end_bin)`` (a Python float, as ``.item()`` returns)."""
    bins = hist.size
    bin_width = (float(max_val) - float(min_val)) / bins
    dst_bin_width = bin_width * (end_bin - start_bin + 1) / dst_nbins
    if dst_bin_width == 0.0:
        return 0.0
    bw, dw, half = _F32(bin_width), _F32(dst_bin_width), _F32(dst_bin_width / 2)
    src = np.arange(bins) - start_bin
    begin = (src.astype(np.float32) * bw).astype(np.float32)
    end = (begin + bw).astype(np.float32)
    b_bin = np.clip(_div_floor(begin, dw), 0, dst_nbins - 1).astype(np.float32)
    b_center = ((b_bin + _F32(0.5)).astype(np.float32) * dw).astype(np.float32)
    e_bin = np.clip(_div_floor(end, dw), 0, dst_nbins - 1).astype(np.float32)
    density = (hist / bw).astype(np.float32)

    norm = _get_norm((begin - b_center).astype(np.float32), np.full(bins, half, np.float32), density)
    inner = (e_bin - b_bin - _F32(1)).astype(np.float32)
    norm = (norm + (inner * _get_norm(_F32(-half), half, density)).astype(np.float32)).astype(np.float32)
    e_center = ((e_bin * dw).astype(np.float32) + half).astype(np.float32)
    norm = (norm + _get_norm(_F32(-half), (end - e_center).astype(np.float32), density)).astype(np.float32)
    return float(cascade_sum(norm))


def search_min_max(state: dict, dst_nbins: int) -> tuple[np.float32, np.float32]:
    """``_non_linear_param_search``: the ``[min, max]`` that minimises the L2 quantization error."""
    hist = np.asarray(state["histogram"], np.float32)
    min_val, max_val = _F32(state["min_val"]), _F32(state["max_val"])
    bins = hist.size
    bin_width = _F32(_F32(max_val - min_val) / _F32(bins))
    total = float(cascade_sum(hist))
    csum = np.cumsum(hist.astype(np.float64)).astype(np.float32)  # double accumulator, float32 stores

    stepsize, alpha, beta = 1e-5, 0.0, 1.0
    start_bin, end_bin = 0, bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        # while l < end_bin and cSum[l] < next_alpha * total: l += 1   (float32 comparison)
        lo_thr = _F32(next_alpha * total)
        seg = csum[start_bin:end_bin] < lo_thr
        l = end_bin if seg.all() else start_bin + int(np.argmin(seg))
        # while r > start_bin and cSum[r] > next_beta * total: r -= 1
        hi_thr = _F32(next_beta * total)
        seg = csum[start_bin + 1:end_bin + 1][::-1] > hi_thr
        r = start_bin if seg.all() else end_bin - int(np.argmin(seg))
        next_start, next_end = start_bin, end_bin
        if (l - start_bin) > (end_bin - r):
            next_start, alpha = l, next_alpha
        else:
            next_end, beta = r, next_beta
        if next_start == start_bin and next_end == end_bin:
            continue
        norm = _quantization_error(hist, min_val, max_val, next_start, next_end, dst_nbins)
        if norm > norm_min:
            break
        norm_min, start_bin, end_bin = norm, next_start, next_end

    new_min = _F32(min_val + _F32(bin_width * _F32(start_bin)))
    new_max = _F32(min_val + _F32(bin_width * _F32(end_bin + 1)))
    return new_min, new_max
