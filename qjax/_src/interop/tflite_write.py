"""``qjax.to_tflite(qm)``: a QModel imported by :func:`qjax.from_tflite` written back as a ``.tflite`` flatbuffer.

The importer keeps the original flatbuffer (``qm.meta["tflite_model"]``) and, per node, the indices of the
tensors its parameters came from (``cfg["tensors"]``: ``(("weight", i), ("bias", j), ("output", k), ...)``).
``to_tflite`` unpacks that flatbuffer with ``ai-edge-litert``'s schema object API
(``ModelT.InitFromPackedBuf``), replaces in those tensors

* ``weight`` (and constant operands ``const_a`` / ``const_b``, ``tfl_const`` nodes' ``value``): the int8 values (moved from qjax's layout to
  TFLite's: CONV_2D / TRANSPOSE_CONV HWIO ``(KH, KW, I, O)`` -> OHWI ``(O, KH, KW, I)``; DEPTHWISE_CONV_2D
  ``(KH, KW, 1, C*M)``
  -> ``(1, KH, KW, C*M)``; FULLY_CONNECTED ``(O, K)`` as is), the scales (per channel along TFLite's
  ``quantized_dimension``: 0 for CONV_2D / FULLY_CONNECTED, 3 for DEPTHWISE_CONV_2D) and zero points;
* ``bias``: the int32 values, and the bias tensor's scales ``s_x * s_w[c]`` when ``s_x`` or ``s_w`` changed
  (``kernel_util.cc``'s ``GetQuantizedConvolutionMultipler`` checks the bias scale against
  ``input_scale * filter_scale``: a stale one is rejected at ``Prepare``);
* ``output``: the scale and zero point of the tensor the node produces,

and packs it again (file identifier ``TFL3``).  A tensor is one object in the flatbuffer: every consumer of a
tensor whose quantization changed reads the change, as every consumer in the QModel reads the producer's
QArray.  The ops that move values without requantizing (RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE, PAD, PADV2:
the QModel's ``tfl_shape`` nodes keep their input's qparams) pass a changed quantization on to their output
tensor (and PADV2 to its constant, whose integer the QModel fills with), so that the flatbuffer keeps what the
QModel computes.  A constant buffer shared with a tensor that is
not rewritten is split (the edited tensor gets its own buffer).  Nothing changed: the original bytes.

Checks (one-line ``ValueError``\\ s): the model came from ``from_tflite``; its params' qparams are its nodes'
static ones (change qparams with :func:`qjax.with_tflite_qparams`, which re-binds the model: the QModel's
call computes with the static ones, so a model changed with ``with_params`` alone would not compute what the
written file computes); every LiteRT family prepares a file whose qparams changed; each value keeps its tensor's shape
and dtype (int8 weights in ``[-127, 127]`` with zero points 0 — TFLite's int8 quantization spec —, int32
biases, 8-bit zero points in the dtype's range, positive finite float32 scales); a tensor written by two nodes
gets the same data from both; in an ``"xnnpack"`` model, new qparams leave the XNNPACK delegate's choice of
operators as the QModel recorded it (its nodes' engines follow that choice).
"""

from __future__ import annotations

import numpy as np

from ..graph.ops_tflite import stale_qparams
from .litert_runtime import KERNELS
from .tflite_flatbuffer import buffer_bytes, builtin_code, enum_names, quantization, schema as _schema
from .tflite_flatbuffer import weight_layout, weight_to_tflite

__all__ = ["to_tflite", "weight_layout"]

#: TFLite ops whose output tensor must carry its input's quantization (they move values, never requantize)
PASSTHROUGH_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "PAD", "PADV2")
#: numpy dtype of each TFLite TensorType the writer fills
_NP_TYPES = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "FLOAT32": np.float32}
#: int8 weights: TFLite's quantization spec (and the converter's kMinQuantizedValue / kMaxQuantizedValue)
WEIGHT_MIN, WEIGHT_MAX = -127, 127


def _concrete(v, what: str) -> np.ndarray:
    try:
        return np.asarray(v)
    except Exception:  # a tracer
        raise ValueError(f"to_tflite: {what} must be concrete (call it outside jit/grad)") from None


def _type_name(schema, t: int) -> str:
    return enum_names(schema.TensorType).get(t, str(t))


class _Edit:
    """What one node writes into one tensor: ``values`` (TFLite layout and dtype) and/or qparams."""

    __slots__ = ("values", "scale", "zero_point", "axis", "node")

    def __init__(self, node, values=None, scale=None, zero_point=None, axis=None):
        self.node, self.values, self.scale, self.zero_point, self.axis = node, values, scale, zero_point, axis

    def same(self, other) -> bool:
        def eq(a, b):
            return (a is None) == (b is None) and (a is None or (a.shape == b.shape and
                                                                 a.tobytes() == b.tobytes()))
        return (eq(self.values, other.values) and eq(self.scale, other.scale)
                and eq(self.zero_point, other.zero_point) and self.axis == other.axis)


def _qarray_edit(schema, node, key, qa, tensor, layout, axis):
    """The :class:`_Edit` of a QArray param (weight or constant operand) into ``tensor``."""
    where = f"node {node.name!r} param {key!r}"
    values = _concrete(getattr(qa, "values", qa), where)
    if layout is not None:
        values = weight_to_tflite(values, *layout)
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    if values.shape != shape:
        raise ValueError(f"to_tflite: {where} has shape {values.shape} in TFLite's layout; tensor {tensor.name!r} "
                         f"has shape {shape} (shapes cannot change)")
    tname = _type_name(schema, tensor.type)
    qname = getattr(getattr(qa, "dtype", None), "name", None)
    if tname not in ("INT8", "UINT8", "INT16") or qname != tname.lower().replace("int", "qint").replace("uqint", "quint"):
        raise ValueError(f"to_tflite: {where} is {qname}; tensor {tensor.name!r} is {tname} (dtypes cannot change)")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"to_tflite: {where} has {values.dtype} values; an {tname} tensor takes integers")
    scale = np.atleast_1d(_concrete(qa.scale, where + " scale")).astype(np.float32)
    zp = np.atleast_1d(_concrete(qa.zero_point, where + " zero point")).astype(np.int64)
    per_channel = getattr(qa, "axis", None) is not None
    n = shape[axis] if per_channel else 1
    if scale.shape != (n,) or zp.shape != (n,):
        raise ValueError(f"to_tflite: {where} has {scale.size} scales / {zp.size} zero points; tensor "
                         f"{tensor.name!r} takes {n} ({'per channel' if per_channel else 'per tensor'})")
    if key == "weight":
        lo, hi = WEIGHT_MIN, WEIGHT_MAX
        if np.any(zp != 0):
            raise ValueError(f"to_tflite: {where} has nonzero zero points; TFLite's int8 weights are symmetric "
                             f"(zero point 0)")
    else:
        info = np.iinfo(_NP_TYPES[tname])
        lo, hi = int(info.min), int(info.max)
    if values.size and (values.min() < lo or values.max() > hi):
        raise ValueError(f"to_tflite: {where} has values in [{values.min()}, {values.max()}]; "
                         f"{tname} {'weights' if key == 'weight' else 'constants'} take [{lo}, {hi}]")
    _check_qparams(where, scale, zp, _NP_TYPES[tname])
    return _Edit(node.name, values.astype(_NP_TYPES[tname]), scale, zp, axis if per_channel else 0)


def _check_qparams(where, scale, zp, np_type):
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(f"to_tflite: {where} has scales {scale.tolist()[:4]}...; scales must be positive and finite")
    info = np.iinfo(np_type)
    if np.any(zp < info.min) or np.any(zp > info.max):
        raise ValueError(f"to_tflite: {where} has zero points outside [{info.min}, {info.max}]")


def _bias_edit(schema, node, bias, tensor):
    where = f"node {node.name!r} param 'bias'"
    values = _concrete(bias, where)
    shape = tuple(int(d) for d in tensor.shape)
    if values.shape != shape:
        raise ValueError(f"to_tflite: {where} has shape {values.shape}; tensor {tensor.name!r} has shape {shape}")
    tname = _type_name(schema, tensor.type)
    if tname != "INT32":
        raise ValueError(f"to_tflite: tensor {tensor.name!r} is {tname}; the writer fills int32 biases only")
    if not np.issubdtype(values.dtype, np.integer) or np.dtype(values.dtype).itemsize > 4 and (
            values.min() < -2**31 or values.max() >= 2**31):
        raise ValueError(f"to_tflite: {where} has {values.dtype} values; an INT32 bias takes int32 integers")
    return _Edit(node.name, values.astype(np.int32))


def _output_edit(node, p, tensor, schema):
    where = f"node {node.name!r} output"
    scale = np.atleast_1d(_concrete(p["scale"], where + " scale")).astype(np.float32)
    zp = np.atleast_1d(_concrete(p["zero_point"], where + " zero point")).astype(np.int64)
    if scale.shape != (1,) or zp.shape != (1,):
        raise ValueError(f"to_tflite: {where} needs one scale and one zero point, got {scale.size} / {zp.size}")
    tname = _type_name(schema, tensor.type)
    if tname not in ("INT8", "UINT8", "INT16"):
        raise ValueError(f"to_tflite: {where}: tensor {tensor.name!r} is {tname}, not a quantized tensor")
    _check_qparams(where, scale, zp, _NP_TYPES[tname])
    return _Edit(node.name, None, scale, zp, 0)


def _node_edits(schema, qm, tensors):
    """``{tensor index: _Edit}`` of every node's params (one-line errors for mismatches)."""
    edits: dict[int, _Edit] = {}
    for node in qm.nodes:
        cfg = node.config()
        p = qm.params.get(node.name)
        if not p or "tensors" not in cfg:
            continue
        layout = (node.op, bool(cfg.get("depthwise", False)))
        _, axis = weight_layout(*layout)
        for key, idx in cfg["tensors"]:
            if idx is None or idx < 0:
                continue
            t = tensors[idx]
            if key == "output":
                if "scale" not in p or "zero_point" not in p:
                    continue
                e = _output_edit(node, p, t, schema)
            elif key == "bias":
                if p.get("bias") is None:
                    continue
                e = _bias_edit(schema, node, p["bias"], t)
            else:
                if p.get(key) is None:
                    continue
                e = _qarray_edit(schema, node, key, p[key], t, layout if key == "weight" else None,
                                 axis if key == "weight" else 0)
            old = edits.get(idx)
            if old is not None and not old.same(e):
                raise ValueError(f"to_tflite: tensor {idx} ({t.name!r}) is written by nodes {old.node!r} and "
                                 f"{e.node!r} with different data")
            edits[idx] = e
    return edits


def _quant(t):
    q = quantization(t)
    return (None, None) if q is None else q[:2]


def _buffer_values(model, t, np_type):
    try:
        raw = buffer_bytes(model, t)
    except ValueError as e:
        raise ValueError(f"to_tflite: {e}; not supported") from None
    return None if raw is None else np.frombuffer(raw, np_type).reshape(tuple(t.shape))


def _set_quant(schema, t, scale, zp, axis):
    q = t.quantization if t.quantization is not None else schema.QuantizationParametersT()
    old_scale, _ = _quant(t)
    if old_scale is None or old_scale.shape != scale.shape or old_scale.tobytes() != scale.tobytes():
        q.min = q.max = None  # the calibration range no longer produced this scale
    q.scale = scale.astype(np.float32)
    q.zeroPoint = zp.astype(np.int64)
    q.quantizedDimension = int(axis)
    t.quantization = q


def _check_prepares(model: bytes, first=None, skip=()):
    """Refuse (one line, the interpreter's reason) a written model some LiteRT family cannot prepare (the
    model's own family ``first``)."""
    from .litert_runtime import interpreter

    for kernels in sorted(KERNELS, key=lambda k: k != first):
        if kernels in skip:
            continue
        try:
            interpreter(model, kernels)
        except (RuntimeError, ValueError) as e:
            what = "XNNPACK delegate" if kernels == "xnnpack" else f"{kernels} kernels"
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise ValueError(f"to_tflite: LiteRT's {what} cannot prepare the written model with these qparams "
                             f"({reason})") from None


def to_tflite(qm, *, check_delegation: bool = True) -> bytes:
    """The ``.tflite`` flatbuffer of ``qm`` (a QModel from :func:`qjax.from_tflite`), with its params written back.

    Args:
      qm: the QModel, its ``params`` possibly changed (same shapes and dtypes): weights, weight scales,
        biases, output scales and zero points.
      check_delegation: for an ``"xnnpack"`` model whose qparams changed, refuse (``ValueError``) a written model
        in which the XNNPACK delegate takes other operators than ``qm`` recorded or cannot prepare (``False``:
        return it anyway; ``from_tflite`` of the bytes gives the model that computes it).  Whatever it is, a
        written model with changed qparams that the reference or optimized kernels cannot prepare is refused.
    Returns:
      the flatbuffer bytes (``TFL3``); LiteRT's interpreter computes on them what ``qm`` computes, under the
      family ``qm`` was imported for.  The original bytes when nothing changed.
    """
    meta = dict(getattr(qm, "meta", ()) or ())
    original = meta.get("tflite_model")
    if not isinstance(original, (bytes, bytearray)):
        raise ValueError("to_tflite: qm must be a QModel from qjax.from_tflite (its meta['tflite_model'] holds the "
                         "flatbuffer it writes back into)")
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(original), 0)
    if not model.subgraphs or len(model.subgraphs) != 1:
        raise ValueError(f"to_tflite: the model has {len(model.subgraphs or [])} subgraphs; qjax reads one")
    sg = model.subgraphs[0]
    tensors = sg.tensors
    edits = _node_edits(schema, qm, tensors)
    for node in qm.nodes:  # the QModel computes with its nodes' static qparams: params must hold the same
        stale = stale_qparams(node.config(), qm.params.get(node.name))
        if stale:
            raise ValueError(f"to_tflite: {stale} (qm computes with the static ones); change qparams with "
                             "qjax.with_tflite_qparams(qm, params), which re-binds the model")

    changed_q: set[int] = set()
    changed_any = False
    users: dict[int, list[int]] = {}
    for i, t in enumerate(tensors):
        users.setdefault(t.buffer, []).append(i)
    originals = {idx: _buffer_values(model, tensors[idx], e.values.dtype) for idx, e in edits.items()
                 if e.values is not None}  # read before any buffer is written
    for idx, e in edits.items():
        t = tensors[idx]
        if e.values is not None:
            old = originals[idx]
            if old is None or old.tobytes() != e.values.tobytes():
                changed_any = True
                if t.buffer == 0 or len(users.get(t.buffer, ())) > 1:
                    model.buffers.append(schema.BufferT())  # never write into a buffer another tensor reads
                    t.buffer = len(model.buffers) - 1
                b = model.buffers[t.buffer]
                b.data = np.frombuffer(np.ascontiguousarray(e.values).tobytes(), np.uint8).copy()
                b.offset = b.size = 0
        if e.scale is not None:
            old_s, old_z = _quant(t)
            old_axis = t.quantization.quantizedDimension if t.quantization is not None else 0
            if (old_s is None or old_s.tobytes() != e.scale.tobytes() or old_z.shape != e.zero_point.shape
                    or old_z.tobytes() != e.zero_point.tobytes() or (e.scale.size > 1 and old_axis != e.axis)):
                changed_any = True
                changed_q.add(idx)
                _set_quant(schema, t, e.scale, e.zero_point, e.axis)
    if not changed_any:
        return bytes(original)

    codes = [builtin_code(c) for c in model.operatorCodes]
    names = enum_names(schema.BuiltinOperator)
    for op in sg.operators:
        name = names.get(codes[op.opcodeIndex], "")
        ins = [int(i) for i in (op.inputs if op.inputs is not None else [])]
        outs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
        if name in PASSTHROUGH_OPS and ins and ins[0] in changed_q and outs and outs[0] not in edits:
            s, z = _quant(tensors[ins[0]])
            _set_quant(schema, tensors[outs[0]], s, z, 0)
            changed_q.add(outs[0])
            if name == "PADV2" and len(ins) > 2 and ins[2] >= 0 and ins[2] not in edits:
                # pad.cc (Eval) requires the constant's qparams to be the output's; the QModel fills with the
                # constant's integer, which the file keeps
                _set_quant(schema, tensors[ins[2]], s, z, 0)
        # the (input, weights, bias) of the GEMM ops; TRANSPOSE_CONV's inputs are (output_shape, weights, input, bias)
        xwb = (ins[0], ins[1], ins[2]) if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and \
            len(ins) > 2 else (ins[2], ins[1], ins[3]) if name == "TRANSPOSE_CONV" and len(ins) > 3 else None
        if xwb is not None and xwb[2] >= 0:
            x, w, b = xwb
            if (x in changed_q or w in changed_q) and tensors[b].quantization is not None:
                sx, _ = _quant(tensors[x])
                sw, _ = _quant(tensors[w])
                if sx is not None and sw is not None:
                    sb = (np.float64(sx[0]) * sw.astype(np.float64)).astype(np.float32)
                    _set_quant(schema, tensors[b], sb, np.zeros(sb.shape, np.int64), 0)

    import flatbuffers

    builder = flatbuffers.Builder(max(1024, len(original) + 4096))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    if changed_q:  # new qparams: every family's Prepare must accept the file (e.g. CONCATENATION's equal qparams)
        _check_prepares(out, meta.get("kernels"), skip=() if check_delegation else ("xnnpack",))
    if check_delegation and meta.get("kernels") == "xnnpack" and changed_q:
        # XNNPACK takes an operator only for some quantization parameters (e.g. bounded requantization scales):
        # the QModel's nodes carry the engines of the original delegation, which new qparams may change
        from .litert_runtime import delegated_ops

        try:
            now = frozenset(delegated_ops(out))
        except RuntimeError as e:  # e.g. "failed to create XNNPACK runtime": a requantization scale past its range
            raise ValueError(f"to_tflite: LiteRT's XNNPACK delegate cannot prepare the written model with these "
                             f"qparams ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        then = frozenset(meta.get("delegated", ()))
        if now != then:
            raise ValueError(f"to_tflite: with the new qparams the XNNPACK delegate takes operators {sorted(now)} "
                             f"instead of {sorted(then)}; qm no longer computes what the written model computes "
                             "(check_delegation=False returns the bytes; from_tflite of them computes what they compute)")
    return out
