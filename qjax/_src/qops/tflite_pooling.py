"""LiteRT's (TFLite's) int8 AVERAGE_POOL_2D, MAX_POOL_2D and MEAN arithmetic, per kernel family.

Values are int8 NHWC arrays (as int32 here); qparams are concrete (the kernels derive their multipliers
at Prepare time, here on the host with numpy / Python integers).

* **average pool** (``reference_integer_ops::AveragePool`` in ``reference/integer_ops/pooling.h``; the
  optimized ``optimized_integer_ops::AveragePool`` (``AveragePool16``, int16 accumulators, exact for
  filters up to 16x16; larger ones call the reference) computes the same integers): over the window cells
  inside the input (padded cells are not counted), ``acc = sum(q)`` of the raw int8 values and
  ``count`` cells, ``out = acc > 0 ? (acc + count/2) / count : (acc - count/2) / count`` with C's
  truncating division (a half rounds away from zero), clamped to the fused activation's range.  No
  requantization: the kernels assume the output's scale and zero point are the input's (``pooling.cc``
  only DCHECKs it), so other output qparams only move the activation range.
* **max pool** (``reference_integer_ops::MaxPool``, ``optimized_integer_ops::MaxPool``, XNNPACK's
  ``s8 maxpool``): ``max`` of the window's cells inside the input, clamped to the activation range.
* **mean, reference** (``reference_ops::QuantizedMeanOrSum`` in ``reference/reduce.h``, also every
  MEAN the optimized kernel does not special-case): ``(M, e) = QuantizeMultiplier(double(s_in) /
  double(s_out))``; with ``n`` the reduced count, ``k = min(floor(log2 n), 32, 31 + e)``,
  ``M' = (M << k) / n`` (int64, truncating), ``out = MultiplyByQuantizedMultiplier(sum(q) - z_in * n,
  M', e - k) + z_out`` (gemmlowp double rounding), clamped to int8.
* **mean, optimized 4-D over H, W with keep_dims** (``optimized_integer_ops::Mean`` in
  ``optimized/integer_ops/mean.h``): in float32 ``t = z_in * s_in / s_out``, ``bias = z_out -
  (int)(t > 0 ? t + 0.5 : t - 0.5)``, ``real = s_in / (float(n) * s_out)``; ``(M, e) =
  QuantizeMultiplier(real)``; ``out = MultiplyByQuantizedMultiplier(sum(q), M, e) + bias`` (the raw
  sum: the zero point enters only through the rounded ``bias``), clamped to int8.
* **mean, XNNPACK** (``src/operators/reduce-nd.c``: the ``qs8 rsum`` / ``rdsum`` kernels sum the raw
  int8 values in int32, then the int32 -> qs8 convert with the zero point folded into its parameters):
  in float32 ``S = fl(s_in / s_out) * fl(1 / n)``, ``Z = z_out - fl(float(n * z_in) * S)`` (kept in
  float), ``out = rint(fl(float(sum(q)) * S) + Z)`` (ties to even; no FMA), clamped to int8.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..float32 import uncontracted
from ..requant.fixed_point import multiply_by_quantized_multiplier
from ..requant.tflite import requantize_half_up, tflite_quantize_multiplier

__all__ = [
    "window_sum_count",
    "avg_pool_int8",
    "max_pool_int8",
    "mean_reference_params",
    "mean_reference",
    "mean_optimized_hw_params",
    "mean_optimized_hw",
    "is_hw_mean",
    "mean_xnnpack_params",
    "mean_xnnpack",
]

F32 = np.float32


def _pads(padding):
    return ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0))


def _jit(static):
    return lambda fn: functools.wraps(fn)(jax.jit(fn, static_argnames=static))


def window_sum_count(q, filter_size, strides, padding):
    """``(sum, count)`` int32 ``(N, OH, OW, C)`` / ``(1, OH, OW, 1)``: each window's sum of ``q`` (int32
    NHWC) over its cells inside the input, and how many such cells (``padding`` explicit ``((lo, hi),
    (lo, hi))``)."""
    win = (1, int(filter_size[0]), int(filter_size[1]), 1)
    st = (1, int(strides[0]), int(strides[1]), 1)
    pads = _pads(padding)
    total = lax.reduce_window(q, np.int32(0), lax.add, win, st, pads)
    ones = jnp.ones((1,) + q.shape[1:3] + (1,), jnp.int32)
    count = lax.reduce_window(ones, np.int32(0), lax.add, win, st, pads)
    return total, count


@_jit(("filter_size", "strides", "padding"))
def avg_pool_int8(q, filter_size, strides, padding, act_min, act_max):
    """AVERAGE_POOL_2D's integers (int32 in/out): the rounded window mean, clamped (module doc)."""
    acc, count = window_sum_count(jnp.asarray(q, jnp.int32), filter_size, strides, padding)
    half = count // 2  # count > 0
    # C division truncates toward zero (lax.div); the +-count/2 makes a half round away from zero.
    out = jnp.where(acc > 0, lax.div(acc + half, count), lax.div(acc - half, count))
    return jnp.clip(out, act_min, act_max)


@_jit(("filter_size", "strides", "padding"))
def max_pool_int8(q, filter_size, strides, padding, act_min, act_max):
    """MAX_POOL_2D's integers (int32 in/out): the window maximum over cells inside the input, clamped."""
    win = (1, int(filter_size[0]), int(filter_size[1]), 1)
    st = (1, int(strides[0]), int(strides[1]), 1)
    # padding with int8's lowest value never wins over a cell inside the input (every window has one)
    out = lax.reduce_window(jnp.asarray(q, jnp.int32), np.int32(-128), lax.max, win, st, _pads(padding))
    return jnp.clip(out, act_min, act_max)


def mean_reference_params(in_scale, out_scale, n: int):
    """``(M', e')``: ``reference_ops::QuantizedMeanOrSum``'s multiplier with ``1/n`` folded in."""
    m, e = tflite_quantize_multiplier(float(np.float64(F32(in_scale)) / np.float64(F32(out_scale))))
    k = min(int(n).bit_length() - 1, 32, 31 + e)
    return int((m << k) // int(n)) if k >= 0 else int((m >> -k) // int(n)), e - k


@_jit(("axes", "keep_dims"))
def mean_reference(q, axes, keep_dims, in_zero_point, multiplier, shift, out_zero_point):
    """MEAN by ``reference_ops::QuantizedMeanOrSum`` (int32 in/out; module doc)."""
    q = jnp.asarray(q, jnp.int32)
    n = int(np.prod([q.shape[a] for a in axes])) if axes else 1
    total = jnp.sum(q, axis=tuple(axes), keepdims=bool(keep_dims), dtype=jnp.int32)
    # temp_sum - z_in * n: an int64 product cast to int32 (U = int32); n * 128 fits int32 for real inputs
    shifted = total - jnp.asarray(in_zero_point, jnp.int32) * np.int32(n)
    out = multiply_by_quantized_multiplier(shifted, multiplier, shift) + out_zero_point
    return jnp.clip(out, -128, 127)


def is_hw_mean(ndim: int, axes, keep_dims: bool) -> bool:
    """Whether the optimized builtin kernel takes its special 4-D H, W path (``reduce.cc``, ``EvalMean``)."""
    return bool(keep_dims) and ndim == 4 and sorted(set(int(a) for a in axes)) == [1, 2] and len(axes) == 2


def mean_optimized_hw_params(in_scale, in_zero_point, out_scale, out_zero_point, n: int):
    """``(M, e, bias)`` of ``optimized_integer_ops::Mean`` (float32 arithmetic, as the kernel)."""
    si, so = F32(in_scale), F32(out_scale)
    with np.errstate(over="ignore"):
        t = F32(F32(F32(int(in_zero_point)) * si) / so)
        t = F32(t + F32(0.5)) if t > 0 else F32(t - F32(0.5))
        bias = int(out_zero_point) - int(np.trunc(np.float64(t)))
        real = F32(si / F32(F32(int(n)) * so))
    m, e = tflite_quantize_multiplier(float(real))
    return m, e, bias


@jax.jit
def mean_optimized_hw(q, multiplier, shift, bias):
    """MEAN over H, W (keep_dims) by ``optimized_integer_ops::Mean`` (int32 ``(N, H, W, C)`` -> ``(N, 1,
    1, C)``)."""
    total = jnp.sum(jnp.asarray(q, jnp.int32), axis=(1, 2), keepdims=True, dtype=jnp.int32)
    c = total.shape[-1]
    neon = np.arange(c) < 16 * (c // 16)
    out = jnp.where(neon, requantize_half_up(total, multiplier, shift),
                    multiply_by_quantized_multiplier(total, multiplier, shift)) + bias
    return jnp.clip(out, -128, 127)


def mean_xnnpack_params(in_scale, in_zero_point, out_scale, out_zero_point, n: int):
    """``(S, Z)`` float32 of XNNPACK's qs8 mean (module doc)."""
    with np.errstate(over="ignore"):
        s = F32(F32(F32(in_scale) / F32(out_scale)) * F32(F32(1) / F32(int(n))))
        z = F32(F32(int(out_zero_point)) - F32(F32(int(n) * int(in_zero_point)) * s))
    return s, z


@_jit(("axes", "keep_dims"))
def mean_xnnpack(q, axes, keep_dims, scale, zero):
    """MEAN by XNNPACK's qs8 reduce (int32 in/out; module doc)."""
    total = jnp.sum(jnp.asarray(q, jnp.int32), axis=tuple(axes), keepdims=bool(keep_dims), dtype=jnp.int32)
    # uncontracted: the product is rounded to float32 before the zero point is added (no FMA)
    y = uncontracted(total.astype(jnp.float32) * jnp.float32(scale)) + jnp.float32(zero)
    return jnp.clip(jnp.round(y), -128, 127).astype(jnp.int32)
