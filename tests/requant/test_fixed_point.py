"""Fixed-point requantization and rounding modes vs exact Python-integer references and known vectors."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qjax._src import int64 as i64
from qjax._src.requant import fixed_point as fp
from qjax._src.rounding import MODES, round_float, round_shift_right

from tests.fixed_point_ref import py_rdpot, py_round, py_srdhm

I32 = st.integers(-(2**31), 2**31 - 1)




@settings(max_examples=300)
@given(a=st.lists(I32, min_size=16, max_size=16), b=st.lists(I32, min_size=16, max_size=16))
def test_mul32_is_exact(a, b):
    hi, lo = i64.mul32(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32))
    got = [int(h) * 2**32 + int(l) for h, l in zip(np.asarray(hi), np.asarray(lo))]
    assert got == [x * y for x, y in zip(a, b)]


@settings(max_examples=300)
@given(a=st.lists(I32, min_size=16, max_size=16), b=st.lists(I32, min_size=16, max_size=16))
def test_srdhm_matches_gemmlowp_definition(a, b):
    got = np.asarray(fp.srdhm(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32))).tolist()
    assert got == [py_srdhm(x, y) for x, y in zip(a, b)]


@settings(max_examples=200)
@given(x=st.lists(I32, min_size=16, max_size=16), e=st.integers(0, 30))
def test_rounding_divide_by_pot(x, e):
    got = np.asarray(fp.rounding_divide_by_pot(jnp.asarray(x, jnp.int32), e)).tolist()
    assert got == [py_rdpot(v, e) for v in x]
    # it is round-half-away-from-zero of the exact quotient
    assert got == [py_round(Fraction(v, 2**e), "half_away") for v in x]


def test_gemmlowp_known_vectors():
    # gemmlowp doc/quantization.md style: M = 0.5 ** 1 with M0 = 2**30, shift 0 halves x, ties away from zero
    m0, shift = fp.quantize_multiplier(np.array([0.5, 0.25, 0.75, 1.0, 2**-20]))
    assert m0.tolist() == [2**30, 2**30, 3 * 2**29, 2**30, 2**30] and shift.tolist() == [0, -1, 0, 1, -19]
    x = jnp.array([3, -3, 5, -5, 7, 100, -101], jnp.int32)
    # SRDHM rounds its doubling high product half toward +inf (nudge 2**30 / 1 - 2**30)
    got = np.asarray(fp.multiply_by_quantized_multiplier(x, 2**30, 0)).tolist()
    assert got == [2, -1, 3, -2, 4, 50, -50]
    # x/4 = SRDHM (x/2, ties up) then RDPOT by 1 (ties away): double rounding turns 5/4 = 1.25 into 2
    got = np.asarray(fp.multiply_by_quantized_multiplier(x, 2**30, -1)).tolist()
    assert got == [1, -1, 2, -1, 2, 25, -25]
    # TFLite single rounding ties toward +inf
    got = np.asarray(fp.multiply_single_rounding(x, 2**30, 0)).tolist()
    assert got == [2, -1, 3, -2, 4, 50, -50]


@settings(max_examples=200)
@given(x=st.lists(st.integers(-(2**24), 2**24), min_size=16, max_size=16),
       m=st.floats(1e-6, 4.0), mode=st.sampled_from([m for m in MODES if m != "stochastic"]))
def test_single_rounding_equals_exact_rational_rounding(x, m, mode):
    m0, shift = fp.quantize_multiplier(np.array([m]))
    got = np.asarray(fp.multiply_single_rounding(jnp.asarray(x, jnp.int32), int(m0[0]), int(shift[0]), mode)).tolist()
    want = [py_round(Fraction(v * int(m0[0]), 2 ** (31 - int(shift[0]))), mode) for v in x]
    assert got == want


@settings(max_examples=200)
@given(x=st.lists(st.integers(-(2**22), 2**22), min_size=8, max_size=8), m=st.floats(1e-5, 1.0),
       bits=st.integers(8, 31), mode=st.sampled_from([m for m in MODES if m != "stochastic"]))
def test_dyadic_equals_exact_rational_rounding(x, m, bits, mode):
    mm, e = fp.quantize_multiplier(np.array([m]), bits=bits, style="dyadic")
    assert 2 ** (bits - 1) <= int(mm[0]) <= 2**bits
    got = np.asarray(fp.dyadic_multiply(jnp.asarray(x, jnp.int32), int(mm[0]), int(e[0]), mode)).tolist()
    assert got == [py_round(Fraction(v * int(mm[0]), 2 ** int(e[0])), mode) for v in x]


@settings(max_examples=200)
@given(x=st.lists(st.floats(-1e6, 1e6, width=32, allow_subnormal=False), min_size=8, max_size=8),
       mode=st.sampled_from([m for m in MODES if m != "stochastic"]))
def test_round_float_modes(x, mode):
    x = np.asarray(x, np.float32)
    got = np.asarray(round_float(x, mode)).tolist()
    assert got == [float(py_round(Fraction(float(v)), mode)) for v in x]
    # the float just below 0.5 rounds to 0 in every nearest mode (adding 0.5 would give 1)
    below = np.nextafter(np.float32(0.5), np.float32(0))
    if mode.startswith("half"):
        assert float(round_float(below, mode)) == 0.0


def test_stochastic_rounding_is_unbiased_and_keyed():
    key = jax.random.PRNGKey(0)
    x = jnp.full((200_000,), 2.25, jnp.float32)
    r = round_float(x, "stochastic", key)
    assert set(np.unique(np.asarray(r)).tolist()) == {2.0, 3.0}
    assert abs(float(jnp.mean(r)) - 2.25) < 0.01
    np.testing.assert_array_equal(np.asarray(round_float(x, "stochastic", key)), np.asarray(r))
    v = i64.from_int32(jnp.full((200_000,), 9, jnp.int32))  # 9 / 4 = 2.25
    q = round_shift_right(v, 2, "stochastic", key)
    assert abs(float(jnp.mean(q.astype(jnp.float32))) - 2.25) < 0.01
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        round_float(x, "stochastic")
