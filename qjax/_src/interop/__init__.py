"""Importers: foreign graphs translated into :class:`qjax.graph.QModel` nodes (torch is imported lazily).

``torch.py`` (torch.fx; dispatches TorchScript modules on), ``torchscript.py`` (TorchScript archives),
both on ``torch_common.py`` (torch tensors as QArrays, memory formats, an import's engine and settings).
``tflite.py`` (LiteRT / TFLite int8 flatbuffers, on ``litert_runtime.py``, the interpreter as oracle), with
``tflite_check.py`` (``qjax verify`` / ``qjax explain`` of ``.tflite`` models).
"""


def from_torch(*args, **kwargs):
    """See :func:`qjax._src.interop.torch.from_torch`."""
    from .torch import from_torch as _from_torch

    return _from_torch(*args, **kwargs)


def from_torchscript(*args, **kwargs):
    """See :func:`qjax._src.interop.torchscript.from_torchscript`."""
    from .torchscript import from_torchscript as _from_ts

    return _from_ts(*args, **kwargs)


def from_tflite(*args, **kwargs):
    """See :func:`qjax._src.interop.tflite.from_tflite`."""
    from .tflite import from_tflite as _from_tflite

    return _from_tflite(*args, **kwargs)


def with_tflite_qparams(*args, **kwargs):
    """See :func:`qjax._src.interop.tflite.with_qparams`."""
    from .tflite import with_qparams

    return with_qparams(*args, **kwargs)


__all__ = ["from_torch", "from_torchscript", "from_tflite", "with_tflite_qparams"]
