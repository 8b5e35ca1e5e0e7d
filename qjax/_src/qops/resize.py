"""``F.interpolate`` on quantized tensors (nearest, nearest-exact 2-d/3-d; bilinear 2-d), torch 2.13 CPU.

The output keeps the input's qparams.  Sizes: ``out = floor(in * scale_factor)`` (double);
the kernels' scale is ``fl32(1.0 / scale_factor)`` when a scale factor is passed through
(double division), else ``fl32(float(in) / float(out))``.

* nearest: ``src = min(floor(fl32(float(dst) * scale)), in - 1)``; nearest-exact:
  ``src = min(floorf(double(dst + 0.5) * scale), in - 1)``.  Equal in/out sizes copy.
* bilinear (``area_pixel_compute_source_index``): ``src = max(0, scale*(dst + 0.5) - 0.5)``
  (``align_corners``: ``src = r*dst``, ``r = (in-1)/(out-1)``), ``i1 = trunc(src)``,
  ``l1 = src - i1``, ``l0 = 1 - l1``.  The NCHW kernel (``UpSampleBilinear2d.cpp``) has no FMA:
  ``A = fl32(fl32(w0*p00) + fl32(w1*p01))``, likewise ``B``, ``R = fl32(fl32(h0*A) + fl32(h1*B))``,
  ``q = rne(fl32(fl32(R - zp) + zp))``.  The NHWC kernel (AVX2 build with ``-mfma``) fuses the source
  index, and in the first ``C//8*8`` channels the *second* product of each ``a*b + c*d``
  (``A = fma(w1, p01, fl32(w0*p00))``, ``q = rne(fma(R - zp, 1, zp))``) but in the rest the *first*.
* The NCHW-stride 1x1 layout bug of the pooling kernels applies here too (see :mod:`.pooling`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..checks import QuantizationError
from ..qarray import QArray
from .elementwise import check_8bit
from .paths import CONTIGUOUS
from .pooling import uses_nhwc_kernel, nhwc_buffer_in_nchw_order

__all__ = ["interpolate", "interpolate_output_size"]

F = np.float32


def interpolate_output_size(in_spatial, size=None, scale_factor=None, recompute_scale_factor=None):
    """``(output_size, kernel_scales)`` as ``F.interpolate`` computes them."""
    nd = len(in_spatial)
    if size is not None:
        osz = [int(size)] * nd if isinstance(size, (int, np.integer)) else [int(s) for s in size]
        return osz, [None] * nd
    if scale_factor is None:
        raise QuantizationError("interpolate needs size or scale_factor")
    sf = [float(scale_factor)] * nd if not isinstance(scale_factor, (list, tuple)) else [float(s) for s in scale_factor]
    osz = [int(np.floor(float(i) * s)) for i, s in zip(in_spatial, sf)]
    return osz, ([None] * nd if recompute_scale_factor else sf)


def _kernel_scale(isz, osz, scale):
    if scale is not None and scale > 0:
        return F(1.0 / scale)
    return (F(isz) / F(osz)).astype(F)


def _nearest_index(osz, isz, scale, exact):
    s = _kernel_scale(isz, osz, scale)
    d = np.arange(osz)
    if exact:
        v = np.floor(((d + 0.5) * np.float64(s)).astype(F))
    else:
        v = np.floor((d.astype(F) * s).astype(F))
    return np.minimum(v.astype(np.int64), isz - 1)


def _bilinear_params(isz, osz, align_corners, scale, fused):
    if align_corners:
        r = (F(isz - 1) / F(osz - 1)).astype(F) if osz > 1 else F(0.0)
        src = (r * np.arange(osz).astype(F)).astype(F)
    else:
        r = _kernel_scale(isz, osz, scale)
        dd = (np.arange(osz).astype(F) + F(0.5)).astype(F)
        if fused:
            from ..float32 import fma32_numpy

            src = fma32_numpy(np.full(dd.shape, r, F), dd, np.full(dd.shape, -0.5, F))
        else:
            src = ((r * dd).astype(F) - F(0.5)).astype(F)
        src = np.where(src < 0, F(0.0), src).astype(F)
    i1 = src.astype(np.int64)
    i1p = (i1 < isz - 1).astype(np.int64)
    l1 = (src - i1.astype(F)).astype(F)
    l0 = (F(1.0) - l1).astype(F)
    return i1, i1p, l0, l1


def interpolate(x: QArray, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, memory_format=CONTIGUOUS) -> QArray:
    """Quantized ``F.interpolate`` (modes ``nearest``, ``nearest-exact``, ``bilinear``)."""
    check_8bit(x, "x")
    nd = x.ndim - 2
    isz = x.shape[2:]
    osz, scales = interpolate_output_size(isz, size, scale_factor, recompute_scale_factor)
    if any(o < 1 for o in osz):
        raise QuantizationError(f"interpolate output size {osz} is empty")
    if mode in ("nearest", "nearest-exact"):
        if nd not in (2, 3):
            raise QuantizationError(f"quantized {mode} interpolation supports 2-d and 3-d inputs (torch), got {nd}-d")
        if list(isz) == list(osz):
            return x
        v = x.values
        for i in range(nd):
            idx = _nearest_index(osz[i], isz[i], scales[i], mode == "nearest-exact")
            v = jnp.take(v, jnp.asarray(idx), axis=2 + i)
        v = nhwc_buffer_in_nchw_order(v, x.shape, memory_format)
        return x.with_values(v)
    if mode != "bilinear" or nd != 2:
        raise QuantizationError(f"quantized interpolate supports nearest, nearest-exact and 2-d bilinear, not {mode!r} on {nd}-d")
    nhwc = uses_nhwc_kernel(x.shape, memory_format)
    if not nhwc and tuple(isz) == tuple(osz):
        return x
    ac = bool(align_corners)
    h1, h1p, h0l, h1l = _bilinear_params(isz[0], osz[0], ac, scales[0], nhwc)
    w1, w1p, w0l, w1l = _bilinear_params(isz[1], osz[1], ac, scales[1], nhwc)
    v = _bilinear_values(x.values, x.zero_point, *(jnp.asarray(a) for a in (h1, h1p, h0l, h1l, w1, w1p, w0l, w1l)),
                         nhwc=bool(nhwc))
    v = jnp.clip(v, x.dtype.qmin, x.dtype.qmax).astype(x.dtype.storage)
    return x.with_values(nhwc_buffer_in_nchw_order(v, x.shape, memory_format))


@functools.partial(jax.jit, static_argnames=("nhwc",))
def _bilinear_values(values, zero_point, h1, h1p, h0l, h1l, w1, w1p, w0l, w1l, *, nhwc):
    q = values.astype(jnp.float32)
    H1, H1P = jnp.asarray(h1)[:, None], jnp.asarray(h1 + h1p)[:, None]
    W1, W1P = jnp.asarray(w1)[None, :], jnp.asarray(w1 + w1p)[None, :]
    p00, p01 = q[:, :, H1, W1], q[:, :, H1, W1P]
    p10, p11 = q[:, :, H1P, W1], q[:, :, H1P, W1P]
    h0, h1w = jnp.asarray(h0l)[:, None], jnp.asarray(h1l)[:, None]
    w0, w1w = jnp.asarray(w0l)[None, :], jnp.asarray(w1l)[None, :]
    zp = zero_point.astype(jnp.float32)
    mul = f32x.mul_rn
    if not nhwc:
        A = mul(w0, p00) + mul(w1w, p01)
        B = mul(w0, p10) + mul(w1w, p11)
        # (R - zp) + zp: XLA would fold it to R for a constant zp; the barrier keeps both roundings
        R = lax.optimization_barrier((mul(h0, A) + mul(h1w, B)) - zp)
        v = jnp.round(R + zp)
    else:
        one = jnp.float32(1.0)
        Av = f32x.fma(w1w, p01, mul(w0, p00))
        Bv = f32x.fma(w1w, p11, mul(w0, p10))
        Rv = f32x.fma(h1w, Bv, mul(h0, Av)) - zp
        vec = jnp.round(jnp.minimum(f32x.fma(Rv, one, zp), F(2**31 - 128)))
        At = f32x.fma(w0, p00, mul(w1w, p01))
        Bt = f32x.fma(w0, p10, mul(w1w, p11))
        Rt = lax.optimization_barrier(f32x.fma(h0, At, mul(h1w, Bt)) - zp)
        tail = jnp.round(Rt + zp)
        c8 = values.shape[1] // 8 * 8
        v = jnp.concatenate([vec[:, :c8], tail[:, c8:]], axis=1) if c8 else tail
    return v
