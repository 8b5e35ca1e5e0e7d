"""Integer kernels: exact (or ISA-faithful) int32 accumulation, before requantization."""

from .conv import conv_accumulate, output_spatial
from .fbgemm_paths import fbgemm_conv_path
from .linear import linear_accumulate

__all__ = ["conv_accumulate", "linear_accumulate", "output_spatial", "fbgemm_conv_path"]
