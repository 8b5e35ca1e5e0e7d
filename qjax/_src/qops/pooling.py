"""Quantized pooling with torch 2.13's CPU arithmetic: max, average and adaptive average pooling.

The output keeps the input's quantization parameters (as every torch pooling op does).
torch picks the kernel by ``input.is_contiguous(channels_last)``, which also holds for
tensors with one channel or one spatial position, and the two kernels round
differently:

* **avg_pool, NCHW kernel** (``AveragePool2d.cpp``): ``m = fl32(1.0 / divisor)`` (double),
  ``q = clamp(rne(fl32(fl32(acc*m) + zp)))`` with ``acc = sum(x) - count*zp``.
* **avg_pool, NHWC kernel** (``_qavg_pool_nhwc_kernel``, AVX512 build; every avg_pool3d):
  channels below ``C//16*16``: ``clamp(rne(fl32(acc*m)) + zp)`` (zero point added after
  rounding); the rest: ``clamp(rne(fl32(fl32(acc*inv) + zp)))``, ``inv = fl32(1/fl32(1/m))``.
* **adaptive_avg_pool, NCHW kernel**: ``q = rne(fl32(sum(x) * r))`` on the *raw* sum, with
  ``r = fl32(fl32(fl32(1/kD)/kH)/kW)`` — no zero point, no clamp.
* **adaptive_avg_pool, NHWC kernel** (AVX2 build): channels below ``C//8*8``:
  ``rne(fma(acc, inv, zp))``; the rest ``rne(fl32(fl32(acc*inv) + zp))``.
  Window bounds use float32 division: ``[floor(o*I/O), ceil((o+1)*I/O))``.
* **max_pool**: integer max over the in-bounds taps (padding never competes).

A torch bug is reproduced: an NCHW-strided input whose spatial size is 1 (so it counts
as channels-last) with C > 1 has the NHWC kernel's output written into an NCHW tensor
(channels and positions scrambled) whenever the output is larger than 1x1.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..checks import QuantizationError
from ..qarray import QArray
from .elementwise import check_8bit
from .paths import CHANNELS_LAST, CONTIGUOUS

__all__ = ["max_pool", "avg_pool", "adaptive_avg_pool", "pool_output_size"]

_I32 = jnp.int32
_F32 = jnp.float32


def _tuple(v, n, name):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(i) for i in v)
    if len(v) != n:
        raise QuantizationError(f"{name} needs {n} values, got {v}")
    return v


def pool_output_size(i, k, p, s, d, ceil_mode):
    """ATen ``pooling_output_shape``."""
    num = i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    o = num // s + 1
    if ceil_mode and (o - 1) * s >= i + p:
        o -= 1
    return o


def uses_nhwc_kernel(shape, memory_format):
    return memory_format == CHANNELS_LAST or shape[1] == 1 or int(np.prod(shape[2:])) == 1


def nhwc_buffer_in_nchw_order(y, in_shape, memory_format):
    """torch writes the NHWC kernel's buffer into an NCHW output when the input had NCHW strides."""
    if memory_format == CHANNELS_LAST or in_shape[1] == 1 or int(np.prod(in_shape[2:])) != 1:
        return y
    if int(np.prod(y.shape[2:])) == 1:
        return y
    return jnp.moveaxis(y, 1, -1).reshape(y.shape)


def _out(x, values):
    return x.with_values(values.astype(x.dtype.storage))


# --------------------------------------------------------------------------------------------- max


def max_pool(x: QArray, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             memory_format=CONTIGUOUS) -> QArray:
    """``quantized max_pool{1,2,3}d`` on ``(N, C, *spatial)``."""
    check_8bit(x, "x")
    nd = x.ndim - 2
    k = _tuple(kernel_size, nd, "kernel_size")
    s = _tuple(stride if stride is not None and stride != [] else k, nd, "stride")
    p = _tuple(padding, nd, "padding")
    d = _tuple(dilation, nd, "dilation")
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise QuantizationError(f"padding {p} must be at most half the kernel size {k} (torch's rule)")
    osz = tuple(pool_output_size(x.shape[2 + i], k[i], p[i], s[i], d[i], ceil_mode) for i in range(nd))
    if any(o < 1 for o in osz):
        raise QuantizationError(f"max_pool output size {osz} is empty for input {x.shape}")
    y = _max_pool_values(x.values, k=k, s=s, p=p, d=d, osz=osz, lowest=x.dtype.qmin)
    return _out(x, nhwc_buffer_in_nchw_order(y, x.shape, memory_format))


@functools.partial(jax.jit, static_argnames=("k", "s", "p", "d", "osz", "lowest"))
def _max_pool_values(v, *, k, s, p, d, osz, lowest):
    nd = len(k)
    hi = [max((osz[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - v.shape[2 + i] - p[i], 0) for i in range(nd)]
    # the maximum of one strided slice per window tap: XLA's CPU reduce_window is a generic
    # loop (ResNet's 3x3/2 max-pool on 4x64x112x112: 17.5 ms against 8.0 ms for the slices,
    # median of 9 interleaved rounds, 1 core); a max is exact in any order
    vp = lax.pad(v, jnp.array(lowest, v.dtype), ((0, 0, 0), (0, 0, 0)) + tuple((p[i], hi[i], 0) for i in range(nd)))
    y = None
    for tap in itertools.product(*[range(ki) for ki in k]):
        start = (0, 0) + tuple(t * di for t, di in zip(tap, d))
        limit = vp.shape[:2] + tuple(t * di + si * (o - 1) + 1 for t, di, si, o in zip(tap, d, s, osz))
        sl = lax.slice(vp, start, limit, (1, 1) + tuple(s))
        y = sl if y is None else jnp.maximum(y, sl)
    return y


# --------------------------------------------------------------------------------------------- windows


def _window_sums(v, starts, ends):
    """Integer sums of ``v`` (N, C, *S) over boxes ``[starts[i], ends[i])`` per spatial dim (static)."""
    cs = v.astype(_I32)
    nd = len(starts)
    for i in range(nd):
        ax = 2 + i
        zero = jnp.zeros(cs.shape[:ax] + (1,) + cs.shape[ax + 1:], _I32)
        cs = jnp.concatenate([zero, jnp.cumsum(cs, axis=ax)], axis=ax)
    total = 0
    for corner in itertools.product((0, 1), repeat=nd):
        sel = cs
        for i, c in enumerate(corner):
            sel = jnp.take(sel, jnp.asarray(ends[i] if c else starts[i]), axis=2 + i)
        total = total + (1 if (nd - sum(corner)) % 2 == 0 else -1) * sel
    return total


def _box_counts(starts, ends):
    cnt = np.ones((), np.int64)
    for st, en in zip(starts, ends):
        cnt = np.multiply.outer(cnt, en - st)
    return cnt


# --------------------------------------------------------------------------------------------- avg


def avg_pool(x: QArray, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None, memory_format=CONTIGUOUS) -> QArray:
    """``quantized avg_pool{1,2,3}d`` (output qparams = input qparams); see the module docstring."""
    check_8bit(x, "x")
    nd = x.ndim - 2
    k = _tuple(kernel_size, nd, "kernel_size")
    s = _tuple(stride if stride is not None and stride != [] else k, nd, "stride")
    p = _tuple(padding, nd, "padding")
    starts, ends, psizes = [], [], []
    for i in range(nd):
        size = x.shape[2 + i]
        o = pool_output_size(size, k[i], p[i], s[i], 1, ceil_mode)
        if o < 1:
            raise QuantizationError(f"avg_pool output size is empty for input {x.shape}")
        a = np.arange(o) * s[i] - p[i]
        b = np.minimum(a + k[i], size + p[i])
        psizes.append(b - a)
        starts.append(np.maximum(a, 0))
        ends.append(np.minimum(b, size))
    count = _box_counts(starts, ends)
    pool_size = _box_counts([np.zeros_like(q) for q in psizes], psizes)
    if divisor_override:
        divisor = np.full(count.shape, int(divisor_override), np.int64)
    else:
        divisor = pool_size if count_include_pad else count
    nhwc = nd == 3 or uses_nhwc_kernel(x.shape, memory_format)  # avg_pool3d always runs the NDHWC kernel
    if nhwc:
        m = (np.float32(1.0) / divisor.astype(np.float32)).astype(np.float32)
    else:
        m = (1.0 / divisor.astype(np.float64)).astype(np.float32)
    y = _avg_pool_values(x.values, x.zero_point, starts=tuple(map(tuple, starts)), ends=tuple(map(tuple, ends)),
                         count=_freeze(count), m=_freeze(m), nhwc=nhwc, qmin=x.dtype.qmin, qmax=x.dtype.qmax)
    return _out(x, nhwc_buffer_in_nchw_order(y, x.shape, memory_format) if nd < 3 else y)


class _Frozen:
    """A hashable wrapper for a static numpy array (jit static argument)."""

    def __init__(self, a):
        self.a = np.asarray(a)
        self._key = (self.a.dtype.str, self.a.shape, self.a.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Frozen) and self._key == other._key


def _freeze(a):
    return _Frozen(a)


@functools.partial(jax.jit, static_argnames=("starts", "ends", "count", "m", "nhwc", "qmin", "qmax"))
def _avg_pool_values(v, zp, *, starts, ends, count, m, nhwc, qmin, qmax):
    S = _window_sums(v, [np.asarray(a) for a in starts], [np.asarray(a) for a in ends])
    acc = (S - jnp.asarray(count.a, _I32) * zp).astype(_F32)
    mm = jnp.asarray(m.a)
    zpf = zp.astype(_F32)
    scalar = jnp.round(f32x.mul_rn(acc, mm) + zpf)
    if not nhwc:
        return jnp.clip(scalar, qmin, qmax).astype(_I32)
    inv = f32x.div_rn(1.0, f32x.div_rn(1.0, mm))
    tail = jnp.clip(jnp.round(f32x.mul_rn(acc, inv) + zpf), qmin, qmax).astype(_I32)
    vec = jnp.clip(jnp.round(f32x.mul_rn(acc, mm)).astype(_I32) + zp, qmin, qmax)
    c = v.shape[1]
    cv = c // 16 * 16
    return jnp.concatenate([vec[:, :cv], tail[:, cv:]], axis=1) if cv else tail


# --------------------------------------------------------------------------------------------- adaptive


def _adaptive_bounds(i, o):
    j = np.arange(o)
    st = np.floor((j * i).astype(np.float32) / np.float32(o)).astype(np.int64)
    en = np.ceil(((j + 1) * i).astype(np.float32) / np.float32(o)).astype(np.int64)
    return st, en


def adaptive_avg_pool(x: QArray, output_size, memory_format=CONTIGUOUS) -> QArray:
    """``quantized adaptive_avg_pool{1,2,3}d``; see the module docstring.

    ``adaptive_avg_pool3d`` to ``(1, 1, 1)`` is torch's quantized ``mean`` instead: implemented
    for NCDHW inputs (``rne(fl32(sum / DHW))`` on raw values); the channels-last-3d mean
    (a float cascade sum) raises.
    """
    check_8bit(x, "x")
    nd = x.ndim - 2
    osz = tuple(x.shape[2 + i] if o is None else int(o) for i, o in enumerate(_as_list(output_size, nd)))
    if nd == 3 and osz == (1, 1, 1):
        if memory_format == CHANNELS_LAST and x.shape[1] > 1:
            raise QuantizationError(
                "adaptive_avg_pool3d to (1,1,1) on a channels_last_3d tensor runs torch's float mean "
                "(dequantize, cascade sum, quantize), which qjax does not model; make the input contiguous"
            )
        y = _mean_values(x.values, n=int(np.prod(x.shape[2:])))
        return _out(x, y)
    bounds = [_adaptive_bounds(x.shape[2 + i], osz[i]) for i in range(nd)]
    starts, ends = [b[0] for b in bounds], [b[1] for b in bounds]
    count = _box_counts(starts, ends)
    nhwc = uses_nhwc_kernel(x.shape, memory_format)
    if nhwc:
        r = (np.float32(1.0) / count.astype(np.float32)).astype(np.float32)
    else:
        ks = [e - s for s, e in zip(starts, ends)]
        if nd < 3:
            ks = [np.ones(1, np.int64)] * (3 - nd) + ks
        kd, kh, kw = (np.asarray(k, np.float32) for k in ks)
        r = (np.float32(1.0 / 1.0) / kd.astype(np.float64)).astype(np.float32)  # fl32(1.0/kD) in double
        r = np.multiply.outer(r, np.ones_like(kh)) / kh[None, :]
        r = r.astype(np.float32)
        r = (np.multiply.outer(r, np.ones_like(kw)) / kw[None, None, :]).astype(np.float32)
        r = r.reshape(count.shape)
    y = _adaptive_values(x.values, x.zero_point, starts=tuple(map(tuple, starts)), ends=tuple(map(tuple, ends)),
                         count=_freeze(count), r=_freeze(r), nhwc=nhwc, qmin=x.dtype.qmin, qmax=x.dtype.qmax)
    return _out(x, nhwc_buffer_in_nchw_order(y, x.shape, memory_format))


def _as_list(output_size, nd):
    if isinstance(output_size, (int, np.integer)):
        return [int(output_size)] * nd
    out = list(output_size)
    if len(out) != nd:
        raise QuantizationError(f"output_size needs {nd} values, got {output_size}")
    return out


@functools.partial(jax.jit, static_argnames=("starts", "ends", "count", "r", "nhwc", "qmin", "qmax"))
def _adaptive_values(v, zp, *, starts, ends, count, r, nhwc, qmin, qmax):
    S = _window_sums(v, [np.asarray(a) for a in starts], [np.asarray(a) for a in ends])
    rr = jnp.asarray(r.a)
    if not nhwc:
        return jnp.round(f32x.mul_rn(S.astype(_F32), rr)).astype(_I32)
    acc = (S - jnp.asarray(count.a, _I32) * zp).astype(_F32)
    inv = f32x.div_rn(1.0, f32x.div_rn(1.0, rr))
    zpf = zp.astype(_F32)
    tail = jnp.clip(jnp.round(f32x.mul_rn(acc, inv) + zpf), qmin, qmax).astype(_I32)
    # quantize_vec -> fbgemm QuantizeAvx2 LEGACY: rne(min(fma(acc, inv, zp), cap)), clamp
    vec = jnp.clip(jnp.round(jnp.minimum(f32x.fma(acc, inv, zpf), np.float32(2**31 - 128))), qmin, qmax)
    vec = vec.astype(_I32)
    c = v.shape[1]
    cv = c // 8 * 8
    return jnp.concatenate([vec[:, :cv], tail[:, cv:]], axis=1) if cv else tail


@functools.partial(jax.jit, static_argnames=("n",))
def _mean_values(v, *, n):
    s = jnp.sum(v.astype(_I32), axis=(2, 3, 4), keepdims=True)
    return jnp.round(f32x.div_rn(s.astype(_F32), np.float32(n))).astype(_I32)

