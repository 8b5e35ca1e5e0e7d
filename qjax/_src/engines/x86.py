"""torch's ``x86`` engine: a dispatcher between oneDNN and fbgemm, decided per layer at prepack time.

``qconv_prepack.cpp`` / ``OnednnUtils.h`` ``should_use_onednn_quant``: a convolution goes to
oneDNN iff the CPU has AVX512-VNNI, ``groups <= 100``, every weight zero point is 0 and
``output_padding`` is all 0; everything else, and every linear layer, runs fbgemm.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..affine import integer_zero_point
from ..checks import QuantizationError, is_concrete
from ..dtypes import qint8
from ..kernels.fbgemm_paths import ISAS
from .base import ConvGeometry, ConvTransposeGeometry
from .fbgemm import Fbgemm
from .onednn import Onednn
from .torch_cpu import TorchCpuOps

__all__ = ["X86"]


def _doubles(scales64):
    return {} if scales64 is None else {"scales64": scales64}


@dataclasses.dataclass(frozen=True)
class X86(TorchCpuOps):
    """torch's ``x86`` engine (``isa``: the CPU, as for :class:`~qjax.engines.Fbgemm`)."""

    isa: str = "avx512_vnni"
    torch_bugs: bool = True
    name = "x86"
    torch_engine = "x86"  # torch.backends.quantized.engine whose kernels this reproduces

    def __post_init__(self):
        if self.isa not in ISAS:
            raise ValueError(f"isa={self.isa!r}; use one of {ISAS}")

    def for_layer(self, w_zero_point, groups, output_padding=()):
        """The engine a convolution with these properties runs on (needs concrete zero points)."""
        if not is_concrete(w_zero_point):
            raise QuantizationError("the x86 engine dispatches on the weight zero points, which must be concrete "
                                    "(not traced); resolve the layer first with qjax.engines.layer_engine(...)")
        symmetric = not np.any(np.asarray(integer_zero_point(w_zero_point, qint8)) != 0)
        if self.isa == "avx512_vnni" and groups <= 100 and symmetric and not any(output_padding):
            return Onednn(torch_bugs=self.torch_bugs)
        return Fbgemm(isa=self.isa, torch_bugs=self.torch_bugs)

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry: ConvGeometry, relu: bool, key=None, scales64=None):
        eng = self.for_layer(w_zero_point, geometry.groups)
        return eng.conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
                        out_zero_point, geometry, relu, **_doubles(scales64))

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
                       out_zero_point, geometry: ConvTransposeGeometry, key=None, scales64=None):
        eng = self.for_layer(w_zero_point, geometry.groups, geometry.output_padding)
        return eng.conv_transpose(x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
                                  out_scale, out_zero_point, geometry, **_doubles(scales64))

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu: bool, key=None, scales64=None):
        # torch's x86 engine prepacks every linear layer for fbgemm, which casts the scales to float first
        return Fbgemm(isa=self.isa).linear(x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
                                           out_scale, out_zero_point, relu)

    def linear_dynamic(self, x, w, w_scale, w_zero_point, w_per_channel, bias, *, relu=False, reduce_range=True):
        # torch's x86 engine prepacks linear layers for fbgemm, dynamic ones included
        return Fbgemm(isa=self.isa).linear_dynamic(x, w, w_scale, w_zero_point, w_per_channel, bias, relu=relu,
                                                   reduce_range=reduce_range)
