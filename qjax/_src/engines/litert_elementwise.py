"""LiteRT's ADD / SUB / MUL / CONCATENATION / QUANTIZE / DEQUANTIZE, per kernel family (a mixin of ``LiteRT``)."""

from __future__ import annotations

from .base import refuse

__all__ = ["LiteRTElementwise"]


class LiteRTElementwise:
    """Elementwise ops of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks the family.

    Binary ops broadcast numpy-style; all take and return per-tensor QArrays (qint8 unless stated)."""

    def tfl_add(self, a, b, out_scale, out_zero_point, activation="NONE"):
        refuse(self, "ADD")

    def tfl_sub(self, a, b, out_scale, out_zero_point, activation="NONE"):
        refuse(self, "SUB")

    def tfl_mul(self, a, b, out_scale, out_zero_point, activation="NONE"):
        refuse(self, "MUL")

    def tfl_concat(self, xs, axis, out_scale, out_zero_point, activation="NONE"):
        """CONCATENATION of QArrays along ``axis`` into the output's qparams."""
        refuse(self, "CONCATENATION")

    def tfl_quantize(self, x, out_scale, out_zero_point, dtype="int8"):
        """QUANTIZE: float32 array -> QArray of ``dtype`` (``"int8"``, ``"uint8"``, ``"int16"``)."""
        refuse(self, "QUANTIZE")

    def tfl_requantize(self, x, out_scale, out_zero_point, dtype="int8"):
        """QUANTIZE of a quantized tensor (int8/uint8 -> int8/uint8 with new qparams)."""
        refuse(self, "QUANTIZE (requantize)")

    def tfl_dequantize(self, x):
        """DEQUANTIZE: QArray -> float32 array."""
        refuse(self, "DEQUANTIZE")
