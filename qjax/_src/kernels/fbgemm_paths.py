"""Which fbgemm kernel torch 2.13 runs for a convolution (``ConvFastPath``, ``src/FbgemmConv.cc``).

The path decides the accumulation quirks: the depthwise kernels always pair-saturate
to int16, the GEMM-based paths only on ISAs without VNNI.  torch runs conv1d as a
2-d convolution with a ``(1, k)`` kernel (``qconv.cpp``), so it is classified as 2-d.
"""

from __future__ import annotations

__all__ = ["fbgemm_conv_path", "ISAS", "host_isa"]

ISAS = ("avx512_vnni", "avx512", "avx2")


def host_isa(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The ISA fbgemm dispatches to on this machine (``cpuinfo``'s flags, as fbgemm reads them).

    ``avx512_vnni`` needs AVX512 F/BW/DQ/VL plus VNNI (``fbgemmHasAvx512VnniSupport``);
    AVX-VNNI without AVX512 (e.g. Alder Lake) runs fbgemm's AVX2 kernels, which saturate.
    Returns ``"avx512_vnni"`` when the flags cannot be read.
    """
    try:
        with open(cpuinfo_path) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if not flags:
        return "avx512_vnni"
    avx512 = all(f in flags for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))
    if avx512 and "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if avx512 else "avx2"


def _as_2d(kernel, strides, padding, dilation):
    if len(kernel) == 1:
        return (1,) + tuple(kernel), (1,) + tuple(strides), ((0, 0),) + tuple(padding), (1,) + tuple(dilation)
    return tuple(kernel), tuple(strides), tuple(padding), tuple(dilation)


def fbgemm_conv_path(*, in_channels, out_channels, groups, kernel, strides, padding, dilation, isa="avx512_vnni"):
    """One of ``"depthwise"``, ``"groupwise"``, ``"pointwise"``, ``"im2col"`` (non-transposed conv)."""
    kernel, strides, padding, dilation = _as_2d(kernel, strides, padding, dilation)
    c_g, k_g = in_channels // groups, out_channels // groups
    same_pad = all(lo == hi == (k - 1) // 2 for k, (lo, hi) in zip(kernel, padding))
    # takeDepthWiseFastPath
    if (
        groups == in_channels
        and out_channels in (groups, 2 * groups)
        and groups % 8 == 0
        and all(s in (1, 2) for s in strides)
        and kernel[-2] == kernel[-1]
        and all(k in (3, 5, 7) for k in kernel)
        and all(d == 1 for d in dilation)
        and same_pad
    ):
        return "depthwise"
    # fbgemmOptimizedGConv (PackWeightMatrixForGConv::numOfGroupsTogether: 64- or 32-byte SIMD)
    width = 64 if isa in ("avx512_vnni", "avx512") else 32
    together = max(width // k_g // max(c_g, 4), 1) if k_g else 1
    hw_strides = strides[-2:]
    if (
        c_g == k_g
        and c_g in (2, 4, 8, 16)
        and groups >= together
        and all(k == 3 for k in kernel)
        and all(lo == hi == 1 for lo, hi in padding)
        and all(d == 1 for d in dilation)
        and (all(s == 1 for s in hw_strides) or all(s == 2 for s in hw_strides))
    ):
        return "groupwise"
    # takePointWiseFastPath
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and all(d == 1 for d in dilation) and all(
        lo == hi == 0 for lo, hi in padding
    ):
        return "pointwise"
    return "im2col"
