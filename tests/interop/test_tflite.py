"""qjax.from_tflite: parsing and one-line refusals, each op's translation, and imported models vs LiteRT's own
interpreter under the three kernel families (0 mismatches on random and tie-seeking inputs, batch > 1), with the
XNNPACK delegation recorded per operator."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import qjax  # noqa: E402
from qjax._src.graph import GraphError  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.interop.tflite import TFLiteImportError, from_tflite, with_qparams  # noqa: E402
from qjax.engines import LiteRT  # noqa: E402

from ..tflite_models import (CalibratedBuilder, TFLiteBuilder, _calibration, every_op_model,  # noqa: E402
                             mobilenet_style, schema)

FAMILIES = ("reference", "optimized", "xnnpack")


# -- helpers ---------------------------------------------------------------------------------------------------


def _run_both(model, inputs, kernels, qm=None):
    """(qjax outputs, LiteRT outputs) as lists of numpy arrays."""
    qm = qm or from_tflite(model, kernels=kernels)
    got = qm(*inputs)
    got = [np.asarray(g) for g in (got if isinstance(got, tuple) else (got,))]
    return got, litert_runtime.run(model, inputs, kernels)


def _mismatches(got, want) -> int:
    """Outputs whose bits differ (float outputs compared as their bit patterns)."""
    bad = 0
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        if g.dtype == np.float32:
            g, w = g.view(np.int32), w.view(np.int32)
        bad += int(np.sum(g != w))
    return bad


def _float_inputs(rng, shape, scale, zp, n, dtype="int8"):
    """Random floats over the input QUANTIZE's range (its output ``dtype``'s; and past it: saturation) plus exact
    rounding ties ``(k + 1/2) * scale`` — where a wrong rounding of the QUANTIZE shows."""
    info = np.iinfo(np.dtype(dtype))
    lo, hi = (int(info.min) - zp) * scale, (int(info.max) - zp) * scale
    x = rng.uniform(lo * 1.1, hi * 1.1, (n,) + tuple(shape)).astype(np.float32)
    ties = ((rng.integers(int(info.min), int(info.max) + 1, x.shape) - zp + 0.5) * np.float64(scale)).astype(np.float32)
    half = n // 2
    x[half:] = ties[half:]
    return x


def _int8_inputs(rng, shape, n):
    """Random int8 plus rows of the extremes (-128 / 127 / 0), which saturate accumulators and clamps."""
    x = rng.integers(-128, 128, (n,) + tuple(shape)).astype(np.int8)
    x[-1] = np.where(rng.random(shape) < 0.5, -128, 127)
    x[-2] = 0
    return x


def _single(build, calib_shape, seed=0, int8_in=True):
    """A one-op model: ``build(m, x) -> output tensor``."""
    m = CalibratedBuilder(seed, _calibration(seed, calib_shape))
    x = m.input(np.int8 if int8_in else np.float32)
    return m.build([x], [build(m, x)])


# -- parsing and refusals --------------------------------------------------------------------------------------


def _tiny():
    return _single(lambda m, x: m.reshape(x, [-1, 12]), (2, 2, 3))


def test_not_tflite_is_refused_in_one_line(tmp_path):
    with pytest.raises(TFLiteImportError, match="not a TFLite flatbuffer") as e:
        from_tflite(b"PK\x03\x04 this is a zip")
    assert "\n" not in str(e.value)
    p = tmp_path / "model.tflite"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(TFLiteImportError, match="TFL3"):
        from_tflite(str(p))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        from_tflite(str(tmp_path / "missing.tflite"))
    with pytest.raises(TypeError, match="a .tflite path or its bytes"):
        from_tflite(3)
    with pytest.raises(ValueError, match="kernels='gpu'"):
        from_tflite(_tiny(), kernels="gpu")


def test_path_and_bytes_give_the_same_model(tmp_path):
    data = _tiny()
    p = tmp_path / "m.tflite"
    p.write_bytes(data)
    a, b = from_tflite(p, kernels="reference"), from_tflite(data, kernels="reference")
    assert a.info["tflite_model"] == b.info["tflite_model"] == data
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes] == ["tfl_input", "tfl_shape", "tfl_output"]


def _repacked(data, edit):
    m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(m)
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_refusals_name_the_operator_and_the_rule():
    # an op qjax does not import: named with its index
    b = TFLiteBuilder()
    x = b.tensor((1, 4), np.float32)
    y = b.tensor((1, 4), np.float32)
    b.op("EXP", [x], [y])
    with pytest.raises(TFLiteImportError, match=r"operator 0 \(EXP\): is not supported; qjax imports .*CONV_2D"):
        from_tflite(b.build([x], [y]), kernels="reference")
    # two subgraphs
    two = _repacked(_tiny(), lambda m: m.subgraphs.append(m.subgraphs[0]))
    with pytest.raises(TFLiteImportError, match="2 subgraphs"):
        from_tflite(two, kernels="reference")
    # int16 activations
    b = TFLiteBuilder()
    x = b.tensor((1, 4), np.int16, scale=0.1, zero_point=0)
    y = b.tensor((1, 4), np.int8, scale=0.1, zero_point=0)
    b.op("QUANTIZE", [x], [y])
    with pytest.raises(TFLiteImportError, match="model input 0 .* has type INT16"):
        from_tflite(b.build([x], [y]), kernels="reference")
    # weights with a nonzero zero point
    conv = _single(lambda m, x: m.conv(x, 4, 3), (5, 5, 2))

    def asym(m):
        w = m.subgraphs[0].operators[0].inputs[1]
        m.subgraphs[0].tensors[w].quantization.zeroPoint[1] = 3

    with pytest.raises(TFLiteImportError, match=r"operator 0 \(CONV_2D\): .*nonzero zero points \[0, 3\]; .*symmetric"):
        from_tflite(_repacked(conv, asym), kernels="reference")

    # a fused TANH
    def tanh_act(m):
        m.subgraphs[0].operators[0].builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.TANH

    with pytest.raises(TFLiteImportError, match="fused activation TANH"):
        from_tflite(_repacked(conv, tanh_act), kernels="reference")
    # a float op inside the graph
    b = TFLiteBuilder()
    x = b.tensor((1, 4), np.float32)
    w = b.tensor((3, 4), np.int8, scale=[0.1] * 3, zero_point=[0] * 3, data=np.ones((3, 4)))
    y = b.tensor((1, 3), np.float32)
    b.op("FULLY_CONNECTED", [x, w, -1], [y], schema.FullyConnectedOptionsT())
    with pytest.raises(TFLiteImportError, match=r"operator 0 \(FULLY_CONNECTED\): .*is float32; the op takes a "
                                                r"quantized tensor"):
        from_tflite(b.build([x], [y]), kernels="reference")


def test_xnnpack_prepare_failure_is_refused():
    # XNNPACK refuses a CONCATENATION of differently quantized operands: the interpreter fails to prepare (AUTO)
    def cat(m, x):
        return m.concat([m.unary("LOGISTIC", x), m.unary("TANH", x)])

    model = _single(cat, (3, 3, 4))
    with pytest.raises(TFLiteImportError, match="kernels='xnnpack': LiteRT's interpreter cannot prepare"):
        from_tflite(model, kernels="xnnpack")


# -- translation -----------------------------------------------------------------------------------------------


def test_depthwise_weights_become_hwio_with_groups():
    model = _single(lambda m, x: m.conv(x, 0, 3, stride=2, depthwise=True, multiplier=3, dilation=1), (7, 7, 2))
    qm = from_tflite(model, kernels="reference")
    node = qm.nodes[1]
    cfg, p = node.config(), qm.params[node.name]
    raw = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    wt = raw.subgraphs[0].operators[0].inputs[1]
    flat = np.frombuffer(bytes(np.asarray(raw.buffers[raw.subgraphs[0].tensors[wt].buffer].data, np.uint8)), np.int8)
    assert node.op == "tfl_conv" and cfg["depthwise"] and cfg["geometry"].groups == 2
    assert p["weight"].shape == (3, 3, 1, 6) and p["weight"].axis == 3
    np.testing.assert_array_equal(np.asarray(p["weight"].values).reshape(-1), flat)  # (1,KH,KW,C*M) -> (KH,KW,1,C*M)
    assert cfg["geometry"].strides == (2, 2) and cfg["geometry"].padding == ((1, 1), (1, 1))
    assert dict(cfg["tensors"]).keys() == {"weight", "bias", "output"}


def test_conv_weights_ohwi_to_hwio_and_same_padding():
    model = _single(lambda m, x: m.conv(x, 5, 3, stride=2, padding="SAME", act="RELU6"), (6, 6, 3))
    qm = from_tflite(model, kernels="reference")
    cfg, p = qm.nodes[1].config(), qm.params[qm.nodes[1].name]
    assert p["weight"].shape == (3, 3, 3, 5) and cfg["activation"] == "RELU6"
    assert cfg["geometry"].padding == ((0, 1), (0, 1))  # TFLite puts the odd padding cell after
    assert p["bias"].dtype == np.int32 and p["bias"].shape == (5,)


# value-preserving ops need no engine: vs the interpreter directly, at another batch than the model's
SHAPE_OPS = {
    "reshape": lambda m, x: m.reshape(x, [-1, 2, 12]),
    "squeeze": lambda m, x: m.squeeze(m.reshape(x, [-1, 1, 24]), [1]),
    "transpose": lambda m, x: m.transpose(x, [0, 3, 1, 2]),
    "pad": lambda m, x: m.pad(x, [[0, 0], [1, 2], [0, 1], [0, 0]]),
}


@pytest.mark.parametrize("kind", sorted(SHAPE_OPS))
def test_shape_ops_vs_interpreter(kind):
    model = _single(SHAPE_OPS[kind], (2, 4, 3))
    x = _int8_inputs(np.random.default_rng(0), (2, 4, 3), 3)
    qm = from_tflite(model, kernels="reference")
    assert all(n.op in ("tfl_input", "tfl_shape", "tfl_output") for n in qm.nodes)
    assert "engine" not in qm.nodes[-2].config()
    got, want = _run_both(model, [x], "reference", qm)
    assert _mismatches(got, want) == 0 and got[0].shape[0] == 3


def test_padv2_fills_with_its_constant():
    b = TFLiteBuilder()
    x = b.tensor((1, 2, 2, 1), np.int8, scale=0.1, zero_point=-5)
    pads = b.tensor((4, 2), np.int32, data=[[0, 0], [1, 1], [1, 0], [0, 0]])
    c = b.tensor((), np.int8, scale=0.1, zero_point=-5, data=np.int8(77))
    y = b.tensor((1, 4, 3, 1), np.int8, scale=0.1, zero_point=-5)
    b.op("PADV2", [x, pads, c], [y])
    model = b.build([x], [y])
    xx = np.arange(8, dtype=np.int8).reshape(2, 2, 2, 1)
    got, want = _run_both(model, [xx], "reference")
    assert _mismatches(got, want) == 0 and int(got[0][0, 0, 0, 0]) == 77


def test_fixed_batch_reshape_is_refused_as_litert_refuses_it():
    model = _single(lambda m, x: m.reshape(x, [1, 12]), (2, 2, 3))
    x = np.zeros((2, 2, 2, 3), np.int8)
    with pytest.raises(RuntimeError, match="num_input_elements != num_output_elements"):
        litert_runtime.run(model, [x], "reference")
    with pytest.raises(GraphError, match="the model fixes the batch at 1"):
        from_tflite(model, kernels="reference")(x)
    assert np.asarray(from_tflite(model, kernels="reference")(x[:1])).shape == (1, 12)


def test_input_dtype_and_shape_are_checked():
    qm = from_tflite(_tiny(), kernels="reference")
    with pytest.raises(TypeError, match="input 0: the model takes int8"):
        qm(np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"input 0: the model takes shape \(N, 2, 2, 3\)"):
        qm(np.zeros((1, 2, 3, 3), np.int8))


def test_uint8_model_edges():
    # uint8 in -> QUANTIZE (uint8 -> int8) -> QUANTIZE (int8 -> uint8) out, as older converters' models do
    b = TFLiteBuilder()
    x = b.tensor((1, 4, 4, 3), np.uint8, scale=0.05, zero_point=128)
    q = b.tensor((1, 4, 4, 3), np.int8, scale=0.05, zero_point=0)
    y = b.tensor((1, 4, 4, 3), np.uint8, scale=0.07, zero_point=120)
    b.op("QUANTIZE", [x], [q])
    b.op("QUANTIZE", [q], [y])
    model = b.build([x], [y])
    xs = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3)).astype(np.uint8)
    for kernels in FAMILIES:
        got, want = _run_both(model, [xs], kernels)
        assert got[0].dtype == np.uint8 and _mismatches(got, want) == 0, kernels


def test_transpose_conv_vs_interpreter():
    def tconv(m, x):
        return [m.transpose_conv(x, 5, 3, stride=2, padding="SAME", act="RELU"),
                m.transpose_conv(x, 3, 2, stride=3, padding="VALID", per_channel=False)]

    m = CalibratedBuilder(5, _calibration(5, (4, 3, 6)))
    x = m.input(np.int8)
    model = m.build([x], tconv(m, x))
    xs = _int8_inputs(np.random.default_rng(4), (4, 3, 6), 4)
    bad = 0
    for kernels in ("reference", "xnnpack"):  # all three: scripts/check_tflite_models.py (decoder_style)
        qm = from_tflite(model, kernels=kernels)
        p = qm.params["transpose_conv_0"]
        assert p["weight"].shape == (3, 3, 6, 5) and p["weight"].axis == 3  # OHWI -> HWIO
        for k in (0, 3):  # the constant output_shape fixes the batch at 1; sample 3 holds the extremes
            got, want = _run_both(model, [xs[k:k + 1]], kernels, qm)
            assert [g.shape for g in got] == [(1, 8, 6, 5), (1, 11, 8, 3)]
            bad += _mismatches(got, want)
    assert bad == 0
    with pytest.raises(RuntimeError, match="SizeOfDimension"):
        litert_runtime.run(model, [xs], "reference")
    with pytest.raises(GraphError, match="fixes the batch at 1"):
        qm(xs)


# -- models end to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    return mobilenet_style(0)


def _input_qparams(qm):
    cfg = qm.nodes[1].config()  # the QUANTIZE after the float input
    return cfg["out_qparams"]


@pytest.mark.parametrize("kernels", FAMILIES)
def test_mobilenet_style_end_to_end(mobilenet, kernels):
    qm = from_tflite(mobilenet, kernels=kernels)
    scale, zp = _input_qparams(qm)
    x = _float_inputs(np.random.default_rng(7), (16, 16, 3), scale, zp, 8)
    got, want = _run_both(mobilenet, [x], kernels, qm)
    assert got[0].dtype == np.float32 and got[0].shape == (8, 10)
    assert _mismatches(got, want) == 0
    assert np.unique(got[0]).size > 20  # not saturated: the softmax spreads over many levels
    other = litert_runtime.run(mobilenet, [x], "xnnpack" if kernels == "reference" else "reference")
    assert _mismatches(other, want) > 0  # the data tells the families apart: a wrong family's rule would fail
    if kernels == "xnnpack":  # XNNPACK leaves HARD_SWISH and SOFTMAX to the builtin (optimized) kernels
        assert set(qm.info["delegated"]) == set(litert_runtime.delegated_ops(mobilenet))
        engines = {n.name: n.config().get("engine") for n in qm.nodes}
        assert engines["hard_swish_8"] == engines["softmax_11"] == LiteRT("optimized")
        assert engines["conv_2d_1"] == engines["add_7"] == LiteRT("xnnpack")
    else:
        assert qm.info["delegated"] == ()


def test_mobilenet_style_int8_io():
    # one family here (scripts/check_tflite_models.py runs all three over many batches)
    model = mobilenet_style(1, float_io=False)
    x = _int8_inputs(np.random.default_rng(3), (16, 16, 3), 5)
    qm = from_tflite(model, kernels="xnnpack")
    assert [n.op for n in qm.nodes[:2]] == ["tfl_input", "tfl_conv"]  # no QUANTIZE: the input is int8
    got, want = _run_both(model, [x], "xnnpack", qm)
    assert got[0].dtype == np.int8 and got[0].shape == (5, 10) and _mismatches(got, want) == 0


@pytest.mark.parametrize("kernels", ("optimized", "xnnpack"))  # reference: the MobileNet test; all: the script
def test_every_op_model(kernels):
    model = every_op_model(0)
    qm = from_tflite(model, kernels=kernels)
    ops = {n.source.split()[2] for n in qm.nodes if n.source.startswith("operator")}
    assert len(ops) == 20
    scale, zp = _input_qparams(qm)
    x = _float_inputs(np.random.default_rng(11), (8, 8, 4), scale, zp, 6)
    got, want = _run_both(model, [x], kernels, qm)
    assert len(got) == 3 and got[1].dtype == got[2].dtype == np.int8 and got[0].dtype == np.float32
    assert _mismatches(got, want) == 0
    other = litert_runtime.run(model, [x], "reference")
    assert _mismatches(other, want) > 0  # the data tell this family from the reference kernels
    if kernels == "xnnpack":  # a mix: the delegate leaves AVERAGE_POOL_2D, HARD_SWISH, SQUEEZE, SOFTMAX behind
        left = {n.source.split()[2] for n in qm.nodes if n.config().get("engine") == LiteRT("optimized")}
        assert {"AVERAGE_POOL_2D", "HARD_SWISH", "SOFTMAX"} <= left


def test_with_qparams_rebinds_changed_scales():
    model = _single(lambda m, x: m.conv(m.conv(m.quantize(x), 6, 3, act="RELU6"), 4, 1), (6, 6, 3), int8_in=False)
    qm = from_tflite(model, kernels="reference")
    node = "conv_2d_1"
    params = dict(qm.params)
    params[node] = dict(params[node], scale=np.float32(params[node]["scale"] * 1.5))
    x = _float_inputs(np.random.default_rng(2), (6, 6, 3), *_input_qparams(qm), 4)
    with pytest.raises(GraphError, match="re-bind the model with qjax.with_tflite_qparams"):
        qm.apply(params, x)
    out_tensor = dict(qm.node(node).config()["tensors"])["output"]

    def rescale(m):
        q = m.subgraphs[0].tensors[out_tensor].quantization
        q.scale = [float(np.float32(q.scale[0]) * np.float32(1.5))]

    changed = _repacked(model, rescale)
    got, want = _run_both(changed, [x], "reference", with_qparams(qm, params))
    assert _mismatches(got, want) == 0
    base, _ = _run_both(model, [x], "reference", qm)
    assert _mismatches(base, want) > 0  # the change matters: the rebinding is what makes it match


def test_dequantize_then_quantize_survives_with_qparams():
    b = TFLiteBuilder()
    x = b.tensor((1, 4), np.int8, scale=0.05, zero_point=3)
    f = b.tensor((1, 4), np.float32)
    b.op("DEQUANTIZE", [x], [f], version=2)
    y = b.tensor((1, 4), np.int8, scale=0.07, zero_point=-1)
    b.op("QUANTIZE", [f], [y])
    data = b.build([x], [y])
    xs = np.arange(-64, 64, 8, dtype=np.int8).reshape(4, 4)
    qm = with_qparams(from_tflite(data, kernels="reference"))
    assert qm.node("quantize_1").config()["in_qparams"] == (None,)  # DEQUANTIZE's output is float32
    assert _mismatches([qm(xs)], litert_runtime.run(data, [xs], "reference")) == 0


def test_bias_less_convs_are_refused_in_one_line():
    calib = np.random.default_rng(0).uniform(0, 1, (4, 5, 5, 3))
    m = CalibratedBuilder(0, calib)
    x = m.input(np.int8)
    conv = m.build([x], [m.conv(x, 4, 3, bias=False)])
    with pytest.raises(RuntimeError):  # LiteRT refuses it too (conv.cc: has_bias)
        litert_runtime.run(conv, [np.zeros((1, 5, 5, 3), np.int8)], "reference")
    m = CalibratedBuilder(0, calib)
    x = m.input(np.int8)
    dw = m.build([x], [m.conv(x, 3, 3, depthwise=True, bias=False)])
    for model, match in ((conv, r"operator 0 \(CONV_2D\): has no bias.*has_bias"),
                         (dw, r"operator 0 \(DEPTHWISE_CONV_2D\): has no bias.*segfault")):
        with pytest.raises(TFLiteImportError, match=match) as e:
            from_tflite(model, kernels="reference")
        assert "\n" not in str(e.value)


def test_a_constant_activation_pins_the_batch():
    from .test_tflite_write import _concat_const_model

    data = _concat_const_model()
    qm = from_tflite(data, kernels="reference")
    assert qm.info["fixed_batch"] == 1
    x = np.random.default_rng(1).integers(-128, 128, (2, 3, 3, 4)).astype(np.int8)
    with pytest.raises(RuntimeError):  # LiteRT refuses batch 2 as well
        litert_runtime.run(data, [x], "reference")
    with pytest.raises(GraphError, match="input 0: the model fixes the batch at 1") as e:
        qm(x)
    assert "\n" not in str(e.value).split("\n-----")[0]
    assert _mismatches([qm(x[:1])], litert_runtime.run(data, [x[:1]], "reference")) == 0


def test_unsupported_op_lists_only_ops():
    b = TFLiteBuilder()
    x = b.tensor((1, 4), np.int8, scale=0.05, zero_point=3)
    y = b.tensor((1, 4), np.int8, scale=1 / 16, zero_point=127)
    b.op("LOG_SOFTMAX", [x], [y])
    with pytest.raises(TFLiteImportError, match=r"LOG_SOFTMAX\): is not supported; qjax imports ADD, ") as e:
        from_tflite(b.build([x], [y]), kernels="reference")
    listed = str(e.value).split("qjax imports ")[1].split(", ")
    assert "INDEX" not in listed and "NAME" not in listed and "CONV_2D" in listed and "PADV2" in listed


def test_isa_is_the_hosts_and_simd_families_need_x86_64(monkeypatch):
    import platform

    from qjax._src.interop import tflite

    assert from_tflite(_tiny(), kernels="reference").info["isa"] == tflite.host_isa()
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert from_tflite(_tiny(), kernels="reference").info["isa"] == "aarch64"  # reference: ISA-independent
    for k in ("optimized", "xnnpack"):
        with pytest.raises(ValueError, match=f"kernels='{k}'.*x86_64 only, this host is aarch64"):
            from_tflite(_tiny(), kernels=k)


def test_public_api():
    from qjax._src.interop import tflite, tflite_write

    qm = qjax.from_tflite(_tiny(), kernels="reference")  # a lazy wrapper (ai-edge-litert is optional)
    assert qm.nodes == tflite.from_tflite(_tiny(), kernels="reference").nodes and "from_tflite" in qjax.__all__
    assert qjax.to_tflite is tflite_write.to_tflite and "to_tflite" in qjax.__all__
