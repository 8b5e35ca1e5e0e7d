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


# -- calibrated int8 models (the importer's test models) --------------------------------------------------------

_ACT = {"NONE": schema.ActivationFunctionType.NONE, "RELU": schema.ActivationFunctionType.RELU,
        "RELU6": schema.ActivationFunctionType.RELU6, "RELU_N1_TO_1": schema.ActivationFunctionType.RELU_N1_TO_1}
_PAD = {"SAME": schema.Padding.SAME, "VALID": schema.Padding.VALID}


def _float_act(v, act):
    return {"NONE": v, "RELU": np.maximum(v, 0), "RELU6": np.clip(v, 0, 6), "RELU_N1_TO_1": np.clip(v, -1, 1)}[act]


def _out_size(mode, n, k, s, d=1):
    eff = (k - 1) * d + 1
    out = (n + s - 1) // s if mode == "SAME" else (n - eff + s) // s
    total = max((out - 1) * s + eff - n, 0)
    return out, total // 2


class CalibratedBuilder:
    """A :class:`TFLiteBuilder` that picks every activation's int8 qparams from a float forward of the model on a
    calibration batch (weights dequantized; ranges min/max over the batch), as a post-training quantizer would:
    the outputs use the int8 range without saturating.  Each method appends one operator and returns the output
    tensor's index; ``self.f[t]`` is tensor ``t``'s float calibration values ``(B, ...)``."""

    def __init__(self, seed, calib):
        self.b, self.rng, self.f = TFLiteBuilder(), np.random.default_rng(seed), {}
        self.q = {}  # tensor -> (scale, zero point)
        self.calib = np.asarray(calib, np.float64)

    # tensors ------------------------------------------------------------------------------------------------
    def _act(self, v, scale=None, zp=None):
        """A new int8 activation tensor holding the float values ``v`` (batch first; the model's batch is 1)."""
        if scale is None:
            lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
            scale = max(hi - lo, 1e-3) / 255.0
            zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
        t = self.b.tensor((1,) + v.shape[1:], np.int8, scale=np.float32(scale), zero_point=zp)
        self.f[t], self.q[t] = v, (float(np.float32(scale)), int(zp))
        return t

    def input(self, dtype=np.float32):
        if np.dtype(dtype) == np.float32:
            t = self.b.tensor((1,) + self.calib.shape[1:], np.float32)
            self.f[t] = self.calib
            return t
        return self._act(self.calib)

    def int32(self, values):
        v = np.asarray(values, np.int32)
        return self.b.tensor(v.shape, np.int32, data=v)

    def _weights(self, w, axis, per_channel):
        """int8 symmetric weights for the float ``w`` (per channel along ``axis`` or per tensor)."""
        red = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.max(np.abs(w), axis=red) if per_channel else np.max(np.abs(w))
        scale = (np.maximum(amax, 1e-6) / 127.0).astype(np.float32)
        shape = [1] * w.ndim
        if per_channel:
            shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        t = self.b.tensor(w.shape, np.int8, scale=scale, zero_point=np.zeros(np.size(scale), np.int64),
                          axis=axis if per_channel else 0, data=q)
        return t, q.astype(np.float64) * scale.astype(np.float64).reshape(shape), scale

    def _bias(self, n, x, wscale):
        """int32 bias at scale ``sx * sw`` (one scale for per-tensor weights: XNNPACK refuses a model whose bias is
        quantized per channel and its weights per tensor)."""
        bscale = (np.float32(self.q[x][0]) * np.asarray(wscale, np.float32)).astype(np.float32)
        b = np.round(self.rng.normal(0, 0.2, n) / np.broadcast_to(bscale, (n,))).astype(np.int32)
        t = self.b.tensor((n,), np.int32, scale=bscale, zero_point=np.zeros(np.size(bscale), np.int64), data=b)
        return t, b * np.broadcast_to(bscale, (n,)).astype(np.float64)

    # ops ----------------------------------------------------------------------------------------------------
    def quantize(self, x, scale=None, zp=None):
        y = self._act(self.f[x], scale, zp)
        self.b.op("QUANTIZE", [x], [y])
        return y

    def requantize(self, x, factor=1.25, zp_shift=3):
        s, z = self.q[x]
        y = self._act(self.f[x], s * factor, int(np.clip(z + zp_shift, -128, 127)))
        self.b.op("QUANTIZE", [x], [y])
        return y

    def dequantize(self, x):
        y = self.b.tensor(self.b.tensors[x].shape, np.float32)
        self.b.op("DEQUANTIZE", [x], [y])
        return y

    def conv(self, x, cout, k=3, stride=1, padding="SAME", dilation=1, act="NONE", depthwise=False, multiplier=1,
             per_channel=True, bias=True):
        v = self.f[x]
        bsz, h, w_, c = v.shape
        if depthwise:
            cout = c * multiplier
            wf = self.rng.normal(0, np.sqrt(2.0 / (k * k)), (1, k, k, cout))
            wt, wq, ws = self._weights(wf, 3, per_channel)
            hwio, groups, cin_g = wq.reshape(k, k, 1, cout), c, 1
        else:
            wf = self.rng.normal(0, np.sqrt(2.0 / (k * k * c)), (cout, k, k, c))
            wt, wq, ws = self._weights(wf, 0, per_channel)
            hwio, groups, cin_g = np.transpose(wq, (1, 2, 3, 0)), 1, c
        oh, ph = _out_size(padding, h, k, stride, dilation)
        ow, pw = _out_size(padding, w_, k, stride, dilation)
        xp = np.zeros((bsz, h + 2 * k * dilation, w_ + 2 * k * dilation, c))
        xp[:, ph:ph + h, pw:pw + w_] = v
        out = np.zeros((bsz, oh, ow, cout))
        og = cout // groups
        for i in range(k):
            for j in range(k):
                patch = xp[:, i * dilation: i * dilation + (oh - 1) * stride + 1: stride,
                           j * dilation: j * dilation + (ow - 1) * stride + 1: stride]
                pg = patch.reshape(bsz, oh, ow, groups, cin_g)
                wg = hwio[i, j].reshape(cin_g, groups, og)
                out += np.einsum("bhwgc,cgo->bhwgo", pg, wg).reshape(bsz, oh, ow, cout)
        ins = [x, wt]
        if bias:
            bt, bf = self._bias(cout, x, ws)
            out, ins = out + bf, ins + [bt]
        out = _float_act(out, act)
        y = self._act(out)
        if depthwise:
            o = schema.DepthwiseConv2DOptionsT()
            o.depthMultiplier = multiplier
        else:
            o = schema.Conv2DOptionsT()
        o.padding, o.strideH, o.strideW = _PAD[padding], stride, stride
        o.dilationHFactor = o.dilationWFactor = dilation
        o.fusedActivationFunction = _ACT[act]
        self.b.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", ins, [y], o, version=3 if depthwise else 3)
        return y

    def transpose_conv(self, x, cout, k=3, stride=2, padding="SAME", act="NONE", per_channel=True, bias=True):
        """TRANSPOSE_CONV (weights OHWI; output ``H * s`` for SAME, ``(H - 1) * s + k`` for VALID)."""
        v = self.f[x]
        bsz, h, w_, c = v.shape
        wf = self.rng.normal(0, np.sqrt(2.0 / (k * k * c)), (cout, k, k, c))
        wt, wq, ws = self._weights(wf, 0, per_channel)
        oh, ow = (h * stride, w_ * stride) if padding == "SAME" else ((h - 1) * stride + k, (w_ - 1) * stride + k)
        ph = max((h - 1) * stride + k - oh, 0) // 2
        pw = max((w_ - 1) * stride + k - ow, 0) // 2
        full = np.zeros((bsz, (h - 1) * stride + k, (w_ - 1) * stride + k, cout))
        for i in range(k):
            for j in range(k):
                full[:, i:i + (h - 1) * stride + 1:stride, j:j + (w_ - 1) * stride + 1:stride] += np.einsum(
                    "bhwc,oc->bhwo", v, wq[:, i, j, :])
        out = full[:, ph:ph + oh, pw:pw + ow]
        ins = [self.int32([1, oh, ow, cout]), wt, x]
        if bias:
            bt, bf = self._bias(cout, x, ws)
            out, ins = out + bf, ins + [bt]
        y = self._act(_float_act(out, act))
        o = schema.TransposeConvOptionsT()
        o.padding, o.strideH, o.strideW, o.fusedActivationFunction = _PAD[padding], stride, stride, _ACT[act]
        self.b.op("TRANSPOSE_CONV", ins, [y], o, version=4)
        return y

    def fully_connected(self, x, n_out, act="NONE", per_channel=True, keep_num_dims=False, bias=True):
        v = self.f[x]
        k = v.shape[-1] if keep_num_dims else int(np.prod(v.shape[1:]))
        rows = v.reshape(-1, k)
        wf = self.rng.normal(0, np.sqrt(2.0 / k), (n_out, k))
        wt, wq, ws = self._weights(wf, 0, per_channel)
        out = rows @ wq.T
        ins = [x, wt]
        if bias:
            bt, bf = self._bias(n_out, x, ws)
            out, ins = out + bf, ins + [bt]
        out = _float_act(out, act)
        out = out.reshape(v.shape[:-1] + (n_out,)) if keep_num_dims else out.reshape(v.shape[0], -1, n_out)[:, 0]
        y = self._act(out)
        o = schema.FullyConnectedOptionsT()
        o.fusedActivationFunction, o.keepNumDims = _ACT[act], keep_num_dims
        self.b.op("FULLY_CONNECTED", ins, [y], o, version=5 if per_channel else 4)
        return y

    def constant(self, values):
        """An int8 constant holding the float ``values`` (model batch 1 shape), calibrated to its range."""
        v = np.asarray(values, np.float64)
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        scale = np.float32(max(hi - lo, 1e-3) / 255.0)
        zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
        q = np.clip(np.round(v / scale) + zp, -128, 127).astype(np.int8)
        t = self.b.tensor(v.shape, np.int8, scale=scale, zero_point=zp, data=q)
        self.f[t], self.q[t] = (q.astype(np.float64) - zp) * float(scale), (float(scale), zp)
        return t

    def binary(self, kind, a, c, act="NONE"):
        fa, fc = self.f[a], self.f[c]
        out = _float_act({"ADD": fa + fc, "SUB": fa - fc, "MUL": fa * fc}[kind], act)
        y = self._act(out)
        o = {"ADD": schema.AddOptionsT, "SUB": schema.SubOptionsT, "MUL": schema.MulOptionsT}[kind]()
        o.fusedActivationFunction = _ACT[act]
        self.b.op(kind, [a, c], [y], o, version=2)
        return y

    def pool(self, kind, x, k=2, stride=2, padding="VALID", act="NONE"):
        v = self.f[x]
        bsz, h, w_, c = v.shape
        oh, ph = _out_size(padding, h, k, stride)
        ow, pw = _out_size(padding, w_, k, stride)
        out = np.zeros((bsz, oh, ow, c))
        for i in range(oh):
            for j in range(ow):
                r0, c0 = max(i * stride - ph, 0), max(j * stride - pw, 0)
                r1, c1 = min(i * stride - ph + k, h), min(j * stride - pw + k, w_)
                win = v[:, r0:r1, c0:c1]
                out[:, i, j] = win.mean(axis=(1, 2)) if kind == "AVERAGE_POOL_2D" else win.max(axis=(1, 2))
        y = self._act(_float_act(out, act), *self.q[x])  # int8 pooling keeps the input's qparams
        o = schema.Pool2DOptionsT()
        o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = _PAD[padding], stride, stride, k, k
        o.fusedActivationFunction = _ACT[act]
        self.b.op(kind, [x], [y], o, version=2)
        return y

    def mean(self, x, axes=(1, 2), keep_dims=False):
        out = self.f[x].mean(axis=tuple(axes), keepdims=keep_dims)
        y = self._act(out)
        o = schema.ReducerOptionsT()
        o.keepDims = keep_dims
        self.b.op("MEAN", [x, self.int32(list(axes))], [y], o, version=2)
        return y

    def concat(self, xs, axis=-1, act="NONE", same=False):
        """``same``: the output takes the (shared) inputs' qparams, as converters emit it (XNNPACK refuses a model
        whose CONCATENATION operands are quantized differently)."""
        out = _float_act(np.concatenate([self.f[x] for x in xs], axis=axis), act)
        y = self._act(out, *self.q[xs[0]]) if same else self._act(out)
        o = schema.ConcatenationOptionsT()
        o.axis, o.fusedActivationFunction = axis, _ACT[act]
        self.b.op("CONCATENATION", list(xs), [y], o, version=2)
        return y

    def unary(self, kind, x, beta=1.0):
        v = self.f[x]
        if kind == "HARD_SWISH":
            y = self._act(v * np.clip(v + 3, 0, 6) / 6)
            self.b.op(kind, [x], [y])
        elif kind == "LOGISTIC":
            y = self._act(1 / (1 + np.exp(-v)), 1 / 256, -128)  # the int8 kernels' fixed output qparams
            self.b.op(kind, [x], [y], version=2)
        elif kind == "TANH":
            y = self._act(np.tanh(v), 1 / 128, 0)
            self.b.op(kind, [x], [y], version=2)
        elif kind == "SOFTMAX":
            e = np.exp(beta * (v - v.max(axis=-1, keepdims=True)))
            y = self._act(e / e.sum(axis=-1, keepdims=True), 1 / 256, -128)
            o = schema.SoftmaxOptionsT()
            o.beta = beta
            self.b.op(kind, [x], [y], o, version=2)
        else:
            raise ValueError(kind)
        return y

    def _moved(self, x, v):
        return self._act(v, *self.q[x])

    def reshape(self, x, shape):
        v = self.f[x]
        y = self._moved(x, v.reshape((v.shape[0],) + tuple(shape[1:])))
        self.b.op("RESHAPE", [x, self.int32(list(shape))], [y])
        return y

    def squeeze(self, x, axes):
        y = self._moved(x, np.squeeze(self.f[x], axis=tuple(axes)))
        o = schema.SqueezeOptionsT()
        o.squeezeDims = list(axes)
        self.b.op("SQUEEZE", [x], [y], o)
        return y

    def transpose(self, x, perm):
        y = self._moved(x, np.transpose(self.f[x], perm))
        self.b.op("TRANSPOSE", [x, self.int32(list(perm))], [y], version=2)
        return y

    def pad(self, x, paddings):
        y = self._moved(x, np.pad(self.f[x], paddings))
        self.b.op("PAD", [x, self.int32(paddings)], [y], version=2)
        return y

    def build(self, inputs, outputs) -> bytes:
        return self.b.build(inputs, outputs)


def _calibration(seed, shape, n=16):
    return np.random.default_rng(seed + 1000).standard_normal((n,) + tuple(shape)).astype(np.float32)


def mobilenet_style(seed=0, *, float_io=True, size=16, width=8) -> bytes:
    """A MobileNet-style int8 model (seeded, calibrated): QUANTIZE -> CONV 3x3/2 + RELU6 -> DEPTHWISE 3x3 +
    RELU6 -> pointwise 1x1 -> an inverted residual block (1x1 + RELU6, depthwise 3x3 + RELU6, 1x1) with its
    residual ADD -> HARD_SWISH -> MEAN over H, W -> FULLY_CONNECTED -> SOFTMAX -> DEQUANTIZE.  Per-channel
    weights, asymmetric activations; input ``(1, size, size, 3)``.  ``float_io=False``: int8 in and out (no
    QUANTIZE / DEQUANTIZE; the input tensor has the QUANTIZE's qparams)."""
    m = CalibratedBuilder(seed, _calibration(seed, (size, size, 3)))
    x = m.input(np.float32 if float_io else np.int8)
    h = m.quantize(x) if float_io else x
    h = m.conv(h, width, 3, stride=2, act="RELU6")
    h = m.conv(h, 0, 3, depthwise=True, act="RELU6")
    h = m.conv(h, 2 * width, 1)
    r = m.conv(h, 4 * width, 1, act="RELU6")
    r = m.conv(r, 0, 3, depthwise=True, act="RELU6")
    r = m.conv(r, 2 * width, 1)
    h = m.binary("ADD", h, r)
    h = m.unary("HARD_SWISH", h)
    h = m.mean(h, (1, 2), keep_dims=False)
    h = m.fully_connected(h, 10)
    h = m.unary("SOFTMAX", h)
    y = m.dequantize(h) if float_io else h
    return m.build([x], [y])


def every_op_model(seed=0, *, logistic=True) -> bytes:
    """One model with every op :func:`qjax.from_tflite` imports (float input; three outputs: the float softmax,
    an int8 FULLY_CONNECTED on a 4-d input with keep_num_dims and one on a flattened per-tensor CONV_2D (VALID,
    stride 2)): QUANTIZE, CONV_2D (dilation 2, RELU),
    DEPTHWISE_CONV_2D (multiplier 2, stride 2, per-tensor weights), AVERAGE_POOL_2D, MAX_POOL_2D (SAME),
    CONCATENATION, ADD (RELU6), SUB of a constant, MUL, HARD_SWISH, LOGISTIC, TANH, PAD, TRANSPOSE, MEAN, SQUEEZE,
    FULLY_CONNECTED, QUANTIZE (requantize), SOFTMAX, RESHAPE, DEQUANTIZE.  ``logistic=False``: the LOGISTIC
    replaced by a second TANH."""
    m = CalibratedBuilder(seed, _calibration(seed, (8, 8, 4)))
    x = m.input()
    q = m.quantize(x)
    c1 = m.conv(q, 8, 3, padding="SAME", dilation=2, act="RELU")
    d2 = m.conv(c1, 0, 3, stride=2, depthwise=True, multiplier=2, per_channel=False, act="NONE")
    a3 = m.pool("AVERAGE_POOL_2D", c1, 2, 2, "VALID")
    m4 = m.pool("MAX_POOL_2D", c1, 3, 2, "SAME")
    cat = m.concat([a3, m4], axis=3, same=True)
    add = m.binary("ADD", d2, cat, act="RELU6")
    sub = m.binary("SUB", add, m.constant(m.rng.uniform(-1, 2, (1, 1, 1, 16))))
    mul = m.binary("MUL", sub, d2)
    hs = m.unary("HARD_SWISH", mul)
    lg, th = m.unary("LOGISTIC" if logistic else "TANH", hs), m.unary("TANH", hs)
    pd = m.pad(m.binary("MUL", lg, th), [[0, 0], [1, 1], [1, 0], [0, 0]])
    tr = m.transpose(pd, [0, 2, 1, 3])
    fc4 = m.fully_connected(tr, 6, keep_num_dims=True, act="RELU")
    cv = m.conv(tr, 5, 2, stride=2, padding="VALID", per_channel=False)
    fcf = m.fully_connected(cv, 4)  # a 4-d input flattened
    mn = m.mean(tr, (1, 2), keep_dims=True)
    sq = m.squeeze(mn, [1, 2])
    fc = m.fully_connected(sq, 10, per_channel=False)
    rq = m.requantize(fc)
    sm = m.unary("SOFTMAX", rq, beta=0.5)
    rs = m.reshape(sm, [-1, 10])
    return m.build([x], [m.dequantize(rs), fc4, fcf])


def decoder_style(seed=0, *, size=8) -> bytes:
    """An encoder-decoder int8 model with TRANSPOSE_CONV (float I/O, batch 1: the transposed conv's constant output
    shape pins it): QUANTIZE -> CONV 3x3/2 + RELU6 -> TRANSPOSE_CONV 3x3/2 (SAME) + RELU -> ADD of the quantized
    input's 1x1 projection -> DEQUANTIZE."""
    m = CalibratedBuilder(seed, _calibration(seed, (size, size, 3)))
    x = m.input()
    q = m.quantize(x)
    h = m.conv(q, 8, 3, stride=2, act="RELU6")
    up = m.transpose_conv(h, 4, 3, stride=2, padding="SAME", act="RELU")
    skip = m.conv(q, 4, 1)
    return m.build([x], [m.dequantize(m.binary("ADD", up, skip))])
