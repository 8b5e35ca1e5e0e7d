"""ONNX Runtime's CPU execution provider as the oracle, and the graph it actually runs.

What a user of ONNX Runtime gets is ``onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])``
with default session options: every graph optimization enabled (``ORT_ENABLE_ALL``), which fuses QDQ patterns
into QLinear* kernels and rewrites some of them to ``com.microsoft`` channels-last kernels.  The integers
depend on which kernels the optimizer chose, so qjax imports the optimized graph itself
(:func:`optimized_model`: ORT writes it with ``SessionOptions.optimized_model_filepath``).

``optimization`` names the level: ``"all"`` (ORT's default), ``"extended"``, ``"basic"``, ``"disable"``.
Needs the optional extra ``qjax[onnx]``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

__all__ = ["OPTIMIZATIONS", "require_onnx", "require_ort", "session", "run", "optimized_model", "as_model", "host_isa"]

#: ``optimization`` values, mapped to ``onnxruntime.GraphOptimizationLevel`` members
OPTIMIZATIONS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                 "disable": "ORT_DISABLE_ALL"}


def require_onnx():
    """The ``onnx`` package, or a one-line ImportError saying how to get it."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - the extra is part of the test extra
        raise ImportError("reading ONNX models needs onnx and onnxruntime: pip install 'qjax[onnx]'") from None
    return onnx


def require_ort():
    """The ``onnxruntime`` package, or a one-line ImportError saying how to get it."""
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - the extra is part of the test extra
        raise ImportError("running ONNX models needs onnxruntime: pip install 'qjax[onnx]'") from None
    return onnxruntime


def as_model(model):
    """``model`` (a path, ``os.PathLike``, serialized bytes or an ``onnx.ModelProto``) as a ModelProto.

    Parsed as protobuf (never unpickled); external data next to a path is loaded with it."""
    onnx = require_onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model={path!r}: no such file")
        return onnx.load(path)
    raise TypeError(f"model must be a path, bytes or an onnx.ModelProto, got {type(model).__name__}")


def _options(optimization: str, threads: int, optimized_path: str | None = None):
    ort = require_ort()
    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"optimization={optimization!r}; use one of {tuple(OPTIMIZATIONS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATIONS[optimization])
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the "hardware specific optimizations" warning of optimized_model_filepath
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    return so


def session(model, optimization: str = "all", threads: int = 1):
    """An ``InferenceSession`` on the CPU execution provider at ``optimization`` (``"all"``: ORT's default)."""
    ort = require_ort()
    data = as_model(model).SerializeToString()
    return ort.InferenceSession(data, _options(optimization, threads), providers=["CPUExecutionProvider"])


def run(model, inputs, optimization: str = "all", threads: int = 1) -> list:
    """ORT's outputs (numpy arrays, in the graph's output order) for ``inputs`` (one array per graph input)."""
    sess = model if hasattr(model, "get_inputs") else session(model, optimization, threads)
    names = [i.name for i in sess.get_inputs()]
    if len(inputs) != len(names):
        raise ValueError(f"the model takes {len(names)} inputs, got {len(inputs)}")
    return sess.run(None, {n: np.asarray(x) for n, x in zip(names, inputs)})


def optimized_model(model, optimization: str = "all"):
    """The graph ONNX Runtime runs for ``model`` at ``optimization`` (an ``onnx.ModelProto``).

    ORT serializes it after its graph transformers (QDQ fusion, layout transformation to channels-last contrib
    kernels, constant folding); the nodes of this graph are the kernels whose arithmetic decides the outputs."""
    ort = require_ort()
    onnx = require_onnx()
    data = as_model(model).SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(data, _options(optimization, 1, path), providers=["CPUExecutionProvider"])
        return onnx.load(path)


def host_isa() -> str:
    """The CPU family MLAS dispatched on here (``"x86_64"``; other machines are not verified)."""
    import platform

    m = platform.machine().lower()
    return "x86_64" if m in ("x86_64", "amd64") else m
