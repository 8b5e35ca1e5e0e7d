"""The fbgemm engine: torch 2.13's x86 default kernels, including their ISA quirks."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..checks import QuantizationError
from ..kernels.conv import conv_accumulate
from ..kernels.conv_transpose import conv_transpose_accumulate, fbgemm_direct_conv_transpose, fbgemm_direct_path
from ..kernels.fbgemm_paths import ISAS, fbgemm_conv_path, host_isa
from ..kernels.linear import linear_accumulate
from ..qops.dynamic import float_output_fbgemm, linear_dynamic
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
             out_scale, out_zero_point, geometry: ConvGeometry, relu: bool, key=None, scales64=None):
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
                       out_scale, out_zero_point, geometry: ConvTransposeGeometry, key=None, scales64=None):
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
               out_scale, out_zero_point, relu: bool, key=None, scales64=None):
        acc = linear_accumulate(x, x_zero_point, w, w_zero_point, saturation=None if self.vnni else "gemm_pairs")
        return requantize_fbgemm(
            acc, x_scale=x_scale, w_scale=w_scale, bias=bias, out_scale=out_scale,
            out_zero_point=out_zero_point, relu=relu, per_channel=w_per_channel,
        )



    def linear_dynamic(self, x, w, w_scale, w_zero_point, w_per_channel, bias, *, relu=False, reduce_range=True):
        """``qlinear_dynamic.cpp`` ``PackedLinearWeight::apply_dynamic_impl`` (:mod:`qjax._src.qops.dynamic`);
        the GEMM is the static linear's, with its int16 pair saturation without VNNI."""
        return linear_dynamic(x, w, w_scale, w_zero_point, bias, relu=relu, reduce_range=reduce_range,
                              saturation=None if self.vnni else "gemm_pairs", float_output=float_output_fbgemm)

    def describe(self, op, x_taps, w_taps, x_scale, x_zero_point, w_scale, w_zero_point, per_channel, bias,
                 out_scale, out_zero_point, relu, *, in_channels=None, out_channels=None, kernel=None,
                 geometry=None):
        """One output element of ``op`` (``"conv"``/``"linear"``) recomputed step by step, with the kernels'
        primitives (what :func:`qjax.explain` prints).  ``x_taps`` / ``w_taps`` are the element's int64 operands
        (padding as the input zero point); the scales / zero points / bias those of its output channel."""
        xt, wt = np.asarray(x_taps, np.int64), np.asarray(w_taps, np.int64)
        zx, zw = int(x_zero_point), int(w_zero_point)
        if op == "conv":
            saturation = self.conv_saturation(in_channels, out_channels, kernel, geometry)
        else:
            saturation = None if self.vnni else "gemm_pairs"
        acc_exact = int(np.sum((xt - zx) * (wt - zw)))
        acc = _pair_saturated_acc(xt, wt, zx, zw) if saturation else acc_exact
        acc = int((acc + 2**31) % 2**32 - 2**31)
        # requantize_fbgemm on one element: the same float32 primitives, in the same order
        sy32 = np.float32(out_scale)
        atw = f32x.mul_rn(np.float32(x_scale), np.float32(w_scale))
        mult = f32x.div_rn(atw, sy32)
        accf = jnp.float32(acc)
        if bias is None:
            xf, bias_term = accf, None
        elif per_channel:
            bias_term = f32x.div_rn(np.float32(bias), atw)
            xf = accf + bias_term
        else:
            bias_term = float(bias) / float(atw)
            xf = f32x.fma(np.float32(bias), f32x.div_rn(1.0, atw), accf)
        y = xf * mult
        r = int(np.round(np.float64(y))) if abs(float(y)) < 2**31 else -(2**31)
        q = min(max(r + int(out_zero_point), 0), 255)
        if relu:
            q = max(q, int(out_zero_point))
        return dict(acc=acc, acc_exact=acc_exact, atw=float(atw), multiplier=float(mult),
                    bias_term=None if bias_term is None else float(bias_term), xf=float(xf), y=float(y), rounded=r,
                    output=q)


def _pair_saturated_acc(xt, wt, zx, zw):
    """fbgemm's int16 pair saturation (pytorch#44939): ``sat16(x0*w0 + x1*w1)`` summed, zero points folded after."""
    raw = 0
    for k in range(0, len(xt), 2):
        s = xt[k] * wt[k] + (xt[k + 1] * wt[k + 1] if k + 1 < len(xt) else 0)
        raw += min(max(s, -32768), 32767)
    return int(raw - zx * (wt.sum() - zw * len(wt)) - zw * xt.sum())
