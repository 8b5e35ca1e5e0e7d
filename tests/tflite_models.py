"""Hand-built int8 LiteRT flatbuffers for tests and scripts (``ai-edge-litert``'s schema; no TensorFlow).

One home for building ``.tflite`` models in code: :class:`TFLiteBuilder` adds tensors (with their
quantization and constant data) and operators (with their builtin options) and packs the model.
Single-op helpers and the MobileNet-style model build on it.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import ai_edge_litert.schema_py_generated as schema

__all__ = ["schema", "TFLiteBuilder", "TYPES"]

#: numpy dtype -> TensorType
TYPES = {np.dtype(np.int8): schema.TensorType.INT8, np.dtype(np.uint8): schema.TensorType.UINT8,
         np.dtype(np.int16): schema.TensorType.INT16, np.dtype(np.int32): schema.TensorType.INT32,
         np.dtype(np.int64): schema.TensorType.INT64, np.dtype(np.float32): schema.TensorType.FLOAT32}


def _options_type(options) -> int:
    name = type(options).__name__
    if not name.endswith("T"):
        raise TypeError(f"builtin options must be an *OptionsT object, got {name}")
    return getattr(schema.BuiltinOptions, name[:-1])


class TFLiteBuilder:
    """A one-subgraph ``.tflite`` model built tensor by tensor and op by op.

    ``tensor(shape, dtype, scale=, zero_point=, axis=, data=)`` returns the tensor's index (``data``: a
    constant, stored in its own buffer); ``op("CONV_2D", inputs, outputs, options)`` appends an operator
    (``options`` a ``schema.*OptionsT`` or None; ``-1`` marks an omitted optional input);
    ``build(inputs, outputs)`` the flatbuffer bytes.
    """

    def __init__(self):
        self.tensors, self.buffers, self.ops, self.codes = [], [schema.BufferT()], [], []

    def tensor(self, shape, dtype, *, scale=None, zero_point=None, axis=0, data=None, name=None) -> int:
        t = schema.TensorT()
        t.name = name or f"t{len(self.tensors)}"
        t.shape = [int(d) for d in shape]
        t.type = TYPES[np.dtype(dtype)]
        t.buffer = 0
        if data is not None:
            arr = np.asarray(data, dtype=dtype)
            if arr.shape != tuple(t.shape):
                raise ValueError(f"tensor {t.name}: data of shape {arr.shape} for shape {tuple(t.shape)}")
            b = schema.BufferT()
            b.data = np.frombuffer(arr.tobytes(), np.uint8).copy()
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = schema.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(np.asarray(scale, np.float32))]
            zp = np.atleast_1d(np.asarray(0 if zero_point is None else zero_point, np.int64))
            q.zeroPoint = [int(z) for z in np.broadcast_to(zp, (len(q.scale),))]
            q.quantizedDimension = int(axis)
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: str, inputs, outputs, options=None, *, version: int = 1) -> None:
        builtin = getattr(schema.BuiltinOperator, code)
        key = (builtin, version)
        if key not in self.codes:
            self.codes.append(key)
        o = schema.OperatorT()
        o.opcodeIndex = self.codes.index(key)
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        if options is not None:
            o.builtinOptionsType = _options_type(options)
            o.builtinOptions = options
        self.ops.append(o)

    def build(self, inputs, outputs) -> bytes:
        m = schema.ModelT()
        m.version = 3
        m.description = "qjax test model"
        codes = []
        for builtin, version in self.codes:
            c = schema.OperatorCodeT()
            c.builtinCode = builtin
            c.deprecatedBuiltinCode = min(builtin, 127)  # the int8 field; values above 127 use builtinCode
            c.version = version
            codes.append(c)
        m.operatorCodes = codes
        m.buffers = self.buffers
        sg = schema.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.ops
        sg.inputs, sg.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        m.subgraphs = [sg]
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())
