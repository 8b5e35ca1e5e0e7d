"""The reference engine: dequantize -> float op -> quantize, as torch's reference modules and pt2e run it.

``torch.ao.nn.quantized.reference`` modules and the pt2e ``quantized_decomposed`` ops compute a
quantized layer in float32::

    x = fl32(fl32(float(q) - zx) * sx);  w = fl32(fl32(float(qw) - zw) * sw)    (dequantize)
    y = conv(x, w) + bias   (float32)                                            (the float op)
    q = clamp(rne(fl32(y * fl32(1/sy))) + zy)       output_quantize="decomposed" (pt2e; rounds, then adds zy)
    q = clamp(rne(fma(y, fl32(1/sy), zy)))           output_quantize="torch" (torch.quantize_per_tensor)

The float convolution is XLA's at full float32 precision.  torch's own float convolution sums
in an order that depends on its kernel (oneDNN), so the two agree bit for bit whenever the
float sum is exact — e.g. power-of-two scales with sums below 2**24 units — and can differ by
one step at ties otherwise (as torch's reference path differs from its own kernels).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from .. import float32 as f32x
from ..quantize import quantize_fused
from .base import ConvGeometry, ConvTransposeGeometry, refuse
from .torch_cpu import TorchCpuOps

__all__ = ["Reference"]


def _deq(q, scale, zero_point, axis_last=False):
    s = jnp.asarray(scale, jnp.float32)
    z = jnp.asarray(zero_point).astype(jnp.float32)
    return (q.astype(jnp.float32) - z) * s  # a subtraction then a multiplication: nothing to contract


@dataclasses.dataclass(frozen=True)
class Reference(TorchCpuOps):
    """dequantize -> float32 op -> quantize (``output_quantize``: ``"decomposed"`` (pt2e) or ``"torch"``)."""

    output_quantize: str = "decomposed"  # how the float result is quantized (see the module docstring)
    name = "reference"
    torch_engine = None  # torch's reference modules run on any engine's float ops

    def __post_init__(self):
        if self.output_quantize not in ("decomposed", "torch"):
            raise ValueError(f"output_quantize={self.output_quantize!r}; use 'decomposed' or 'torch'")

    def _requantize(self, y, out_scale, out_zero_point, relu):
        if relu:
            y = jnp.maximum(y, 0.0)
        inv = f32x.div_rn(1.0, out_scale)
        zy = jnp.asarray(out_zero_point, jnp.int32)
        if self.output_quantize == "torch":
            return quantize_fused(y, inv, zy, 0, 255, jnp.int32)
        r = jnp.round(f32x.mul_rn(y, inv))
        r = jnp.clip(r, -1024.0, 1024.0).astype(jnp.int32)
        return jnp.clip(r + zy, 0, 255)

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry: ConvGeometry, relu: bool, key=None, scales64=None):
        nd = x.ndim - 2
        xf = _deq(x, x_scale, x_zero_point)
        wf = _deq(w, w_scale, w_zero_point)  # channels-last weight: per-channel parameters broadcast on O (last)
        sp = "DHW"[-nd:]
        y = lax.conv_general_dilated(xf, wf, geometry.strides, geometry.padding, rhs_dilation=geometry.dilation,
                                     dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"),
                                     feature_group_count=geometry.groups, precision=lax.Precision.HIGHEST)
        if bias is not None:
            y = y + bias
        return self._requantize(y, out_scale, out_zero_point, relu)

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
                       out_zero_point, geometry: ConvTransposeGeometry, key=None, scales64=None):
        nd = x.ndim - 2
        xf = _deq(x, x_scale, x_zero_point)
        cin, og = w.shape[:2]
        k = w.shape[2:]
        g = geometry.groups
        wz = jnp.asarray(w_zero_point).astype(jnp.float32)
        ws = jnp.asarray(w_scale, jnp.float32)
        if w_per_channel:  # axis 1 of (C_in, O/g, *K)
            shp = (1, -1) + (1,) * nd
            wz, ws = wz.reshape(shp), ws.reshape(shp)
        wf = (w.astype(jnp.float32) - wz) * ws
        rhs = jnp.transpose(wf.reshape((g, cin // g, og) + k), tuple(range(3, 3 + nd)) + (1, 0, 2))
        rhs = jnp.flip(rhs.reshape(k + (cin // g, g * og)), axis=tuple(range(nd)))
        pads = tuple((d * (kk - 1) - p, d * (kk - 1) - p + op) for kk, p, op, d in
                     zip(k, geometry.padding, geometry.output_padding, geometry.dilation))
        sp = "DHW"[-nd:]
        y = lax.conv_general_dilated(xf, rhs, (1,) * nd, pads, lhs_dilation=geometry.strides,
                                     rhs_dilation=geometry.dilation,
                                     dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"),
                                     feature_group_count=g, precision=lax.Precision.HIGHEST)
        if bias is not None:
            y = y + bias
        return self._requantize(y, out_scale, out_zero_point, False)

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu: bool, key=None, scales64=None):
        xf = _deq(x, x_scale, x_zero_point)
        wz = jnp.asarray(w_zero_point).astype(jnp.float32)
        ws = jnp.asarray(w_scale, jnp.float32)
        if w_per_channel:
            wz, ws = wz[:, None], ws[:, None]
        wf = (w.astype(jnp.float32) - wz) * ws
        y = lax.dot_general(xf, wf, (((xf.ndim - 1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)
        if bias is not None:
            y = y + bias
        return self._requantize(y, out_scale, out_zero_point, relu)

    # torch's reference Embedding / EmbeddingBag dequantize the weight and run the float op, which is not
    # FBGEMM's fused fold the torch engines inherit (pt2e graphs import it as dequantize + embedding nodes)
    def embedding(self, values, row_scale, row_bias, indices):
        refuse(self, "quantized embedding", "torch's reference Embedding dequantizes the weight first")

    def embedding_bag(self, values, row_scale, row_bias, indices, offsets, per_sample_weights=None):
        refuse(self, "quantized embedding_bag", "torch's reference EmbeddingBag dequantizes the weight first")
