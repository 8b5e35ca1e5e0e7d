"""LiteRT's ADD / SUB / MUL / CONCATENATION / QUANTIZE / DEQUANTIZE: qjax's three kernel families vs the interpreter.

Every case builds a one-op int8 ``.tflite`` (``tflite_models.TFLiteBuilder``), runs it with each op resolver
(``litert_runtime.run``) and asserts 0 mismatches with ``LiteRT(kernels).tfl_*``; the data include ties
(power-of-two scale ratios, half-integer quotients) and lengths that exercise the optimized kernels' NEON
bodies and scalar tails, and a test asserts the families' rules disagree on them (so the data can fail a
wrong rule).  Longer sweeps: ``scripts/check_litert_elementwise.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from ..tflite_models import TFLiteBuilder, schema  # noqa: E402

from qjax._src.dtypes import qint8, quint8  # noqa: E402
from qjax._src.engines.litert import LiteRT  # noqa: E402
from qjax._src.qops import tflite_elementwise as te  # noqa: E402
from qjax._src.interop import litert_runtime as lr  # noqa: E402
from qjax._src.qarray import QArray  # noqa: E402

ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
KERNELS = lr.KERNELS


# ---------------------------------------------------------------- single-op models

def binary_model(kind, shape_a, shape_b, qa, qb, qy, activation="NONE"):
    """A one-op ADD / SUB / MUL model on int8 inputs ``a``, ``b`` (``q* = (scale, zero_point)``)."""
    b = TFLiteBuilder()
    ta = b.tensor(shape_a, np.int8, scale=qa[0], zero_point=qa[1])
    tb = b.tensor(shape_b, np.int8, scale=qb[0], zero_point=qb[1])
    ty = b.tensor(np.broadcast_shapes(tuple(shape_a), tuple(shape_b)), np.int8, scale=qy[0], zero_point=qy[1])
    opt = {"ADD": schema.AddOptionsT, "SUB": schema.SubOptionsT, "MUL": schema.MulOptionsT}[kind]()
    opt.fusedActivationFunction = ACT[activation]
    b.op(kind, [ta, tb], [ty], opt, version=2)
    return b.build([ta, tb], [ty])


def concat_model(shapes, q, axis, activation="NONE"):
    b = TFLiteBuilder()
    ins = [b.tensor(s, np.int8, scale=q[0], zero_point=q[1]) for s in shapes]
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    ty = b.tensor(out_shape, np.int8, scale=q[0], zero_point=q[1])
    opt = schema.ConcatenationOptionsT()
    opt.axis, opt.fusedActivationFunction = axis, ACT[activation]
    b.op("CONCATENATION", ins, [ty], opt, version=2)
    return b.build(ins, [ty])


def convert_model(code, shape, in_dtype, out_dtype, q_in=None, q_out=None):
    """A one-op QUANTIZE / DEQUANTIZE model (``q_*`` None for a float32 side)."""
    b = TFLiteBuilder()
    ti = b.tensor(shape, in_dtype, **({} if q_in is None else {"scale": q_in[0], "zero_point": q_in[1]}))
    ty = b.tensor(shape, out_dtype, **({} if q_out is None else {"scale": q_out[0], "zero_point": q_out[1]}))
    opt = schema.QuantizeOptionsT() if code == "QUANTIZE" else schema.DequantizeOptionsT()
    b.op(code, [ti], [ty], opt, version=2)
    return b.build([ti], [ty])


# ---------------------------------------------------------------- qjax side

def _qa(v, q, dtype=qint8):
    return QArray(np.asarray(v), np.float32(q[0]), np.int32(q[1]), dtype)


def qjax_binary(kernels, kind, a, b, qa, qb, qy, activation="NONE"):
    f = getattr(LiteRT(kernels), {"ADD": "tfl_add", "SUB": "tfl_sub", "MUL": "tfl_mul"}[kind])
    return np.asarray(f(_qa(a, qa), _qa(b, qb), np.float32(qy[0]), qy[1], activation).values)


def run_binary(kind, a, b, qa, qb, qy, activation="NONE", kernels=KERNELS):
    """``{kernels: (litert, qjax)}`` output arrays; for "xnnpack" only when the delegate took the node."""
    model = binary_model(kind, a.shape, b.shape, qa, qb, qy, activation)
    out = {}
    for k in kernels:
        if k == "xnnpack" and 0 not in lr.delegated_ops(model):
            continue
        out[k] = (lr.run(model, [a, b], k)[0], qjax_binary(k, kind, a, b, qa, qb, qy, activation))
    return out


def mismatches(out) -> dict:
    return {k: int(np.sum(np.asarray(x).view(np.uint8) != np.asarray(y).view(np.uint8))) for k, (x, y) in out.items()}


def tie_binary_case(rng, kind, shape_a, shape_b, decimal: bool = False):
    """Tie-seeking qparams and random int8 operands.

    ``decimal=False``: power-of-two scale ratios (exact half-integer results, every fixed-point step
    exact but the last rounding); ``decimal=True``: scales that are multiples of 0.01 (as users pick
    them), whose real results hit half-integers too but whose multipliers are inexact — there the
    optimized ADD's NEON paths round differently from the scalar loop."""
    if decimal:
        qa = (np.float32(0.01 * rng.integers(1, 30)), int(rng.integers(-20, 21)))
        qb = (np.float32(0.01 * rng.integers(1, 30)), int(rng.integers(-20, 21)))
        sy = np.float32(0.01 * rng.integers(1, 30)) if kind != "MUL" else np.float32(qa[0] * qb[0] * rng.integers(3, 9))
        qy = (sy, int(rng.integers(-10, 11)))
        if kind != "MUL" and qy[0] < 0.5 * max(qa[0], qb[0]) / 128:
            qy = (np.float32(max(qa[0], qb[0])), qy[1])
    else:
        base = np.float32(2.0 ** -int(rng.integers(2, 7)) * rng.choice([1.0, 1.5, 1.25, 0.75]))
        qa = (base, int(rng.integers(-20, 21)))
        qb = (np.float32(base * 2.0 ** int(rng.integers(-2, 3))), int(rng.integers(-20, 21)))
        if kind == "MUL":
            qy = (np.float32(qa[0] * qb[0] * 2.0 ** int(rng.integers(1, 6))), int(rng.integers(-10, 11)))
        else:
            qy = (np.float32(max(qa[0], qb[0]) * 2.0 ** int(rng.integers(0, 4))), int(rng.integers(-10, 11)))
    a = rng.integers(-128, 128, shape_a).astype(np.int8)
    b = rng.integers(-128, 128, shape_b).astype(np.int8)
    return a, b, qa, qb, qy


# one output shape (one compilation per family): no broadcast (NEON body of 16s + tail), fivefold
# broadcasts with an inner run (y4 = 17, y4 = 68), one without (y4 = 1: AddScalarBroadcast on runs of 17),
# a generic broadcast (BroadcastAdd6DSlow)
SHAPES = [((2, 3, 4, 17), (2, 3, 4, 17)), ((2, 3, 4, 17), (17,)), ((2, 1, 4, 17), (1, 3, 4, 17)),
          ((2, 3, 4, 1), (2, 3, 4, 17)), ((2, 1, 4, 1), (1, 3, 1, 17))]


@pytest.mark.parametrize("kind", ["ADD", "SUB", "MUL"])
def test_binary_ties_and_broadcasts(kind):
    rng = np.random.default_rng({"ADD": 1, "SUB": 2, "MUL": 3}[kind])
    total = {}
    for i, (sa, sb) in enumerate(SHAPES):
        for decimal in (False, True):
            a, b, qa, qb, qy = tie_binary_case(rng, kind, sa, sb, decimal)
            act = list(ACT)[(2 * i + decimal) % 4]  # every activation over the cases (one model each: suite time)
            for k, v in mismatches(run_binary(kind, a, b, qa, qb, qy, act)).items():
                total[k] = total.get(k, 0) + v
    assert total == {k: 0 for k in KERNELS}  # every family ran (XNNPACK took every node)


def test_binary_data_separates_the_families():
    """On the tie-seeking data the families' rules differ (so the tests can fail): reference vs XNNPACK on
    ADD and MUL, and reference vs optimized on ADD (the NEON paths, decimal scales) — SUB is one rule."""
    rng = np.random.default_rng(7)
    diff = {}
    for kind in ("ADD", "SUB", "MUL"):
        for decimal in (False, True):
            for sa, sb in SHAPES[:2]:
                a, b, qa, qb, qy = tie_binary_case(rng, kind, sa, sb, decimal)
                outs = {k: qjax_binary(k, kind, a, b, qa, qb, qy) for k in KERNELS}
                for k in ("optimized", "xnnpack"):
                    diff[kind, k] = diff.get((kind, k), 0) + int(np.sum(outs["reference"] != outs[k]))
    assert diff["ADD", "xnnpack"] > 0 and diff["MUL", "xnnpack"] > 0 and diff["SUB", "xnnpack"] > 0
    assert diff["ADD", "optimized"] > 0
    assert diff["SUB", "optimized"] == 0 and diff["MUL", "optimized"] == 0


def _path_separating_add(rng, sa, sb, tries: int = 60):
    """Decimal tie-seeking ADD qparams (searched on the host with qjax's rules) under which, on every optimized
    NEON path the shapes use (``PATH_ELEMENTWISE`` / ``PATH_SCALAR_BROADCAST``), the optimized output differs
    from the scalar loop's somewhere: a case the interpreter then checks path by path."""
    paths = te.optimized_binary_paths(sa, sb, scalar_broadcast_block=8)
    used = [p for p in (te.PATH_ELEMENTWISE, te.PATH_SCALAR_BROADCAST) if np.any(paths == p)]
    for _ in range(tries):
        a, b, qa, qb, qy = tie_binary_case(rng, "ADD", sa, sb, decimal=True)
        diff = qjax_binary("optimized", "ADD", a, b, qa, qb, qy) != qjax_binary("reference", "ADD", a, b, qa, qb, qy)
        if all(np.any(diff & (paths == p)) for p in used):
            return (a, b, qa, qb, qy), used
    raise AssertionError(f"no decimal qparams separate the paths {used} of {sa} + {sb}")


@pytest.mark.parametrize("shapes", SHAPES[:4])
def test_add_optimized_paths_separated_per_shape(shapes):
    """Per broadcast shape, data on which each NEON path's rounding differs from the scalar loop's (so a wrong
    path assignment fails), and the interpreter agrees with every family."""
    (a, b, qa, qb, qy), used = _path_separating_add(np.random.default_rng(sum(map(sum, shapes))), *shapes)
    assert used  # each of these shapes has a NEON path
    out = run_binary("ADD", a, b, qa, qb, qy)
    assert mismatches(out) == {k: 0 for k in out}


def test_mul_xnnpack_range_is_refused():
    """XNNPACK takes MUL only for sa*sb/sy in [2**-16, 2**8): outside, the delegate leaves the node to the optimized
    kernels (not delegated), and LiteRT("xnnpack") refuses it."""
    from qjax._src.engines.base import EngineRefusal

    rng = np.random.default_rng(15)
    a = rng.integers(-128, 128, (2, 17)).astype(np.int8)
    for qy, delegated in (((1 / 300, 0), False), ((2.0**17, 0), False), ((1 / 200, 0), True), ((2.0**15, 0), True)):
        q = (1.0, 0)
        model = binary_model("MUL", a.shape, a.shape, q, q, qy)
        assert (0 in lr.delegated_ops(model)) == delegated, qy
        if delegated:
            np.testing.assert_array_equal(qjax_binary("xnnpack", "MUL", a, a, q, q, qy), lr.run(model, [a, a], "xnnpack")[0])
            continue
        with pytest.raises(EngineRefusal, match="XNNPACK"):
            qjax_binary("xnnpack", "MUL", a, a, q, q, qy)
        np.testing.assert_array_equal(qjax_binary("optimized", "MUL", a, a, q, q, qy), lr.run(model, [a, a], "xnnpack")[0])


@settings(deadline=None, max_examples=6, derandomize=True)
@given(kind=st.sampled_from(["ADD", "SUB", "MUL"]), shapes=st.sampled_from(SHAPES),
       sa=st.floats(0.002, 0.5), sb=st.floats(0.002, 0.5), sy=st.floats(0.004, 1.0),
       za=st.integers(-128, 127), zb=st.integers(-128, 127), zy=st.integers(-128, 127),
       act=st.sampled_from(list(ACT)), seed=st.integers(0, 2**16))
def test_binary_hypothesis(kind, shapes, sa, sb, sy, za, zb, zy, act, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, shapes[0]).astype(np.int8)
    b = rng.integers(-128, 128, shapes[1]).astype(np.int8)
    if kind == "MUL":  # sa*sb/sy in [1/20, 20]: past 1 the optimized NEON bodies' int16 saturation / wrap shows
        sy = sa * sb * (0.05 + 20 * sy)
    out = run_binary(kind, a, b, (sa, za), (sb, zb), (sy, zy), act)
    assert mismatches(out) == {k: 0 for k in out}


def test_concat():
    rng = np.random.default_rng(4)
    q = (np.float32(0.05), -3)
    shapes = [(1, 2, 3, 4), (1, 2, 3, 5), (1, 2, 3, 1)]
    xs = [rng.integers(-128, 128, s).astype(np.int8) for s in shapes]
    for axis in (3, -1):
        model = concat_model(shapes, q, axis)
        for k in KERNELS:
            got = LiteRT(k).tfl_concat([_qa(x, q) for x in xs], axis, q[0], q[1])
            np.testing.assert_array_equal(np.asarray(got.values), lr.run(model, xs, k)[0])
    # XNNPACK takes a fused activation and ignores it; the builtin kernels refuse the model
    model = concat_model(shapes, q, 3, "RELU")
    assert 0 in lr.delegated_ops(model)
    got = LiteRT("xnnpack").tfl_concat([_qa(x, q) for x in xs], 3, q[0], q[1], "RELU")
    np.testing.assert_array_equal(np.asarray(got.values), lr.run(model, xs, "xnnpack")[0])
    with pytest.raises(Exception, match="activation"):
        LiteRT("reference").tfl_concat([_qa(x, q) for x in xs], 3, q[0], q[1], "RELU")
    with pytest.raises(Exception, match="equal qparams"):
        LiteRT("optimized").tfl_concat([_qa(xs[0], (0.1, 0)), _qa(xs[1], q)], 3, q[0], q[1])


def _quantize_inputs(rng, shape, s):
    """Half-integer multiples of the scale (ties of x/s), near-ties and plain random floats."""
    k = rng.integers(-300, 300, shape) + 0.5
    exact = (k * np.float64(s)).astype(np.float32)
    near = np.nextafter(exact, np.where(rng.random(shape) < 0.5, np.inf, -np.inf).astype(np.float32))
    plain = rng.normal(0, 40 * float(s), shape).astype(np.float32)
    pick = rng.integers(0, 3, shape)
    return np.where(pick == 0, exact, np.where(pick == 1, near, plain)).astype(np.float32)


# 39 elements: NEON bodies of 8 / 16 and scalar tails
QUANT_CASES = [((3, 13), np.int8, (0.05, 3)), ((3, 13), np.int8, (2.0**-4, -7)), ((3, 13), np.uint8, (0.375, 130))]


@pytest.mark.parametrize("shape,dtype,q", QUANT_CASES)
def test_quantize_dequantize(shape, dtype, q):
    rng = np.random.default_rng(hash((shape, q)) % 2**32)
    name = np.dtype(dtype).name
    x = _quantize_inputs(rng, shape, q[0])
    qmodel = convert_model("QUANTIZE", shape, np.float32, dtype, None, q)
    dmodel = convert_model("DEQUANTIZE", shape, dtype, np.float32, q, None)
    v = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, shape).astype(dtype)
    for k in KERNELS:
        got = LiteRT(k).tfl_quantize(x, np.float32(q[0]), q[1], name)
        np.testing.assert_array_equal(np.asarray(got.values), lr.run(qmodel, [x], k)[0], err_msg=k)
        deq = LiteRT(k).tfl_dequantize(_qa(v, q, qint8 if dtype == np.int8 else quint8))
        np.testing.assert_array_equal(np.asarray(deq).view(np.uint32), lr.run(dmodel, [v], k)[0].view(np.uint32),
                                      err_msg=k)


REQUANT_CASES = [(np.int8, np.int8, (0.0625, 1), (0.25, 0)), (np.uint8, np.uint8, (0.1, 128), (0.0375, 120)),
                 (np.int8, np.uint8, (0.05, 0), (0.2, 128)), (np.uint8, np.int8, (0.3, 131), (0.15, -2))]


@pytest.mark.parametrize("din,dout,qi,qo", REQUANT_CASES)
def test_requantize(din, dout, qi, qo):
    rng = np.random.default_rng(5)
    shape = (3, 13)
    model = convert_model("QUANTIZE", shape, din, dout, qi, qo)
    v = rng.integers(np.iinfo(din).min, np.iinfo(din).max + 1, shape).astype(din)
    x = _qa(v, qi, qint8 if din == np.int8 else quint8)
    delegated = 0 in lr.delegated_ops(model)
    for k in KERNELS:
        rule = k if (k != "xnnpack" or delegated) else "optimized"
        got = LiteRT(rule).tfl_requantize(x, np.float32(qo[0]), qo[1], np.dtype(dout).name)
        np.testing.assert_array_equal(np.asarray(got.values), lr.run(model, [v], k)[0], err_msg=k)


@pytest.mark.parametrize("activation,qy,builtin,xnn", [("RELU6", (4.0, 1), (1, 3), (1, 2)),
                                                     ("RELU_N1_TO_1", (2.0, 0), (-1, 1), (0, 0))])
def test_xnnpack_activation_bounds_round_ties_to_even(activation, qy, builtin, xnn):
    """6/4 + 1 = 2.5 and ±1/2 + 0: XNNPACK's bound (ties to even, after adding the zero point) is not the
    builtin kernels' (half away, before it); both rules are checked against their interpreters, and the
    interpreters' outputs reach the bounds."""
    rng = np.random.default_rng(9)
    a = rng.integers(-128, 128, (2, 3, 4, 17)).astype(np.int8)
    b = rng.integers(-128, 128, (2, 3, 4, 17)).astype(np.int8)
    out = run_binary("ADD", a, b, (1.0, 0), (1.0, 3), qy, activation)
    assert set(out) == set(KERNELS)
    assert mismatches(out) == {k: 0 for k in KERNELS}
    for k, bounds in (("reference", builtin), ("optimized", builtin), ("xnnpack", xnn)):
        assert (int(out[k][0].min()), int(out[k][0].max())) == bounds


@pytest.mark.parametrize("kernels", ["optimized", "xnnpack"])  # reference shares optimized's derivations
def test_jit(kernels):
    """Under a plain jit (QArray qparams are traced there) the ops without Prepare-time checks derive their
    parameters in the graph (equal to the host's); those with checks refuse, saying what to do; inside
    ``jax.ensure_compile_time_eval()`` every op runs, as eager."""
    import jax

    from qjax._src.engines.base import EngineRefusal

    rng = np.random.default_rng(3)
    q, qb = (np.float32(0.05), 3), (np.float32(0.07), -5)
    a = rng.integers(-128, 128, (2, 3, 4, 17)).astype(np.int8)
    b = rng.integers(-128, 128, (17,)).astype(np.int8)
    x = _quantize_inputs(rng, (3, 13), q[0])
    e = LiteRT(kernels)
    checked = {"ADD": lambda qu, qv: e.tfl_add(qu, qv, np.float32(0.1), 2, "RELU"),
               "CONCATENATION": lambda qu, qv: e.tfl_concat([qu, qu], 0, q[0], q[1])}
    if kernels == "xnnpack":
        checked["MUL"] = lambda qu, qv: e.tfl_mul(qu, qv, np.float32(0.01), 2, "RELU6")
        checked["QUANTIZE (requantize)"] = lambda qu, qv: e.tfl_requantize(qu, np.float32(0.03), -4)

    def unchecked(u, v, xf):
        qu, qv = _qa_traced(u, q), _qa_traced(v, qb)
        mul = u if kernels == "xnnpack" else e.tfl_mul(qu, qv, np.float32(0.01), 2, "RELU6").values
        return mul, e.tfl_quantize(xf, q[0], q[1]).values, e.tfl_dequantize(qu)

    for t_, h in zip(jax.jit(unchecked)(a, b, x), unchecked(a, b, x)):
        np.testing.assert_array_equal(np.asarray(t_).view(np.uint8), np.asarray(h).view(np.uint8))
    for op, fn in checked.items():
        with pytest.raises(EngineRefusal, match="ensure_compile_time_eval"):
            jax.jit(lambda u, v: fn(_qa_traced(u, q), _qa_traced(v, qb)).values)(a, b)
        if op == "CONCATENATION":  # a byte copy (suite time)
            continue

        def static(u, v):
            with jax.ensure_compile_time_eval():
                return fn(_qa_traced(u, q), _qa_traced(v, qb)).values

        np.testing.assert_array_equal(np.asarray(jax.jit(static)(a, b)), np.asarray(static(a, b)), err_msg=op)


def _qa_traced(v, q):
    return QArray(v, np.float32(q[0]), np.int32(q[1]), qint8, check=False)


def test_mul_optimized_neon_body_wraps_in_int16():
    """sa*sb/sy = 2.5 and zy = 100: the optimized MUL's NEON bodies saturate to int16 and wrap when adding the
    zero point (large products come out as -128), the scalar tail and the reference kernels clamp to 127."""
    rng = np.random.default_rng(12)
    q, qy = (np.float32(0.1), 0), (np.float32(0.004), 100)
    total, diff = {k: 0 for k in KERNELS}, 0
    for sa, sb in (SHAPES[0], SHAPES[3]):
        a = rng.integers(-128, 128, sa).astype(np.int8)
        b = rng.integers(-128, 128, sb).astype(np.int8)
        out = run_binary("MUL", a, b, q, q, qy)
        for k, v in mismatches(out).items():
            total[k] += v
        diff += int(np.sum(out["optimized"][0] != out["reference"][0]))
    assert total == {k: 0 for k in KERNELS} and diff > 0


def test_add_optimized_neon_body_truncates_to_int16():
    """sa/sy = sb/sy = 200: sums beyond 2**15 — the optimized ADD's NEON bodies narrow with vmovn (wrapping),
    the scalar loop and the other families clamp."""
    rng = np.random.default_rng(13)
    q, qy = (np.float32(1.0), 0), (np.float32(0.005), 5)
    total, diff = {k: 0 for k in KERNELS}, 0
    for sa, sb in (SHAPES[0], SHAPES[3]):
        a = rng.integers(-128, 128, sa).astype(np.int8)
        b = rng.integers(-128, 128, sb).astype(np.int8)
        out = run_binary("ADD", a, b, q, q, qy)
        for k, v in mismatches(out).items():
            total[k] += v
        diff += int(np.sum(out["optimized"][0] != out["reference"][0]))
    assert total == {k: 0 for k in KERNELS} and diff > 0


def test_quantize_special_values():
    """inf, NaN, values past int32: x86's float->int conversions give INT32_MIN, which the zero point then
    shifts (builtin kernels); XNNPACK clamps at 32767 first (NaN included) and saturates."""
    specials = np.array([1e10, -1e10, np.inf, -np.inf, np.nan, -np.nan, 3e38, -3e38, 2.2e9, -2.2e9, 1e-45, -0.0, 5e4],
                        np.float32)
    x = np.stack([specials, np.roll(specials, 5), np.roll(specials, 9)])  # NEON body and tail positions
    for dtype, q in ((np.int8, (0.05, 3)), (np.int8, (0.05, -7)), (np.uint8, (0.1, 130))):
        model = convert_model("QUANTIZE", x.shape, np.float32, dtype, None, q)
        for k in KERNELS:
            got = LiteRT(k).tfl_quantize(x, np.float32(q[0]), q[1], np.dtype(dtype).name)
            np.testing.assert_array_equal(np.asarray(got.values), lr.run(model, [x], k)[0], err_msg=k)


def test_xnnpack_leaves_out_of_range_scales_to_the_builtin_kernels():
    """ADD with sa/sy = 300 (XNNPACK's range is [2**-10, 2**8)): not delegated, so the "xnnpack" model runs the
    optimized kernel there; LiteRT("xnnpack") refuses such a node and LiteRT("optimized") reproduces it."""
    from qjax._src.engines.base import EngineRefusal

    rng = np.random.default_rng(14)
    a = rng.integers(-128, 128, (2, 3, 4, 17)).astype(np.int8)
    b = rng.integers(-128, 128, (2, 3, 4, 17)).astype(np.int8)
    qa, qb, qy = (3.0, 0), (0.01, 1), (0.01, 2)
    model = binary_model("ADD", a.shape, b.shape, qa, qb, qy)
    assert 0 not in lr.delegated_ops(model)
    with pytest.raises(EngineRefusal, match="XNNPACK"):
        qjax_binary("xnnpack", "ADD", a, b, qa, qb, qy)
    want = lr.run(model, [a, b], "xnnpack")[0]
    np.testing.assert_array_equal(qjax_binary("optimized", "ADD", a, b, qa, qb, qy), want)
