"""Differentiable quantized ops: forward = the integer path bit for bit, backward = a chosen estimator.

* :mod:`~qjax.ste.estimators` — STE, clipped STE, LSQ (with its gradient scale), LSQ+;
* :func:`fake_quantize` — quantize-dequantize with learnable scale / zero point;
* :func:`conv`, :func:`linear` — quantized layers on any engine or hardware spec;
* :mod:`~qjax.ste.exact` — the exact-forward / estimator-backward ``custom_vjp`` they (and :mod:`qjax.nn`) share;
* :mod:`~qjax.ste.adaround` — learnable up/down rounding of weights (AdaRound).
"""

from . import adaround, exact
from .estimators import LSQ, STE, ClippedSTE, Estimator, LSQPlus, get_estimator
from ..affine import integer_zero_point
from .fake_quant import fake_quantize
from .ops import conv, linear

__all__ = ["STE", "ClippedSTE", "LSQ", "LSQPlus", "Estimator", "get_estimator", "fake_quantize",
           "integer_zero_point", "conv", "linear", "adaround", "exact"]
