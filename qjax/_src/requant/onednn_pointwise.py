"""The epilogue of torch 2.13's ``onednn::qconv_pointwise`` / ``qlinear_pointwise`` (what inductor's x86 lowering runs).

These ops (``aten/src/ATen/native/quantized/cpu/qconv.cpp`` ``_quantized_convolution_onednn``,
``qlinear.cpp`` ``linear_int8_with_onednn_weight``) hand oneDNN 3.12 its scales directly — unlike the
eager ``quantized::conv2d`` of the onednn engine (:mod:`qjax.requant.onednn`), whose ideep layer
inverts the input / weight scales twice.  Measured against torch (``tests/interop/test_pt2e_inductor.py``,
fp32 outputs compared bit for bit, where the double inversion differs on ~60% of outputs)::

    a_src  = fl32(x_scale)                   x_scale a Python float (double) or a float32 tensor
    a_wei  = fl32(w_scale[o])                conv and linear alike
    v = fl32(acc); v = fl32(v * a_src); v = fl32(v * a_wei); v = fl32(v + bias[o])     (no FMA)
    binary "sum" (the accumulator, u8 with accum scale / zero point, or fp32 with scale 1), one FMA
    (before the unary op and the output scale; the unfused product, or adding after the output scale,
    differ at ties — measured, e.g. a ResNet-50 bottleneck):
        v = fl32((accum - accum_zp) * fl32(accum_scale) + v)
    unary: relu max(v, 0); hardtanh clip(v, lo, hi)
    fp32 output (output scale 1.0, zero point 0): v itself
    u8 / s8 output: v = fl32(fl32(v * a_dinv) + zy); q = rne(clamp(v, qmin, qmax))
        a_dinv = fl32(1 / fl32(output_scale))   (the double rounded to float32 first, then a float32
                                                 division: measured with double output scales, where
                                                 fl32(1 / output_scale) in double differs)

``a_dinv`` is computed on the host from the Python float torch receives.  Products pass through
:func:`qjax.float32.uncontracted` so XLA cannot fuse them into FMAs with the following adds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x

__all__ = ["output_multiplier", "pointwise_epilogue", "UNARY_POST_OPS"]

#: the unary post-ops reproduced exactly (oneDNN's eltwise relu / clip are exact in float32)
UNARY_POST_OPS = ("none", "relu", "hardtanh")


def output_multiplier(output_scale: float) -> np.float32:
    """``a_dinv`` from the Python float ``output_scale``: rounded to float32, then ``1.0f / scale`` in float32
    (oneDNN's ``dst_scales_inv``; a second and third float32 inversion would give the same value)."""
    return np.float32(np.float32(1.0) / np.float32(output_scale))


def pointwise_epilogue(acc, *, x_scale, w_scale, bias, accum=None, accum_scale=1.0, accum_zero_point=0,
                       unary="none", unary_args=(), out_dtype="uint8", output_scale=1.0, output_zero_point=0):
    """int32 accumulator ``(..., O)`` -> float32 (``out_dtype="float32"``) or int32 output values.

    ``x_scale`` float32 scalar (array or host float), ``w_scale`` float32 ``(O,)`` or scalar,
    ``bias`` float32 ``(O,)`` or None, ``accum`` the binary ``sum`` operand in ``acc``'s layout
    (integer values or float32) or None; see the module docstring for the arithmetic.
    """
    if unary not in UNARY_POST_OPS:
        raise ValueError(f"unary post-op {unary!r}: only {UNARY_POST_OPS} are reproduced exactly")
    lo, hi = (float(unary_args[0]), float(unary_args[1])) if unary == "hardtanh" else (0.0, 0.0)
    if out_dtype == "float32":
        qmin = qmax = 0
        a_dinv, zy = np.float32(1.0), np.float32(0.0)
    else:
        qmin, qmax = (0, 255) if out_dtype == "uint8" else (-128, 127)
        a_dinv, zy = output_multiplier(output_scale), np.float32(output_zero_point)
    return _epilogue(acc, jnp.asarray(x_scale, jnp.float32), jnp.asarray(w_scale, jnp.float32),
                     None if bias is None else jnp.asarray(bias, jnp.float32), accum,
                     jnp.float32(np.float32(accum_scale)), jnp.float32(np.float32(accum_zero_point)),
                     jnp.float32(a_dinv), jnp.float32(zy), unary=unary, lo=lo, hi=hi,
                     fp32_out=out_dtype == "float32", qmin=qmin, qmax=qmax)


@functools.partial(jax.jit, static_argnames=("unary", "lo", "hi", "fp32_out", "qmin", "qmax"))
def _epilogue(acc, a_src, a_wei, bias, accum, accum_scale, accum_zp, a_dinv, zy, *, unary, lo, hi, fp32_out, qmin,
              qmax):
    nc = f32x.uncontracted
    v = nc(nc(acc.astype(jnp.float32) * a_src) * a_wei)
    if bias is not None:
        v = v + bias
    if accum is not None:
        # oneDNN's sum post-op is one vfmadd231ps: fl32((accum - zp) * scale + v), a single rounding
        v = f32x.fma(accum.astype(jnp.float32) - accum_zp, accum_scale, v)
    if unary == "relu":
        v = jnp.maximum(v, jnp.float32(0.0))
    elif unary == "hardtanh":
        v = jnp.clip(v, jnp.float32(lo), jnp.float32(hi))
    if fp32_out:
        return v
    v = nc(v * a_dinv) + zy
    v = jnp.clip(v, jnp.float32(qmin), jnp.float32(qmax))
    return jnp.round(v).astype(jnp.int32)
