"""Differentiable quantized ops: forward = the integer path bit for bit, backward = a chosen estimator.

* :mod:`~qjax.ste.estimators` — STE, clipped STE, LSQ (with its gradient scale), LSQ+;
* :func:`fake_quantize` — quantize-dequantize with learnable scale / zero point;
* :func:`conv`, :func:`linear` — quantized layers on any engine or hardware spec;
* :mod:`~qjax.ste.exact` — the exact-forward / estimator-backward ``custom_vjp`` they (and :mod:`qjax.nn`) share;
* :mod:`~qjax.ste.adaround` — learnable up/down rounding of weights (AdaRound).
"""

from ._src.ste import (  # noqa: F401  (the curated public names)
    STE,
    ClippedSTE,
    LSQ,
    LSQPlus,
    Estimator,
    get_estimator,
    fake_quantize,
    integer_zero_point,
    conv,
    linear,
    adaround,
    exact,
)

__all__ = ["STE", "ClippedSTE", "LSQ", "LSQPlus", "Estimator", "get_estimator", "fake_quantize", "integer_zero_point", "conv", "linear", "adaround", "exact"]
