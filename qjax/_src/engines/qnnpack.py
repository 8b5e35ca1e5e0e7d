"""The qnnpack engine (``torch.backends.quantized.engine = "qnnpack"``): exact accumulation, int32 bias."""

from __future__ import annotations

import dataclasses

from ..kernels.conv import conv_accumulate
from ..kernels.conv_transpose import conv_transpose_accumulate
from ..kernels.linear import linear_accumulate
from ..requant.qnnpack import requantize_qnnpack
from ..qops import qnnpack as qq
from ..qops.dynamic import float_output_qnnpack, linear_dynamic
from ..qops.mean import global_average_pool
from ..qops.paths import CHANNELS_LAST, CONTIGUOUS
from .base import ConvGeometry, ConvTransposeGeometry
from .torch_cpu import TorchCpuOps

__all__ = ["Qnnpack"]


@dataclasses.dataclass(frozen=True)
class Qnnpack(TorchCpuOps):
    """qnnpack as torch 2.13 runs it (x86 build): no int16 saturation, bias quantized to int32,
    multiplier ``fl32(fl32(sw*sx) * fl32(1/sy))``; see :mod:`qjax.requant.qnnpack`.

    Non-GEMM ops: torch's qnnpack engine sends quint8 add (equal shapes), hardswish, hardsigmoid,
    sigmoid / tanh (fixed output qparams), channels-last clamps and 2-d average pooling to QNNPACK's
    own kernels (:mod:`qjax.qops.qnnpack`); everything else runs ATen's kernels like the other engines.
    """

    name = "qnnpack"
    torch_engine = "qnnpack"  # torch.backends.quantized.engine whose kernels this reproduces

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry: ConvGeometry, relu: bool, key=None, scales64=None):
        acc = conv_accumulate(x, x_zero_point, w, w_zero_point, strides=geometry.strides, padding=geometry.padding,
                              dilation=geometry.dilation, groups=geometry.groups)
        return requantize_qnnpack(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                  out_zero_point=out_zero_point, relu=relu, scales64=scales64)

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
                       out_zero_point, geometry: ConvTransposeGeometry, key=None, scales64=None):
        acc = conv_transpose_accumulate(x, x_zero_point, w, w_zero_point, strides=geometry.strides,
                                        padding=geometry.padding, output_padding=geometry.output_padding,
                                        dilation=geometry.dilation, groups=geometry.groups)
        return requantize_qnnpack(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                  out_zero_point=out_zero_point, scales64=scales64)

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu: bool, key=None, scales64=None):
        acc = linear_accumulate(x, x_zero_point, w, w_zero_point)
        return requantize_qnnpack(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                  out_zero_point=out_zero_point, relu=relu, scales64=scales64)

    # -- QNNPACK's own non-GEMM kernels (aten/src/ATen/native/quantized/cpu/qnnpack/, qadd.cpp, ...) ------
    def add(self, a, b, scale, zero_point, *, relu=False, memory_format=CONTIGUOUS, threads=1, input_formats=None,
            in_qparams=None, out_qparams=None, key=None):
        if a.dtype.name == "quint8" and a.shape == b.shape:
            # q8vadd derives its fixed-point multipliers on the host from concrete scales (in_qparams /
            # out_qparams where the operands are traced)
            scale, zero_point = out_qparams if out_qparams is not None else (scale, zero_point)
            return qq.add(a, b, scale, zero_point, relu=relu, in_qparams=in_qparams)
        return super().add(a, b, scale, zero_point, relu=relu, memory_format=memory_format, threads=threads,
                           input_formats=input_formats)

    def relu6(self, x, *, memory_format=CONTIGUOUS, input_format=None):
        return self.hardtanh(x, 0.0, 6.0, memory_format=memory_format, input_format=input_format)

    def hardtanh(self, x, min_val, max_val, *, memory_format=CONTIGUOUS, input_format=None):
        if x.dtype.name == "quint8" and input_format == CHANNELS_LAST:
            return qq.clamp_channels_last(x, min_val, max_val)
        return super().hardtanh(x, min_val, max_val, memory_format=memory_format)

    def hardswish(self, x, scale, zero_point, *, memory_format=CONTIGUOUS, threads=1):
        if x.dtype.name == "quint8":
            return qq.hardswish(x, scale, zero_point)
        return super().hardswish(x, scale, zero_point, memory_format=memory_format, threads=threads)

    def hardsigmoid(self, x, *, memory_format=CONTIGUOUS, threads=1):
        if x.dtype.name == "quint8":
            return qq.hardsigmoid(x)
        return super().hardsigmoid(x, memory_format=memory_format, threads=threads)

    def sigmoid(self, x, scale=None, zero_point=None, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None):
        if x.dtype.name == "quint8" and scale is None:
            return qq.sigmoid(x, in_qparams)
        return super().sigmoid(x, scale, zero_point, memory_format=memory_format, threads=threads,
                               in_qparams=in_qparams)

    def tanh(self, x, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None):
        if x.dtype.name == "quint8":
            return qq.tanh(x, in_qparams)
        return super().tanh(x, memory_format=memory_format, threads=threads, in_qparams=in_qparams)

    def avg_pool(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, *,
                 memory_format=CONTIGUOUS):
        if x.dtype.name == "quint8" and x.ndim == 4 and not ceil_mode:
            return qq.avg_pool2d(x, kernel_size, stride, padding)
        return super().avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                                memory_format=memory_format)

    def adaptive_avg_pool(self, x, output_size, *, memory_format=CONTIGUOUS):
        if x.dtype.name == "quint8" and x.ndim == 4:
            osz = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
            (h, w) = x.shape[2:]
            oh, ow = (h if osz[0] is None else osz[0]), (w if osz[1] is None else osz[1])
            if (h, w) != (oh, ow) and h % oh == 0 and w % ow == 0:
                # torch's qnnpack adaptive pooling with an integral window is QNNPACK's average pooling
                k = (h // oh, w // ow)
                return qq.avg_pool2d(x, k, k, 0)
        return super().adaptive_avg_pool(x, output_size, memory_format=memory_format)

    def mean(self, x, dims, keepdim, *, memory_format=CONTIGUOUS, threads=1):
        # ReduceOps.cpp mean_out_quantized_cpu: on the qnnpack engine a quint8 4-d mean with dim written
        # [2, 3] is qnnpack_mean (QNNPACK's global average pooling, any input layout); the rest is ATen's
        if x.dtype.name == "quint8" and x.ndim == 4 and tuple(dims) == (2, 3):
            return global_average_pool(x, keepdim)
        return super().mean(x, dims, keepdim, memory_format=memory_format, threads=threads)

    def linear_dynamic(self, x, w, w_scale, w_zero_point, w_per_channel, bias, *, relu=False, reduce_range=True):
        """``qlinear_dynamic.cpp`` ``PackedLinearWeightsQnnp::apply_dynamic_impl``: the input's qparams over the
        full 0..255 range (torch warns "qnnpack incorrectly ignores reduce_range"), ``at::quantize_per_tensor``,
        exact accumulation, QNNPACK's float output (mul, then the bias add)."""
        return linear_dynamic(x, w, w_scale, w_zero_point, bias, relu=relu, reduce_range=False, saturation=None,
                              float_output=float_output_qnnpack)
