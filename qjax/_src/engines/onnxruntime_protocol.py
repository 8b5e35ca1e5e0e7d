"""ONNX Runtime's the Engine protocol methods qjax.nn calls (a mixin of ``OnnxRuntime``).

(Contract placeholder: the ort_* methods are added by the issue-17 work; see docs/architecture.md.)
"""

from __future__ import annotations

__all__ = ["OrtProtocol"]


class OrtProtocol:
    """Mixin of :class:`~qjax.engines.OnnxRuntime`."""
