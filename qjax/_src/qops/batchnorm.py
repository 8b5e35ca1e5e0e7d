"""Quantized BatchNorm (``quantized::batch_norm{2d,3d}[_relu]``), torch 2.13 CPU.

Folding (``qbatch_norm.cpp`` ``compute_fused_params``, float32 with a few double steps)::

    inv_sigma = fl32(1.0 / double(sqrtf(fl32(var + fl32(eps)))))
    alpha     = fl32(double(fl32(inv_sigma * w)) * (si / so))          # si / so in double
    beta      = fl32(double(fl32(b - fl32(fl32(mean * inv_sigma) * w))) / so)

Kernel (``q_batch_norm_kernel``, AVX2 build, channels-last): ``y = fma(alpha[c], q - zi, beta[c])``;
channels below ``C//8*8`` round with ``cvtps2dq(min(y, 2**31-128))`` and add the zero point in
wrapping int32; the last ``C % 8`` channels use ``lrintf`` (no wrap); then ReLU ``max(r, zo)`` and
the clamp.  The folding needs concrete BatchNorm statistics (they are model constants).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..checks import QuantizationError, is_concrete
from ..qarray import QArray, as_f32, as_i32, scale_words
from ..requant.fbgemm import round_to_int32_cvtps2dq
from .elementwise import check_8bit, check_output_qparams

__all__ = ["batch_norm", "fold_batch_norm"]

F = np.float32


def fold_batch_norm(weight, bias, mean, var, eps, in_scale, out_scale):
    """``(alpha, beta)`` float32 vectors exactly as torch folds them (numpy, concrete inputs)."""
    w, b = np.asarray(weight, F), np.asarray(bias, F)
    m, v = np.asarray(mean, F), np.asarray(var, F)
    si, so = float(np.float32(in_scale)), float(np.float32(out_scale))
    inv_sigma = (1.0 / np.sqrt((v + F(eps)).astype(F)).astype(F).astype(np.float64)).astype(F)
    alpha = ((inv_sigma * w).astype(F).astype(np.float64) * (si / so)).astype(F)
    t = ((m * inv_sigma).astype(F) * w).astype(F)
    beta = ((b - t).astype(F).astype(np.float64) / so).astype(F)
    return alpha, beta


def batch_norm(x: QArray, weight, bias, mean, var, eps, scale, zero_point, *, relu=False, in_scale=None) -> QArray:
    """Quantized BatchNorm over channel axis 1 of ``(N, C, *spatial)`` (2-d or 3-d).

    ``in_scale`` overrides ``x.scale`` for the fold (needed when ``x.scale`` is traced, e.g.
    inside a jitted model: torch folds with the scale in double precision).
    """
    check_8bit(x, "x")
    check_output_qparams(x, scale, zero_point)
    c = x.shape[1]
    for name, arr in (("weight", weight), ("bias", bias), ("mean", mean), ("var", var)):
        if not is_concrete(arr):
            raise QuantizationError(f"batch_norm {name} must be concrete: torch folds it in float64 arithmetic")
        if np.shape(arr) != (c,):
            raise QuantizationError(f"batch_norm {name} must have shape ({c},), got {np.shape(arr)}")
    si = x.scale if in_scale is None else in_scale
    if not (is_concrete(si) and is_concrete(scale)):
        raise QuantizationError("batch_norm needs concrete input and output scales (the fold is done in double); "
                                "pass in_scale= when x.scale is traced")
    alpha, beta = fold_batch_norm(weight, bias, mean, var, eps, np.asarray(si), np.asarray(scale))
    shp = (1, c) + (1,) * (x.ndim - 2)
    a, b = jnp.asarray(alpha).reshape(shp), jnp.asarray(beta).reshape(shp)
    zo = as_i32(zero_point)
    d = (x.values.astype(jnp.int32) - x.zero_point).astype(jnp.float32)
    y = f32x.fma(a, d, b)
    rv = round_to_int32_cvtps2dq(jnp.minimum(y, F(2**31 - 128))) + zo  # wraps like vpaddd
    r = jnp.round(y)
    rs = jnp.clip(r, F(x.dtype.qmin - 512), F(x.dtype.qmax + 512)).astype(jnp.int32) + zo  # 64-bit lrintf
    c8 = c // 8 * 8
    chan = jnp.arange(c).reshape(shp)
    out = jnp.where(chan < c8, rv, rs)
    if relu:
        out = jnp.maximum(out, zo)
    out = jnp.clip(out, x.dtype.qmin, x.dtype.qmax)
    return QArray(out.astype(x.dtype.storage), as_f32(scale), zo, x.dtype, None, check=False,
                  scale64=scale_words(scale))  # torch's double output scale stays on the result
