"""LiteRT's AVERAGE_POOL_2D / MAX_POOL_2D / MEAN / HARD_SWISH / LOGISTIC / TANH / SOFTMAX, per kernel family
(a mixin of ``LiteRT``)."""

from __future__ import annotations

from .base import refuse

__all__ = ["LiteRTPooling"]


class LiteRTPooling:
    """Pooling, reductions and nonlinear activations of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks
    the family.  QArrays qint8 per tensor, NHWC."""

    def tfl_avg_pool(self, x, filter_size, strides, padding, out_scale, out_zero_point, activation="NONE"):
        """AVERAGE_POOL_2D: ``filter_size`` / ``strides`` ``(h, w)``, ``padding`` explicit ``((lo, hi), (lo, hi))``
        (padded cells are not counted)."""
        refuse(self, "AVERAGE_POOL_2D")

    def tfl_max_pool(self, x, filter_size, strides, padding, out_scale, out_zero_point, activation="NONE"):
        refuse(self, "MAX_POOL_2D")

    def tfl_mean(self, x, axes, keep_dims, out_scale, out_zero_point):
        """MEAN over ``axes`` (a tuple of non-negative ints)."""
        refuse(self, "MEAN")

    def tfl_hard_swish(self, x, out_scale, out_zero_point):
        refuse(self, "HARD_SWISH")

    def tfl_logistic(self, x, out_scale, out_zero_point):
        refuse(self, "LOGISTIC")

    def tfl_tanh(self, x, out_scale, out_zero_point):
        refuse(self, "TANH")

    def tfl_softmax(self, x, beta, out_scale, out_zero_point):
        """SOFTMAX over the last axis."""
        refuse(self, "SOFTMAX")
