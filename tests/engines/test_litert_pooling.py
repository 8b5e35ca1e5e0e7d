"""LiteRT's int8 AVERAGE_POOL_2D / MAX_POOL_2D / MEAN / HARD_SWISH / LOGISTIC / TANH / SOFTMAX: ``LiteRT(kernels)``
against ai-edge-litert's interpreter with each op resolver (0 mismatches), and the data telling the families
apart.  Longer sweeps: ``scripts/check_litert_pooling.py``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("ai_edge_litert")

from qjax._src.engines.litert import LiteRT  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.qarray import QArray  # noqa: E402
from qjax._src.qops import tflite_activations as ta  # noqa: E402
from qjax._src.qops import tflite_pooling as tp  # noqa: E402
from qjax._src.qops.tflite_common import explicit_padding, output_size  # noqa: E402
from ..tflite_models import TFLiteBuilder, schema  # noqa: E402

FAMILIES = litert_runtime.KERNELS
ENGINES = {k: LiteRT(k) for k in FAMILIES}
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
F32 = np.float32
ALL_INT8 = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16, 1)


# --- single-op models -------------------------------------------------------------------------------------

def build_pool(kind, shape, filter_size, strides, padding, in_q, out_q, activation="NONE") -> bytes:
    """A one-op AVERAGE_POOL_2D / MAX_POOL_2D model (int8 in, int8 out)."""
    b = TFLiteBuilder()
    n, h, w, c = shape
    x = b.tensor(shape, np.int8, scale=in_q[0], zero_point=in_q[1])
    oh = output_size(padding, h, filter_size[0], strides[0])
    ow = output_size(padding, w, filter_size[1], strides[1])
    y = b.tensor((n, oh, ow, c), np.int8, scale=out_q[0], zero_point=out_q[1])
    o = schema.Pool2DOptionsT()
    o.padding = getattr(schema.Padding, padding)
    o.strideH, o.strideW = strides
    o.filterHeight, o.filterWidth = filter_size
    o.fusedActivationFunction = getattr(schema.ActivationFunctionType, activation)
    b.op(kind, [x], [y], o, version=2)
    return b.build([x], [y])


def build_mean(shape, axes, keep_dims, in_q, out_q) -> bytes:
    """A one-op MEAN model over the constant ``axes``."""
    b = TFLiteBuilder()
    x = b.tensor(shape, np.int8, scale=in_q[0], zero_point=in_q[1])
    a = b.tensor((len(axes),), np.int32, data=np.asarray(axes, np.int32))
    if keep_dims:
        oshape = [1 if i in axes else d for i, d in enumerate(shape)]
    else:
        oshape = [d for i, d in enumerate(shape) if i not in axes]
    y = b.tensor(oshape, np.int8, scale=out_q[0], zero_point=out_q[1])
    o = schema.ReducerOptionsT()
    o.keepDims = bool(keep_dims)
    b.op("MEAN", [x, a], [y], o, version=2)
    return b.build([x], [y])


def build_unary(kind, shape, in_q, out_q, beta=1.0) -> bytes:
    """A one-op HARD_SWISH / LOGISTIC / TANH / SOFTMAX model (int8 in, int8 out)."""
    b = TFLiteBuilder()
    x = b.tensor(shape, np.int8, scale=in_q[0], zero_point=in_q[1])
    y = b.tensor(shape, np.int8, scale=out_q[0], zero_point=out_q[1])
    options = None
    if kind == "SOFTMAX":
        options = schema.SoftmaxOptionsT()
        options.beta = float(beta)
    elif kind == "HARD_SWISH":
        options = schema.HardSwishOptionsT()
    b.op(kind, [x], [y], options, version=1 if kind == "HARD_SWISH" else 2)
    return b.build([x], [y])


def qarray(x, q):
    return QArray(jnp.asarray(x, jnp.int8), F32(q[0]), np.int32(q[1]), "qint8")


def family_used(kernels, model):
    """The rule that ran: an op the XNNPACK delegate did not take runs on the optimized builtin kernels."""
    if kernels == "xnnpack" and not litert_runtime.delegated_ops(model):
        return "optimized"
    return kernels


def run_all(model, x):
    return {k: litert_runtime.run(model, [x], k)[0] for k in FAMILIES}


# --- pooling ----------------------------------------------------------------------------------------------

POOL_SHAPES = [(1, 5, 6, 3), (2, 7, 7, 2)]


def tie_input(rng, shape):
    """Odd values in [-127, 127]: window sums of 2 or 4 cells land on x.5 means half the time."""
    return (2 * rng.integers(-64, 64, size=shape) - 1).clip(-127, 127).astype(np.int8)


@settings(deadline=None, max_examples=6, derandomize=True)
@given(shape=st.sampled_from(POOL_SHAPES), filt=st.sampled_from([(2, 2), (3, 3), (2, 3)]),
       stride=st.sampled_from([(1, 1), (2, 2)]), padding=st.sampled_from(["SAME", "VALID"]),
       activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**32 - 1), ties=st.booleans(),
       same_q=st.booleans())
def test_pools_match_interpreter(shape, filt, stride, padding, activation, seed, ties, same_q):
    rng = np.random.default_rng(seed)
    in_q = (float(F32(rng.uniform(0.005, 0.1))), int(rng.integers(-40, 40)))
    out_q = in_q if same_q else (float(F32(rng.uniform(0.005, 0.1))), int(rng.integers(-40, 40)))
    x = tie_input(rng, shape) if ties else rng.integers(-128, 128, size=shape).astype(np.int8)
    pads = explicit_padding(padding, shape[1:3], filt, stride)
    for kind, method in (("AVERAGE_POOL_2D", "tfl_avg_pool"), ("MAX_POOL_2D", "tfl_max_pool")):
        model = build_pool(kind, shape, filt, stride, padding, in_q, out_q, activation)
        for k in FAMILIES:
            if k == "xnnpack" and kind == "MAX_POOL_2D" and out_q != in_q:
                continue  # the delegate fails to prepare a max pool that changes qparams
            want = litert_runtime.run(model, [x], k)[0]
            got = getattr(ENGINES[family_used(k, model)], method)(qarray(x, in_q), filt, stride, pads, *out_q,
                                                                  activation)
            np.testing.assert_array_equal(np.asarray(got.values), want, err_msg=f"{kind} {k}")


def test_max_pool_changed_qparams_xnnpack_refuses():
    """MAX_POOL_2D with output qparams other than the input's: the XNNPACK delegate fails to prepare (the
    interpreter raises) and LiteRT("xnnpack") refuses; the builtin kernels ignore them (the raw maximum)."""
    x = np.random.default_rng(2).integers(-128, 128, (1, 4, 4, 2)).astype(np.int8)
    in_q, out_q = (0.05, 3), (0.1, 0)
    model = build_pool("MAX_POOL_2D", x.shape, (2, 2), (2, 2), "VALID", in_q, out_q)
    with pytest.raises(RuntimeError):
        litert_runtime.run(model, [x], "xnnpack")
    with pytest.raises(ValueError, match="MAX_POOL_2D.*XNNPACK"):
        ENGINES["xnnpack"].tfl_max_pool(qarray(x, in_q), (2, 2), (2, 2), ((0, 0), (0, 0)), *out_q)
    for k in ("reference", "optimized"):
        got = ENGINES[k].tfl_max_pool(qarray(x, in_q), (2, 2), (2, 2), ((0, 0), (0, 0)), *out_q)
        np.testing.assert_array_equal(np.asarray(got.values), litert_runtime.run(model, [x], k)[0], err_msg=k)


def test_plain_jit_says_what_to_do():
    """Under a plain jit the QArray qparams are tracers: the table / multiplier ops refuse, naming
    ``jax.ensure_compile_time_eval``, inside which they run as eagerly."""
    import jax

    x = ALL_INT8.reshape(1, 256)

    def tanh(v):
        return ENGINES["reference"].tfl_tanh(qarray(v, (0.05, 0)), F32(1 / 128), 0).values

    with pytest.raises(ValueError, match="ensure_compile_time_eval"):
        jax.jit(tanh)(x)

    def static(v):
        with jax.ensure_compile_time_eval():
            return tanh(v)

    np.testing.assert_array_equal(np.asarray(jax.jit(static)(x)), np.asarray(tanh(x)))


def test_avg_pool_ties_round_away_and_delegation():
    """Tie data: the half-away integer mean matches, floor / ties-to-even division would not; XNNPACK leaves
    AVERAGE_POOL_2D to the builtin kernels and takes MAX_POOL_2D."""
    rng = np.random.default_rng(7)
    shape, filt, stride = (1, 6, 6, 4), (2, 2), (2, 2)
    x = tie_input(rng, shape)
    q = (0.02, 3)
    model = build_pool("AVERAGE_POOL_2D", shape, filt, stride, "SAME", q, q)
    want = run_all(model, x)
    assert litert_runtime.delegated_ops(model) == frozenset()
    assert litert_runtime.delegated_ops(build_pool("MAX_POOL_2D", shape, filt, stride, "SAME", q, q)) == {0}
    acc = x.astype(np.int64).reshape(1, 3, 2, 3, 2, 4).sum(axis=(2, 4))
    assert np.count_nonzero(acc % 4 == 2) > 10  # many exact halves, both signs
    assert np.any((acc % 4 == 2) & (acc < 0)) and np.any((acc % 4 == 2) & (acc > 0))
    got = np.asarray(ENGINES["reference"].tfl_avg_pool(qarray(x, q), filt, stride, ((0, 0), (0, 0)), *q).values)
    for k in FAMILIES:
        np.testing.assert_array_equal(got, want[k])
    assert np.any(np.floor(acc / 4) != got) and np.any(np.round(acc / 4) != got)


def test_max_pool_xnnpack_bound_ties_to_even():
    """RELU6 with 6 / scale = 2.5: the builtin kernels clamp at zp + 3, XNNPACK at zp + 2."""
    s, zp = float(F32(6.0 / 2.5)), -100
    model = build_pool("MAX_POOL_2D", (1, 16, 16, 1), (1, 1), (1, 1), "VALID", (s, zp), (s, zp), "RELU6")
    want = run_all(model, ALL_INT8)
    assert [int(want[k].max()) for k in FAMILIES] == [zp + 3, zp + 3, zp + 2]
    for k in FAMILIES:
        got = ENGINES[k].tfl_max_pool(qarray(ALL_INT8, (s, zp)), (1, 1), (1, 1), ((0, 0), (0, 0)), s, zp, "RELU6")
        np.testing.assert_array_equal(np.asarray(got.values), want[k])


# --- MEAN -------------------------------------------------------------------------------------------------

MEAN_CASES = [((1, 4, 5, 6), (1, 2), True), ((2, 3, 3, 4), (1, 2), False), ((1, 4, 5, 6), (3,), True),
              ((2, 3, 5, 4), (1,), False), ((1, 2, 2, 8), (1, 2), True), ((2, 6, 4), (2,), True)]


@settings(deadline=None, max_examples=12, derandomize=True)
@given(case=st.sampled_from(MEAN_CASES), seed=st.integers(0, 2**32 - 1), ties=st.booleans(),
       same_q=st.booleans())
def test_mean_matches_interpreter(case, seed, ties, same_q):
    shape, axes, keep = case
    rng = np.random.default_rng(seed)
    in_q = (float(F32(rng.uniform(0.01, 0.2))), int(rng.integers(-128, 128)))
    out_q = in_q if same_q else (float(F32(in_q[0] * rng.uniform(0.3, 3))), int(rng.integers(-128, 128)))
    x = tie_input(rng, shape) if ties else rng.integers(-128, 128, size=shape).astype(np.int8)
    model = build_mean(shape, axes, keep, in_q, out_q)
    for k in FAMILIES:
        want = litert_runtime.run(model, [x], k)[0]
        got = ENGINES[family_used(k, model)].tfl_mean(qarray(x, in_q), axes, keep, *out_q)
        np.testing.assert_array_equal(np.asarray(got.values), want, err_msg=f"MEAN {k} {case}")


def test_mean_families_differ_on_ties():
    """The global average pool of a MobileNet (H, W, keep_dims) on tie data: the three families give three
    different answers, each reproduced."""
    rng = np.random.default_rng(3)
    shape, q_in, q_out = (1, 2, 2, 64), (0.05, 1), (0.05, 0)
    x = tie_input(rng, shape)
    model = build_mean(shape, (1, 2), True, q_in, q_out)
    want = run_all(model, x)
    assert litert_runtime.delegated_ops(model) == {0}
    for k in FAMILIES:
        got = ENGINES[k].tfl_mean(qarray(x, q_in), (1, 2), True, *q_out)
        np.testing.assert_array_equal(np.asarray(got.values), want[k], err_msg=k)
    for a, b in (("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack")):
        assert np.any(want[a] != want[b]), (a, b)


# --- LUT ops: all 256 inputs ------------------------------------------------------------------------------

def _lut_case(kind, method, in_q, out_q):
    model = build_unary(kind, ALL_INT8.shape, in_q, out_q)
    want = run_all(model, ALL_INT8)
    for k in FAMILIES:
        got = getattr(ENGINES[family_used(k, model)], method)(qarray(ALL_INT8, in_q), *out_q)
        np.testing.assert_array_equal(np.asarray(got.values), want[k], err_msg=f"{kind} {k} {in_q} {out_q}")
    return want


# qparams where the builtin (half away) and XNNPACK (ties to even) TANH tables differ, found by the sweep
TANH_SPLITS = [(0.008266355842351913, -106), (0.25669175386428833, -104), (0.09791360795497894, 91)]


@pytest.mark.parametrize("in_q", [(0.05, 0), (0.1, -20)] + TANH_SPLITS)
def test_tanh_tables(in_q):
    want = _lut_case("TANH", "tfl_tanh", in_q, (1 / 128, 0))
    if in_q in TANH_SPLITS:
        assert np.any(want["reference"] != want["xnnpack"])


# the builtin TANH table's product fl(y * fl(1/s_out)) is the float just below one half at q = +-1 (searched on the
# host): TfLiteRound gives 0 there, a float32 floor(v + 0.5) gives 1 (v + 0.5 rounds to 1.0)
TANH_BELOW_HALF = (0.01004002, 0.020079367)


@pytest.mark.parametrize("zo", [0, 5, -128, 127])
def test_tanh_table_entry_just_below_one_half(zo):
    s_in, s_out = TANH_BELOW_HALF
    x = np.asarray([F32(F32(s_in) * F32(1))], F32)
    v = F32(ta.tr.libm("tanhf", x)[0] * (F32(1) / F32(s_out)))
    assert v == np.nextafter(F32(0.5), F32(0)) and F32(v + F32(0.5)) == 1  # the data is adversarial
    want = _lut_case("TANH", "tfl_tanh", (s_in, 0), (s_out, zo))
    assert want["reference"].ravel()[128 + 1] == np.clip(zo, -128, 127)  # rounds to 0, not 1


def test_tanh_other_output_scale():
    _lut_case("TANH", "tfl_tanh", (0.03, 5), (0.011, -7))


# qparams where the builtin float sigmoid and XNNPACK's double one (plus its float zero-point add) differ
LOGISTIC_SPLITS = [(0.0130225270986557, -83), (0.15322069823741913, 87), (0.07676950842142105, -7)]


@pytest.mark.parametrize("in_q", [(0.05, 0), (0.2, 40), (0.03087746538221836, -26)] + LOGISTIC_SPLITS)
def test_logistic_tables(in_q):
    model = build_unary("LOGISTIC", ALL_INT8.shape, in_q, (1 / 256, -128))
    assert litert_runtime.delegated_ops(model) == {0}
    want = _lut_case("LOGISTIC", "tfl_logistic", in_q, (1 / 256, -128))
    if in_q in LOGISTIC_SPLITS:
        assert np.any(want["reference"] != want["xnnpack"])


def test_logistic_other_output_qparams_only_on_xnnpack():
    """The builtin kernels' Prepare requires an output scale of 1/256; the XNNPACK delegate takes any."""
    in_q, out_q = (0.05, 3), (0.005, -100)
    model = build_unary("LOGISTIC", ALL_INT8.shape, in_q, out_q)
    want = litert_runtime.run(model, [ALL_INT8], "xnnpack")[0]
    got = ENGINES["xnnpack"].tfl_logistic(qarray(ALL_INT8, in_q), *out_q)
    np.testing.assert_array_equal(np.asarray(got.values), want)
    for k in ("reference", "optimized"):
        with pytest.raises(RuntimeError):
            litert_runtime.run(model, [ALL_INT8], k)
        with pytest.raises(ValueError, match="LOGISTIC"):
            ENGINES[k].tfl_logistic(qarray(ALL_INT8, in_q), *out_q)


def test_logistic_xnnpack_adds_the_zero_point_in_float():
    """(0.1532207, 87), q = 78: 256 * sigmoid = 51.4999971 rounds to 51 before the zero point is added, but
    fl(51.4999971 - 128) = -76.5 rounds (to even) to -76, which is what XNNPACK outputs."""
    in_q = LOGISTIC_SPLITS[1]
    model = build_unary("LOGISTIC", ALL_INT8.shape, in_q, (1 / 256, -128))
    want = litert_runtime.run(model, [ALL_INT8], "xnnpack")[0].ravel()
    x = F32(F32(78 - 87) * F32(in_q[0]))
    y = F32(np.exp(np.float64(x)) / (1 + np.exp(np.float64(x))))
    assert np.rint(F32(y * 256)) - 128 == -77  # rounding before the zero point is added
    assert want[78 + 128] == -76 and ta.lut_xnnpack("logistic", *in_q, 1 / 256, -128)[78 + 128] == -76


@pytest.mark.parametrize("in_q,out_q", [((0.05, 0), (0.03, -20)), ((0.1, -30), (0.025, -100)),
                                        ((0.02, 60), (0.015, 10)), ((0.5, 3), (0.07, -120)),
                                        ((0.004, -128), (0.003, 0))])
def test_hard_swish_tables(in_q, out_q):
    model = build_unary("HARD_SWISH", ALL_INT8.shape, in_q, out_q)
    assert litert_runtime.delegated_ops(model) == frozenset()
    _lut_case("HARD_SWISH", "tfl_hard_swish", in_q, out_q)


def test_hard_swish_prepare_failure_is_refused():
    with pytest.raises(ValueError, match="HARD_SWISH"):
        ENGINES["reference"].tfl_hard_swish(qarray(ALL_INT8, (0.01, 0)), 0.00001, 0)


# --- SOFTMAX ----------------------------------------------------------------------------------------------

SOFTMAX_SHAPES = [(4, 10), (2, 3, 17)]


@settings(deadline=None, max_examples=6, derandomize=True)
@given(shape=st.sampled_from(SOFTMAX_SHAPES), seed=st.integers(0, 2**32 - 1),
       beta=st.sampled_from([1.0, 0.5, 2.0, 0.73]), narrow=st.booleans())
def test_softmax_matches_interpreter(shape, seed, beta, narrow):
    rng = np.random.default_rng(seed)
    in_q = (float(F32(rng.uniform(0.01, 0.3))), int(rng.integers(-50, 50)))
    x = rng.integers(-128, 128, size=shape)
    if narrow:  # rows of close values: many comparable exponentials
        x = x // 16
    x = x.astype(np.int8)
    model = build_unary("SOFTMAX", shape, in_q, (1 / 256, -128), beta=beta)
    for k in FAMILIES:
        want = litert_runtime.run(model, [x], k)[0]
        got = ENGINES[family_used(k, model)].tfl_softmax(qarray(x, in_q), beta, 1 / 256, -128)
        np.testing.assert_array_equal(np.asarray(got.values), want, err_msg=f"SOFTMAX {k}")


def test_softmax_reference_and_optimized_differ():
    """The fixed-point and the float kernels rarely differ (7 of these 120,000 outputs)."""
    rng = np.random.default_rng(0)
    rng.integers(-128, 128, size=(20000, 6))
    x = rng.integers(-128, 128, size=(20000, 6)).astype(np.int8)
    q = (0.1, 0)
    model = build_unary("SOFTMAX", x.shape, q, (1 / 256, -128))
    assert litert_runtime.delegated_ops(model) == frozenset()
    want = run_all(model, x)
    assert np.any(want["reference"] != want["optimized"])
    np.testing.assert_array_equal(want["optimized"], want["xnnpack"])
    for k in FAMILIES:
        got = ENGINES[k].tfl_softmax(qarray(x, q), 1.0, 1 / 256, -128)
        np.testing.assert_array_equal(np.asarray(got.values), want[k], err_msg=k)


def test_softmax_optimized_product_just_below_one_half():
    """x = [0, 0, 0, -1] at s_in = 5.1377573: ``fl(T[1] * inv)`` is the float just below one half, which
    TfLiteRound takes to 0 (-128 out), a float32 ``floor(p + 0.5)`` to 1 (-127)."""
    x, q = np.asarray([[0, 0, 0, -1]], np.int8), (5.1377573, 0)
    table = ta.softmax_optimized_table(float(F32(q[0])), 1.0)
    total = F32(F32(F32(F32(table[0] + table[0]) + table[0]) + table[1]))
    inv = F32(F32(1) / F32(total * F32(1 / 256)))
    assert F32(table[1] * inv) == np.nextafter(F32(0.5), F32(0))  # the data is adversarial
    model = build_unary("SOFTMAX", x.shape, q, (1 / 256, -128))
    want = run_all(model, x)
    assert want["optimized"].ravel()[3] == -128
    for k in ("optimized", "xnnpack"):  # the float kernel (XNNPACK leaves SOFTMAX to it)
        got = ENGINES[family_used(k, model)].tfl_softmax(qarray(x, q), 1.0, 1 / 256, -128)
        np.testing.assert_array_equal(np.asarray(got.values), want[k], err_msg=k)


def test_tables_are_host_side_and_cached():
    a = ta.lut_builtin("tanh", 0.05, 0, 1 / 128, 0)
    assert a is ta.lut_builtin("tanh", 0.05, 0, 1 / 128, 0) and a.shape == (256,)
    assert tp.mean_reference_params(0.05, 0.05, 4) == (2**30, 1 - 2)
