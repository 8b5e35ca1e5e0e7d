"""Quantized ``mean`` over the spatial dims where torch 2.13 does not take its integer fast path.

``aten/src/ATen/native/quantized/cpu/ReduceOps.cpp`` (``mean_out_quantized_cpu``) has three paths:

* **qnnpack engine**, quint8, 4-d, ``dim`` written exactly ``[2, 3]``: ``qnnpack_mean`` makes the input
  channels-last and runs QNNPACK's global average pooling (``pytorch_qnnp_create_global_average_pooling_nwc_q8``
  with the input's scale and zero point on both sides; ``q8gavgpool`` kernels): an exact int32 sum with the
  bias ``-zp * HW``, then ``q = clamp(rne(fl32(acc * m)) + zp, 0, 255)`` with
  ``m = fl32(s / fl32(s * HW))`` — :func:`global_average_pool`.
* a **contiguous** input reduced over its innermost dims: the integer fast path (engine's ``mean``).
* anything else: ``dequantize -> at::mean -> quantize_per_tensor`` with the input's qparams.  ``at::mean``
  on CPU is ``at::sum_out(...).div_(HW)`` (``ReduceOps.cpp``, ``mean_out``), and the sum is
  ``cpu/SumKernel.cpp``'s ``cascade_sum``, whose order this module reproduces for the case that occurs in
  models (a dense channels-last 4-d tensor over ``(H, W)``) — :func:`channels_last_spatial_sum`.

The channels-last spatial sum.  TensorIterator puts the reduced dims first and coalesces ``H, W`` into
one dim of ``L = H*W`` rows ``C`` floats apart, so every batch row is one ``vectorized_outer_sum`` call
(``C >= 8``) over ``(L, C)``, 8-float vectors (``REGISTER_DISPATCH`` gives AVX512 machines the AVX2
kernel):

* channels ``[0, 32*(C//32))``, in groups of 4 vectors: ``multi_row_sum`` over all ``L`` rows;
* then groups of 8 channels, then the last ``C % 8`` channels one by one: ``row_sum`` (the rows split
  into 4 interleaved partial sums, each a ``multi_row_sum`` of ``L//4`` rows, the ``L % 4`` tail rows
  added to the first, then the 4 partials in order).

``C < 8`` takes ``scalar_outer_sum``: groups of 4 channels ``multi_row_sum``, the rest ``row_sum``.
``multi_row_sum`` (size ``n``) adds rows one by one into level 0 and, every ``2**p`` rows
(``p = max(4, ceil_log2(n) // 4)``), carries level ``j`` into level ``j+1`` (level ``j+1`` takes ``2**p``
carries before it carries on; level 3 never does); the leftover rows go to level 0 and the result is
``((lvl0 + lvl1) + lvl2) + lvl3``.

Threads: ``parallel_reduce`` splits only non-reduced dims, the channel dim at multiples of 32 channels
(128 bytes), so a thread's slice ``[b, e)`` starts at a multiple of 32 and the grouping above is unchanged —
except when the last slice holds fewer than 8 channels (``scalar_outer_sum``: its first 4 channels are
then a ``multi_row_sum``); :func:`channels_last_spatial_sum` takes the thread count for that.

Every add is a float32 add of two float32 values (XLA does not reassociate them); the dequantized
products pass :func:`qjax.float32.uncontracted`, so no add is fused with them.  XLA flushes subnormals:
exact while the partial sums are normal or zero (scales above ~1e-36).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..checks import QuantizationError
from ..dtypes import quint8
from ..qarray import QArray

__all__ = ["channels_last_spatial_sum", "sum_groups", "global_average_pool"]

_F32 = jnp.float32
_GRAIN = 32768  # at::internal::GRAIN_SIZE: smaller reductions run on one thread
_VEC = 8  # Vectorized<float>::size() of the AVX2 kernel


def _seq(x):
    """``((0 + x[0]) + x[1]) + ...`` over axis 0 (``0 + v`` is ``v``)."""
    if x.shape[0] <= 16:  # short sums unrolled (compiles faster than a loop)
        acc = x[0]
        for i in range(1, x.shape[0]):
            acc = acc + x[i]
        return acc
    return lax.scan(lambda acc, v: (acc + v, None), x[0], x[1:])[0]


def _multi_row_sum(x):
    """SumKernel.cpp ``multi_row_sum`` over axis 0 of ``x`` (static size ``n >= 0``)."""
    n = x.shape[0]
    rest_shape = x.shape[1:]
    p = max(4, (0 if n <= 1 else int(n - 1).bit_length()) // 4)
    step = 1 << p
    nfull = n // step
    levels = []  # the partial sum each level holds at the end (None: it holds 0)
    if nfull:
        chunks = x[: nfull * step].reshape((nfull, step) + rest_shape)
        carries = _seq(jnp.moveaxis(chunks, 1, 0))  # level 0's sum of each full chunk, carried into level 1
        for _ in (1, 2):  # levels 1 and 2 carry on after `step` carries each; level 3 keeps all of its own
            g = carries.shape[0] // step
            rest = carries[g * step:]
            levels.append(_seq(rest) if rest.shape[0] else None)
            if not g:
                carries = None
                break
            grouped = carries[: g * step].reshape((g, step) + rest_shape)
            carries = _seq(jnp.moveaxis(grouped, 1, 0))
        levels.append(_seq(carries) if carries is not None else None)
    tail = x[nfull * step:]
    total = _seq(tail) if tail.shape[0] else jnp.zeros(rest_shape, _F32)
    for lv in levels:  # a level that never received a value holds 0, and v + 0 == v
        if lv is not None:
            total = total + lv
    return total


def _row_sum(x):
    """SumKernel.cpp ``row_sum`` over axis 0 of ``x``: 4 interleaved partial sums (ilp), then the tail."""
    n = x.shape[0]
    size = n // 4
    if size:
        part = _multi_row_sum(x[: size * 4].reshape((size, 4) + x.shape[1:]))  # (4, ...)
    else:
        part = jnp.zeros((4,) + x.shape[1:], _F32)
    p0 = part[0]
    for i in range(size * 4, n):
        p0 = p0 + x[i]
    for k in range(1, 4):
        p0 = p0 + part[k]
    return p0


def sum_groups(c: int, threads: int = 1, rows: int = 1):
    """The ``(start, stop, kind)`` channel groups of one channels-last spatial sum (``kind``: ``"multi"`` for
    ``multi_row_sum``, ``"row"`` for ``row_sum``), for ``c`` channels, ``threads`` torch threads and
    ``rows * c`` output elements over ``numel`` (see the module docstring)."""
    groups = []

    def one_call(b, e):
        w = e - b
        j = b
        if w >= _VEC:  # vectorized_outer_sum
            while j + 4 * _VEC <= e:
                groups.append((j, j + 4 * _VEC, "multi"))
                j += 4 * _VEC
            if j < e:
                groups.append((j, e, "row"))
        else:  # scalar_outer_sum
            while j + 4 <= e:
                groups.append((j, j + 4, "multi"))
                j += 4
            if j < e:
                groups.append((j, e, "row"))

    for b, e in _thread_slices(c, threads, rows):
        one_call(b, e)
    return groups


def _thread_slices(c, threads, rows):
    """Channel slices of TensorIteratorReduce.cpp ``parallel_dim_reduction``: at::parallel_for(0, cols, 1)
    splits the widest output dim in ``ceil(cols / threads)`` pieces; channel boundaries are rounded down to
    multiples of 32 (128 bytes), the last ends at ``c``.  ``rows`` is ``(N, L)``'s ``N`` here: the caller
    passes ``threads=1`` when the reduction runs on one thread."""
    n_batch = rows
    if threads <= 1 or n_batch > c or c <= 1:  # find_split_dim: the first widest dim (C before N)
        return [(0, c)]
    tasks = min(threads, c)
    chunk = -(-c // tasks)
    out = []
    for t in range(tasks):
        b, e = t * chunk, min(c, (t + 1) * chunk)
        if b >= e:
            continue
        b = b - b % 32
        if e != c:
            e = e - e % 32
        if b < e:
            out.append((b, e))
    return out


def channels_last_spatial_sum(x, threads: int = 1):
    """``torch.sum(x, [2, 3])`` of a dense channels-last float32 ``x`` ``(N, C, H, W)`` -> ``(N, C)``, in
    SumKernel.cpp's order (module docstring).  ``threads``: torch's intra-op thread count."""
    n, c, h, w = x.shape
    rows = jnp.moveaxis(jnp.asarray(x, _F32).reshape(n, c, h * w), 2, 0)  # (L, N, C): rows of the reduction
    numel = n * c * h * w
    # parallel_reduce: one thread below GRAIN_SIZE; a single output element is a two-pass reduction
    if n * c == 1 and threads > 1 and numel >= _GRAIN:
        raise QuantizationError(f"quantized mean of a (1, 1, {h}, {w}) channels_last tensor on {threads} threads: "
                                "torch's two-pass parallel sum is not modelled (threads=1 is)")
    th = threads if numel >= _GRAIN else 1
    # each lane's order depends only on its group's kind, never on the group's width: one multi_row_sum and
    # one row_sum over all channels, then each channel takes its kind's (two loops to compile, not one per group)
    multi = np.zeros(c, bool)
    for b, e, kind in sum_groups(c, th, n):
        multi[b:e] = kind == "multi"
    if multi.all():
        return _multi_row_sum(rows)
    if not multi.any():
        return _row_sum(rows)
    return jnp.where(multi, _multi_row_sum(rows), _row_sum(rows))


def float_mean_channels_last(x: QArray, keepdim: bool, threads: int, engine) -> QArray:
    """ReduceOps.cpp's fallback on a dense channels-last ``x`` ``(N, C, H, W)`` over ``(H, W)``:
    ``quantize(fl32(sum / (H*W)), x.scale, x.zero_point)`` with the cascade sum of the dequantized values
    (``fl32((q - zp) * s)``, ATen's dequantize); ``engine.quantize`` is the engine's ``quantize_per_tensor``."""
    if x.ndim != 4 or x.axis is not None:
        raise QuantizationError("the channels-last float mean takes a per-tensor (N, C, H, W) input")
    v = _float_mean_values(x.values, x.scale, x.zero_point, threads=threads, engine=engine, dtype=x.dtype)
    if keepdim:
        v = v.reshape(v.shape + (1, 1))
    return x.with_values(v)


@functools.partial(jax.jit, static_argnames=("threads", "engine", "dtype"))
def _float_mean_values(values, scale, zero_point, *, threads, engine, dtype):
    n, c, h, w = values.shape
    deq = f32x.uncontracted((values.astype(jnp.int32) - zero_point).astype(_F32) * scale)
    m = f32x.div_rn(channels_last_spatial_sum(deq, threads), np.float32(h * w))  # div_(dim_prod): true division
    return engine.quantize(m, scale, zero_point, dtype).values


def global_average_pool(x: QArray, keepdim: bool) -> QArray:
    """torch's ``qnnpack_mean``: QNNPACK global average pooling of quint8 ``x`` ``(N, C, H, W)`` over ``(H, W)``
    with the input's qparams on both sides (module docstring); ``(N, C)`` or ``(N, C, 1, 1)``."""
    if x.dtype != quint8 or x.axis is not None or x.ndim != 4:
        raise QuantizationError("global_average_pool takes a per-tensor quint8 (N, C, H, W) input")
    v = _gavgpool_values(x.values, x.scale, x.zero_point)
    if keepdim:
        v = v.reshape(v.shape + (1, 1))
    return x.with_values(v, quint8)


@jax.jit
def _gavgpool_values(values, s, zp):
    n, c, h, w = values.shape
    hw = h * w
    # pytorch_qnnp_compute_avgpool_quantization_params(-zp * HW, input_scale / (output_scale * (float) HW))
    acc = jnp.sum(values.astype(jnp.int32), axis=(2, 3)) - zp * hw  # exact int32
    m = f32x.div_rn(s, f32x.mul_rn(s, np.float32(hw)))
    # q8gavgpool: _mm_cvtps_epi32(acc * scale) (rne), + zero point with int16 saturation, clamp to [0, 255]
    v = jnp.round(f32x.mul_rn(acc.astype(_F32), m)).astype(jnp.int32) + zp
    return jnp.clip(v, 0, 255).astype(np.uint8)
