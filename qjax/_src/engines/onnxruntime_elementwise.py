"""ONNX Runtime's QuantizeLinear, DequantizeLinear, QLinearAdd/Mul/Concat, pools, LUT activations (a mixin of ``OnnxRuntime``).

(Contract placeholder: the ort_* methods are added by the issue-17 work; see docs/architecture.md.)
"""

from __future__ import annotations

__all__ = ["OrtElementwise"]


class OrtElementwise:
    """Mixin of :class:`~qjax.engines.OnnxRuntime`."""
