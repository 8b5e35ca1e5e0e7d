"""The onednn engine (and the convolutions torch's ``x86`` engine sends to oneDNN)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..checks import QuantizationError, is_concrete
from ..kernels.conv import conv_accumulate
from ..kernels.conv_transpose import conv_transpose_accumulate
from ..kernels.linear import linear_accumulate
from ..requant.onednn import requantize_onednn
from .base import ConvGeometry, ConvTransposeGeometry
from .torch_cpu import TorchCpuOps

__all__ = ["Onednn", "onednn_uses_gemm_conv", "onednn_scrambled_transpose_weight"]


def onednn_uses_gemm_conv(nd, groups, in_channels, out_channels, dilation):
    """oneDNN 3.12 on AVX512-VNNI picks its gemm convolution (one combined scale) for 3-d depthwise
    convolutions with dilation (measured with ``ONEDNN_VERBOSE``)."""
    return nd == 3 and groups == in_channels == out_channels and groups > 1 and any(d > 1 for d in dilation)


def onednn_scrambled_transpose_weight(w, groups):
    """The weight torch 2.13 hands oneDNN for a transposed conv with ``C_in/groups != C_out/groups``.

    ``w`` is ``(C_in, C_out/groups, *K)``; per group the ``(Cg, Og)`` block is read back as
    ``eff[c, o] = flat[o2*Cg + c2]`` with ``(c2, o2) = divmod(o*Cg + c, Og)`` (spatial taps intact).
    """
    cin, og = w.shape[:2]
    k = w.shape[2:]
    cg = cin // groups
    if cg == og:
        return w
    kk = int(np.prod(k)) if k else 1
    groups_out = []
    for g in range(groups):
        wg = w[g * cg:(g + 1) * cg].reshape(cg, og, kk)
        # wg.reshape(Og, Cg, K).transpose(1, 0, 2).reshape(Og, Cg, K).transpose(1, 0, 2), row-major reshapes
        eff = jnp.transpose(jnp.transpose(wg.reshape(og, cg, kk), (1, 0, 2)).reshape(og, cg, kk), (1, 0, 2))
        groups_out.append(eff)
    return jnp.concatenate(groups_out, axis=0).reshape((cin, og) + k)


@dataclasses.dataclass(frozen=True)
class Onednn(TorchCpuOps):
    """oneDNN 3.12 int8 convolution / matmul as torch 2.13 calls it on an AVX512-VNNI CPU.

    Exact int32 accumulation (VNNI), then the epilogue of :mod:`qjax.requant.onednn`.
    Weights must be symmetric (zero point 0), as torch's onednn prepack requires.  torch inverts the
    activation, output (and per-tensor linear weight) scales in double: ``scales64`` carries them.
    ``torch_bugs`` (default True) reproduces torch's wrong transposed convolution when
    ``C_in/groups != C_out/groups`` (it hands oneDNN a scrambled weight).
    """

    torch_bugs: bool = True
    name = "onednn"
    torch_engine = "onednn"  # torch.backends.quantized.engine whose kernels this reproduces

    @staticmethod
    def _symmetric(w_zero_point):
        if is_concrete(w_zero_point) and bool(np.any(np.asarray(w_zero_point) != 0)):
            raise QuantizationError("onednn needs symmetric weights (weight zero point 0), as torch's prepack does")

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry: ConvGeometry, relu: bool, key=None, scales64=None):
        self._symmetric(w_zero_point)
        acc = conv_accumulate(x, x_zero_point, w, 0, strides=geometry.strides, padding=geometry.padding,
                              dilation=geometry.dilation, groups=geometry.groups)
        nd = x.ndim - 2
        combined = onednn_uses_gemm_conv(nd, geometry.groups, x.shape[-1], w.shape[-1], geometry.dilation)
        return requantize_onednn(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                 out_zero_point=out_zero_point, relu=relu, op="conv", combined_scale=combined,
                                 scales64=scales64)

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
                       out_zero_point, geometry: ConvTransposeGeometry, key=None, scales64=None):
        self._symmetric(w_zero_point)
        if w_per_channel:
            raise QuantizationError("onednn does not support per-channel weights for transposed convolution "
                                    "(torch raises)")
        if any(geometry.output_padding):
            raise QuantizationError("onednn only supports zero output_padding for transposed convolution "
                                    "(torch raises)")
        if self.torch_bugs:
            w = onednn_scrambled_transpose_weight(w, geometry.groups)
        acc = conv_transpose_accumulate(x, x_zero_point, w, 0, strides=geometry.strides, padding=geometry.padding,
                                        output_padding=geometry.output_padding, dilation=geometry.dilation,
                                        groups=geometry.groups)
        return requantize_onednn(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                 out_zero_point=out_zero_point, op="conv", scales64=scales64)

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu: bool, key=None, scales64=None):
        self._symmetric(w_zero_point)
        acc = linear_accumulate(x, x_zero_point, w, 0)
        return requantize_onednn(acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
                                 out_zero_point=out_zero_point, relu=relu, op="linear", scales64=scales64)
