"""Quantized concatenation (``quantized::cat`` / FloatFunctional.cat / ``torch.cat``), torch 2.13 CPU.

Two kernels (``qconcat.cpp``):

* **NHWC fast path** — ``dim == 1`` and every input a 4-d channels-last tensor: per input,
  a plain copy when its (scale, zero point) equal the output's (and no ReLU); otherwise the
  first ``C//8*8`` channels ``quantize_vec(dequantize_vec(q))`` with ``inv = fl32(1/scale)``
  and the remaining channels ``quantize_scalar(dequantize_scalar(q))``.
* **generic** — every input dequantized (``dequantize_scalar``), concatenated, and quantized
  with ``torch.quantize_per_tensor``'s fused rule; inputs that already have the output's
  qparams are requantized too.  ``cat_relu`` then takes ``max(q, zp)``.

``torch.cat`` on quantized tensors uses the first input's qparams for the output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..checks import QuantizationError
from ..qarray import QArray, as_f32, as_i32
from ..quantize import quantize_fused
from .arith import dequantize_scalar, dequantize_vec, quantize_scalar, quantize_vec
from .elementwise import check_8bit, check_output_qparams

__all__ = ["cat"]


def cat(xs, scale=None, zero_point=None, *, dim=0, relu=False, channels_last=False) -> QArray:
    """Concatenate quantized arrays into (``scale``, ``zero_point``) (default: the first input's).

    ``channels_last=True`` means every input is a 4-d channels-last torch tensor (selects the
    NHWC kernel when ``dim == 1``).
    """
    xs = list(xs)
    if not xs:
        raise QuantizationError("cat needs at least one input")
    for i, x in enumerate(xs):
        check_8bit(x, f"xs[{i}]")
    dt = xs[0].dtype
    if any(x.dtype != dt for x in xs):
        raise QuantizationError("cat inputs must share one dtype")
    if scale is None:
        scale, zero_point = xs[0].scale, xs[0].zero_point
    check_output_qparams(xs[0], scale, zero_point)
    nd = xs[0].ndim
    dim = dim % nd
    so, zo = as_f32(scale), as_i32(zero_point)
    nhwc = bool(channels_last and dim == 1 and nd == 4)
    same = tuple(
        bool(_concrete_pair(x, so, zo) and np.float32(np.asarray(x.scale)) == np.float32(np.asarray(so))
             and int(np.asarray(x.zero_point)) == int(np.asarray(zo)))
        for x in xs)
    values = _cat_values(tuple(x.values for x in xs), tuple(x.scale for x in xs), tuple(x.zero_point for x in xs),
                         so, zo, dim=dim, relu=bool(relu), nhwc=nhwc, same=same, qmin=dt.qmin, qmax=dt.qmax)
    return QArray(values.astype(dt.storage), so, zo, dt, None, check=False)


@functools.partial(jax.jit, static_argnames=("dim", "relu", "nhwc", "same", "qmin", "qmax"))
def _cat_values(values, scales, zero_points, so, zo, *, dim, relu, nhwc, same, qmin, qmax):
    if nhwc:
        inv = f32x.div_rn(1.0, so)
        parts = []
        for v, sx, zx, is_same in zip(values, scales, zero_points, same):
            if is_same and not relu:
                parts.append(v.astype(jnp.int32))
                continue
            dv = dequantize_vec(v, sx, zx)
            ds = dequantize_scalar(v, sx, zx)
            if relu:
                dv, ds = jnp.maximum(dv, 0.0), jnp.maximum(ds, 0.0)
            c8 = v.shape[1] // 8 * 8
            vec = quantize_vec(dv, inv, zo, qmin, qmax)
            sca = quantize_scalar(ds, inv, zo, qmin, qmax)
            parts.append(jnp.concatenate([vec[:, :c8], sca[:, c8:]], axis=1) if c8 else sca)
        return jnp.concatenate(parts, axis=1)
    y = jnp.concatenate([dequantize_scalar(v, sx, zx) for v, sx, zx in zip(values, scales, zero_points)], axis=dim)
    out = quantize_fused(y, f32x.div_rn(1.0, so), zo, qmin, qmax, jnp.int32)
    return jnp.maximum(out, zo) if relu else out


def _concrete_pair(x, so, zo):
    from ..checks import is_concrete

    return all(is_concrete(v) for v in (x.scale, x.zero_point, so, zo))
