"""Requantization specs: int32 accumulator -> quantized output, one module per engine."""

from .fbgemm import fbgemm_multipliers, requantize_fbgemm

__all__ = ["requantize_fbgemm", "fbgemm_multipliers"]
