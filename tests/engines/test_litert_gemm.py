"""LiteRT's int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: ``LiteRT(kernels)`` against ai-edge-litert's
interpreter with each op resolver (0 mismatches), and the data telling the families apart."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("ai_edge_litert")

import qjax  # noqa: E402
from qjax._src.engines.base import ConvGeometry, EngineRefusal  # noqa: E402
from qjax._src.engines import litert_gemm  # noqa: E402
from qjax._src.engines.litert import LiteRT  # noqa: E402
from qjax._src.interop import litert_runtime  # noqa: E402
from qjax._src.qops.tflite_common import explicit_padding  # noqa: E402
from qjax._src.requant import tflite as rq  # noqa: E402

from .litert_gemm_cases import (  # noqa: E402
    CODES, OPS, accumulators, build_model, build_tconv_model, fc_rounding_case, interpreter_outputs, make_case, make_tconv_case, np_gemmlowp,
    np_half_up, np_output, np_single_half_up, np_xnnpack, qjax_output, qjax_tconv_output)

FAMILIES = litert_runtime.KERNELS

# a few fixed geometries per op, so that hypothesis' examples share compiled functions
GEOMETRIES = {
    "conv": [dict(n=1, hw=(5, 6), kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding="SAME", c=5, o=9),
             dict(n=2, hw=(7, 6), kernel=(2, 3), stride=(2, 1), dilation=(1, 2), padding="VALID", c=4, o=6,
                  groups=2)],
    "dw": [dict(n=1, hw=(6, 5), kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding="SAME", c=12, m=1),
           dict(n=2, hw=(7, 7), kernel=(3, 2), stride=(2, 2), dilation=(2, 1), padding="SAME", c=5, m=3)],
    "fc": [dict(n=3, k=20, o=11), dict(n=6, k=33, o=17)],
}


def _family_used(kernels, outs):
    """The rule that ran: an op XNNPACK did not delegate runs on the optimized builtin kernels."""
    return kernels if kernels != "xnnpack" or outs["xnnpack_delegated"] else "optimized"


def _check_all(case):
    outs = interpreter_outputs(case)
    for k in FAMILIES:
        got = qjax_output(case, _family_used(k, outs))
        np.testing.assert_array_equal(got, outs[k], err_msg=f"{case['op']} kernels={k}")
    return outs


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("geometry", [0, 1])
@pytest.mark.parametrize("op", ["conv", "dw", "fc"])
def test_matches_interpreter(op, geometry, ties, per_channel):
    """Every (op, geometry, ties, per-channel) combination; tie cases of the second geometry take extreme zero
    points (the input's at an int8 end, the output's near one)."""
    rng = np.random.default_rng([OPS.index(op), geometry, ties, per_channel])
    zero_points = None
    if ties and geometry == 1:
        zero_points = (int(rng.choice([-128, 127])), int(rng.choice([-128, -110, 110, 127])))
    case = make_case(rng, op, shape=GEOMETRIES[op][geometry], ties=ties, per_channel=per_channel,
                     zero_points=zero_points)
    _check_all(case)


@pytest.mark.parametrize("op", ["conv", "dw", "fc"])
def test_ties_tell_families_apart(op):
    """On exact ties each family's own rule matches (0 mismatches) and every other family's output differs."""
    rng = np.random.default_rng(11)
    geometry = dict(n=32, k=64, o=24) if op == "fc" else dict(GEOMETRIES[op][0], n=2)
    case = make_case(rng, op, shape=geometry, ties=True, per_channel=True, activation="NONE")
    outs = _check_all(case)
    assert outs["xnnpack_delegated"]
    for a in FAMILIES:
        for b in FAMILIES:
            if a != b:
                assert (qjax_output(case, a) != outs[b]).sum() > 0, f"{op}: the {a} rule also fits {b}"
    # the optimized kernels round twice: one half-up rounding of the 64-bit product (TFLITE_SINGLE_ROUNDING,
    # ruy's newest x86 kernels) is not what the wheel computes
    _, params = litert_gemm.requant_params("optimized", CODES[op], case["sx"], case["sw"], case["sy"], case["bias"].size)
    assert (np_output(case, np_single_half_up, *params) != outs["optimized"]).sum() > 0


def test_xnnpack_rounds_clamp_bounds_to_even():
    """RELU6 with ``sy = 4`` (``6 / sy = 1.5``) / RELU_N1_TO_1 with ``sy = 2``: XNNPACK's bound is the even one."""
    rng = np.random.default_rng(2)
    for act in ("RELU6", "RELU_N1_TO_1"):
        case = make_case(rng, "conv", shape=GEOMETRIES["conv"][0], clamp_ties=True, per_channel=False)
        case["activation"] = act
        case["sy"] = np.float32(4.0 if act == "RELU6" else 2.0)
        case["zy"] = 3 if act == "RELU6" else -2  # lrint(1.5 + 3) = 4 vs 3 + 2; lrint(-0.5 - 2) = -2 vs -2 - 1
        outs = _check_all(case)
        assert outs["xnnpack_delegated"]
        scale = rq.xnnpack_scales(case["sx"], case["sw"], case["sy"], 9)
        assert (np_output(case, np_xnnpack, scale, xnnpack_clamp=True) == outs["xnnpack"]).all()
        assert (np_output(case, np_xnnpack, scale) != outs["xnnpack"]).sum() > 0, act  # the builtin bounds


def test_optimized_depthwise_leaves_the_last_channels_to_the_reference_rule():
    """optimized_ops::Quantize: NEON half-up on 8-channel blocks, MultiplyByQuantizedMultiplier on C mod 8."""
    case = make_case(np.random.default_rng(4), "dw", shape=dict(GEOMETRIES["dw"][0], n=3), ties=True,
                     per_channel=True, activation="NONE")
    outs = _check_all(case)
    _, params = litert_gemm.requant_params("optimized", "DEPTHWISE_CONV_2D", case["sx"], case["sw"], case["sy"], 12)
    half_up, reference = np_output(case, np_half_up, *params), np_output(case, np_gemmlowp, *params)
    opt = outs["optimized"]
    assert (half_up[..., 8:] != opt[..., 8:]).sum() > 0 and (half_up[..., :8] == opt[..., :8]).all()
    assert (reference[..., :8] != opt[..., :8]).sum() > 0 and (reference[..., 8:] == opt[..., 8:]).all()


def test_optimized_per_tensor_fully_connected_multiplier_from_a_float_product():
    """GetQuantizedConvolutionMultipler: ``double(fl32(sx * sw)) / sy``; the double product misses these."""
    sx, sw, sy = np.float32(0.04141221), np.float32(0.0015918362), np.float32(0.27237007)
    acc = np.array([-39252, 336736], np.int32)  # found by search: the two multipliers round them apart
    case = dict(op="fc", x=np.zeros((1, 1), np.int8), w=np.ones((2, 1), np.int8), sx=sx, sw=np.array([sw]),
                sy=sy, zx=0, zy=0, bias=acc, activation="NONE")
    outs = _check_all(case)
    double_product = rq.fixed_point_multipliers(rq.effective_scales(sx, sw, sy, 2))
    assert (np_output(case, np_half_up, *double_product) != outs["optimized"]).all()


def test_reference_fully_connected_rounds_a_double_product():
    """``round(double(acc) * M)``: the double product's own rounding decides these ties (exact rounding fails)."""
    case = fc_rounding_case(99)
    outs = _check_all(case)
    acc = accumulators(case)
    m = rq.effective_scales(case["sx"], case["sw"], case["sy"], acc.shape[-1])
    exact = [[math.floor(abs(Fraction(int(a)) * Fraction(float(mc))) + Fraction(1, 2)) * int(np.sign(a))
              for a, mc in zip(row, m)] for row in acc]
    assert (np.clip(exact, -128, 127) != outs["reference"]).sum() > 0
    # and the fixed-point rules of the other kernels are not it either
    _, params = litert_gemm.requant_params("optimized", "FULLY_CONNECTED", case["sx"], case["sw"], case["sy"], acc.shape[-1])
    assert (np_output(case, np_gemmlowp, *params) != outs["reference"]).sum() > 0


def _c_round_double(a, m):
    p = float(a) * float(m)  # one double product, rounded to nearest even
    r = math.floor(abs(p))
    return int(math.copysign(r + (abs(p) - r >= 0.5), p)) if p else 0


def test_requantize_double_float_is_exact():
    """Every effective scale (2**-33 .. 2**12): C's ``round`` of the double product, and ``INT32_MIN`` where the
    int32 cast overflows (x86's ``cvttsd2si``)."""
    rng = np.random.default_rng(0)
    acc = np.concatenate([rng.integers(-2**31 + 1, 2**31, 600) >> rng.integers(0, 31, 600),
                          rng.integers(1, 60, 600) * rng.choice([-1, 1], 600)])
    m = np.exp(rng.uniform(np.log(2.0**-33), np.log(2.0**12), acc.size))
    near = slice(600, None)  # m = RN64((k + 1/2) / |acc|): products a hair off a tie
    m[near] = (rng.integers(0, 120, 600) + 0.5) / np.abs(acc[near])
    got = np.asarray(jax.jit(rq.requantize_double_float)(jnp.asarray(acc, jnp.int32), *rq.fc_reference_scales(m)))
    want = [_c_round_double(a, mc) for a, mc in zip(acc, m)]
    want = np.asarray([r if -2**31 <= r < 2**31 else -2**31 for r in want], np.int64)
    assert np.sum(want == -2**31) > 10 and np.sum((np.abs(want) > 256) & (want != -2**31)) > 10
    np.testing.assert_array_equal(got, want)


# one (op, family, per-channel) each: the in-graph derivations (fixed point, FC's float product and double)
# (CONV_2D's reference multipliers are DEPTHWISE_CONV_2D's derivation; left out for suite time)
TRACED = [("dw", "optimized", True), ("fc", "optimized", False), ("fc", "reference", True), ("conv", "xnnpack", False)]


@pytest.mark.parametrize("op,kernels,per_channel", TRACED)
def test_traced_scales_give_the_same_integers(op, kernels, per_channel):
    """Under jit with the scales traced, the multipliers are derived in the graph: the same outputs (XNNPACK
    refuses traced scales: its Prepare fails on scales >= 256, which needs the values)."""
    case = make_case(np.random.default_rng(7), op, shape=GEOMETRIES[op][0], per_channel=per_channel)
    sw = case["sw"] if per_channel else case["sw"].reshape(())
    w = case["w"]
    if op != "fc":
        w = w.transpose(1, 2, 3, 0) if op == "conv" else w.transpose(1, 2, 0, 3)
    axis = (0 if op == "fc" else 3) if per_channel else None
    wzp = np.zeros(np.shape(sw), np.int32)
    eng = LiteRT(kernels)

    @jax.jit
    def run(sx, sw, sy):
        x = qjax.QArray(case["x"], sx, np.int32(case["zx"]), qjax.qint8, check=False)
        wq = qjax.QArray(w, sw, wzp, qjax.qint8, axis=axis, check=False)
        if op == "fc":
            return eng.tfl_fully_connected(x, wq, case["bias"], sy, np.int32(case["zy"]), case["activation"]).values
        c = case["x"].shape[-1]
        pads = explicit_padding(case["padding"], case["x"].shape[1:3], case["kernel"], case["stride"],
                                case["dilation"])
        geom = ConvGeometry(case["stride"], pads, case["dilation"], c if op == "dw" else 1)
        fn = eng.tfl_depthwise_conv if op == "dw" else eng.tfl_conv
        return fn(x, wq, case["bias"], sy, np.int32(case["zy"]), geom, case["activation"]).values

    if kernels == "xnnpack":  # its Prepare-time range check needs the values
        with pytest.raises(EngineRefusal, match="traced scales"):
            run(case["sx"], sw, case["sy"])
        return
    np.testing.assert_array_equal(np.asarray(run(case["sx"], sw, case["sy"])), qjax_output(case, kernels))


# per-channel effective scales eff_c = sw_c (sx = sy = 1) times accumulators (the biases) reaching every regime:
# ties, |round| in (256, 2**31), the int32 cast's overflow, and an effective scale whose products all round to 0
FC_EFFS = (20.8, 1.0, 0.7, 3000.7, 2.0**-40)
FC_BIASES = (3, -2, 5, 2**31 - 1, -2**31 + 5, 10**8, -10**8, 2**30)
FC_TRACED = jax.jit(lambda x, sx, sw, sy, zy: LiteRT("reference").tfl_fully_connected(
    qjax.QArray(x, sx, np.int32(0), qjax.qint8, check=False),
    qjax.QArray(np.ones((len(FC_EFFS) * len(FC_BIASES), 4), np.int8), sw, np.zeros(sw.shape, np.int32), qjax.qint8,
                axis=0, check=False), np.tile(np.asarray(FC_BIASES, np.int32), len(FC_EFFS)), sy, zy).values)


@pytest.mark.parametrize("zy", [100, -128])
def test_fc_reference_effective_scales_above_one(zy):
    """The reference FULLY_CONNECTED's ``(int32) round(acc * eff)`` for every ``eff = sx*sw/sy`` (>= 1 too), eager
    and under plain jit with the scales traced: exact, including the int32 cast's overflow (``INT32_MIN``, then
    the zero point added wrapping: ``2**31 - 1 + 100`` gives -128 at ``eff = 1``)."""
    f32 = np.float32
    sw = np.repeat(np.asarray(FC_EFFS, f32), len(FC_BIASES))
    case = dict(op="fc", x=np.zeros((1, 4), np.int8), w=np.ones((sw.size, 4), np.int8), sx=f32(1), sw=sw,
                sy=f32(1), zx=0, zy=zy, bias=np.tile(np.asarray(FC_BIASES, np.int32), len(FC_EFFS)),
                activation="NONE")
    want = litert_runtime.run(build_model(case), [case["x"]], "reference")[0]
    np.testing.assert_array_equal(qjax_output(case, "reference"), want)
    np.testing.assert_array_equal(np.asarray(FC_TRACED(case["x"], f32(1), sw, f32(1), np.int32(zy))), want)


def test_xnnpack_requantization_scale_from_256_is_refused():
    """XNNPACK fails to prepare a requantization scale >= 256 (the interpreter raises); the builtin kernels run it."""
    f32 = np.float32
    for eff, refused in ((300.0, True), (255.0, False)):
        case = dict(op="conv", x=np.full((1, 1, 1, 4), 7, np.int8), w=np.ones((4, 1, 1, 4), np.int8), kernel=(1, 1),
                    stride=(1, 1), dilation=(1, 1), padding="VALID", sx=f32(1.0), sw=np.full(4, 1.0, f32),
                    sy=f32(1 / eff), zx=0, zy=0, bias=np.array([1, -1, 5, -30], np.int32), activation="NONE")
        model = build_model(case)
        if refused:
            with pytest.raises(RuntimeError):
                litert_runtime.run(model, [case["x"]], "xnnpack")
            with pytest.raises(EngineRefusal, match="256"):
                qjax_output(case, "xnnpack")
        else:
            assert litert_runtime.delegated_ops(model) == {0}
            np.testing.assert_array_equal(qjax_output(case, "xnnpack"), litert_runtime.run(model, [case["x"]], "xnnpack")[0])
        np.testing.assert_array_equal(qjax_output(case, "reference"), litert_runtime.run(model, [case["x"]], "reference")[0])


def test_refusals():
    eng = LiteRT("xnnpack")
    xfc = qjax.QArray(np.zeros((1, 4), np.int8), np.float32(1.0), np.int32(0), qjax.qint8)
    wfc = qjax.QArray(np.ones((2, 4), np.int8), np.float32(1.0), np.int32(0), qjax.qint8)
    xu = qjax.QArray(np.zeros((1, 4), np.uint8), np.float32(1.0), np.int32(0), qjax.quint8)
    with pytest.raises(ValueError, match="qint8"):
        eng.tfl_fully_connected(xu, wfc, None, np.float32(0.5), np.int32(0))
    with pytest.raises(ValueError, match="activation"):
        eng.tfl_fully_connected(xfc, wfc, None, np.float32(8.0), np.int32(0), "TANH")
    wasym = qjax.QArray(np.ones((2, 4), np.int8), np.float32(1.0), np.int32(3), qjax.qint8)
    with pytest.raises(ValueError, match="symmetric"):
        eng.tfl_fully_connected(xfc, wasym, None, np.float32(8.0), np.int32(0))


def _uint8_conv_model(sx, sw, sy, zy, w_i8, bias):
    """A per-tensor uint8 CONV_2D (TFLite's legacy quantization: uint8 weights with zero point 128)."""
    from ..tflite_models import TFLiteBuilder, schema
    b = TFLiteBuilder()
    o, kh, kw, c = w_i8.shape
    xi = b.tensor((1, 3, 3, c), np.uint8, scale=sx, zero_point=128)
    wi = b.tensor(w_i8.shape, np.uint8, scale=sw, zero_point=128, data=(w_i8.astype(np.int32) + 128).astype(np.uint8))
    bi = b.tensor((o,), np.int32, scale=np.float32(sx * sw), zero_point=0, data=bias)
    yi = b.tensor((1, 3 - kh + 1, 3 - kw + 1, o), np.uint8, scale=sy, zero_point=zy)
    opt = schema.Conv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW, opt.dilationHFactor, opt.dilationWFactor = schema.Padding.VALID, 1, 1, 1, 1
    b.op("CONV_2D", [xi, wi, bi], [yi], opt)
    return b.build([xi], [yi])


def test_gemmlowp_preset_is_litert_uint8_reference_conv():
    """The ``gemmlowp`` preset = LiteRT's uint8 CONV_2D reference kernel, multiplier from ``fl32(sx*sw)`` included
    (the exact double product, the preset's old rule, misses the crafted accumulators)."""
    from qjax._src.engines.hardware import PRESETS
    sx, sw, sy, zy = np.float32(0.04141221), np.float32(0.0015918362), np.float32(0.27237007), 128
    rng = np.random.default_rng(0)
    w = np.zeros((4, 1, 1, 3), np.int8)
    w[:2, 0, 0, 0] = 1  # channels 0, 1: acc = bias (+ x - 128 on channel 0 of the input)
    w[2:] = rng.integers(-127, 128, (2, 1, 1, 3))
    bias = np.array([-39252, 336736, 1000, -2000], np.int32)
    x = np.full((1, 3, 3, 3), 128, np.uint8)
    x[..., 1:] = rng.integers(0, 256, (1, 3, 3, 2))
    want = litert_runtime.run(_uint8_conv_model(sx, sw, sy, zy, w, bias), [x], "reference")[0]
    geom = ConvGeometry((1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    spec = PRESETS["gemmlowp"]
    hwio = w.transpose(1, 2, 3, 0)

    def conv(spec):
        bias_f = (bias.astype(np.float64) * np.float64(sx) * np.float64(sw)).astype(np.float32)
        return np.asarray(spec.conv(jnp.asarray(x), sx, np.int32(128), jnp.asarray(hwio), sw, np.int32(0), False,
                                    bias_f, sy, np.int32(zy), geom, False))

    np.testing.assert_array_equal(conv(spec), want)
    assert (conv(spec.replace(per_tensor_product="float64"))[..., 1] != want[..., 1]).all()


@pytest.mark.parametrize("ties,geometry", [
    (True, dict(n=2, hw=(3, 4), kernel=(3, 3), stride=(2, 2), padding="SAME", c=3, o=10)),
    (False, dict(n=1, hw=(4, 3), kernel=(2, 4), stride=(1, 3), padding="VALID", c=5, o=9))])
def test_transpose_conv_matches_interpreter(ties, geometry):
    """TRANSPOSE_CONV (int8): SAME with stride 2 (a crop), per channel, on ties; VALID with stride (1, 3) per tensor."""
    rng = np.random.default_rng(3)
    case = make_tconv_case(rng, ties=ties, shape=geometry, per_channel=geometry["o"] == 10)
    model = build_tconv_model(case)
    delegated = 0 in litert_runtime.delegated_ops(model)
    assert delegated  # so that the XNNPACK rule is the one checked
    want = {k: litert_runtime.run(model, [case["x"]], k)[0] for k in FAMILIES}
    for k in FAMILIES:
        got = qjax_tconv_output(case, k)
        np.testing.assert_array_equal(got, want[k], err_msg=f"TRANSPOSE_CONV {k} {geometry}")
        if ties:  # the data tells the families apart
            assert all((got != want[b]).any() for b in FAMILIES if b != k), k


def test_gemmlowp_preset_float_product_offline_equals_in_graph():
    """``per_tensor_product="float32"``: numpy's derive_layer and the traced twin give the same integers, and they
    differ from the exact double product on some scales."""
    from qjax._src.engines.hardware import PRESETS
    from qjax._src.requant.derive import derive_layer
    from qjax._src.requant.derive_traced import derive_layer_traced
    spec = PRESETS["gemmlowp"]
    rng = np.random.default_rng(1)
    sx, sw, sy = (np.exp(rng.uniform(-9, -1, 512)).astype(np.float32) for _ in range(3))
    traced = jax.jit(jax.vmap(lambda a, b, c: derive_layer_traced(a, b, c, None, 1, spec)[1:]))(sx, sw, sy)
    offline = np.array([derive_layer(a, b, c, None, 1, spec)[1:3] for a, b, c in zip(sx, sw, sy)])[..., 0]
    np.testing.assert_array_equal(np.stack([np.asarray(t)[:, 0] for t in traced], -1), offline)
    exact = np.array([derive_layer(a, b, c, None, 1, spec.replace(per_tensor_product="float64"))[1]
                      for a, b, c in zip(sx, sw, sy)])[:, 0]
    assert (exact != offline[:, 0]).sum() > 100
