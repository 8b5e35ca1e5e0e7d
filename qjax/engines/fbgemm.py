"""The fbgemm engine: torch 2.13's x86 default kernels, including their ISA quirks."""

from __future__ import annotations

import dataclasses

from ..checks import QuantizationError
from ..kernels.conv import conv_accumulate
from ..kernels.conv_transpose import conv_transpose_accumulate, fbgemm_direct_conv_transpose, fbgemm_direct_path
from ..kernels.fbgemm_paths import ISAS, fbgemm_conv_path, host_isa
from ..kernels.linear import linear_accumulate
from ..requant.fbgemm import requantize_fbgemm
from .base import ConvGeometry, ConvTransposeGeometry
from .torch_cpu import TorchCpuOps

__all__ = ["Fbgemm"]


@dataclasses.dataclass(frozen=True)
class Fbgemm(TorchCpuOps):
    """fbgemm arithmetic as torch 2.13 runs it on an x86 CPU.

    Args:
      isa: the CPU's instruction set as fbgemm sees it: ``"avx512_vnni"`` (default;
        any AVX512-VNNI or AVX-VNNI server since Cascade Lake / Zen 4), ``"avx512"``
        (Skylake-SP) or ``"avx2"``.  Without VNNI, fbgemm's GEMM kernels saturate
        pairs of u8*s8 products to int16 (pytorch#44939) — torch run with
        ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` shows it.  The depthwise kernels
        saturate on every ISA.
      torch_bugs: reproduce what torch 2.13 computes where fbgemm is wrong (default);
        ``False`` gives the mathematically correct result instead.  Affects
        conv_transpose2d on fbgemm's direct path (see
        :func:`qjax.kernels.conv_transpose.fbgemm_direct_conv_transpose`).
    """

    isa: str = "avx512_vnni"
    torch_bugs: bool = True
    name = "fbgemm"
    torch_engine = "fbgemm"  # torch.backends.quantized.engine whose kernels this reproduces

    def __post_init__(self):
        if self.isa not in ISAS:
            raise ValueError(f"isa={self.isa!r}; use one of {ISAS}")

    @classmethod
    def host(cls) -> "Fbgemm":
        """The fbgemm this machine's torch runs (its ISA read from ``/proc/cpuinfo``)."""
        return cls(isa=host_isa())

    @property
    def vnni(self) -> bool:
        return self.isa == "avx512_vnni"

    def conv_saturation(self, in_channels, out_channels, kernel, geometry: ConvGeometry):
        path = fbgemm_conv_path(
            in_channels=in_channels,
            out_channels=out_channels,
            groups=geometry.groups,
            kernel=kernel,
            strides=geometry.strides,
            padding=geometry.padding,
            dilation=geometry.dilation,
            isa=self.isa,
        )
        if path == "depthwise":
            return "depthwise_pairs"
        return None if self.vnni else "gemm_pairs"

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
             out_scale, out_zero_point, geometry: ConvGeometry, relu: bool, key=None):
        kernel = w.shape[:-2]
        sat = self.conv_saturation(x.shape[-1], w.shape[-1], kernel, geometry)
        acc = conv_accumulate(
            x, x_zero_point, w, w_zero_point,
            strides=geometry.strides, padding=geometry.padding, dilation=geometry.dilation,
            groups=geometry.groups, saturation=sat,
        )
        return requantize_fbgemm(
            acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
            out_zero_point=out_zero_point, relu=relu, per_channel=w_per_channel,
        )

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
                       out_scale, out_zero_point, geometry: ConvTransposeGeometry, key=None):
        if w_per_channel:
            raise QuantizationError(
                "fbgemm does not support per-channel weights for transposed convolution (torch raises "
                "'Per Channel Quantization is currently disabled for transposed conv')"
            )
        kernel = w.shape[2:]
        direct = self.torch_bugs and fbgemm_direct_path(
            in_channels=w.shape[0], out_channels=w.shape[1] * geometry.groups, groups=geometry.groups,
            kernel=kernel, strides=geometry.strides, padding=geometry.padding, dilation=geometry.dilation)
        if direct:
            acc = fbgemm_direct_conv_transpose(x, x_zero_point, w, w_zero_point, strides=geometry.strides,
                                               output_padding=geometry.output_padding)
        else:
            acc = conv_transpose_accumulate(
                x, x_zero_point, w, w_zero_point, strides=geometry.strides, padding=geometry.padding,
                output_padding=geometry.output_padding, dilation=geometry.dilation, groups=geometry.groups)
        return requantize_fbgemm(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                 out_zero_point=out_zero_point, relu=False, per_channel=False)

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
               out_scale, out_zero_point, relu: bool, key=None):
        acc = linear_accumulate(x, x_zero_point, w, w_zero_point, saturation=None if self.vnni else "gemm_pairs")
        return requantize_fbgemm(
            acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
            out_zero_point=out_zero_point, relu=relu, per_channel=w_per_channel,
        )


