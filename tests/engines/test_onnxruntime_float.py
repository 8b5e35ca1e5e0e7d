"""OrtFloat vs ONNX Runtime: float ops between DequantizeLinear and the graph output, 0 mismatches (bitwise)."""

import numpy as np
import pytest

from tests.onnx_models import init, make_model, ort_run  # noqa: E402
from onnx import helper  # noqa: E402

from qjax._src.engines.base import EngineRefusal
from qjax._src.engines.onnxruntime import OnnxRuntime
from qjax._src.interop import ort_runtime
from qjax._src.qarray import QArray

ENG = OnnxRuntime()
RNG = np.random.default_rng(17)


def _dq_nodes(names, per_axis=None):
    return [helper.make_node("DequantizeLinear", [n, n + "_s", n + "_z"], [n + "_f"], **({"axis": per_axis[n]} if per_axis and n in per_axis else {}))
            for n in names]


def _bits_equal(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    assert a.shape == b.shape
    return int(np.sum(a.view(np.uint32) != b.view(np.uint32)))


def _q(values, scale, zp, dt):
    return QArray(values, np.float32(scale), np.int32(zp), "quint8" if dt == np.uint8 else "qint8")


def _tie_scales():
    # decimal scales (24-bit mantissas) make products and sums inexact: ties of fl(a op b) happen everywhere
    return [np.float32(0.1), np.float32(0.0137), np.float32(3.3e-3), np.float32(1 / 3)]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
def test_binary_matches_ort(op):
    bad = 0
    for dt in (np.uint8, np.int8):
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        a = np.arange(lo, hi + 1, dtype=np.int64).astype(dt).reshape(1, 256)
        b = RNG.integers(lo, hi + 1, (16, 1)).astype(dt)
        if op == "Div":
            b[b == 0] = 1
        for sa, sb in zip(_tie_scales(), _tie_scales()[::-1]):
            za, zb = int(RNG.integers(lo, hi)) // 2, 0 if op == "Div" else int(RNG.integers(lo, hi)) // 3
            inits = [init("a_s", sa), init("a_z", np.array(za, dt)), init("b_s", sb), init("b_z", np.array(zb, dt))]
            m = make_model(_dq_nodes(["a", "b"]) + [helper.make_node(op, ["a_f", "b_f"], ["y"])],
                           [("a", dt, [1, 256]), ("b", dt, [16, 1])], [("y", np.float32, [16, 256])], inits)
            ref = ort_run(m, [a, b])[0]
            got = ENG.ort_float_binary(op, _q(a, sa, za, dt).dequantize(), _q(b, sb, zb, dt).dequantize())
            bad += _bits_equal(got, ref)
    assert bad == 0


def test_binary_catches_contraction():
    """The data catches a plausible wrong rule: fma(dq_a) + b (a contracted DequantizeLinear) differs."""
    from qjax._src.float32 import fma32_numpy
    a = np.arange(256, dtype=np.float32) - 128
    s, b = np.float32(0.1), np.float32(0.0137) * (np.arange(256, dtype=np.float32) - 77)
    fused = fma32_numpy(a, np.full_like(a, s), b)
    assert np.any(fused != (a * s).astype(np.float32) + b)


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Clip", {}), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
                                      ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}), ("HardSwish", {})])
def test_unary_matches_ort(op, attrs):
    bad = 0
    for dt in (np.uint8, np.int8):
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        x = np.arange(lo, hi + 1, dtype=np.int64).astype(dt).reshape(1, 256)
        for s in _tie_scales() + [np.float32(0.02347), np.float32(0.0625)]:
            z = int(RNG.integers(lo, hi))
            inputs = ["x_f"]
            inits = [init("x_s", s), init("x_z", np.array(z, dt))]
            kw = {}
            if op == "Clip":
                inits += [init("lo", np.float32(-0.35)), init("hi", np.float32(1.7))]
                inputs += ["lo", "hi"]
                kw = {"lo": np.float32(-0.35), "hi": np.float32(1.7)}
            m = make_model(_dq_nodes(["x"]) + [helper.make_node(op, inputs, ["y"], **attrs)],
                           [("x", dt, [1, 256])], [("y", np.float32, [1, 256])], inits)
            ref = ort_run(m, [x])[0]
            got = ENG.ort_float_unary(op, _q(x, s, z, dt).dequantize(), **attrs, **kw)
            bad += _bits_equal(got, ref)
    assert bad == 0


def test_hardsigmoid_fused_rule_differs():
    """The unfused rule matters: fma(alpha, x, beta) differs from ORT's two roundings on these inputs."""
    from qjax._src.float32 import fma32_numpy
    x = (np.arange(256, dtype=np.float32) - 100) * np.float32(0.0137)
    a, b = np.float32(1 / 6), np.float32(0.5)
    assert np.any(fma32_numpy(np.full_like(x, a), x, np.full_like(x, b)) != (a * x).astype(np.float32) + b)


def test_sigmoid_tanh_refused():
    for op in ("Sigmoid", "Tanh"):
        with pytest.raises(EngineRefusal, match=op):
            ENG.ort_float_unary(op, np.zeros(3, np.float32))


def _pool_model(op, dt, shape, out_shape, s, z, **attrs):
    inits = [init("x_s", s), init("x_z", np.array(z, dt))]
    return make_model(_dq_nodes(["x"]) + [helper.make_node(op, ["x_f"], ["y"], **attrs)],
                      [("x", dt, list(shape))], [("y", np.float32, None)], inits)


@pytest.mark.parametrize("geom", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                  dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 0, 0], dilations=[2, 1]),
                                  dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=1)])
def test_max_pool_matches_ort(geom):
    for dt in (np.uint8, np.int8):
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        x = RNG.integers(lo, hi + 1, (2, 3, 9, 10)).astype(dt)
        m = _pool_model("MaxPool", dt, x.shape, None, np.float32(0.1), 3, **geom)
        # "all" moves the DQ behind the MaxPool (then fails on int8); "basic" keeps the float MaxPool
        ref = ort_run(m, [x], optimization="basic")[0]
        got = ENG.ort_float_max_pool(_q(x, 0.1, 3, dt).dequantize(), kernel_shape=geom["kernel_shape"],
                                     strides=geom["strides"], pads=geom["pads"],
                                     dilations=geom.get("dilations", [1, 1]), ceil_mode=geom.get("ceil_mode", 0))
        assert _bits_equal(got, ref) == 0


@pytest.mark.parametrize("ctm,nm,scales", [("asymmetric", "floor", [1, 1, 2, 2]),
                                           ("half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.6]),
                                           ("align_corners", "round_prefer_ceil", [1, 1, 1.75, 2.5]),
                                           ("pytorch_half_pixel", "ceil", [1, 1, 0.5, 3])])
def test_resize_nearest_matches_ort(ctm, nm, scales):
    x = RNG.integers(0, 256, (1, 2, 6, 5)).astype(np.uint8)
    inits = [init("x_s", np.float32(0.1)), init("x_z", np.array(7, np.uint8)), init("sc", np.float32(scales))]
    m = make_model(_dq_nodes(["x"]) + [helper.make_node("Resize", ["x_f", "", "sc"], ["y"], mode="nearest",
                                                        coordinate_transformation_mode=ctm, nearest_mode=nm)],
                   [("x", np.uint8, [1, 2, 6, 5])], [("y", np.float32, None)], inits)
    ref = ort_run(m, [x])[0]
    got = ENG.ort_float_resize(_q(x, 0.1, 7, np.uint8).dequantize(), mode="nearest",
                               coordinate_transformation_mode=ctm, nearest_mode=nm, out_shape=ref.shape,
                               scales=np.float32(scales))
    assert _bits_equal(got, ref) == 0


# -- summations --------------------------------------------------------------------------------------------------

def _conv_case(dt, sx, zx, sw, group=1, c=4, o=6, k=3, bias=True, x_shape=(1, 4, 7, 8)):
    lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
    x = RNG.integers(lo, hi + 1, x_shape).astype(dt)
    w = RNG.integers(-20, 21, (o, c // group, k, k)).astype(np.int8)
    b = RNG.integers(-300, 300, (o,)).astype(np.int32)
    sw = np.asarray(sw, np.float32)
    sb = (np.float32(sx) * sw).astype(np.float32)
    inits = [init("x_s", np.float32(sx)), init("x_z", np.array(zx, dt)), init("w", w), init("w_s", sw),
             init("w_z", np.zeros(sw.shape, np.int8)), init("b", b), init("b_s", sb), init("b_z", np.zeros(sb.shape, np.int32))]
    axis = {"w": 0, "b": 0} if sw.ndim else None
    nodes = _dq_nodes(["x", "w", "b"], axis) + [helper.make_node("Conv", ["x_f", "w_f"] + (["b_f"] if bias else []),
                                                                 ["y"], pads=[1, 0, 1, 2], strides=[1, 2], group=group)]
    m = make_model(nodes, [("x", dt, list(x_shape))], [("y", np.float32, None)], inits)
    wq = QArray(w, sw, np.zeros(sw.shape, np.int32), "qint8", axis=0 if sw.ndim else None)
    bq = QArray(b, sb, np.zeros(sb.shape, np.int32), "qint32", axis=0 if sb.ndim else None) if bias else None
    return m, x, _q(x, sx, zx, dt), wq, bq


@pytest.mark.parametrize("dt", [np.uint8, np.int8])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_exact_matches_ort(dt, group):
    # scales m * 2**e with small odd m: every partial sum exact (the sufficient condition)
    sx = np.float32(3 * 2.0 ** -7)
    sw = np.float32([5 * 2.0 ** -9, 2.0 ** -6, 7 * 2.0 ** -10, 3 * 2.0 ** -8, 2.0 ** -9, 9 * 2.0 ** -11])
    m, x, xq, wq, bq = _conv_case(dt, sx, 5 if dt == np.uint8 else -3, sw, group=group)
    assert any(n.op_type == "Conv" for n in ort_runtime.optimized_model(m).graph.node)
    ref = ort_run(m, [x])[0]
    got = ENG.ort_float_conv(xq, wq, bq, strides=(1, 2), pads=(1, 0, 1, 2), dilations=(1, 1), group=group)
    assert _bits_equal(got, ref) == 0
    assert np.abs(ref).max() > 1  # not a degenerate case


def test_conv_refused_when_not_exact():
    m, x, xq, wq, bq = _conv_case(np.uint8, np.float32(0.0137), 5, np.float32([0.01] * 6))
    with pytest.raises(EngineRefusal, match="node7.*2\\*\\*24"):
        ENG.ort_float_conv(xq, wq, None, strides=(1, 2), pads=(1, 0, 1, 2), dilations=(1, 1), node="node7")
    with pytest.raises(EngineRefusal, match="node8.*bias"):
        ENG.ort_float_conv(xq, wq, bq, strides=(1, 2), pads=(1, 0, 1, 2), dilations=(1, 1), node="node8")


def test_matmul_gemm_exact_matches_ort():
    a = RNG.integers(0, 256, (5, 12)).astype(np.uint8)
    b = RNG.integers(-50, 51, (12, 7)).astype(np.int8)
    sa, sb = np.float32(2.0 ** -6), np.float32([3 * 2.0 ** -8] * 7)
    inits = [init("a_s", sa), init("a_z", np.array(128, np.uint8)), init("b", b), init("b_s", sb),
             init("b_z", np.zeros(7, np.int8))]
    m = make_model(_dq_nodes(["a", "b"], {"b": 1}) + [helper.make_node("MatMul", ["a_f", "b_f"], ["y"])],
                   [("a", np.uint8, [5, 12])], [("y", np.float32, None)], inits)
    ref = ort_run(m, [a], optimization="basic")[0]
    aq = _q(a, sa, 128, np.uint8)
    bq = QArray(b, sb, np.zeros(7, np.int32), "qint8", axis=1)
    assert _bits_equal(ENG.ort_float_matmul(aq, bq), ref) == 0
    mg = make_model(_dq_nodes(["a", "b"], {"b": 1}) + [helper.make_node("Gemm", ["a_f", "b_f"], ["y"])],
                    [("a", np.uint8, [5, 12])], [("y", np.float32, None)], inits)
    ref = ort_run(mg, [a], optimization="basic")[0]
    assert _bits_equal(ENG.ort_float_gemm(aq, bq), ref) == 0
    with pytest.raises(EngineRefusal, match="alpha"):
        ENG.ort_float_gemm(aq, bq, alpha=0.5)


@pytest.mark.parametrize("kind", ["gap", "mean", "avg_in", "avg_ex"])
def test_means_exact_matches_ort(kind):
    bad = 0
    for dt in (np.uint8, np.int8):
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        x = RNG.integers(lo, hi + 1, (2, 3, 5, 7)).astype(dt)  # n = 35, 5, 9: divisions that round
        for s in (np.float32(2.0 ** -5), np.float32(3 * 2.0 ** -9), np.float32(5 * 2.0 ** 2)):
            z = 9 if dt == np.uint8 else -4
            xq = _q(x, s, z, dt)
            if kind == "gap":
                m = _pool_model("GlobalAveragePool", dt, x.shape, None, s, z)
                got = ENG.ort_float_global_avg_pool(xq)
            elif kind == "mean":
                inits = [init("x_s", s), init("x_z", np.array(z, dt)), init("ax", np.array([3], np.int64))]
                m = make_model(_dq_nodes(["x"]) + [helper.make_node("ReduceMean", ["x_f", "ax"], ["y"], keepdims=0)],
                               [("x", dt, list(x.shape))], [("y", np.float32, None)], inits, opset=18)
                got = ENG.ort_float_reduce_mean(xq, axes=(3,), keepdims=0)
            else:
                cip = int(kind == "avg_in")
                m = _pool_model("AveragePool", dt, x.shape, None, s, z, kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1], count_include_pad=cip)
                got = ENG.ort_float_avg_pool(xq, kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1),
                                             count_include_pad=cip)
            bad += _bits_equal(got, ort_run(m, [x])[0])
    assert bad == 0


def test_mean_refused_when_not_exact():
    xq = _q(np.zeros((1, 2, 4, 4), np.uint8), np.float32(0.0137), 0, np.uint8)
    with pytest.raises(EngineRefusal, match="gap1.*2\\*\\*24"):
        ENG.ort_float_global_avg_pool(xq, node="gap1")


def test_conv_and_mean_under_jit():
    """Traced activations with concrete (closed-over) qparams, as the importer calls them."""
    import jax
    sx = np.float32(3 * 2.0 ** -7)
    sw = np.float32([5 * 2.0 ** -9, 2.0 ** -6, 7 * 2.0 ** -10, 3 * 2.0 ** -8, 2.0 ** -9, 9 * 2.0 ** -11])
    m, x, xq, wq, bq = _conv_case(np.uint8, sx, 5, sw)
    def conv(v):
        with jax.ensure_compile_time_eval():
            return ENG.ort_float_conv(QArray(v, sx, np.int32(5), "quint8"), wq, bq, strides=(1, 2),
                                      pads=(1, 0, 1, 2), dilations=(1, 1))

    def gap(v):
        with jax.ensure_compile_time_eval():
            return ENG.ort_float_global_avg_pool(QArray(v, sx, np.int32(5), "quint8"))

    f = jax.jit(conv)
    assert _bits_equal(f(x), ort_run(m, [x])[0]) == 0
    g = jax.jit(gap)
    with pytest.raises(EngineRefusal, match="ensure_compile_time_eval"):
        jax.jit(lambda v: ENG.ort_float_global_avg_pool(QArray(v, sx, np.int32(5), "quint8")))(x)
    assert _bits_equal(g(x), ENG.ort_float_global_avg_pool(xq)) == 0


def _conv_q_model(x_shape, sx, zx, w, sw, b, sy, zy):
    o = w.shape[0]
    sb = (np.float32(sx) * sw).astype(np.float32)
    inits = [init("x_s", np.float32(sx)), init("x_z", np.array(zx, np.uint8)), init("w", w), init("w_s", sw),
             init("w_z", np.zeros(o, np.int8)), init("b", b), init("b_s", sb), init("b_z", np.zeros(o, np.int32)),
             init("y_s", np.float32(sy)), init("y_z", np.array(zy, np.uint8))]
    nodes = _dq_nodes(["x", "w", "b"], {"w": 0, "b": 0}) + [
        helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["yf"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["yf", "y_s", "y_z"], ["y"])]
    m = make_model(nodes, [("x", np.uint8, list(x_shape))], [("y", np.uint8, None)], inits)
    return m, QArray(w, sw, np.zeros(o, np.int32), "qint8", axis=0), QArray(b, sb, np.zeros(o, np.int32), "qint32", axis=0)


def test_conv_q_proven_outputs_match_ort():
    """Decimal scales (not exact): every output marked proven equals ORT's float Conv + QuantizeLinear; the
    unproven ones are the near-ties (some exist: tie-seeking output scale)."""
    x = RNG.integers(0, 256, (1, 8, 8, 8)).astype(np.uint8)
    w = RNG.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8)
    sx, sw = np.float32(0.0173), RNG.uniform(2e-3, 9e-3, 8).astype(np.float32)
    b = RNG.integers(-3000, 3000, 8).astype(np.int32)
    sy = np.float32(0.05)
    m, wq, bq = _conv_q_model(x.shape, sx, 7, w, sw, b, sy, 128)
    ref = ort_run(m, [x], optimization="basic")[0]  # "basic": the Conv stays float
    y, proven = ENG.ort_float_conv_q(_q(x, sx, 7, np.uint8), wq, bq, strides=(1, 1), pads=(1, 1, 1, 1),
                                     dilations=(1, 1), out_scale=sy, out_zero_point=128, out_dtype="quint8")
    proven = np.asarray(proven)
    assert proven.mean() > 0.9
    assert int(np.sum((np.asarray(y.values) != ref)[proven])) == 0
