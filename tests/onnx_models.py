"""Offline ONNX test models (``onnx.helper``, seeded; nothing downloaded) and ORT as the oracle.

``make_model(nodes, inputs, outputs, initializers)`` wraps ``onnx.helper``; builders of single-op models live in
the test files that use them, whole-model builders (``quantize_static`` of small float models, resnet18) here.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qjax._src.interop import ort_runtime  # noqa: E402

OPSET = 21
ELEM = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
        np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float32): TensorProto.FLOAT}


def init(name, array):
    """An initializer named ``name`` holding ``array`` (its numpy dtype kept)."""
    return numpy_helper.from_array(np.asarray(array), name)


def value_info(name, dtype, shape=None):
    return helper.make_tensor_value_info(name, ELEM[np.dtype(dtype)], shape)


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, ms_opset=1):
    """A ModelProto: ``inputs`` / ``outputs`` are ``(name, dtype, shape)`` triples (shape None = unknown)."""
    g = helper.make_graph(list(nodes), "g", [value_info(*i) for i in inputs], [value_info(*o) for o in outputs],
                          list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", ms_opset)])
    m.ir_version = 10
    return m


def ort_run(model, inputs, optimization="all"):
    """ORT's outputs for ``inputs`` (the oracle, default session options but one thread)."""
    return ort_runtime.run(model, inputs, optimization)
