"""``qjax.from_tflite``: a LiteRT (TFLite) int8 flatbuffer as a :class:`~qjax.graph.QModel`.

The flatbuffer is read with the schema ``ai-edge-litert`` ships (``schema_py_generated``, the object API;
no TensorFlow) and translated operator by operator (subgraph 0, in the flatbuffer's execution order) into
the node ops of :mod:`qjax.graph.ops_tflite`:

===========================================  ==========================================================
CONV_2D, DEPTHWISE_CONV_2D                   ``tfl_conv`` (weights OHWI / 1HW(C·M) -> HWIO; dilation,
                                             depth multiplier, SAME/VALID as explicit padding)
TRANSPOSE_CONV                               ``tfl_transpose_conv`` (weights OHWI -> HWIO; the constant
                                             output shape fixes the batch, as in LiteRT)
FULLY_CONNECTED                              ``tfl_fully_connected`` (input flattened to rows of K;
                                             ``keep_num_dims``)
ADD, SUB, MUL                                ``tfl_binary`` (a constant operand as ``const_a``/``const_b``)
AVERAGE_POOL_2D, MAX_POOL_2D                 ``tfl_pool``
MEAN                                         ``tfl_mean``
CONCATENATION                                ``tfl_concat``
HARD_SWISH, LOGISTIC, TANH, SOFTMAX          ``tfl_unary``
QUANTIZE, DEQUANTIZE                         ``tfl_quantize`` (float or quantized in), ``tfl_dequantize``
RESHAPE, SQUEEZE, TRANSPOSE, PAD, PADV2      ``tfl_shape`` (no arithmetic)
===========================================  ==========================================================

with the fused activations NONE / RELU / RELU6 / RELU_N1_TO_1.  Each arithmetic node gets the engine that
runs its operator in the interpreter: ``LiteRT(kernels)``, and in ``kernels="xnnpack"`` models
``LiteRT("optimized")`` for the operators the XNNPACK delegate leaves to the builtin kernels
(:func:`qjax.interop.litert_runtime.delegated_ops`, read from the interpreter itself).

The QModel's call takes what the interpreter's inputs take — arrays of the input tensors' dtypes (int8,
uint8 or float32), NHWC, positionally in the subgraph's input order, any batch size (the other dims the
model's) — and returns the outputs in the output tensors' dtypes (int8 integers, or float32 after a
DEQUANTIZE), a tuple when there are several.  Inside, quantized tensors are :class:`~qjax.QArray` s; the
``tfl_input`` / ``tfl_output`` nodes wrap and unwrap them.  Quantization parameters are static (see
:mod:`qjax.graph.ops_tflite`): the params hold them for inspection and :func:`qjax.to_tflite`;
:func:`with_qparams` re-binds a model to changed ones.

``model.info`` (``meta``): ``tflite_model`` (the flatbuffer's bytes), ``kernels``, ``isa`` (the host's,
``platform.machine()``: ``"optimized"`` / ``"xnnpack"`` are refused off x86_64, where their rules are unverified),
``delegated`` (the
operator indices XNNPACK took; empty unless ``kernels="xnnpack"``), ``input_specs`` / ``output_specs``
(``(name, shape, dtype)`` per tensor), ``node_of_operator`` (operator index -> node name), ``fixed_batch`` (the
batch a RESHAPE to a fixed shape, a TRANSPOSE_CONV's constant output shape or a constant activation (e.g. a
CONCATENATION operand) pins the model to, as LiteRT refuses other batches there; the input nodes raise a one-line
``GraphError`` for another batch; None when any batch runs).

Bias-less int8 CONV_2D is refused (LiteRT's Prepare refuses it: ``conv.cc`` ``has_bias``), and so is a bias-less
DEPTHWISE_CONV_2D (the reference kernel computes it, the optimized per-channel kernel crashes on it).  PAD fills
with its input's zero point, read at run time (PADV2 with its constant).

Anything else is refused at import with a one-line :class:`TFLiteImportError` naming the operator (its
index and name) or the tensor and the rule.
"""

from __future__ import annotations

import math
import os
import platform

import numpy as np

from ..checks import QuantizationError
from ..engines import ConvGeometry, LiteRT
from ..graph import Node, QModel, Ref, Static
from ..qarray import QArray
from ..qops.tflite_common import ACTIVATIONS, explicit_padding
from . import litert_runtime
from .tflite_flatbuffer import buffer_bytes, builtin_code, enum_names, quantization, schema as _schema
from .tflite_flatbuffer import weight_from_tflite

__all__ = ["from_tflite", "TFLiteImportError", "read_model", "with_qparams", "output_qparams", "host_isa", "KERNELS"]

#: the ``kernels=`` values (LiteRT's op resolvers; see :mod:`qjax.interop.litert_runtime`)
KERNELS = litert_runtime.KERNELS


class TFLiteImportError(QuantizationError):
    """A ``.tflite`` model qjax cannot import (one line: the operator or tensor and the rule)."""


def _ints(v) -> list:
    """A flatbuffer int vector (None, a list or a numpy array: the object API gives either) as Python ints."""
    return [] if v is None else [int(i) for i in v]


# -- reading ----------------------------------------------------------------------------------------------


def read_model(model) -> bytes:
    """The flatbuffer's bytes: ``model`` a path or bytes; refuses (one line) anything without TFLite's
    ``TFL3`` file identifier."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, what = bytes(model), "the bytes given"
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model: {path!r} is not a file")
        with open(path, "rb") as f:
            data = f.read()
        what = repr(path)
    else:
        raise TypeError(f"model: a .tflite path or its bytes, got {type(model).__name__}")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteImportError(f"model: {what} is not a TFLite flatbuffer (no 'TFL3' file identifier)")
    return data


def _parse(data: bytes):
    schema = _schema()
    try:
        return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as e:  # a truncated / corrupt flatbuffer
        raise TFLiteImportError(f"model: the flatbuffer cannot be read ({type(e).__name__}: {e})") from None


class _Graph:
    """Subgraph 0 of a parsed model: tensors, their constant data and quantization."""

    def __init__(self, m, data: bytes):
        schema = _schema()
        self.schema, self.m, self.data = schema, m, data
        if not m.subgraphs:
            raise TFLiteImportError("model: the flatbuffer has no subgraph")
        if len(m.subgraphs) > 1:
            raise TFLiteImportError(f"model: {len(m.subgraphs)} subgraphs (control flow: IF / WHILE / CALL_ONCE); "
                                    "qjax imports one-subgraph models")
        self.sg = m.subgraphs[0]
        self.tensors = self.sg.tensors or []
        self.type_names = enum_names(schema.TensorType)
        self.op_names = enum_names(schema.BuiltinOperator)

    def tensor_name(self, i) -> str:
        t = self.tensors[i]
        return t.name.decode() if isinstance(t.name, bytes) else (t.name or "")

    def name(self, i) -> str:
        return f"tensor {i} {self.tensor_name(i)!r}"

    def shape(self, i) -> tuple:
        return tuple(_ints(self.tensors[i].shape))

    def dtype(self, i) -> str:
        t = self.tensors[i].type
        return {0: "float32", 2: "int32", 3: "uint8", 9: "int8", 4: "int64"}.get(t, self.type_names.get(t, str(t)))

    def const(self, i):
        """The constant data of tensor ``i`` (numpy, its shape), or None when it is computed."""
        raw = buffer_bytes(self.m, self.tensors[i], self.data)
        if raw is None:
            return None
        dt = self.dtype(i)
        if dt not in ("float32", "int32", "uint8", "int8", "int64"):
            raise TFLiteImportError(f"{self.name(i)}: constant of type {dt} is not supported")
        return np.frombuffer(raw, np.dtype(dt)).reshape(self.shape(i)).copy()

    def qparams(self, i):
        """``(scale, zero_point, axis)`` as float32 / int32 numpy arrays (1-d) and the quantized dim, or None."""
        q = quantization(self.tensors[i])
        return None if q is None else (q[0], q[1].astype(np.int32), q[2])


# -- the translation --------------------------------------------------------------------------------------


_FUSED = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_PADDING = {0: "SAME", 1: "VALID"}


def _delegated(data: bytes) -> frozenset:
    """The operators XNNPACK takes; a model the delegate fails to prepare is refused (the interpreter refuses
    it too: e.g. a CONCATENATION of differently quantized operands, per-tensor conv weights with a per-channel
    bias)."""
    try:
        return frozenset(litert_runtime.delegated_ops(data))
    except (RuntimeError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise TFLiteImportError(f"kernels='xnnpack': LiteRT's interpreter cannot prepare the model with the "
                                f"XNNPACK delegate ({msg})") from None


class _Importer:
    def __init__(self, data: bytes, kernels: str):
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r}; use one of {KERNELS}")
        self.data, self.kernels = data, kernels
        self.g = _Graph(_parse(data), data)
        self.delegated = _delegated(data) if kernels == "xnnpack" else frozenset()
        self.nodes, self.params, self.value = [], {}, {}  # value: tensor index -> Ref
        self.node_of_op = {}
        self.op_index, self.op_name = -1, ""
        self.fixed_batch = None  # the batch a fixed-shape RESHAPE / TRANSPOSE_CONV pins the model to

    # errors and small readers -------------------------------------------------------------------------
    def fail(self, rule: str):
        raise TFLiteImportError(f"operator {self.op_index} ({self.op_name}): {rule}")

    def engine(self) -> LiteRT:
        if self.kernels == "xnnpack" and self.op_index not in self.delegated:
            return LiteRT("optimized")  # the XNNPACK delegate left this operator to the builtin kernels
        return LiteRT(self.kernels)

    def activation(self, options) -> str:
        act = _FUSED.get(int(getattr(options, "fusedActivationFunction", 0) or 0), "?")
        if act not in ACTIVATIONS:
            self.fail(f"fused activation {act} is not one the int8 kernels fuse ({', '.join(ACTIVATIONS)})")
        return act

    def per_tensor(self, i, what="tensor"):
        """``(scale, zero_point)`` of a per-tensor quantized int8 / uint8 tensor, or None for float32."""
        g = self.g
        dt = g.dtype(i)
        if dt == "float32":
            return None
        if dt not in ("int8", "uint8"):
            self.fail(f"{g.name(i)} ({what}) has type {dt}; qjax imports int8 (uint8 at the edges) and float32 "
                      "activations")
        q = g.qparams(i)
        if q is None:
            self.fail(f"{g.name(i)} ({what}) is {dt} without quantization parameters")
        scale, zp, _ = q
        if scale.size != 1:
            self.fail(f"{g.name(i)} ({what}) is quantized per channel; activations must be per tensor")
        if not (np.isfinite(scale[0]) and scale[0] > 0):
            self.fail(f"{g.name(i)} ({what}) has scale {scale[0]}; scales must be finite and > 0")
        return float(scale[0]), int(zp[0])

    def ref(self, i, what="input"):
        """The Ref of tensor ``i``'s value (a model input, an earlier op's output or a constant node)."""
        if i in self.value:
            return self.value[i]
        data = self.g.const(i)
        if data is None:
            self.fail(f"{self.g.name(i)} ({what}) is neither a model input, a constant nor an earlier output")
        qp = self.per_tensor(i, what)
        if qp is None:
            self.fail(f"{self.g.name(i)} ({what}) is a float constant; qjax computes quantized tensors")
        name = f"const_{i}"
        shape = self.g.shape(i)
        if shape:  # a constant activation's batch is the model's: LiteRT's ops refuse operands of other batches
            self.fixed_batch = self.fixed_batch or shape[0]
        self.nodes.append(Node(name, "tfl_const", (), (("node", name), ("out_qparams", qp), ("tensors", (("value", i),))),
                               self.g.name(i)))
        self.params[name] = {"value": self.const_qarray(i, data, qp)}
        self.value[i] = Ref(name)
        return self.value[i]

    def const_qarray(self, i, data, qp):
        dt = self.g.dtype(i)
        return QArray(data.astype(dt), np.float32(qp[0]), np.int32(qp[1]), dt)

    def constant_ints(self, i, what) -> tuple:
        data = self.g.const(i)
        if data is None or self.g.dtype(i) not in ("int32", "int64"):
            self.fail(f"{self.g.name(i)} ({what}) must be a constant int32 tensor")
        return tuple(int(v) for v in np.asarray(data).reshape(-1))

    def emit(self, op, args, static, params, out_tensor, *, tensors=(), engine=True):
        name = f"{self.op_name.lower()}_{self.op_index}"
        cfg = dict(static)
        cfg["node"] = name
        cfg["op_index"] = self.op_index
        if engine:
            cfg["engine"] = self.engine()
        cfg["tensors"] = tuple(tensors) + (("output", int(out_tensor)),)
        self.nodes.append(Node(name, op, tuple(args), tuple(cfg.items()),
                               f"operator {self.op_index} {self.op_name} -> {self.g.name(out_tensor)}"))
        if params:
            self.params[name] = params
        self.value[int(out_tensor)] = Ref(name)
        self.node_of_op[self.op_index] = name
        return name

    def out_params(self, out):
        qp = self.per_tensor(out, "output")
        if qp is None:
            self.fail(f"{self.g.name(out)} (output) is float32; the op computes a quantized tensor")
        return qp, {"scale": np.float32(qp[0]), "zero_point": np.int32(qp[1])}

    def quantized_in(self, i, what="input"):
        qp = self.per_tensor(i, what)
        if qp is None:
            self.fail(f"{self.g.name(i)} ({what}) is float32; the op takes a quantized tensor (QUANTIZE it first)")
        return qp

    # the model ---------------------------------------------------------------------------------------
    def run(self) -> QModel:
        g = self.g
        inputs = []
        for k, t in enumerate(_ints(g.sg.inputs)):
            dt = g.dtype(t)
            if dt not in ("int8", "uint8", "float32"):
                raise TFLiteImportError(f"model input {k} ({g.name(t)}) has type {dt}; qjax takes int8, uint8 and "
                                        "float32 inputs")
            qp = None if dt == "float32" else self.per_tensor(t, f"model input {k}")
            placeholder, name = f"input{k}", f"tfl_input{k}"
            self.nodes.append(Node(name, "tfl_input", (Ref(placeholder),),
                                   (("index", k), ("dtype", dt), ("shape", g.shape(t)), ("qparams", qp)),
                                   f"model input {k} ({g.name(t)})"))
            self.value[int(t)] = Ref(name)
            inputs.append(placeholder)
        for i, op in enumerate(g.sg.operators or []):
            code = g.m.operatorCodes[op.opcodeIndex]
            builtin = builtin_code(code)
            self.op_index = i
            self.op_name = g.op_names.get(builtin, f"builtin {builtin}")
            if self.op_name == "CUSTOM":
                cc = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
                self.op_name = f"CUSTOM {cc!r}"
            fn = getattr(self, f"op_{self.op_name.lower()}", None) if self.op_name.isidentifier() else None
            if fn is None:
                supported = sorted(n[3:].upper() for n in dir(self) if n.startswith("op_") and callable(getattr(self, n)))
                self.fail(f"is not supported; qjax imports {', '.join(supported)}")
            fn(op, _ints(op.inputs), _ints(op.outputs), op.builtinOptions)
        outs = []
        for k, t in enumerate(_ints(g.sg.outputs)):
            if int(t) not in self.value:
                raise TFLiteImportError(f"model output {k} ({g.name(t)}) is not computed by any operator")
            name = f"tfl_output{k}"
            self.nodes.append(Node(name, "tfl_output", (self.value[int(t)],), (("index", k),),
                                   f"model output {k} ({g.name(t)})"))
            outs.append(Ref(name))
        specs = lambda ts: tuple((g.tensor_name(int(t)), g.shape(int(t)), g.dtype(int(t))) for t in ts)  # noqa: E731
        if self.fixed_batch is not None:  # the input nodes refuse another batch in one line (as LiteRT does)
            self.nodes = [Node(n.name, n.op, n.args, n.static + (("fixed_batch", self.fixed_batch),), n.source)
                          if n.op == "tfl_input" else n for n in self.nodes]
        meta = dict(source="tflite", tflite_model=self.data, kernels=self.kernels, isa=host_isa(),
                    delegated=tuple(sorted(self.delegated)), input_specs=specs(_ints(g.sg.inputs)),
                    output_specs=specs(_ints(g.sg.outputs)), node_of_operator=tuple(sorted(self.node_of_op.items())),
                    fixed_batch=self.fixed_batch)
        return QModel(inputs, self.nodes, outs[0] if len(outs) == 1 else tuple(outs), self.params, meta)

    # GEMM -------------------------------------------------------------------------------------------------
    def weights(self, i, kind):
        """The weight constant as a QArray: int8, symmetric, per tensor or per channel (``(scale, axis)``)."""
        g = self.g
        data = g.const(i)
        if data is None:
            self.fail(f"{g.name(i)} (weights) is not a constant; qjax imports constant weights")
        if g.dtype(i) != "int8":
            self.fail(f"{g.name(i)} (weights) has type {g.dtype(i)}; int8 weights only")
        q = g.qparams(i)
        if q is None:
            self.fail(f"{g.name(i)} (weights) has no quantization parameters")
        scale, zp, qdim = q
        if np.any(zp != 0):
            self.fail(f"{g.name(i)} (weights) has nonzero zero points {sorted(set(zp.tolist()))[:4]}; LiteRT's int8 "
                      "kernels take symmetric weights (zero point 0)")
        if not np.all(np.isfinite(scale) & (scale > 0)):
            self.fail(f"{g.name(i)} (weights) has a scale that is not finite and > 0")
        return data, scale, qdim

    def bias(self, inputs, n_out):
        if len(inputs) < 3 or inputs[2] < 0:
            return None, ()
        b = self.g.const(inputs[2])
        if b is None:
            self.fail(f"{self.g.name(inputs[2])} (bias) is not a constant")
        if self.g.dtype(inputs[2]) != "int32":
            self.fail(f"{self.g.name(inputs[2])} (bias) has type {self.g.dtype(inputs[2])}; int32 biases only")
        if b.shape != (n_out,):
            self.fail(f"{self.g.name(inputs[2])} (bias) has shape {b.shape}, expected ({n_out},)")
        return b.astype(np.int32), (("bias", inputs[2]),)

    def per_channel_scale(self, scale, qdim, n_out, want_dim, i):
        if scale.size == 1:
            return np.float32(scale[0]), None
        if scale.size != n_out or qdim != want_dim:
            self.fail(f"{self.g.name(i)} (weights) has {scale.size} scales along dim {qdim}; expected 1 or {n_out} "
                      f"along dim {want_dim}")
        return scale.astype(np.float32), 3

    def conv(self, inputs, outputs, o, depthwise):
        g = self.g
        x, wi, out = inputs[0], inputs[1], outputs[0]
        xq = self.quantized_in(x)
        oq, p = self.out_params(out)
        data, scale, qdim = self.weights(wi, "weights")
        xshape = g.shape(x)
        if len(xshape) != 4 or data.ndim != 4:
            self.fail(f"input {xshape} / weights {data.shape}: 4-d NHWC input and weights expected")
        c = xshape[3]
        if depthwise:
            _, kh, kw, cm = data.shape
            m = int(o.depthMultiplier or 0)
            if cm % c:
                self.fail(f"weights with {cm} channels for an input of {c} channels")
            if m not in (0, cm // c):  # the kernels derive the multiplier from the shapes (depth_multiplier is legacy)
                self.fail(f"depth_multiplier {m} does not match weights {data.shape} for {c} input channels")
            w = weight_from_tflite(data, "tfl_conv", True)  # (1, KH, KW, C*M) -> HWIO (KH, KW, 1, C*M), groups = C
            n_out, want_dim, groups = cm, 3, c
        else:
            n_out, kh, kw, ci = data.shape
            if c % ci:
                self.fail(f"weights with {ci} input channels for an input of {c} channels")
            w = weight_from_tflite(data, "tfl_conv")  # OHWI -> HWIO
            want_dim, groups = 0, c // ci
        wscale, axis = self.per_channel_scale(scale, qdim, n_out, want_dim, wi)
        bias, btensors = self.bias(inputs, n_out)
        if bias is None and not depthwise:  # conv.cc Prepare: TF_LITE_ENSURE(context, has_bias) for int8
            self.fail("has no bias; LiteRT's int8 CONV_2D requires one (conv.cc: has_bias)")
        if bias is None:  # reference computes it, the optimized per-channel kernel reads the missing bias
            self.fail("has no bias; LiteRT's optimized int8 DEPTHWISE_CONV_2D kernel crashes (segfault) without "
                      "one, so qjax refuses it for every family")
        strides = (int(o.strideH or 1), int(o.strideW or 1))
        dilation = (int(o.dilationHFactor or 1), int(o.dilationWFactor or 1))
        mode = _PADDING[int(o.padding or 0)]
        spatial = tuple(xshape[1:3])
        pad = explicit_padding(mode, spatial, (kh, kw), strides, dilation)
        geom = ConvGeometry(strides=strides, padding=pad, dilation=dilation, groups=groups)
        zero = np.zeros(np.shape(wscale), np.int32)
        p = dict(p, weight=QArray(np.ascontiguousarray(w), wscale, zero, "int8", axis))
        if bias is not None:
            p["bias"] = bias
        static = dict(geometry=geom, activation=self.activation(o), depthwise=depthwise, in_qparams=(xq,),
                      w_scale=Static(wscale), out_qparams=oq, padding_mode=mode, in_spatial=spatial, kernel=(kh, kw))
        self.emit("tfl_conv", (self.ref(x),), static.items(), p, out, tensors=(("weight", wi),) + btensors)

    def op_conv_2d(self, op, inputs, outputs, o):
        self.conv(inputs, outputs, o, depthwise=False)

    def op_depthwise_conv_2d(self, op, inputs, outputs, o):
        self.conv(inputs, outputs, o, depthwise=True)

    def op_transpose_conv(self, op, inputs, outputs, o):
        """TRANSPOSE_CONV: inputs (output_shape, weights OHWI, x, bias?); weights -> HWIO ``(KH, KW, C, O)``."""
        g = self.g
        shape_t, wi, x, out = inputs[0], inputs[1], inputs[2], outputs[0]
        out_shape = self.constant_ints(shape_t, "output_shape")
        xq = self.quantized_in(x)
        oq, p = self.out_params(out)
        data, scale, qdim = self.weights(wi, "weights")
        xshape = g.shape(x)
        if len(xshape) != 4 or data.ndim != 4 or len(out_shape) != 4:
            self.fail(f"input {xshape}, weights {data.shape}, output_shape {out_shape}: 4-d NHWC expected")
        n_out, kh, kw, ci = data.shape
        if ci != xshape[3] or out_shape[3] != n_out:
            self.fail(f"weights {data.shape} do not fit input {xshape} and output_shape {out_shape}")
        wscale, axis = self.per_channel_scale(scale, qdim, n_out, 0, wi)
        zero = np.zeros(np.shape(wscale), np.int32)
        p = dict(p, weight=QArray(weight_from_tflite(data, "tfl_transpose_conv"), wscale, zero, "int8", axis))
        btensors = ()
        if len(inputs) > 3 and inputs[3] >= 0:
            bias, btensors = self.bias([x, wi, inputs[3]], n_out)
            p["bias"] = bias
        act = self.activation(o) if hasattr(o, "fusedActivationFunction") else "NONE"
        static = dict(output_shape=out_shape, strides=(int(o.strideH or 1), int(o.strideW or 1)),
                      padding_mode=_PADDING[int(o.padding or 0)], activation=act, in_qparams=(xq,),
                      w_scale=Static(wscale), out_qparams=oq)
        self.fixed_batch = self.fixed_batch or out_shape[0]
        self.emit("tfl_transpose_conv", (self.ref(x),), static.items(), p, out,
                  tensors=(("weight", wi),) + btensors)

    def op_fully_connected(self, op, inputs, outputs, o):
        x, wi, out = inputs[0], inputs[1], outputs[0]
        xq = self.quantized_in(x)
        oq, p = self.out_params(out)
        if int(getattr(o, "weightsFormat", 0) or 0) != 0:
            self.fail("shuffled weights (weights_format SHUFFLED4x16INT8) are not supported")
        data, scale, qdim = self.weights(wi, "weights")
        if data.ndim != 2:
            self.fail(f"weights of shape {data.shape}; (O, K) expected")
        n_out, k = data.shape
        if math.prod(self.g.shape(x)) % k:
            self.fail(f"input {self.g.shape(x)} does not flatten into rows of {k}")
        wscale, axis = self.per_channel_scale(scale, qdim, n_out, 0, wi)
        axis = 0 if axis is not None else None
        bias, btensors = self.bias(inputs, n_out)
        zero = np.zeros(np.shape(wscale), np.int32)
        p = dict(p, weight=QArray(data.astype(np.int8), wscale, zero, "int8", axis))
        if bias is not None:
            p["bias"] = bias
        static = dict(activation=self.activation(o), keep_num_dims=bool(getattr(o, "keepNumDims", False)),
                      in_qparams=(xq,), w_scale=Static(wscale), out_qparams=oq)
        self.emit("tfl_fully_connected", (self.ref(x),), static.items(), p, out,
                  tensors=(("weight", wi),) + btensors)

    # elementwise ------------------------------------------------------------------------------------------
    def binary(self, inputs, outputs, o, kind):
        out = outputs[0]
        oq, p = self.out_params(out)
        args, qps, tensors = [], [], []
        for slot, i in zip("ab", inputs[:2]):
            qps.append(self.quantized_in(i, f"operand {slot}"))
            data = self.g.const(i) if i not in self.value else None
            if data is not None:  # a constant operand (e.g. a bias ADD) is a param
                p[f"const_{slot}"] = self.const_qarray(i, data, qps[-1])
                tensors.append((f"const_{slot}", i))
                args.append(None)
            else:
                args.append(self.ref(i, f"operand {slot}"))
        act = self.activation(o) if o is not None else "NONE"
        static = dict(kind=kind, activation=act, in_qparams=tuple(qps), out_qparams=oq)
        self.emit("tfl_binary", tuple(args), static.items(), p, out, tensors=tuple(tensors))

    def op_add(self, op, inputs, outputs, o):
        self.binary(inputs, outputs, o, "add")

    def op_sub(self, op, inputs, outputs, o):
        self.binary(inputs, outputs, o, "sub")

    def op_mul(self, op, inputs, outputs, o):
        self.binary(inputs, outputs, o, "mul")

    def op_concatenation(self, op, inputs, outputs, o):
        out = outputs[0]
        oq, p = self.out_params(out)
        rank = len(self.g.shape(out))
        axis = int(o.axis if o is not None else 0)
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            self.fail(f"axis {o.axis} out of range for rank {rank}")
        qps = tuple(self.quantized_in(i) for i in inputs)
        static = dict(axis=axis, activation=self.activation(o) if o is not None else "NONE", in_qparams=qps,
                      out_qparams=oq)
        self.emit("tfl_concat", (tuple(self.ref(i) for i in inputs),), static.items(), p, out)

    def op_quantize(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        oq, p = self.out_params(out)
        static = dict(dtype=self.g.dtype(out), in_qparams=(self.per_tensor(x),), out_qparams=oq)
        self.emit("tfl_quantize", (self.ref(x),), static.items(), p, out)

    def op_dequantize(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        if self.g.dtype(out) != "float32":
            self.fail(f"{self.g.name(out)} has type {self.g.dtype(out)}; DEQUANTIZE to float32 only")
        static = dict(in_qparams=(self.quantized_in(x),))
        self.emit("tfl_dequantize", (self.ref(x),), static.items(), None, out)

    def unary(self, inputs, outputs, kind, **extra):
        x, out = inputs[0], outputs[0]
        oq, p = self.out_params(out)
        static = dict(kind=kind, in_qparams=(self.quantized_in(x),), out_qparams=oq, **extra)
        self.emit("tfl_unary", (self.ref(x),), static.items(), p, out)

    def op_hard_swish(self, op, inputs, outputs, o):
        self.unary(inputs, outputs, "hard_swish")

    def op_logistic(self, op, inputs, outputs, o):
        self.unary(inputs, outputs, "logistic")

    def op_tanh(self, op, inputs, outputs, o):
        self.unary(inputs, outputs, "tanh")

    def op_softmax(self, op, inputs, outputs, o):
        self.unary(inputs, outputs, "softmax", beta=float(np.float32(o.beta if o is not None else 1.0)))

    # pooling / reductions -------------------------------------------------------------------------------------
    def pool(self, inputs, outputs, o, kind):
        x, out = inputs[0], outputs[0]
        if len(self.g.shape(x)) != 4:
            self.fail(f"input of shape {self.g.shape(x)}; NHWC expected")
        oq, p = self.out_params(out)
        static = dict(kind=kind, filter=(int(o.filterHeight), int(o.filterWidth)),
                      strides=(int(o.strideH or 1), int(o.strideW or 1)), padding_mode=_PADDING[int(o.padding or 0)],
                      activation=self.activation(o), in_qparams=(self.quantized_in(x),), out_qparams=oq)
        static["padding"] = explicit_padding(static["padding_mode"], self.g.shape(x)[1:3], static["filter"],
                                             static["strides"])
        self.emit("tfl_pool", (self.ref(x),), static.items(), p, out)

    def op_average_pool_2d(self, op, inputs, outputs, o):
        self.pool(inputs, outputs, o, "avg")

    def op_max_pool_2d(self, op, inputs, outputs, o):
        self.pool(inputs, outputs, o, "max")

    def op_mean(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        rank = len(self.g.shape(x))
        axes = self.constant_ints(inputs[1], "axes")
        axes = tuple(sorted({a + rank if a < 0 else a for a in axes}))
        if any(not 0 <= a < rank for a in axes):
            self.fail(f"axes {axes} out of range for rank {rank}")
        oq, p = self.out_params(out)
        static = dict(axes=axes, keep_dims=bool(getattr(o, "keepDims", False)), in_qparams=(self.quantized_in(x),),
                      out_qparams=oq)
        self.emit("tfl_mean", (self.ref(x),), static.items(), p, out)

    # value-preserving ops ---------------------------------------------------------------------------------
    def same_qparams(self, x, out):
        qx, qo = self.per_tensor(x), self.per_tensor(out, "output")
        if qx != qo:
            self.fail(f"output qparams {qo} differ from the input's {qx}; the op moves values only")
        return qx

    def op_reshape(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        self.same_qparams(x, out)
        if len(inputs) > 1 and inputs[1] >= 0:
            shape = self.constant_ints(inputs[1], "shape")
        elif o is not None and len(_ints(getattr(o, "newShape", None))):
            shape = tuple(_ints(o.newShape))
        else:
            shape = self.g.shape(out)
        if sum(d == -1 for d in shape) > 1 or any(d < -1 for d in shape):
            self.fail(f"new shape {shape}: at most one -1 and no other negative size")
        if -1 not in shape:  # LiteRT then refuses any other batch than the model's
            self.fixed_batch = self.fixed_batch or (self.g.shape(x)[0] if self.g.shape(x) else None)
        self.emit("tfl_shape", (self.ref(x),), dict(kind="reshape", shape=shape).items(), None, out, engine=False)

    def op_squeeze(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        self.same_qparams(x, out)
        rank = len(self.g.shape(x))
        dims = tuple(_ints(getattr(o, "squeezeDims", None)))
        axes = tuple(sorted({d + rank if d < 0 else d for d in dims}))
        self.emit("tfl_shape", (self.ref(x),), dict(kind="squeeze", axes=axes).items(), None, out, engine=False)

    def op_transpose(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        self.same_qparams(x, out)
        perm = self.constant_ints(inputs[1], "perm")
        rank = len(self.g.shape(x))
        perm = tuple(p + rank if p < 0 else p for p in perm)
        if sorted(perm) != list(range(rank)):
            self.fail(f"perm {perm} is not a permutation of {rank} dims")
        self.emit("tfl_shape", (self.ref(x),), dict(kind="transpose", perm=perm).items(), None, out, engine=False)

    def op_pad(self, op, inputs, outputs, o):
        x, out = inputs[0], outputs[0]
        qp = self.same_qparams(x, out)
        rank = len(self.g.shape(x))
        flat = self.constant_ints(inputs[1], "paddings")
        if len(flat) != 2 * rank or any(v < 0 for v in flat):
            self.fail(f"paddings {flat}: ({rank}, 2) non-negative sizes expected")
        paddings = tuple((flat[2 * d], flat[2 * d + 1]) for d in range(rank))
        pad_value = None  # PAD fills with the input's zero point (pad.cc), read at run time
        if len(inputs) > 2 and inputs[2] >= 0:  # PADV2's constant value (quantized with the output's qparams)
            v = self.g.const(inputs[2])
            if v is None or v.size != 1:
                self.fail(f"{self.g.name(inputs[2])} (constant_values) must be a constant scalar")
            if qp is not None and self.per_tensor(inputs[2], "constant_values") != qp:
                self.fail("constant_values quantized with other qparams than the input's")
            pad_value = v.reshape(()).item()
        static = dict(kind="pad", paddings=paddings, pad_value=pad_value)
        self.emit("tfl_shape", (self.ref(x),), static.items(), None, out, engine=False)

    op_padv2 = op_pad


def host_isa() -> str:
    """The host's instruction set as LiteRT's kernels see it (``platform.machine()``; ``AMD64`` -> ``x86_64``)."""
    m = platform.machine() or "unknown"
    return {"AMD64": "x86_64", "amd64": "x86_64", "x64": "x86_64"}.get(m, m)


def from_tflite(model, *, kernels: str = "xnnpack") -> QModel:
    """A LiteRT int8 model (a ``.tflite`` path or its bytes) as a :class:`~qjax.graph.QModel` computing what the
    interpreter computes with the op resolver ``kernels`` (``"reference"``, ``"optimized"`` or ``"xnnpack"``,
    the interpreter's default); see the module docstring for the ops, the call and ``model.info``.

    ``"optimized"`` / ``"xnnpack"`` are refused on a host that is not x86_64: their rules (e.g. the SIMD
    kernels' rounding) are verified on x86_64 only; ``"reference"`` is ISA-independent.

    Raises:
      TFLiteImportError: (a :class:`~qjax.QuantizationError`) the model uses an op, a tensor type or a
        quantization qjax does not reproduce; the message names the operator or tensor and the rule.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; use one of {KERNELS}")
    if kernels != "reference" and host_isa() != "x86_64":
        raise ValueError(f"kernels={kernels!r}: LiteRT's {kernels} rules are verified on x86_64 only, this host is "
                         f"{host_isa()}; use kernels='reference' (ISA-independent)")
    return _Importer(read_model(model), kernels).run()


def output_qparams(nodes) -> dict:
    """Node name -> the static ``(scale, zero_point)`` of its output (None: a float tensor), read from the nodes'
    cfg in order — the one propagation rule (:func:`with_qparams`, :class:`~qjax.interop.tflite_train.TFLiteQAT`):
    ``tfl_input``'s ``qparams``; an op's ``out_qparams``; ``tfl_shape`` / ``tfl_output`` their input's (they move
    values); ``tfl_dequantize`` None (float32)."""
    qp = {}
    for n in nodes:
        cfg = n.config()
        if n.op == "tfl_input":
            qp[n.name] = cfg["qparams"]
        elif "out_qparams" in cfg:
            qp[n.name] = tuple(cfg["out_qparams"])
        elif n.op in ("tfl_shape", "tfl_output"):
            (a,) = [r for r in n.args if isinstance(r, Ref)]
            qp[n.name] = qp.get(a.name)
        else:
            qp[n.name] = None
    return qp


def _qp(scale, zero_point) -> tuple:
    return float(np.float32(np.asarray(scale))), int(np.asarray(zero_point))


def with_qparams(qmodel: QModel, params=None) -> QModel:
    """``qmodel`` (from :func:`from_tflite`) with ``params`` (default: its own) and every node's static qparams
    re-read from them: ``out_qparams`` from ``p["scale"]`` / ``p["zero_point"]`` (a ``tfl_const``'s from its
    value), ``w_scale`` from the weight's scale, then every ``in_qparams`` from its producer's output
    (:func:`output_qparams`) or its constant operand.  This is the one way to change a model's qparams:
    :func:`qjax.to_tflite` refuses params whose qparams differ from the nodes' static ones.

    ``params`` must be concrete (host values): LiteRT's multipliers are derived from the scales at Prepare
    time, so the new model computes what the interpreter computes for a flatbuffer holding these qparams.
    """
    params = dict(qmodel.params if params is None else params)
    own = []  # pass 1: each node's own qparams from its params
    for n in qmodel.nodes:
        cfg, p = n.config(), params.get(n.name)
        if n.op == "tfl_const":
            cfg["out_qparams"] = _qp(p["value"].scale, p["value"].zero_point)
        elif "out_qparams" in cfg and p is not None and "scale" in p:
            cfg["out_qparams"] = _qp(p["scale"], p["zero_point"])
        if "w_scale" in cfg and p is not None:
            ws = np.asarray(p["weight"].scale, np.float32)
            cfg["w_scale"] = Static(ws if ws.ndim else np.float32(ws))
        own.append((n, cfg, p))
    out_of = output_qparams([Node(n.name, n.op, n.args, tuple(cfg.items()), n.source) for n, cfg, _ in own])
    nodes = []
    for n, cfg, p in own:  # pass 2: the operands' qparams are their producers'
        if "in_qparams" in cfg:
            srcs = n.args[0] if n.op == "tfl_concat" else n.args
            qps = []
            for slot, (a, old) in enumerate(zip(srcs, cfg["in_qparams"])):
                if a is None:  # a constant operand of a binary op
                    c = p[f"const_{'ab'[slot]}"]
                    qps.append(_qp(c.scale, c.zero_point))
                else:
                    qps.append(out_of[a.name])
            cfg["in_qparams"] = tuple(qps)
        nodes.append(Node(n.name, n.op, n.args, tuple(cfg.items()), n.source))
    return QModel(qmodel.inputs, nodes, qmodel.output, params, dict(qmodel.meta))
