"""Reading a ``.tflite`` flatbuffer: the one home of the schema access both :mod:`qjax.interop.tflite` (the
importer) and :mod:`qjax.interop.tflite_write` (the writer) use.

The flatbuffer is read with the schema ``ai-edge-litert`` ships (``schema_py_generated``, the object API; no
TensorFlow).  Here: the schema module, the enum name tables, an operator code's builtin op (``max(builtin_code,
deprecated_builtin_code)``: the schema's rule since the 127-op extension), a tensor's quantization, a buffer's
bytes (incl. data outside the flatbuffer, models over 2 GB), and the weight layouts (qjax's HWIO <-> TFLite's
OHWI / ``(1, KH, KW, C·M)``) as one pair of inverse functions.
"""

from __future__ import annotations

import numpy as np

from .litert_runtime import require_litert

__all__ = ["schema", "enum_names", "builtin_code", "quantization", "buffer_bytes", "weight_layout",
           "weight_from_tflite", "weight_to_tflite"]


def schema():
    """``ai_edge_litert.schema_py_generated`` (one-line ImportError without the extra)."""
    require_litert()
    import ai_edge_litert.schema_py_generated as schema_py

    return schema_py


def enum_names(cls) -> dict:
    """``{value: name}`` of a schema enum class (e.g. ``TensorType``, ``BuiltinOperator``)."""
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def builtin_code(code) -> int:
    """The builtin operator of an ``OperatorCodeT``: ``max(builtinCode, deprecatedBuiltinCode)`` (old files fill
    only the int8 ``deprecated_builtin_code``, new ones both, ops >= 127 only ``builtin_code``)."""
    return max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))


def quantization(tensor):
    """``(scale, zero_point, axis)`` of a ``TensorT``: float32 / int64 1-d numpy arrays (zero points broadcast to
    the scales, 0 when absent) and the quantized dimension; None when the tensor has no scales."""
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, np.float32).reshape(-1)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else [0], np.int64).reshape(-1)
    if zp.size != scale.size:
        zp = np.broadcast_to(zp, scale.shape).copy()
    return scale, zp, int(q.quantizedDimension or 0)


def buffer_bytes(model, tensor, data=None):
    """The raw bytes of ``tensor``'s constant buffer, or None (a computed tensor, buffer 0 or an empty buffer).

    Data outside the flatbuffer (``offset`` / ``size`` into the file: models over 2 GB) is read from ``data``
    (the file's bytes); without it such a buffer raises ``ValueError``."""
    i = tensor.buffer
    if i is None or i <= 0 or i >= len(model.buffers or []):
        return None
    b = model.buffers[i]
    if b.offset and b.offset > 1:
        if data is None:
            raise ValueError(f"tensor {tensor.name!r}'s data lies outside the flatbuffer (a >2 GB model)")
        return bytes(data[b.offset: b.offset + b.size])
    if b.data is not None and len(b.data):
        return np.asarray(b.data, np.uint8).tobytes()
    return None


def weight_layout(op: str, depthwise: bool = False):
    """``(perm, quantized_dimension)``: ``np.transpose(qjax_weight, perm)`` is TFLite's layout for node op ``op``.

    ``tfl_conv`` / ``tfl_transpose_conv`` HWIO -> OHWI (axis 0), depthwise ``(KH, KW, 1, C·M)`` -> ``(1, KH, KW,
    C·M)`` (axis 3), ``tfl_fully_connected`` ``(O, K)`` unchanged (axis 0); any other op's constant: unchanged,
    axis 0."""
    if op == "tfl_conv":
        return ((2, 0, 1, 3), 3) if depthwise else ((3, 0, 1, 2), 0)
    if op == "tfl_transpose_conv":  # TRANSPOSE_CONV's weights are OHWI too
        return (3, 0, 1, 2), 0
    return None, 0


def weight_to_tflite(values, op: str, depthwise: bool = False):
    """qjax's weight layout -> TFLite's (:func:`weight_layout`)."""
    perm, _ = weight_layout(op, depthwise)
    return values if perm is None or np.ndim(values) != len(perm) else np.transpose(values, perm)


def weight_from_tflite(values, op: str, depthwise: bool = False):
    """TFLite's weight layout -> qjax's: the inverse of :func:`weight_to_tflite`."""
    perm, _ = weight_layout(op, depthwise)
    if perm is None or np.ndim(values) != len(perm):
        return values
    return np.ascontiguousarray(np.transpose(values, np.argsort(perm)))
