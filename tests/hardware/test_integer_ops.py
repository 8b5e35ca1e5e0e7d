"""Integer-only layer arithmetic vs exact Python-integer references of the TFLite / gemmlowp formulas."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qjax import hardware as hw
from qjax._src.checks import QuantizationError
from qjax._src.dtypes import quint8
from qjax._src.qarray import QArray
from qjax._src.rounding import MODES
from tests.fixed_point_ref import py_rdpot, py_round, py_srdhm

DETERMINISTIC = [m for m in MODES if m != "stochastic"]


def wrap(v, bits=32):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def py_requant(acc, bq, m0, shift, zy, spec, relu):
    a = wrap(acc + bq)
    if spec.accumulator_bits < 32:
        b = spec.accumulator_bits
        a = wrap(a, b) if spec.accumulator_overflow == "wrap" else min(max(a, -(2 ** (b - 1))), 2 ** (b - 1) - 1)
    if spec.multiplier == "gemmlowp":
        h = py_srdhm(wrap(a << max(shift, 0)), m0)
        right = max(-shift, 0)
        r = py_rdpot(h, right) if spec.requant_rounding == "half_away" else py_round(Fraction(h, 2**right),
                                                                                     spec.requant_rounding)
    elif spec.multiplier == "single":
        r = py_round(Fraction(a * m0, 2 ** (31 - shift)), spec.requant_rounding)
    else:
        r = py_round(Fraction(a * m0, 2**shift), spec.requant_rounding)
    lo, hi = spec.output_range or (0, 255)
    if relu:
        lo = max(lo, zy)
    return min(max(wrap(r) + zy, lo), hi)


specs = st.builds(
    lambda style, bits, mode, acc, ovf, out: hw.HardwareSpec(
        "t", multiplier=style, multiplier_bits=bits, shift_range=(0, 62) if style == "dyadic" else (-31, 30),
        requant_rounding="half_away" if (style == "gemmlowp" and mode == "stochastic") else mode,
        accumulator_bits=acc, accumulator_overflow=ovf, output_range=out),
    st.sampled_from(["gemmlowp", "single", "dyadic"]), st.integers(4, 31), st.sampled_from(DETERMINISTIC),
    st.sampled_from([32, 32, 24, 16]), st.sampled_from(["wrap", "saturate"]),
    st.sampled_from([None, None, (0, 127), (3, 250)]))


@settings(max_examples=80)
@given(spec=specs, acc=st.lists(st.integers(-(2**26), 2**26), min_size=6, max_size=6),
       bias=st.lists(st.integers(-(2**20), 2**20), min_size=6, max_size=6),
       m=st.lists(st.floats(2**-20, 3.0), min_size=6, max_size=6), zy=st.integers(0, 255), relu=st.booleans())
def test_requantize_integer_matches_python_reference(spec, acc, bias, m, zy, relu):
    """Every style, bits, rounding mode, accumulator width and clamp: 0 mismatches with exact integers."""
    m0, shift, _ = hw.derive_multiplier(np.array(m), spec)
    got = hw.requantize_integer(jnp.asarray(acc, jnp.int32)[None], jnp.asarray(bias, jnp.int32), jnp.asarray(m0),
                                jnp.asarray(shift), zy, spec, relu)
    want = [py_requant(a, b, int(mm), int(s), zy, spec, relu) for a, b, mm, s in zip(acc, bias, m0, shift)]
    assert np.asarray(got)[0].tolist() == want


@settings(max_examples=60)
@given(m=st.floats(2**-24, 8.0), bits=st.integers(4, 31), style=st.sampled_from(["gemmlowp", "single", "dyadic"]))
def test_derived_multiplier_is_within_half_a_step(m, bits, style):
    """m0 keeps ``bits`` significant bits: |m0*2^-n - M| <= M * 2^-bits (round to nearest)."""
    spec = hw.HardwareSpec("t", multiplier=style, multiplier_bits=bits,
                           shift_range=(0, 62) if style == "dyadic" else (-31, 30))
    m0, shift, lost = hw.derive_multiplier(m, spec)
    assert lost == 0
    n = int(shift[0]) if style == "dyadic" else 31 - int(shift[0])
    eff = Fraction(int(m0[0]), 2**n)
    assert abs(eff - Fraction(m)) <= Fraction(m) * Fraction(1, 2**bits) + Fraction(1, 2**62)
    if style != "dyadic":
        assert 2**30 <= int(m0[0]) < 2**31 and int(m0[0]) % 2 ** (31 - bits) == 0
    else:
        assert 2 ** (bits - 1) <= int(m0[0]) < 2**bits


def test_shift_limits_flush_or_raise():
    spec = hw.HardwareSpec("t", multiplier="single", shift_range=(-8, 0))
    m0, shift, lost = hw.derive_multiplier([2.0**-10, 0.5], spec)
    assert lost == 1 and shift.tolist() == [-8, 0]
    # 2**-10 = 2**30 * 2**(-9 - 31): one right shift more than allowed moves into m0 (exact here)
    assert int(m0[0]) == 2**29 and int(m0[0]) * 2.0 ** (-8 - 31) == 2.0**-10
    with pytest.raises(QuantizationError, match="shift_range"):
        hw.derive_multiplier(4.0, spec)
    dy = hw.HardwareSpec("t", multiplier="dyadic", multiplier_bits=8, shift_range=(0, 10))
    m0, e, lost = hw.derive_multiplier(2.0**-20, dy)
    assert lost == 1 and e.tolist() == [10] and m0.tolist() == [0]  # flushed: the layer outputs zy


def test_gemmlowp_known_vector():
    """gemmlowp doc/quantization.md style: M = 0.3 -> M0 = round(0.6 * 2**31), shift -1."""
    m0, shift, _ = hw.derive_multiplier(0.3, hw.get_spec("gemmlowp"))
    assert int(m0[0]) == 1288490189 and int(shift[0]) == -1
    acc = jnp.asarray([[100, -100, 5, -5, 1000]], jnp.int32)
    got = hw.requantize_integer(acc, None, m0, shift, 0, hw.get_spec("gemmlowp").replace(output_range=None), False)
    # 100*0.3 = 30; 5*0.3 = 1.5 -> 2 (half away); 1000*0.3 = 300 -> clamp 255; negatives clamp to 0
    assert np.asarray(got).tolist() == [[30, 0, 2, 0, 255]]


def test_narrow_accumulator():
    a = jnp.asarray([2**15, -(2**15) - 1, 70000, 5], jnp.int32)
    assert hw.narrow_accumulator(a, 16, "wrap").tolist() == [-(2**15), 2**15 - 1, 70000 - 65536, 5]
    assert hw.narrow_accumulator(a, 16, "saturate").tolist() == [2**15 - 1, -(2**15), 2**15 - 1, 5]


def py_add(qa, qb, za, zb, p, zy, relu):
    """TFLite reference_ops::AddElementwise (uint8), gemmlowp multipliers."""
    def mul(x, m0, s):  # MultiplyByQuantizedMultiplier
        return py_rdpot(py_srdhm(wrap(x << max(s, 0)), m0), max(-s, 0))
    a = mul((qa - za) << 20, int(p["m0_a"]), int(p["shift_a"]))
    b = mul((qb - zb) << 20, int(p["m0_b"]), int(p["shift_b"]))
    r = mul(a + b, int(p["m0"]), int(p["shift"])) + zy
    return min(max(r, zy if relu else 0), 255)


@settings(max_examples=40)
@given(qa=st.lists(st.integers(0, 255), min_size=8, max_size=8), qb=st.lists(st.integers(0, 255), min_size=8, max_size=8),
       sa=st.floats(1e-3, 1.0), sb=st.floats(1e-3, 1.0), sy=st.floats(1e-3, 2.0), za=st.integers(0, 255),
       zb=st.integers(0, 255), zy=st.integers(0, 255), relu=st.booleans())
def test_add_integer_matches_tflite_reference(qa, qb, sa, sb, sy, za, zb, zy, relu):
    from qjax._src.requant.derive import derive_add

    spec = hw.get_spec("gemmlowp")
    a = QArray(jnp.asarray(qa, jnp.uint8), np.float32(sa), np.int32(za), quint8)
    b = QArray(jnp.asarray(qb, jnp.uint8), np.float32(sb), np.int32(zb), quint8)
    derived, _ = derive_add(np.float32(sa), np.float32(sb), np.float32(sy), spec, "add")
    p = dict(derived, scale=jnp.float32(sy), zero_point=jnp.int32(zy))
    got = hw.add_integer(a, b, p, spec=spec, relu=relu)
    want = [py_add(x, y, za, zb, p, zy, relu) for x, y in zip(qa, qb)]
    assert np.asarray(got.values).tolist() == want


@pytest.mark.parametrize("mode", MODES)
def test_round_offline_modes(mode):
    v = np.array([2.5, -2.5, 1.5, -0.5, 0.25, -1.75, 3.0])
    rng = np.random.default_rng(0)
    got = hw.round_offline(v, mode, rng)
    if mode == "stochastic":
        assert np.all((got == np.floor(v)) | (got == np.ceil(v)))
        return
    assert got.tolist() == [py_round(Fraction(x), mode) for x in v]


def test_stochastic_requant_needs_a_key_and_is_deterministic_with_one():
    spec = hw.HardwareSpec("t", multiplier="single", requant_rounding="stochastic")
    m0, shift, _ = hw.derive_multiplier([0.37] * 4096, spec)
    acc = jnp.full((1, 4096), 7, jnp.int32)
    with pytest.raises(ValueError, match="key"):
        hw.requantize_integer(acc, None, m0, shift, 0, spec)
    k = jax.random.PRNGKey(1)
    r1 = np.asarray(hw.requantize_integer(acc, None, m0, shift, 0, spec, key=k))
    r2 = np.asarray(hw.requantize_integer(acc, None, m0, shift, 0, spec, key=k))
    assert (r1 == r2).all() and set(np.unique(r1)) == {2, 3}
    assert abs(r1.mean() - 7 * 0.37) < 0.05  # unbiased: E = 2.59


def test_spec_validation_and_parsing():
    with pytest.raises(ValueError, match="multiplier_bits"):
        hw.HardwareSpec(multiplier_bits=40)
    with pytest.raises(ValueError, match="requant_rounding"):
        hw.HardwareSpec(requant_rounding="nearest")
    with pytest.raises(ValueError, match="stochastically"):
        hw.HardwareSpec(requant_rounding="stochastic")
    with pytest.raises(ValueError, match="not a preset"):
        hw.get_spec("tpu")
    with pytest.raises(ValueError, match="unknown spec option"):
        hw.get_spec("gemmlowp:width=3")
    s = hw.get_spec("gemmlowp:bits=16,acc=24,overflow=saturate,out=0..127,bias=half_even")
    assert (s.multiplier_bits, s.accumulator_bits, s.accumulator_overflow, s.output_range, s.bias_rounding) == \
        (16, 24, "saturate", (0, 127), "half_even")
    c = hw.chain(hw.multiplier("dyadic", bits=12, shift_range=(0, 40)), hw.accumulator(16, "wrap"), hw.bias("floor"))
    assert (c.multiplier, c.multiplier_bits, c.accumulator_bits, c.bias_rounding) == ("dyadic", 12, 16, "floor")
    assert hash(c) == hash(hw.chain(hw.multiplier("dyadic", bits=12, shift_range=(0, 40)), hw.accumulator(16, "wrap"),
                                    hw.bias("floor")))
    for name, spec in hw.PRESETS.items():
        assert hw.get_spec(name) is spec


@settings(max_examples=80)
@given(m=st.floats(1e-4, 1e-2), style=st.sampled_from(["dyadic", "gemmlowp"]), bits=st.integers(8, 31))
def test_flushed_multiplier_is_rounded_once(m, style, bits):
    """A multiplier needing more right shift than allowed is round(m * 2**n_max) — one rounding, from m."""
    spec = hw.HardwareSpec("t", multiplier=style, multiplier_bits=bits,
                           shift_range=(0, 20) if style == "dyadic" else (-8, 0))
    m0, shift, lost = hw.derive_multiplier(m, spec)
    n_max = 20 if style == "dyadic" else 31 + 8
    full, _, _ = hw.derive_multiplier(m, spec.replace(shift_range=(0, 62) if style == "dyadic" else (-31, 30)))
    need = (int(np.floor(np.log2(m))) + 1)  # m = q * 2**need, q in [0.5, 1)
    n_needed = bits - need if style == "dyadic" else 31 - need
    if n_needed <= n_max:
        assert lost == 0 and int(m0[0]) == int(full[0])
        return
    assert lost == 1
    k = 0 if style == "dyadic" else max(31 - bits - (n_needed - n_max), 0)
    want = int(Fraction(m) * 2 ** (n_max - k) + Fraction(1, 2)) * 2**k  # floor(x + 1/2), exact
    assert int(m0[0]) == want


def test_saturating_accumulator_adds_bias_without_wrapping():
    """acc + bias beyond int32 saturates positive (a wrapped int32 sum would turn negative and clamp to 0)."""
    spec = hw.HardwareSpec("t", multiplier="single", accumulator_bits=24, accumulator_overflow="saturate")
    acc = jnp.asarray([[2**31 - 100]], jnp.int32)
    m0, shift = jnp.asarray([2**30], jnp.int32), jnp.asarray([-19], jnp.int32)  # M = 2**-20
    out = hw.requantize_integer(acc, jnp.asarray([200], jnp.int32), m0, shift, 0, spec)
    assert int(out[0, 0]) == 8  # (2**23 - 1) * 2**-20 = 7.99999 -> 8


def test_spec_arguments_are_normalised_and_named():
    s = hw.HardwareSpec(shift_range=[-20, 20], output_range=np.array([0, 127]), multiplier_bits=np.int64(16))
    assert s.shift_range == (-20, 20) and s.output_range == (0, 127) and s.multiplier_bits == 16
    hash(s)
    with pytest.raises(ValueError, match="shift_range"):
        hw.HardwareSpec(shift_range=5)
    with pytest.raises(ValueError, match="output_range"):
        hw.HardwareSpec(output_range=(0,))
    with pytest.raises(ValueError, match="multiplier_bits"):
        hw.HardwareSpec(multiplier_bits="16")
    with pytest.raises(ValueError, match="shift=3"):
        hw.get_spec("gemmlowp:shift=3")
    with pytest.raises(ValueError, match="bits=x"):
        hw.get_spec("gemmlowp:bits=x")
