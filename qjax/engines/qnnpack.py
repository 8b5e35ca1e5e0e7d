"""The qnnpack engine (``torch.backends.quantized.engine = "qnnpack"``): exact accumulation, int32 bias."""

from __future__ import annotations

import dataclasses

from ..kernels.conv import conv_accumulate
from ..kernels.conv_transpose import conv_transpose_accumulate
from ..kernels.linear import linear_accumulate
from ..requant.qnnpack import requantize_qnnpack
from .base import ConvGeometry, ConvTransposeGeometry

__all__ = ["Qnnpack"]


@dataclasses.dataclass(frozen=True)
class Qnnpack:
    """qnnpack as torch 2.13 runs it (x86 build): no int16 saturation, bias quantized to int32,
    multiplier ``fl32(fl32(sw*sx) * fl32(1/sy))``; see :mod:`qjax.requant.qnnpack`."""

    name = "qnnpack"

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry: ConvGeometry, relu: bool):
        acc = conv_accumulate(x, x_zero_point, w, w_zero_point, strides=geometry.strides, padding=geometry.padding,
                              dilation=geometry.dilation, groups=geometry.groups)
        return requantize_qnnpack(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                  out_zero_point=out_zero_point, relu=relu)

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
                       out_zero_point, geometry: ConvTransposeGeometry):
        acc = conv_transpose_accumulate(x, x_zero_point, w, w_zero_point, strides=geometry.strides,
                                        padding=geometry.padding, output_padding=geometry.output_padding,
                                        dilation=geometry.dilation, groups=geometry.groups)
        return requantize_qnnpack(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                  out_zero_point=out_zero_point)

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu: bool):
        acc = linear_accumulate(x, x_zero_point, w, w_zero_point)
        return requantize_qnnpack(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                  out_zero_point=out_zero_point, relu=relu)
