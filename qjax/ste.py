"""Differentiable quantized ops: forward = the integer path bit for bit, backward = a chosen estimator.

* :mod:`~qjax.ste.estimators` — STE, clipped STE, LSQ (with its gradient scale), LSQ+;
* :func:`fake_quantize` — quantize-dequantize with learnable scale / zero point;
* :func:`conv`, :func:`linear` — quantized layers on any engine or hardware spec;
* :mod:`~qjax.ste.exact` — the exact-forward / estimator-backward ``custom_vjp`` they (and :mod:`qjax.nn`) share;
* :mod:`~qjax.ste.adaround` — learnable up/down rounding of weights (AdaRound).
"""

# the curated names: qjax._src.ste's own __all__ (one list: a name is exported where it is defined)
from ._src.ste import *  # noqa: F401,F403
from ._src.ste import __all__  # noqa: F401
