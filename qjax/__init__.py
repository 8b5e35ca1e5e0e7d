"""qjax: integer neural-network arithmetic that is exactly what the deployed kernel computes, in pure jax.lax.

The public surface (implementation lives in the private ``qjax._src``):

* this module — :class:`QArray` and the quantized dtypes, :func:`quantize` / :func:`dequantize`, the
  integer ops :func:`conv` / :func:`conv_transpose` / :func:`linear`, the float-output ops
  :func:`linear_dynamic` / :func:`embedding` / :func:`embedding_bag`, imported models (:func:`from_torch`,
  :func:`from_torchscript`, :func:`from_tflite` — LiteRT int8 flatbuffers —, :class:`QModel`), :func:`verify`
  and :func:`explain`; :func:`to_tflite` writes a ``from_tflite`` model's params back
  (:func:`with_tflite_qparams` re-binds changed scales), :class:`TFLiteQAT` trains them with the family's
  exact integers;
* :mod:`qjax.engines` — the arithmetic of every op, one engine per runtime (fbgemm, qnnpack, onednn,
  x86, reference, integer-only hardware specs) and the protocol for your own;
* :mod:`qjax.hardware` — integer-only INT8 hardware: specs, model conversion, deviation reports, export;
* :mod:`qjax.ste` — training with the deployed arithmetic (estimators, fake quantization, conv / linear);
* :mod:`qjax.nn` — Flax NNX modules and the calibrate / QAT / convert lifecycle (``from qjax import nn``);
* :mod:`qjax.observers` — torch-identical observers; :mod:`qjax.float32` — exact float32 arithmetic;
* :mod:`qjax.float64` — torch's double scales as uint32 words, with exact integer arithmetic.

Data flows one way: qparams -> :func:`quantize` -> integer kernel -> requantization, both chosen by
the *engine* -> :class:`QArray` output -> :func:`dequantize`.  See ``docs/architecture.md``.
"""

from . import engines, float32, float64, hardware, observers, ste
from ._src.checks import QuantizationError
from ._src.dtypes import QDType, qint8, qint32, quint8
from ._src.engines import Fbgemm, HardwareSpec
from ._src.explain import explain
from ._src.graph import GraphError, QModel
from ._src.interop import from_tflite, from_torch, from_torchscript, with_tflite_qparams
from ._src.interop.torch_common import TorchImportError
from ._src.interop.tflite_train import TFLiteQAT
from ._src.interop.tflite_write import to_tflite
from ._src.ops import conv, conv_transpose, embedding, embedding_bag, linear, linear_dynamic
from ._src.qarray import QArray
from ._src.quantize import dequantize, quantize
from ._src.verify import VerifyError, verify

__version__ = "0.1.0"

__all__ = [
    "QArray", "QDType", "quint8", "qint8", "qint32", "QuantizationError", "GraphError", "TorchImportError",
    "VerifyError", "quantize", "dequantize", "conv", "conv_transpose", "linear", "linear_dynamic", "embedding",
    "embedding_bag", "explain", "QModel",
    "from_torch", "from_torchscript", "from_tflite", "verify", "Fbgemm", "HardwareSpec", "engines", "hardware", "ste",
    "observers", "float32", "float64", "to_tflite", "TFLiteQAT", "with_tflite_qparams",
]


def __getattr__(name):
    # qjax.nn needs flax: loaded on first use (``from qjax import nn`` or ``qjax.nn``)
    if name == "nn":
        import importlib

        return importlib.import_module("qjax.nn")
    raise AttributeError(f"module 'qjax' has no attribute {name!r}")
