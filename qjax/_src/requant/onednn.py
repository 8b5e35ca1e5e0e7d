"""oneDNN requantization as torch 2.13 drives it (``onednn`` engine, and ``x86`` convs that dispatch there).

torch, ideep and oneDNN each invert the scales once more, rounding to float32 each time
(``qconv.cpp`` / ``qlinear.cpp`` pass ``1/scale``; ideep ``conv.hpp`` / ``matmul.hpp`` invert again;
oneDNN 3.12 stores ``dst_scales_inv = 1.f / dst_scale``), so the factors are::

    a_src  = fl32(1 / fl32(1 / sx))
    a_wei  = fl32(sw)                                 (conv)
           = fl32(1 / fl32(1 / sw))                   (linear)
    a_dinv = fl32(1 / fl32(1 / fl32(1 / sy)))

and the epilogue (``jit_brgemm_kernel.cpp`` ``store_accumulators_apply_post_ops``; same order in
the brdgmm, x8s8s32x and deconvolution kernels) has no FMA::

    v = fl32(acc); v = fl32(v * a_src); v = fl32(v * a_wei[o]); v = fl32(v + bias[o])
    relu: v = max(v, 0);  v = fl32(v * a_dinv); v = fl32(v + zy)
    q = rne(clamp(v, 0, 255))          # saturates in float: a huge value gives 255 (fbgemm gives 0)

oneDNN's gemm-based convolution (chosen for 3-d depthwise convolutions with dilation)
multiplies once by ``fl32(a_src * a_wei[o])`` instead (``precompute_scales``).  With the
float32 scales qjax keeps, ``fl32(1.0 / x)`` in double equals the float32 division.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x

__all__ = ["onednn_factors", "requantize_onednn"]


def _inv(x):
    return f32x.div_rn(1.0, x)


def onednn_factors(x_scale, w_scale, out_scale, op="conv"):
    """``(a_src, a_wei, a_dinv)`` float32 (``a_wei`` per channel when ``w_scale`` is a vector)."""
    a_src = _inv(_inv(x_scale))
    sw = jnp.asarray(w_scale, jnp.float32)
    a_wei = sw if op == "conv" else _inv(_inv(sw))
    a_dinv = _inv(_inv(_inv(out_scale)))
    return a_src, a_wei, a_dinv


def requantize_onednn(acc, *, x_scale, w_scale, bias, out_scale, out_zero_point, relu=False, op="conv",
                      combined_scale=False, qmin=0, qmax=255):
    """int32 accumulator (channels last) -> output values as int32 (see the module docstring)."""
    return _requantize(acc, x_scale, w_scale, bias, out_scale, out_zero_point, relu=bool(relu), op=op,
                       combined_scale=bool(combined_scale), qmin=int(qmin), qmax=int(qmax))


# Jitted so that layers with the same shapes share one trace (as for fbgemm's requantization).
# Per element the epilogue is native float32 arithmetic: each product is rounded once and
# passes through f32x.uncontracted before anything adds to it or multiplies it again, so XLA
# can neither contract it into an FMA with the bias / zero-point add nor reassociate the scale
# products; every product then equals oneDNN's unfused ``vmulps`` (tests/requant/test_onednn.py
# puts values on the ties where a contracted or reassociated form differs).  The scale factors
# are per channel at most and keep the integer-emulated mul_rn.
@functools.partial(jax.jit, static_argnames=("relu", "op", "combined_scale", "qmin", "qmax"))
def _requantize(acc, x_scale, w_scale, bias, out_scale, out_zero_point, *, relu, op, combined_scale, qmin, qmax):
    a_src, a_wei, a_dinv = onednn_factors(x_scale, w_scale, out_scale, op)
    nc = f32x.uncontracted
    v = acc.astype(jnp.float32)
    if combined_scale:
        v = nc(v * f32x.mul_rn(a_src, a_wei))
    else:
        v = nc(nc(v * a_src) * a_wei)
    if bias is not None:
        v = v + jnp.asarray(bias, jnp.float32)
    if relu:
        v = jnp.maximum(v, 0.0)
    v = nc(v * a_dinv) + jnp.asarray(out_zero_point).astype(jnp.float32)
    v = jnp.clip(v, np.float32(qmin), np.float32(qmax))
    return jnp.round(v).astype(jnp.int32)
