"""oneDNN requantization as torch 2.13 drives it (``onednn`` engine, and ``x86`` convs that dispatch there).

torch, ideep and oneDNN each invert the scales once more, rounding to float32 each time
(``qconv.cpp`` / ``qlinear.cpp`` pass ``1/scale``; ideep ``conv.hpp`` / ``matmul.hpp`` invert again;
oneDNN 3.12 stores ``dst_scales_inv = 1.f / dst_scale``), so the factors are::

    a_src  = fl32(1 / fl32(1 / sx))
    a_wei  = fl32(sw)                                 (conv)
           = fl32(1 / fl32(1 / sw))                   (linear)
    a_dinv = fl32(1 / fl32(1 / fl32(1 / sy)))

The first inversion of each is torch's, in double (``ideep::scale_t(1, 1.0/input_scale)``, ``double
inv_output_scale = 1.0/output_scale``; ``qlinear_prepack.cpp``'s per-tensor ``1.0/weight.q_scale()``),
so with torch's double scales ``dx``, ``dw``, ``dy`` the factors are, with
``R(d) = fl32(fl64(1.0 / d))`` (:func:`qjax.float64.reciprocal_to_f32`)::

    a_src  = fl32(1 / R(dx))
    a_wei  = fl32(dw)                                 (conv: ``item<float>()`` / ``scale_t(1, q_scale())``)
           = fl32(1 / R(dw))                          (linear, per tensor)
           = fl32(1 / fl32(1 / fl32(dw)))             (linear, per channel: ``1.0f / item<float>()``)
    a_dinv = fl32(1 / fl32(1 / R(dy)))

which equal the float32 forms above when the doubles are float32-valued.

and the epilogue (``jit_brgemm_kernel.cpp`` ``store_accumulators_apply_post_ops``; same order in
the brdgmm, x8s8s32x and deconvolution kernels) has no FMA::

    v = fl32(acc); v = fl32(v * a_src); v = fl32(v * a_wei[o]); v = fl32(v + bias[o])
    relu: v = max(v, 0);  v = fl32(v * a_dinv); v = fl32(v + zy)
    q = rne(clamp(v, 0, 255))          # saturates in float: a huge value gives 255 (fbgemm gives 0)

oneDNN's gemm-based convolution (chosen for 3-d depthwise convolutions with dilation)
multiplies once by ``fl32(a_src * a_wei[o])`` instead (``precompute_scales``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..float64 import reciprocal_f32

__all__ = ["onednn_factors", "requantize_onednn"]


def _inv(x):
    return f32x.div_rn(1.0, x)


def onednn_factors(x_scale, w_scale, out_scale, op="conv", scales64=None):
    """``(a_src, a_wei, a_dinv)`` float32 (``a_wei`` per channel when ``w_scale`` is a vector).

    ``scales64``: ``(x, w, out)`` double words of the scales (:mod:`qjax.float64`), each None where the
    scale is float32-valued; torch's double inversions use them (module docstring).
    """
    x64, w64, y64 = scales64 if scales64 is not None else (None, None, None)
    a_src = _inv(reciprocal_f32(x_scale, x64))
    sw = jnp.asarray(w_scale, jnp.float32)
    if op == "conv":
        a_wei = sw
    elif sw.ndim == 0:
        a_wei = _inv(reciprocal_f32(sw, w64))
    else:
        a_wei = _inv(_inv(sw))  # per channel: torch reads item<float>() and inverts in float
    a_dinv = _inv(_inv(reciprocal_f32(out_scale, y64)))
    return a_src, a_wei, a_dinv


def requantize_onednn(acc, *, x_scale, w_scale, bias, out_scale, out_zero_point, relu=False, op="conv",
                      combined_scale=False, qmin=0, qmax=255, scales64=None):
    """int32 accumulator (channels last) -> output values as int32 (see the module docstring)."""
    return _requantize(acc, x_scale, w_scale, bias, out_scale, out_zero_point, scales64, relu=bool(relu), op=op,
                       combined_scale=bool(combined_scale), qmin=int(qmin), qmax=int(qmax))


# Jitted so that layers with the same shapes share one trace (as for fbgemm's requantization).
# Per element the epilogue is native float32 arithmetic: each product is rounded once and
# passes through f32x.uncontracted before anything adds to it or multiplies it again, so XLA
# can neither contract it into an FMA with the bias / zero-point add nor reassociate the scale
# products; every product then equals oneDNN's unfused ``vmulps`` (tests/requant/test_onednn.py
# puts values on the ties where a contracted or reassociated form differs).  The scale factors
# are per channel at most and keep the integer-emulated mul_rn.
@functools.partial(jax.jit, static_argnames=("relu", "op", "combined_scale", "qmin", "qmax"))
def _requantize(acc, x_scale, w_scale, bias, out_scale, out_zero_point, scales64, *, relu, op, combined_scale, qmin,
                qmax):
    a_src, a_wei, a_dinv = onednn_factors(x_scale, w_scale, out_scale, op, scales64)
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
