"""The ``inductor`` engine: what torch 2.13's x86 inductor lowering of a pt2e model runs.

torchao's ``lower_pt2e_quantized_to_x86`` (and ``torch.compile`` with freezing) replace each
quantized conv / linear pattern with ``onednn::qconv_pointwise`` / ``qconv2d_pointwise.binary`` /
``qlinear_pointwise``.  Their accumulation is the onednn engine's (exact int32, VNNI) but their
epilogue differs: the scales go to oneDNN as given (:mod:`qjax.requant.onednn_pointwise`), outputs may
be float32, and a ``sum`` post-op adds the residual before the unary post-op.  The non-GEMM ops are
the onednn engine's (torch's ATen kernels), inherited.
"""

from __future__ import annotations

import dataclasses

from ..kernels.conv import conv_accumulate
from ..kernels.linear import linear_accumulate
from ..requant.onednn_pointwise import pointwise_epilogue
from .base import ConvGeometry
from .onednn import Onednn

__all__ = ["Inductor", "PostOps"]


@dataclasses.dataclass(frozen=True)
class PostOps:
    """What follows the accumulation in one ``onednn::q*_pointwise`` call (static, hashable)."""

    out_dtype: str = "uint8"  # "uint8", "int8" or "float32" (torch's output_dtype)
    output_scale: float = 1.0  # the Python float torch received (1.0 for float32 outputs)
    output_zero_point: int = 0
    unary: str = "none"  # "none", "relu", "hardtanh" (others are refused by the importer)
    unary_args: tuple = ()  # hardtanh's (min, max)
    binary: str = "none"  # "none" or "sum" (the accumulator operand is added before the unary op)
    accum_scale: float = 1.0  # the sum operand's scale and zero point (1.0 / 0 for a float32 operand)
    accum_zero_point: int = 0


@dataclasses.dataclass(frozen=True)
class Inductor(Onednn):
    """oneDNN 3.12 as torch 2.13's ``onednn::qconv_pointwise`` / ``qlinear_pointwise`` drive it (AVX512-VNNI).

    ``pointwise_conv`` / ``pointwise_linear`` take channels-last integers (uint8 activations, int8
    symmetric weights) and a :class:`PostOps`; they return int32 output values, or float32 for a
    float32 output.  The eager ops (``conv``, ``linear``, the non-GEMM ops) are the onednn engine's.
    """

    name = "inductor"

    def pointwise_conv(self, x, x_scale, x_zero_point, w, w_scale, bias, geometry: ConvGeometry, post: PostOps,
                       accum=None):
        acc = conv_accumulate(x, x_zero_point, w, 0, strides=geometry.strides, padding=geometry.padding,
                              dilation=geometry.dilation, groups=geometry.groups)
        return self._epilogue(acc, x_scale, w_scale, bias, post, accum)

    def pointwise_linear(self, x, x_scale, x_zero_point, w, w_scale, bias, post: PostOps, accum=None):
        """``w`` is ``(O, K)`` (torch's layout)."""
        acc = linear_accumulate(x, x_zero_point, w, 0)
        return self._epilogue(acc, x_scale, w_scale, bias, post, accum)

    @staticmethod
    def _epilogue(acc, x_scale, w_scale, bias, post, accum):
        return pointwise_epilogue(acc, x_scale=x_scale, w_scale=w_scale, bias=bias,
                                  accum=accum if post.binary == "sum" else None, accum_scale=post.accum_scale,
                                  accum_zero_point=post.accum_zero_point, unary=post.unary,
                                  unary_args=post.unary_args, out_dtype=post.out_dtype,
                                  output_scale=post.output_scale, output_zero_point=post.output_zero_point)
