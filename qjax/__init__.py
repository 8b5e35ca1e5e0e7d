"""qjax: bit-exact quantized integer arithmetic (fbgemm, qnnpack, onednn, hardware) in pure jax.lax.

Subpackages: :mod:`qjax.hardware` (integer-only INT8 arithmetic), :mod:`qjax.ste` (training with the
deployed arithmetic), :mod:`qjax.observers`, :mod:`qjax.nn` (Flax NNX modules; ``from qjax import nn``).

Data flows one way: qparams -> :func:`quantize` -> integer kernel -> requantization
spec (the *engine*) -> :class:`QArray` output -> :func:`dequantize`.
"""

from . import engines, float32, kernels, requant
from .checks import QuantizationError
from .dtypes import QDType, qint8, qint32, quint8
from .explain import explain
from .engines import Fbgemm
from .graph import QModel
from .interop import from_torch
from .ops import conv, conv_transpose, linear
from .qarray import QArray
from .quantize import dequantize, quantize
from .verify import verify
from . import hardware, observers, ste  # noqa: E402  (they build on the ops above)

__version__ = "0.1.0"

__all__ = [
    "QArray",
    "QDType",
    "QuantizationError",
    "quint8",
    "qint8",
    "qint32",
    "quantize",
    "dequantize",
    "conv",
    "conv_transpose",
    "linear",
    "explain",
    "Fbgemm",
    "QModel",
    "from_torch",
    "verify",
    "engines",
    "kernels",
    "requant",
    "float32",
    "hardware",
    "observers",
    "ste",
]
