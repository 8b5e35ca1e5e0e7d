"""LiteRT's CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED, per kernel family (a mixin of ``LiteRT``)."""

from __future__ import annotations

from .base import refuse

__all__ = ["LiteRTGemm"]


class LiteRTGemm:
    """GEMM ops of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks the family."""

    def tfl_conv(self, x, w, bias, out_scale, out_zero_point, geometry, activation="NONE"):
        """CONV_2D: ``x`` QArray qint8 ``(N, H, W, C)`` per tensor; ``w`` QArray qint8 ``(KH, KW, C/groups, O)``
        (HWIO) per channel (``axis=3``) or per tensor; ``bias`` int32 ``(O,)`` (scale ``x.scale * w.scale``)
        or None; ``geometry`` a :class:`~qjax.engines.ConvGeometry` with explicit padding; ``activation``
        one of ``qops.tflite_common.ACTIVATIONS`` -> QArray qint8 ``(N, OH, OW, O)``."""
        refuse(self, "CONV_2D")

    def tfl_depthwise_conv(self, x, w, bias, out_scale, out_zero_point, geometry, activation="NONE"):
        """DEPTHWISE_CONV_2D: as :meth:`tfl_conv` with ``w`` ``(KH, KW, 1, C * M)`` and ``geometry.groups == C``
        (output channel ``c * M + m`` reads input channel ``c``, depth multiplier ``M``)."""
        refuse(self, "DEPTHWISE_CONV_2D")

    def tfl_fully_connected(self, x, w, bias, out_scale, out_zero_point, activation="NONE"):
        """FULLY_CONNECTED: ``x`` QArray qint8 ``(N, K)``; ``w`` QArray qint8 ``(O, K)`` per channel (``axis=0``)
        or per tensor; ``bias`` int32 ``(O,)`` or None -> QArray qint8 ``(N, O)``."""
        refuse(self, "FULLY_CONNECTED")
