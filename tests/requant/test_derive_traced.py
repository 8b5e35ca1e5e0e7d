"""The in-graph derivation (qjax._src.requant.derive_traced) vs the offline numpy float64 one: 0 mismatches.

Inputs: random float32 scales over a wide exponent range (subnormals included), multipliers
constructed to land exactly on or next to a rounding tie of ``bits`` bits (where float64's own
rounding decides the result: the double rounding), multipliers next to powers of two (the carry),
biases next to half-integers and integers, at the int32 boundary, zero, subnormal, negative;
every preset, custom specs (bits 2..31, narrow shift ranges that flush or saturate), every
deterministic bias rounding, under jit and vmap.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qjax._src.checks import QuantizationError
from qjax.hardware import PRESETS, HardwareSpec, derive_layer, derive_multiplier, round_offline
from qjax._src.requant import derive_traced as dt

try:  # the offline ADD derivation as a public function (qjax._src.requant.derive), where this checkout has it
    from qjax._src.requant.derive import derive_add as numpy_derive_add
except ImportError:
    numpy_derive_add = None

BIAS_MODES = ("half_even", "half_away", "half_up", "half_down", "floor", "ceil", "toward_zero")
CUSTOM = [
    HardwareSpec("g2", multiplier_bits=2),
    HardwareSpec("g7", multiplier_bits=7, shift_range=(-3, 2)),
    HardwareSpec("s24", multiplier="single", multiplier_bits=24, shift_range=(-10, 5)),
    HardwareSpec("g29", multiplier_bits=29, shift_range=(-20, 20)),
    HardwareSpec("s30", multiplier="single", multiplier_bits=30),
    HardwareSpec("g31n", multiplier_bits=31, shift_range=(-8, 0)),
    HardwareSpec("d2", multiplier="dyadic", multiplier_bits=2, shift_range=(0, 62)),
    HardwareSpec("d12", multiplier="dyadic", multiplier_bits=12, shift_range=(3, 20)),
    HardwareSpec("d23", multiplier="dyadic", multiplier_bits=23, shift_range=(10, 40)),
    HardwareSpec("d31", multiplier="dyadic", multiplier_bits=31, shift_range=(0, 62)),
]
SPECS = list(PRESETS.values()) + CUSTOM


def _f64(v):
    return np.asarray(v, np.float32).astype(np.float64)


@jax.jit
def _multiplier_batch(sx, sw, sy, bits, lo, hi, dyadic):
    """All specs in one graph: the spec's fields as per-element arrays."""
    return dt.quantize_float64_multiplier(dt.float64_quotient(sx, sw, sy), bits, (lo, hi), dyadic)


@jax.jit
def _bias_batch(b, sx, sw):
    return {mode: dt.round_bias_flags(b, sx, sw, mode) for mode in BIAS_MODES}


def _spec_arrays(spec, n):
    return (np.full(n, spec.multiplier_bits, np.int32), np.full(n, spec.shift_range[0], np.int32),
            np.full(n, spec.shift_range[1], np.int32), np.full(n, spec.multiplier == "dyadic"))


def _multiplier_mismatches(cases):
    """``{spec name: mismatch count}`` of the traced multipliers vs ``derive_multiplier``, for
    ``cases = [(spec, sx, sw, sy), ...]`` evaluated in one jitted batch (numpy raises where saturated)."""
    args = [np.concatenate(v) for v in zip(*[(sx, sw, sy) + _spec_arrays(spec, len(sx)) for spec, sx, sw, sy in cases])]
    m0, shift, flushed, saturated = map(np.asarray, _multiplier_batch(*args))
    counts, start = {}, 0
    # where numpy raises, the spec's largest multiplier at its smallest right shift
    bits, lo, hi, dyadic = args[3:]
    largest = np.where(dyadic, 2**bits - 1, (2**bits - 1) * 2 ** (31 - bits))
    assert np.array_equal(m0[saturated], largest[saturated])
    assert np.array_equal(shift[saturated], np.where(dyadic, lo, hi)[saturated])
    for spec, sx, sw, sy in cases:
        sl = slice(start, start + len(sx))
        start += len(sx)
        m = _f64(sx) * _f64(sw) / _f64(sy)
        ok = ~saturated[sl]
        ref_m0, ref_shift, lost = derive_multiplier(m[ok], spec)  # raises if a saturated entry was missed
        for i in np.flatnonzero(saturated[sl])[:3]:  # and a saturated one does raise
            with pytest.raises(QuantizationError, match="more left shift"):
                derive_multiplier(m[i], spec)
        counts[spec.name] = int(np.sum(m0[sl][ok] != ref_m0) + np.sum(shift[sl][ok] != ref_shift)
                                + (lost != int(flushed[sl][ok].sum())))
    return counts


def _bias_mismatches(b, sx, sw):
    """``{mode: mismatch count}`` of the traced bias rounding vs ``round_offline`` (and its int32 limit)."""
    got = _bias_batch(b, sx, sw)
    counts = {}
    for mode in BIAS_MODES:
        bq, overflow = map(np.asarray, got[mode])
        with np.errstate(invalid="ignore"):
            ref = round_offline(_f64(b) / (_f64(sx) * _f64(sw)), mode)
            ref_over = ~(np.abs(ref) < 2**31)  # derive_layer's error (NaN: the traced flag as well)
        fits = ~ref_over
        counts[mode] = int(np.sum(overflow != ref_over) + np.sum(bq[fits] != ref[fits]))
    return counts


# -- inputs ---------------------------------------------------------------------------------------------

def _random_scales(rng, n, lo=-60, hi=40):
    """Float32 scales with uniform mantissas and exponents in [lo, hi), a few subnormal."""
    e = rng.integers(lo, hi, n)
    s = np.ldexp(rng.uniform(1, 2, n), e).astype(np.float32)
    sub = rng.random(n) < 0.02
    s[sub] = np.ldexp(rng.integers(1, 2**23, sub.sum()).astype(np.float64), -149).astype(np.float32)
    return s


def _tie_multipliers(rng, bits, n):
    """``(sx, sw, sy)`` with ``m`` exactly on a tie of ``bits`` bits (``m = K * 2**j``, ``K`` odd of bits+1 bits)."""
    out = []
    while len(out) < n:
        length = bits + 1
        la = int(rng.integers(max(1, length - 24), min(24, length) + 1))
        a = int(rng.integers(2 ** (la - 1), 2**la)) | 1
        lc = length - la + int(rng.integers(0, 2))
        c = int(rng.integers(2 ** max(lc - 1, 0), 2 ** max(lc, 1))) | 1
        if (a * c).bit_length() != length or c >= 2**24:
            continue
        i, j, k = (int(v) for v in rng.integers(-30, 10, 3))
        out.append((np.ldexp(a, i), np.ldexp(c, j), np.ldexp(1.0, k)))
    return tuple(np.array(v, np.float32) for v in zip(*out))


def _near_tie_multipliers(rng, bits, n):
    """``m = (K + delta / Y) * 2**z``: within ``|delta| / Y`` of a tie ``K`` odd of bits+1 bits.

    ``X = delta * 2**-h mod Y`` makes ``2**h X - delta`` a multiple of ``Y`` (``Y`` odd); for bits
    30, 31 the distance is below half a float64 ulp, so float64 itself rounds onto the tie.
    """
    out = []
    while len(out) < n:
        y = int(rng.integers(2**23, 2**24)) | 1
        delta = int(rng.choice([-3, -1, 1, 3]))
        for h in range(bits - 2, bits + 3):
            x = delta * pow(2, -h, y) % y
            if x == 0:
                continue
            k = (2**h * x - delta) // y
            if k.bit_length() == bits + 1:
                z, w = (int(v) for v in rng.integers(-20, 10, 2))
                out.append((float(x), np.ldexp(1.0, w), np.ldexp(y, z)))
                break
    return tuple(np.array(v, np.float32) for v in zip(*out))


def _near_power_multipliers(rng, n):
    """``m = X*W/Y = 2**z - delta / Y``: next to a power of two (the rounding carries into it)."""
    out = []
    while len(out) < n:
        x = int(rng.integers(2**22, 2**24)) | 1
        delta = int(rng.choice([-2, -1, 1, 2, 3]))
        for z in range(0, 30):
            y = delta * pow(2, -z, x) % x
            if y == 0:
                continue
            w, r = divmod(2**z * y - delta, x)
            if r == 0 and 2**20 <= w < 2**24:
                e = int(rng.integers(-20, 10))
                out.append((float(x), float(w), np.ldexp(y, e)))
                break
    return tuple(np.array(v, np.float32) for v in zip(*out))


def _near_half_biases(rng, n):
    """``(b, sx, sw)`` with ``b / (sx*sw) = B 2**g / X = k + 1/2 + delta / (2X)`` (odd delta) or ``k + delta/(2X)``.

    ``B = delta * 2**-(g+1) mod X`` (``X`` odd) makes ``2 B 2**g - delta`` a multiple of ``X``.
    """
    out = []
    while len(out) < n:
        x = int(rng.integers(2**22, 2**24)) | 1
        delta = int(rng.integers(-4, 5))
        g = int(rng.integers(1, 33) if rng.random() < 0.5 else rng.integers(29, 33))  # float64 ties need 2**30
        b = delta * pow(2, -(g + 1), x) % x
        if b == 0:
            continue
        sign = float(rng.choice([-1.0, 1.0]))
        e, d = int(rng.integers(-40, 10)), int(rng.integers(-5, 5))
        out.append((sign * np.ldexp(b, g + e), np.ldexp(x, e - d), np.ldexp(1.0, d)))
    return tuple(np.array(v, np.float32) for v in zip(*out))


def _exact_tie_biases(rng, n):
    """``b / (sx*sw) = +-(2k+1) / 2`` exactly (scales powers of two)."""
    k = rng.integers(0, 2**22, n)
    e = rng.integers(-30, 10, n)
    sign = rng.choice([-1.0, 1.0], n)
    b = sign * np.ldexp(2 * k + 1, e - 1)
    sx = np.ldexp(1.0, e - rng.integers(-10, 10, n))
    sw = np.ldexp(1.0, e) / sx
    return b.astype(np.float32), sx.astype(np.float32), sw.astype(np.float32)


def _boundary_biases(rng, n):
    """``b / (sx*sw)`` at ``+-2**31`` and ``+-(2**31 - 1/2)`` give or take a few float32 ulps."""
    sx, sw = _random_scales(rng, n, -20, 5), _random_scales(rng, n, -20, 5)
    target = rng.choice([2.0**31, 2.0**31 - 0.5, 2.0**31 - 1, 2.0**30], n) * rng.choice([-1.0, 1.0], n)
    b = (target * _f64(sx) * _f64(sw)).astype(np.float32)
    steps = rng.integers(-3, 4, n)
    for _ in range(3):
        b = np.where(steps > 0, np.nextafter(b, np.float32(np.inf)), b)
        b = np.where(steps < 0, np.nextafter(b, np.float32(-np.inf)), b)
        steps = steps - np.sign(steps)
    return b.astype(np.float32), sx, sw


def _special_biases(rng, n):
    sx, sw = _random_scales(rng, n), _random_scales(rng, n)
    b = rng.choice(np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, 3e38, -3e38, np.inf, -np.inf, np.nan], np.float32), n)
    return b.astype(np.float32), sx, sw


# -- the exact float64 quotient ----------------------------------------------------------------------------

def _to_float64(f):
    return np.ldexp(np.asarray(f.hi, np.float64) * 2.0**32 + np.asarray(f.lo, np.float64), np.asarray(f.exponent))


def test_float64_quotient_is_numpys():
    rng = np.random.default_rng(0)
    n = 20000
    sx, sw, sy = (_random_scales(rng, n, -149, 128) for _ in range(3))
    got = _to_float64(jax.jit(dt.float64_quotient)(sx, sw, sy))
    assert np.array_equal(got, _f64(sx) * _f64(sw) / _f64(sy))
    hi = np.asarray(jax.jit(dt.float64_quotient)(sx, sw, sy).hi)
    assert np.all((hi >= 2**20) & (hi < 2**21))  # the mantissa is normalised to 53 bits


def test_round_float64_is_numpys():
    """Every deterministic mode on arbitrary float64 values, and the float ``floor(v + 0.5)`` of the flush."""
    rng = np.random.default_rng(1)
    n = 20000
    v = np.ldexp(rng.uniform(0.5, 1, n), rng.integers(-5, 33, n))
    v[:8] = [0.5 - 2**-54, 0.5, 0.5 + 2**-53, 1.5, 2.5, 2**31 - 0.5, 2**31, 0.25]
    v[8:16] = np.floor(v[8:16]) + 0.5  # exact ties
    v = v * rng.choice([-1.0, 1.0], n)
    q, e = np.frexp(np.abs(v))
    mant = (q * 2.0**53).astype(np.uint64)
    f = dt.Float64(jnp.asarray((mant >> 32).astype(np.uint32)), jnp.asarray((mant & 0xFFFFFFFF).astype(np.uint32)),
                   jnp.asarray((e - 53).astype(np.int32)))
    neg = jnp.asarray(v < 0)
    results = jax.jit(lambda f, neg: {m: dt.round_float64(f, neg, m) for m in BIAS_MODES}
                      | {"float_add": dt.round_float64(f, neg & False, "half_up", float_add=True)})(f, neg)
    for mode in BIAS_MODES:
        got, overflow = map(np.asarray, results[mode])
        ref = round_offline(v, mode)
        fits = np.abs(ref) < 2**31
        assert np.array_equal(overflow, ~fits), mode
        assert np.array_equal(got[fits], ref[fits]), mode
    got = np.asarray(results["float_add"][0])
    ref = np.floor(np.abs(v) + 0.5)
    fits = ref < 2**31
    assert np.array_equal(got[fits], ref[fits]) and got[0] == 1  # floor((0.5 - 2**-54) + 0.5) = 1


# -- multipliers ------------------------------------------------------------------------------------------

def test_multiplier_sweep():
    """Every spec: 10**5 random scale triples, exact ties, near ties and near powers of two, one jitted batch."""
    rng = np.random.default_rng(0)
    cases = []
    for spec in SPECS:
        bits = spec.multiplier_bits
        n = 100_000 if spec.name == "gemmlowp" else 4000
        for sx, sw, sy in [tuple(_random_scales(rng, n) for _ in range(3)), _tie_multipliers(rng, bits, 150),
                           _near_tie_multipliers(rng, bits, 150), _near_power_multipliers(rng, 150)]:
            cases.append((spec, sx, sw, sy))
    counts = _multiplier_mismatches(cases)
    assert counts == {spec.name: 0 for spec in SPECS}


def test_near_ties_reach_the_double_rounding():
    """The near-tie inputs for 30/31 bits do make float64 land on the tie (the case this module must copy)."""
    rng = np.random.default_rng(2)
    for bits in (30, 31):
        sx, sw, sy = _near_tie_multipliers(rng, bits, 200)
        m = _f64(sx) * _f64(sw) / _f64(sy)
        frac = np.frexp(m)[0] * 2.0**bits
        assert np.mean(frac - np.floor(frac) == 0.5) > 0.25


_SCALE_BITS = st.one_of(
    st.integers(1, 0x7F7FFFFF),  # any positive finite float32, subnormals included
    st.integers(0x30000000, 0x40000000),  # the usual range of quantization scales
)


@st.composite
def _specs(draw):
    """Any valid HardwareSpec's multiplier fields (style, bits 2..31, shift range)."""
    style = draw(st.sampled_from(["gemmlowp", "single", "dyadic"]))
    lo, hi = sorted(draw(st.lists(st.integers(0, 62) if style == "dyadic" else st.integers(-31, 31),
                                  min_size=2, max_size=2)))
    return HardwareSpec("h", multiplier=style, multiplier_bits=draw(st.integers(2, 31)), shift_range=(lo, hi))


def _as_f32(bits):
    return np.array(bits, np.uint32).view(np.float32)


@settings(max_examples=40)
@given(spec=_specs(), data=st.lists(st.tuples(_SCALE_BITS, _SCALE_BITS, _SCALE_BITS), min_size=64, max_size=64))
def test_multiplier_hypothesis(spec, data):
    sx, sw, sy = (_as_f32(v) for v in zip(*data))
    assert _multiplier_mismatches([(spec, sx, sw, sy)]) == {"h": 0}


# -- biases -----------------------------------------------------------------------------------------------

def test_bias_sweep():
    """Every deterministic mode on random, near-tie, exact-tie, int32-boundary and special biases."""
    rng = np.random.default_rng(1)
    n = 20000
    random = (rng.standard_normal(n) * np.ldexp(1.0, rng.integers(-60, 40, n))).astype(np.float32)
    parts = [(random, _random_scales(rng, n, -40, 10), _random_scales(rng, n, -40, 10)), _near_half_biases(rng, 2500),
             _exact_tie_biases(rng, 2000), _boundary_biases(rng, 2000), _special_biases(rng, 500)]
    b, sx, sw = (np.concatenate(p) for p in zip(*parts))
    assert _bias_mismatches(b, sx, sw) == {mode: 0 for mode in BIAS_MODES}


def test_near_half_biases_reach_the_tie():
    rng = np.random.default_rng(4)
    b, sx, sw = _near_half_biases(rng, 2000)
    v = _f64(b) / (_f64(sx) * _f64(sw))
    exact_tie = np.abs(v - np.trunc(v)) == 0.5  # float64 rounded the quotient onto the tie
    assert exact_tie.sum() > 100


def test_stochastic_bias_is_rejected():
    with pytest.raises(ValueError, match="stochastic"):
        dt.derive_layer_traced(1.0, 1.0, 1.0, jnp.ones(2), 2, HardwareSpec(bias_rounding="stochastic"))


# -- layers and adds: the public functions under jit and vmap -----------------------------------------------

O = 4


@functools.lru_cache(maxsize=None)
def _layer_fn(spec):
    return jax.jit(jax.vmap(functools.partial(dt.derive_layer_traced, out_channels=O, spec=spec)))


# each spec compiles the public (static-spec) function once: a few, covering styles and bias modes
_LAYER_SPECS = [
    PRESETS["gemmlowp"],
    HardwareSpec("narrow", multiplier="single", multiplier_bits=24, shift_range=(-6, 2), bias_rounding="floor"),
    HardwareSpec("dy", multiplier="dyadic", multiplier_bits=12, shift_range=(4, 20), bias_rounding="half_down"),
]


@settings(max_examples=12)
@given(spec=st.sampled_from(_LAYER_SPECS), seed=st.integers(0, 2**32 - 1))
def test_derive_layer_matches_numpy(spec, seed):
    rng = np.random.default_rng(seed)
    batch = 6  # vmapped over layers (a fixed size: one compile per spec)
    sx, sy = _random_scales(rng, batch, -30, 5), _random_scales(rng, batch, -30, 5)
    sw = _random_scales(rng, batch * O, -20, 0).reshape(batch, O)
    bias = (rng.standard_normal((batch, O)) * np.ldexp(1.0, rng.integers(-30, 10, (batch, O)))).astype(np.float32)
    bias[rng.random((batch, O)) < 0.2] = 0
    bq, m0, shift = map(np.asarray, _layer_fn(spec)(sx, sw, sy, bias))
    for i in range(batch):
        try:
            ref = derive_layer(sx[i], sw[i], sy[i], bias[i], O, spec, "L")
        except QuantizationError as e:
            with pytest.raises(QuantizationError) as got:
                dt.check_derivable(sx[i], sw[i], sy[i], bias[i], O, spec, "L")
            assert str(got.value) == str(e)
            # the traced function saturated instead: the largest multiplier, or an int32 end for the bias
            bits = spec.multiplier_bits
            largest = 2**bits - 1 if spec.multiplier == "dyadic" else (2**bits - 1) << (31 - bits)
            assert np.any(m0[i] == largest) or np.any(np.abs(bq[i].astype(np.int64)) >= 2**31 - 1)
            continue
        dt.check_derivable(sx[i], sw[i], sy[i], bias[i], O, spec, "L")  # does not raise
        assert np.array_equal(bq[i], ref[0]) and np.array_equal(m0[i], ref[1]) and np.array_equal(shift[i], ref[2])


def test_derive_layer_scalar_weight_scale_and_no_bias():
    spec = PRESETS["gemmlowp"]
    bq, m0, shift = jax.jit(lambda x, w, y: dt.derive_layer_traced(x, w, y, None, 3, spec))(0.02, 0.003, 0.1)
    ref = derive_layer(np.float32(0.02), np.float32(0.003), np.float32(0.1), None, 3, spec)
    assert bq is None and ref[0] is None
    assert m0.shape == (3,) and np.array_equal(m0, ref[1]) and np.array_equal(shift, ref[2])


def test_check_derivable_errors_and_trace():
    spec = HardwareSpec(shift_range=(-2, 2))
    one = np.ones(O, np.float32)
    with pytest.raises(QuantizationError, match="more left shift"):
        dt.check_derivable(1.0, 64 * one, 1.0, None, O, spec, "L")
    with pytest.raises(QuantizationError, match="beyond int32"):
        dt.check_derivable(1e-6, 1e-3 * one, 1e-2, 1e4 * one, O, PRESETS["gemmlowp"], "L")
    with pytest.raises(QuantizationError, match="NaN"):
        dt.check_derivable(1.0, one, 1.0, np.nan * one, O, PRESETS["gemmlowp"], "L")
    with pytest.raises(QuantizationError, match="x_scale"):
        dt.check_derivable(0.0, one, 1.0, None, O, PRESETS["gemmlowp"], "L")
    # under a trace it cannot tell and does nothing (the traced result saturates: test_multiplier_sweep)
    jax.jit(lambda w: dt.check_derivable(1.0, w, 1.0, None, O, spec, "L"))(64 * one)


def _add_reference(sa, sb, sy, spec):
    """hardware.convert's ADD derivation (the same three lines: TFLite's sa/2max, sb/2max, 2max/(2**20 sy))."""
    sa, sb, sy = (float(_f64(v)) for v in (sa, sb, sy))
    twice_max = 2 * max(sa, sb)
    out = {}
    for tag, mult in (("_a", sa / twice_max), ("_b", sb / twice_max), ("", twice_max / (2**20 * sy))):
        m0, shift, _ = derive_multiplier(mult, spec, "add")
        out["m0" + tag], out["shift" + tag] = int(m0[0]), int(shift[0])
    return out


@functools.lru_cache(maxsize=None)
def _add_fn(spec):
    return jax.jit(jax.vmap(lambda a, b, y: dt.derive_add_traced(a, b, y, spec)))


@settings(max_examples=10)
@given(spec=st.just(PRESETS["gemmlowp"]), seed=st.integers(0, 2**32 - 1))
def test_derive_add_matches_numpy(spec, seed):
    rng = np.random.default_rng(seed)
    n = 16
    sa, sb, sy = (_random_scales(rng, n, -12, 2) for _ in range(3))
    sb[:4] = sa[:4]  # equal scales: both multipliers exactly one half
    sa[4] = sb[4] = np.float32(1e-38)  # subnormal (XLA's float max on CPU would flush them to zero)
    got = _add_fn(spec)(sa, sb, sy)
    for i in range(n):
        try:
            ref = _add_reference(sa[i], sb[i], sy[i], spec)
        except QuantizationError:
            with pytest.raises(QuantizationError, match="more left shift"):
                dt.check_derivable_add(sa[i], sb[i], sy[i], spec, "add")
            continue
        dt.check_derivable_add(sa[i], sb[i], sy[i], spec, "add")
        assert {k: int(v[i]) for k, v in got.items()} == ref
        if numpy_derive_add is not None:  # the offline module's own ADD derivation, where it has one
            assert {k: int(v) for k, v in numpy_derive_add(sa[i], sb[i], sy[i], spec, "add")[0].items()} == ref
