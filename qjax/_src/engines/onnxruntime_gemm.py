"""ONNX Runtime's QLinearConv, QLinearMatMul, QGemm, ConvInteger, MatMulInteger (a mixin of ``OnnxRuntime``).

(Contract placeholder: the ort_* methods are added by the issue-17 work; see docs/architecture.md.)
"""

from __future__ import annotations

__all__ = ["OrtGemm"]


class OrtGemm:
    """Mixin of :class:`~qjax.engines.OnnxRuntime`."""
