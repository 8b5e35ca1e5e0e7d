"""ONNX Runtime's the float ops ORT runs between DequantizeLinear and QuantizeLinear (a mixin of ``OnnxRuntime``).

(Contract placeholder: the ort_* methods are added by the issue-17 work; see docs/architecture.md.)
"""

from __future__ import annotations

__all__ = ["OrtFloat"]


class OrtFloat:
    """Mixin of :class:`~qjax.engines.OnnxRuntime`."""
