"""qjax.to_tflite: an imported model's params written back into its flatbuffer (LiteRT then computes qjax's integers)."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import qjax  # noqa: E402
from qjax._src.graph import QModel  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.interop.tflite import from_tflite, with_qparams  # noqa: E402
from qjax._src.interop.tflite_write import to_tflite  # noqa: E402
from ..tflite_models import CalibratedBuilder, TFLiteBuilder, every_op_model, mobilenet_style, schema  # noqa: E402

FAMILIES = ("reference", "optimized", "xnnpack")


def _chain(seed=0):
    """int8 in -> CONV_2D 3x3 (RELU) -> DEPTHWISE_CONV_2D 3x3 /2 (RELU6) -> RESHAPE (-1, K) -> FULLY_CONNECTED -> int8."""
    calib = np.random.default_rng(seed).uniform(0, 1, (16, 6, 6, 2))
    m = CalibratedBuilder(seed, calib)
    x = m.input(np.int8)
    h = m.conv(x, 4, 3, act="RELU")
    h = m.conv(h, 0, 3, stride=2, depthwise=True, act="RELU6")
    h = m.reshape(h, [-1, 36])
    y = m.fully_connected(h, 5)
    return m.build([x], [y])


_CHAIN = _chain()


def _tensor(model_bytes, name_or_index):
    m = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    ts = m.subgraphs[0].tensors
    return m, (ts[name_or_index] if isinstance(name_or_index, int) else
               next(t for t in ts if t.name.decode() == name_or_index))


def _inputs(qm, n=6, seed=1):
    _, shape, dtype = dict(qm.meta)["input_specs"][0]
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (n,) + tuple(shape[1:])).astype(dtype)


def _node(qm, op):
    return [n.name for n in qm.nodes if n.op == op]


def test_unchanged_model_is_byte_identical():
    for data in (_CHAIN, mobilenet_style(0, size=8, width=4), every_op_model(0)):
        qm = from_tflite(data, kernels="reference")
        assert to_tflite(qm) == data
        # a no-op rewrite (the same integers as new arrays) writes nothing either
        params = {k: {n: (np.array(v) if isinstance(v, np.ndarray) else v) for n, v in d.items()}
                  for k, d in qm.params.items()}
        assert to_tflite(qm.with_params(params)) == data


def test_constant_operands_and_per_tensor_weights_are_written():
    # every_op_model's SUB of a constant (its int8 values are the node's const_b param) and its depthwise conv
    # with per-tensor weights (new values and a new scale, re-bound with with_qparams)
    qm = from_tflite(every_op_model(0), kernels="reference")
    (sub,) = [n.name for n in qm.nodes if n.op == "tfl_binary" and n.config()["kind"] == "sub"]
    (dw,) = [n.name for n in qm.nodes if n.op == "tfl_conv" and n.config()["depthwise"]]
    params = {k: dict(v) for k, v in qm.params.items()}
    c = params[sub]["const_b"]
    params[sub]["const_b"] = c.with_values((np.asarray(c.values) // 3).astype(np.int8))
    w = params[dw]["weight"]
    assert w.axis is None
    params[dw]["weight"] = qjax.QArray((np.asarray(w.values) // 2).astype(np.int8), np.float32(np.asarray(w.scale) * 2),
                                       np.int32(0), "qint8")
    back = from_tflite(to_tflite(with_qparams(qm, params)), kernels="reference")
    np.testing.assert_array_equal(np.asarray(back.params[sub]["const_b"].values), np.asarray(c.values) // 3)
    assert np.asarray(back.params[sub]["const_b"].scale) == np.asarray(c.scale)
    bw = back.params[dw]["weight"]
    assert bw.axis is None and np.asarray(bw.scale) == np.float32(np.asarray(w.scale) * 2)
    np.testing.assert_array_equal(np.asarray(bw.values), np.asarray(w.values) // 2)


def _changed(qm):
    """``qm`` with new conv / depthwise weights and biases, new FC weight scales and a new depthwise output scale and
    zero point (re-bound with with_qparams)."""
    rng = np.random.default_rng(7)
    params = {k: dict(v) for k, v in qm.params.items()}
    conv, dw = _node(qm, "tfl_conv")
    (fc,) = _node(qm, "tfl_fully_connected")
    w = params[conv]["weight"]
    params[conv]["weight"] = w.with_values(np.clip(np.asarray(w.values) + rng.integers(-3, 4, w.shape), -127, 127)
                                           .astype(np.int8))
    params[conv]["bias"] = np.asarray(params[conv]["bias"]) + rng.integers(-50, 50, params[conv]["bias"].shape) \
        .astype(np.int32)
    params[dw]["scale"] = np.float32(np.asarray(params[dw]["scale"]) * 1.37)
    params[dw]["zero_point"] = np.int32(np.asarray(params[dw]["zero_point"]) + 5)
    wf = params[fc]["weight"]
    params[fc]["weight"] = qjax.QArray(np.asarray(wf.values), (np.asarray(wf.scale) * 0.8).astype(np.float32),
                                       np.zeros(wf.shape[0], np.int32), "qint8", 0)
    return with_qparams(qm, params), (conv, dw, fc)


def test_changed_params_are_written_and_computed_by_litert():
    # the written params re-import as written under every family; LiteRT computes the changed model's integers
    # (reference and xnnpack here: one compilation per family is the suite's budget; test_tflite_train runs all
    # three)
    x = _inputs(from_tflite(_CHAIN, kernels="reference"))
    for fam in FAMILIES:
        qm = from_tflite(_CHAIN, kernels=fam)
        qm2, (conv, dw, fc) = _changed(qm)
        out = to_tflite(qm2)
        back = from_tflite(out, kernels=fam)
        for name in (conv, dw, fc):  # the re-imported params are the written ones
            for key in ("weight", "bias", "scale", "zero_point"):
                a, b = qm2.params[name].get(key), back.params[name].get(key)
                for attr in (("values", "scale") if key == "weight" else (None,)):
                    va = np.asarray(getattr(a, attr) if attr else a)
                    vb = np.asarray(getattr(b, attr) if attr else b)
                    np.testing.assert_array_equal(va, vb, err_msg=f"{fam} {name} {key} {attr}")
        # the reshape after the depthwise conv carries its new qparams; the FC's bias scale is s_x * s_w again
        m, _ = _tensor(out, 0)
        ts = m.subgraphs[0].tensors
        fc_op = m.subgraphs[0].operators[dict(qm.node(fc).config())["op_index"]]
        sx, sw, sb = (np.asarray(ts[i].quantization.scale, np.float64) for i in fc_op.inputs[:3])
        np.testing.assert_array_equal(sb.astype(np.float32), (sx[0] * sw).astype(np.float32))
        assert np.float32(sx[0]) == np.asarray(qm2.params[dw]["scale"])
        if fam == "optimized":
            continue
        want = litert_runtime.run(out, [x], fam)[0]
        got = np.asarray(qm2(x))
        assert got.dtype == want.dtype and got.shape == want.shape
        assert int((got != want).sum()) == 0, fam
        assert int((litert_runtime.run(_CHAIN, [x], fam)[0] != got).sum()) > 0  # the change changed the outputs


def _transpose_convs(seed=0):
    """int8 (1, 4, 5, 2) -> TRANSPOSE_CONV 5x5 /2 SAME (3 channels, RELU; the crop starts at 1) -> TRANSPOSE_CONV 2x2
    /1 VALID (2 channels)."""
    m = CalibratedBuilder(seed, np.random.default_rng(seed).uniform(-1, 1, (4, 4, 5, 2)))
    x = m.input(np.int8)
    h = m.transpose_conv(x, 3, 5, stride=2, padding="SAME", act="RELU")
    y = m.transpose_conv(h, 2, 2, stride=1, padding="VALID")
    return m.build([x], [y])


def test_transpose_conv_weights_are_written_in_ohwi():
    data = _transpose_convs()
    qm = from_tflite(data, kernels="reference")
    assert to_tflite(qm) == data
    params = {k: dict(v) for k, v in qm.params.items()}
    names = [n.name for n in qm.nodes if n.op == "tfl_transpose_conv"]
    rng = np.random.default_rng(2)
    for n in names:
        w = params[n]["weight"]
        params[n]["weight"] = w.with_values(rng.integers(-127, 128, w.shape).astype(np.int8))
        params[n]["weight"] = qjax.QArray(np.asarray(params[n]["weight"].values),
                                          (np.asarray(w.scale) * 1.5).astype(np.float32), np.zeros(w.shape[3], np.int32),
                                          "qint8", 3)
    out = to_tflite(with_qparams(qm, params))
    back = from_tflite(out, kernels="reference")
    for n in names:
        for attr in ("values", "scale"):
            np.testing.assert_array_equal(np.asarray(getattr(back.params[n]["weight"], attr)),
                                          np.asarray(getattr(params[n]["weight"], attr)))
    m = schema.ModelT.InitFromPackedBuf(bytearray(out), 0)
    ts = m.subgraphs[0].tensors
    for op in m.subgraphs[0].operators:  # the bias scales follow the new weight scales: (output_shape, w, x, bias)
        sx, sw, sb = (np.asarray(ts[op.inputs[i]].quantization.scale, np.float64) for i in (2, 1, 3))
        np.testing.assert_array_equal(sb.astype(np.float32), (sx[0] * sw).astype(np.float32))


def _litert_mismatches(data, qm, x, kernels="reference") -> int:
    want = litert_runtime.run(data, [x], kernels)[0]
    got = np.asarray(qm(x))
    assert got.dtype == want.dtype and got.shape == want.shape
    return int((got != want).sum())


def test_shared_buffers_are_split():
    # two convs (with biases: LiteRT's int8 CONV_2D needs one) whose weight tensors share one buffer: changing one
    # leaves the other's data alone, and LiteRT computes what the changed QModel computes
    data = _shared_weights_model(split_tensors=True)
    m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    ts = m.subgraphs[0].tensors
    w0, w1 = (next(t for t in ts if t.name.decode() == n) for n in ("w0", "w1"))
    assert w0.buffer == w1.buffer
    qm = from_tflite(data, kernels="reference")
    c0, c1 = _node(qm, "tfl_conv")
    params = {k: dict(v) for k, v in qm.params.items()}
    w = params[c0]["weight"]
    params[c0]["weight"] = w.with_values((np.asarray(w.values) // 2).astype(np.int8))
    qm2 = qm.with_params(params)
    out = to_tflite(qm2)
    back = from_tflite(out, kernels="reference")
    np.testing.assert_array_equal(np.asarray(back.params[c0]["weight"].values), np.asarray(w.values) // 2)
    np.testing.assert_array_equal(np.asarray(back.params[c1]["weight"].values), np.asarray(qm.params[c1]["weight"].values))
    x = np.random.default_rng(4).integers(-128, 128, (3, 5, 5, 4)).astype(np.int8)
    assert _litert_mismatches(out, qm2, x) == 0
    assert _litert_mismatches(data, qm2, x) > 0  # the split buffer is what LiteRT reads


def _shared_weights_model(split_tensors=False):
    """Two 3x3 convs with biases reading one weight buffer (``split_tensors``: two tensors ``w0``, ``w1`` on it)
    or one weight tensor (both operators read tensor ``w0``)."""
    m = CalibratedBuilder(3, np.random.default_rng(3).uniform(0, 1, (8, 5, 5, 4)))
    x = m.input(np.int8)
    h = m.conv(x, 4, 3, act="RELU")
    y = m.conv(h, 4, 3)
    mt = schema.ModelT.InitFromPackedBuf(bytearray(m.build([x], [y])), 0)
    ts = mt.subgraphs[0].tensors
    ops = mt.subgraphs[0].operators
    a, b = ts[ops[0].inputs[1]], ts[ops[1].inputs[1]]
    a.name, b.name = b"w0", b"w1"
    if split_tensors:
        mt.buffers[b.buffer].data = np.asarray(mt.buffers[a.buffer].data).copy()  # the same integers ...
        b.buffer = a.buffer  # ... in one buffer, as converters deduplicate constants
        b.quantization = a.quantization
    else:
        ops[1].inputs = np.asarray([ops[1].inputs[0], ops[0].inputs[1], ops[1].inputs[2]], np.int32)
    # the second bias's scale must be s_h * s_w again (LiteRT's Prepare checks it)
    sh = np.float64(ts[ops[1].inputs[0]].quantization.scale[0])
    sw = np.asarray(ts[ops[1].inputs[1]].quantization.scale, np.float64)
    ts[ops[1].inputs[2]].quantization.scale = (sh * sw).astype(np.float32)
    ts[ops[1].inputs[2]].quantization.zeroPoint = np.zeros(sw.shape, np.int64)
    import flatbuffers

    bld = flatbuffers.Builder(1024)
    bld.Finish(mt.Pack(bld), file_identifier=b"TFL3")
    return bytes(bld.Output())


def _concat_const_model():
    """int8 (1, 3, 3, 4) ++ a constant int8 (1, 3, 3, 2) along C (one qparams for all: LiteRT's int8 rule)."""
    rng = np.random.default_rng(7)
    q = dict(scale=0.05, zero_point=3)
    b = TFLiteBuilder()
    x = b.tensor((1, 3, 3, 4), np.int8, **q)
    k = b.tensor((1, 3, 3, 2), np.int8, **q, data=rng.integers(-128, 128, (1, 3, 3, 2)))
    y = b.tensor((1, 3, 3, 6), np.int8, **q)
    o = schema.ConcatenationOptionsT()
    o.axis = 3
    b.op("CONCATENATION", [x, k], [y], o, version=2)
    return b.build([x], [y])


def test_constant_activation_values_are_written():
    data = _concat_const_model()
    qm = from_tflite(data, kernels="reference")
    (const,) = _node(qm, "tfl_const")
    params = {k: dict(v) for k, v in qm.params.items()}
    v = params[const]["value"]
    params[const]["value"] = v.with_values((np.asarray(v.values) // 2).astype(np.int8))
    qm2 = qm.with_params(params)
    out = to_tflite(qm2)
    assert out != data
    x = np.random.default_rng(0).integers(-128, 128, (1, 3, 3, 4)).astype(np.int8)
    assert _litert_mismatches(out, qm2, x) == 0
    assert _litert_mismatches(data, qm2, x) > 0


@pytest.mark.parametrize("v2", [False, True], ids=["PAD", "PADV2"])
def test_pad_fills_after_a_zero_point_change(v2):
    # PAD fills with its input's zero point: after the producer's zero point changes, qjax and LiteRT fill with the
    # new one; PADV2 with its constant's integer (the written constant takes the new qparams: pad.cc requires it)
    m = CalibratedBuilder(5, np.random.default_rng(5).uniform(0, 1, (8, 4, 4, 3)))
    x = m.input(np.int8)
    h = m.conv(x, 4, 3, act="RELU")
    if v2:
        (s, z), b = m.q[h], m.b
        y = b.tensor((1, 6, 6, 4), np.int8, scale=s, zero_point=z)
        b.op("PADV2", [h, m.int32([[0, 0], [1, 1], [1, 1], [0, 0]]),
                       b.tensor((), np.int8, scale=s, zero_point=z, data=np.int8(77))], [y])
        data = b.build([x], [y])
    else:
        data = m.build([x], [m.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]])])
    qm = from_tflite(data, kernels="reference")
    conv = _node(qm, "tfl_conv")[0]
    params = {k: dict(v) for k, v in qm.params.items()}
    params[conv]["zero_point"] = np.int32(np.asarray(params[conv]["zero_point"]) + 20)
    qm2 = with_qparams(qm, params)
    out = to_tflite(qm2)
    xs = np.random.default_rng(6).integers(-128, 128, (2, 4, 4, 3)).astype(np.int8)
    assert _litert_mismatches(out, qm2, xs) == 0
    assert int(np.asarray(qm2(xs))[0, 0, 0, 0]) == (77 if v2 else int(params[conv]["zero_point"]))


def test_params_qparams_changed_without_rebinding_are_refused():
    # qm(x) computes with the nodes' static qparams; to_tflite refuses params that disagree with them
    qm = from_tflite(_CHAIN, kernels="reference")
    conv = _node(qm, "tfl_conv")[0]
    params = {k: dict(v) for k, v in qm.params.items()}
    params[conv]["scale"] = np.float32(np.asarray(params[conv]["scale"]) * 1.5)
    with pytest.raises(ValueError, match="differ from the static.*with_tflite_qparams") as e:
        to_tflite(qm.with_params(params))
    assert "\n" not in str(e.value)
    x = _inputs(qm)
    stale = qm.with_params(params)
    for call in (stale, stale.capture):  # the call checks its concrete params on the host before it jits
        with pytest.raises(qjax.GraphError, match="differ from the static.*with_tflite_qparams") as e:
            call(*x)
        assert "\n" not in str(e.value)
    qm2 = qjax.with_tflite_qparams(qm, params)
    assert _litert_mismatches(to_tflite(qm2), qm2, x) == 0


def test_a_written_model_every_family_must_prepare():
    # CONCATENATION's int8 operands must share the output's qparams (concatenation.cc): a new constant scale breaks it
    qm = from_tflite(_concat_const_model(), kernels="reference")
    (const,) = _node(qm, "tfl_const")
    params = {k: dict(v) for k, v in qm.params.items()}
    v = params[const]["value"]
    params[const]["value"] = qjax.QArray(np.asarray(v.values), np.float32(np.asarray(v.scale) * 2), np.asarray(v.zero_point),
                                         "qint8")
    with pytest.raises(ValueError, match="cannot prepare the written model") as e:
        to_tflite(with_qparams(qm, params))
    assert "\n" not in str(e.value)


def test_errors_are_one_line():
    qm = from_tflite(_CHAIN, kernels="reference")
    conv = _node(qm, "tfl_conv")[0]

    def bad(fn, match):
        params = {k: dict(v) for k, v in qm.params.items()}
        fn(params[conv])
        with pytest.raises(ValueError, match=match) as e:
            to_tflite(qm.with_params(params))
        assert "\n" not in str(e.value)

    w = qm.params[conv]["weight"]
    bad(lambda p: p.update(weight=w.with_values(np.zeros((1,) + w.shape[1:], np.int8))), "shapes cannot change")
    bad(lambda p: p.update(weight=w.with_values(np.full(w.shape, -128, np.int8))), r"take \[-127, 127\]")
    bad(lambda p: p.update(weight=qjax.QArray(np.asarray(w.values).astype(np.uint8) // 2, np.asarray(w.scale),
                                              np.zeros(w.shape[3], np.int32), "quint8", 3)), "dtypes cannot change")
    bad(lambda p: p.update(weight=qjax.QArray(np.asarray(w.values), np.asarray(w.scale),
                                              np.ones(w.shape[3], np.int32), "qint8", 3)), "symmetric")
    bad(lambda p: p.update(bias=np.asarray(p["bias"], np.float32)), "int32")
    bad(lambda p: p.update(bias=np.asarray(p["bias"])[:2]), "has shape")
    bad(lambda p: p.update(scale=np.float32(0.0)), "positive and finite")
    bad(lambda p: p.update(zero_point=np.int32(300)), "zero points outside")
    # an XNNPACK model whose new qparams the delegate cannot run (FC requantization scale x 1e6)
    qx = from_tflite(_CHAIN, kernels="xnnpack")
    (fc,) = _node(qx, "tfl_fully_connected")
    params = {k: dict(v) for k, v in qx.params.items()}
    wf = params[fc]["weight"]
    params[fc]["weight"] = qjax.QArray(np.asarray(wf.values), (np.asarray(wf.scale) * 1e6).astype(np.float32),
                                       np.zeros(wf.shape[0], np.int32), "qint8", 0)
    with pytest.raises(ValueError, match="XNNPACK delegate cannot prepare") as e:
        to_tflite(with_qparams(qx, params))
    assert "\n" not in str(e.value)
    assert to_tflite(with_qparams(qx, params), check_delegation=False)[4:8] == b"TFL3"
    with pytest.raises(ValueError, match="from qjax.from_tflite"):
        to_tflite(QModel(qm.inputs, qm.nodes, qm.output, qm.params, {}))
    assert qjax.to_tflite is to_tflite
