"""qnnpack requantization (``torch.backends.quantized.engine = "qnnpack"``), torch 2.13.

Sources: ``aten/src/ATen/native/quantized/cpu/qconv.cpp`` / ``qlinear.cpp``
(``PackedConvWeightsQnnp::apply_impl``), ``QnnpackUtils.h`` ``generate_requantization_scales``,
``qnnpack/src/q8gemm/4x4c2-sse2.c``::

    bq[o] = rne(fl32(bias[o] * fl32(1 / fl32(sx * sw[o]))))     # bias -> int32 (scalar quantize rule)
    acc   = sum (x - zx)(w - zw[o]) + bq[o]                       # exact int32, no saturation
    rs[o] = fl32(fl32(sw[o] * sx) * fl32(1 / sy))                 # a multiplication by 1/sy, not a division
    q     = clamp(rne(fl32(fl32(acc) * rs[o])) + zy, relu ? zy : 0, 255)   (|.| >= 2**31 -> INT32_MIN)

Unlike fbgemm the bias is rounded to an integer *before* accumulation.  torch forms the bias
scale ``sx * sw`` in double (``QuantUtils.h`` ``QuantizeBias``: ``weight.q_scale() * input_scale``, or
the double ``q_per_channel_scales() * input_scale``) and quantizes with its float cast, so it is
``fl32(fl64(dx * dw))`` of torch's doubles (:func:`qjax.float64.product_f32`; for float32-valued scales
the double product is exact and this is the correctly rounded float32 product).  The multiplier ``rs``
takes float scales (``generate_requantization_scales``), ``fl32`` of the doubles.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import float32 as f32x
from ..float64 import product_f32
from ..quantize import quantize_unfused
from .fbgemm import round_to_int32_cvtps2dq

__all__ = ["quantize_bias_qnnpack", "requantize_qnnpack", "qnnpack_multiplier"]


def quantize_bias_qnnpack(bias, x_scale, w_scale, scales64=None):
    """``quantize_per_tensor/channel(bias, sx*sw, 0, qint32)``: the scalar rule, two roundings.

    ``scales64``: ``(x, w, out)`` double words of the scales (each None where float32-valued), or None.
    """
    x64, w64, _ = scales64 if scales64 is not None else (None, None, None)
    sb = product_f32(x_scale, x64, w_scale, w64)
    inv = f32x.div_rn(1.0, sb)
    return quantize_unfused(jnp.asarray(bias, jnp.float32), inv, jnp.int32(0), -(2**31), 2**31 - 1, jnp.int32)


def qnnpack_multiplier(x_scale, w_scale, out_scale):
    """``rs = fl32(fl32(sw * sx) * fl32(1 / sy))`` (per channel when ``w_scale`` is a vector)."""
    return f32x.mul_rn(f32x.mul_rn(jnp.asarray(w_scale, jnp.float32), jnp.asarray(x_scale, jnp.float32)),
                       f32x.div_rn(1.0, out_scale))


def requantize_qnnpack(acc, *, x_scale, w_scale, bias, out_scale, out_zero_point, relu=False, scales64=None):
    """int32 accumulator (channels last) -> quint8 values as int32 (see the module docstring)."""
    if bias is not None:
        acc = acc + quantize_bias_qnnpack(bias, x_scale, w_scale, scales64)
    rs = qnnpack_multiplier(x_scale, w_scale, out_scale)
    r = round_to_int32_cvtps2dq(f32x.mul_rn(acc.astype(jnp.float32), rs))
    zy = jnp.asarray(out_zero_point, jnp.int32)
    lo = zy if relu else 0
    return jnp.clip(r + zy, lo, 255)
