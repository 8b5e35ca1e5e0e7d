"""The ``onnxruntime`` engine: ONNX Runtime's CPU execution provider (MLAS) for int8 / uint8 ONNX models.

``OnnxRuntime()`` computes what ``onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])``
computes (:mod:`qjax.interop.ort_runtime` is the oracle).  ORT does not run the graph a user wrote: its
graph optimizations fuse QDQ patterns into QLinear* kernels (``QLinearConv``, ``QGemm``, ``QLinearAdd``...,
some of them the ``com.microsoft`` channels-last variants), and leave others as float ops between
DequantizeLinear and QuantizeLinear.  :func:`qjax.from_onnx` imports the graph ORT actually runs, and each of
its nodes calls one ``ort_*`` method of this engine:

* ``onnxruntime_gemm`` — QLinearConv, QLinearMatMul, QGemm, ConvInteger, MatMulInteger (integer
  accumulation; MLAS's float32 requantization ``rint(fl32(acc) * fl32(fl32(sx*sw)/sy)) + zp``);
* ``onnxruntime_elementwise`` — QuantizeLinear (MLAS divides by the scale), DequantizeLinear, QLinearAdd,
  QLinearMul, QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid,
  QLinearLeakyRelu, integer MaxPool, DynamicQuantizeLinear, Resize on 8-bit tensors;
* ``onnxruntime_float`` — the float ops ORT leaves between DequantizeLinear and QuantizeLinear, computed as
  ORT's float kernels do where that is provably reproducible, refused otherwise;
* ``onnxruntime_protocol`` — the torch-convention protocol methods :mod:`qjax.nn` calls (uint8 activations,
  float biases), on the same arithmetic, so a qjax.nn model trained on this engine exports to ONNX QDQ
  (:func:`qjax.to_onnx`) and ORT computes the same integers.

Values are :class:`~qjax.QArray` (uint8 or int8 values, float32 scale, int32 zero point; per-axis where ONNX
allows it) in ONNX's layout (NCHW, or NHWC for the channels-last contrib kernels).  ``isa`` records the CPU
the kernels were chosen for (MLAS dispatches its integer GEMM per ISA).
"""

from __future__ import annotations

import dataclasses

from .base import ENGINE_METHODS, refuse
from .onnxruntime_elementwise import OrtElementwise
from .onnxruntime_float import OrtFloat
from .onnxruntime_gemm import OrtGemm
from .onnxruntime_protocol import OrtProtocol

__all__ = ["OnnxRuntime", "parse_onnxruntime", "ISAS"]

#: the CPUs whose MLAS kernels were checked against onnxruntime (x86-64 with AVX-512 VNNI: this machine)
ISAS = ("x86_64",)


class _ProtocolRefusals:
    """Protocol methods :class:`OrtProtocol` does not implement, refused with a one-line reason."""


def _refusing(op):
    def method(self, *args, **kwargs):
        refuse(self, op, "ONNX Runtime's int8 ops are the engine's ort_* methods (qjax.from_onnx builds models on "
                         "them); qjax.nn layers use the conv/linear/quantize/add/pooling methods")

    method.__name__ = op
    return method


for _op in ENGINE_METHODS:
    if _op != "for_layer" and not hasattr(OrtProtocol, _op):
        setattr(_ProtocolRefusals, _op, _refusing(_op))


@dataclasses.dataclass(frozen=True)
class OnnxRuntime(OrtGemm, OrtElementwise, OrtFloat, OrtProtocol, _ProtocolRefusals):
    """ONNX Runtime's CPU kernels (see the module doc); frozen and hashable (a static jit argument)."""

    isa: str = "x86_64"  # the CPU MLAS chose its kernels for (only x86_64 is verified)
    torch_engine = None  # no torch kernel

    def __post_init__(self):
        if self.isa not in ISAS:
            raise ValueError(f"isa={self.isa!r}: ONNX Runtime's kernels are verified on {ISAS} only")

    @property
    def name(self) -> str:
        return "onnxruntime"


def parse_onnxruntime(text: str) -> OnnxRuntime:
    """``"onnxruntime"`` (or ``"ort"``): ONNX Runtime's CPU execution provider."""
    return OnnxRuntime()
