"""qjax.float64's integer double arithmetic against numpy's float64, on random and adversarial doubles."""

from fractions import Fraction

import jax
import numpy as np
import pytest

from qjax._src import float64 as f64

F32 = np.float32
RNG = np.random.default_rng(0)


def _midpoints(n, lo, hi):
    """Doubles exactly halfway between two neighbouring float32s (where a second rounding matters)."""
    m = np.exp(RNG.uniform(np.log(lo), np.log(hi), n)).astype(F32)
    return (m.astype(np.float64) + np.nextafter(m, F32(np.inf)).astype(np.float64)) / 2


def _near(d):
    """``d`` moved by -3..3 double ulps."""
    return d + RNG.integers(-3, 4, d.size) * np.spacing(d)


def _bits(x):
    return np.asarray(x, F32).view(np.uint32)


N = 4000
# random doubles over the scale range, float32-valued doubles, powers of two, and doubles whose reciprocal
# is (within a few ulps of) a float32 midpoint: 1/d rounds onto or next to the tie in double
RECIPROCAL_CASES = np.concatenate([
    np.exp(RNG.uniform(np.log(1e-30), np.log(1e30), N)),
    np.exp(RNG.uniform(np.log(1e-6), np.log(1e3), N)).astype(F32).astype(np.float64),
    2.0 ** RNG.integers(-120, 120, 200).astype(np.float64),
    _near(1.0 / _midpoints(N, 1e-4, 1e4)),
])


@pytest.fixture(scope="module")
def jitted():
    return {"reciprocal": jax.jit(f64.reciprocal_to_f32), "round": jax.jit(f64.round_to_f32),
            "product": jax.jit(f64.product_to_f32), "from_f32": jax.jit(f64.words_from_f32)}


def test_words_round_trip():
    d = RECIPROCAL_CASES
    assert np.array_equal(f64.from_words(f64.words(d)), d)
    assert f64.words_if_not_f32(np.float64(F32(0.1))) is None and f64.words_if_not_f32(0.1) is not None


def test_reciprocal_to_f32_is_numpys_double_then_float(jitted):
    w = f64.words(RECIPROCAL_CASES)
    want = f64.reciprocal_to_f32_numpy(w)
    assert np.array_equal(_bits(jitted["reciprocal"](w)), _bits(want))
    # the data catches a plausible wrong rule: the correctly rounded (single-rounding) float32 of 1/d and
    # the float32-first rule fl32(1/fl32(d)) both differ from the double-then-float value on some cases
    adv = RECIPROCAL_CASES[-N:]
    assert (want != (F32(1) / RECIPROCAL_CASES.astype(F32))).sum() > N // 4


def test_double_rounding_cases_are_present(jitted):
    """fl64(1/d) lands exactly on a float32 midpoint (a true double rounding) for some adversarial d."""
    d = 1.0 / _midpoints(2000, 1e-3, 1e3)  # fl64(1/m) then 1/that: many land back on m exactly
    r64 = 1.0 / d
    on_tie = r64 == _midpoints_of(r64)
    assert on_tie.sum() > 100
    w = f64.words(d[on_tie])
    got = _bits(jitted["reciprocal"](w))
    assert np.array_equal(got, _bits(f64.reciprocal_to_f32_numpy(w)))
    # a single correct rounding of the exact 1/d goes to the side of the tie 1/d is on, not to even
    m = r64[on_tie][:200]
    below = np.array([Fraction(1) / Fraction(float(x)) < Fraction(float(t)) for x, t in zip(d[on_tie][:200], m)])
    single = np.where(below, _midpoints_below(m), _midpoints_below(m) + 1)  # the float32 bits either side
    assert (single != got[:200]).sum() > 20


def _midpoints_below(t):
    """Bits of the float32 just below the midpoint ``t``."""
    lo = t.astype(F32)
    return np.where(lo.astype(np.float64) > t, np.nextafter(lo, F32(0)), lo).view(np.uint32)


def _midpoints_of(r):
    lo = r.astype(F32)
    lo = np.where(lo.astype(np.float64) > r, np.nextafter(lo, F32(0)), lo)
    return (lo.astype(np.float64) + np.nextafter(lo, F32(np.inf)).astype(np.float64)) / 2


def test_round_to_f32(jitted):
    d = np.concatenate([RECIPROCAL_CASES, _near(_midpoints(N, 1e-30, 1e30)), _midpoints(N, 1e-6, 1e6)])
    assert np.array_equal(_bits(jitted["round"](f64.words(d))), _bits(d.astype(F32)))


def test_product_to_f32(jitted):
    a = np.exp(RNG.uniform(np.log(1e-6), np.log(1e3), N))
    b = np.exp(RNG.uniform(np.log(1e-6), np.log(1e3), N))
    b[: N // 2] = b[: N // 2].astype(F32)  # a float32-valued factor (a weight scale)
    # products within a few ulps of float32 midpoints
    bb = np.exp(RNG.uniform(np.log(1e-3), np.log(1e-1), N)).astype(F32).astype(np.float64)
    aa = _near(_midpoints(N, 1e-6, 1e-1) / bb)
    a, b = np.concatenate([a, aa, [1.0, 2.0 ** -60]]), np.concatenate([b, bb, [1.0, 2.0 ** 40]])
    wa, wb = f64.words(a), f64.words(b)
    want = f64.product_to_f32_numpy(wa, wb)
    assert np.array_equal(_bits(jitted["product"](wa, wb)), _bits(want))
    assert (want != (a.astype(F32) * b.astype(F32))).sum() > N // 4  # the float32-first product differs


def test_words_from_f32_and_float32_valued_shortcuts(jitted):
    f = np.exp(RNG.uniform(-80, 80, N)).astype(F32)
    assert np.array_equal(np.asarray(jitted["from_f32"](f)), f64.words(f.astype(np.float64)))
    d = np.exp(RNG.uniform(np.log(1e-4), np.log(1e2), 64))
    # no words: the float32 forms equal the double ones for float32-valued doubles
    s = d.astype(F32)
    recip, prod = jax.jit(f64.reciprocal_f32), jax.jit(f64.product_f32)
    assert np.array_equal(_bits(recip(s)), _bits(f64.reciprocal_to_f32_numpy(f64.words(s.astype(np.float64)))))
    assert np.array_equal(_bits(prod(s, None, s[::-1], None)), _bits((s.astype(np.float64) * s[::-1]).astype(F32)))
    assert np.array_equal(_bits(prod(s, f64.words(d), s[::-1], None)), _bits((d * s[::-1].astype(np.float64)).astype(F32)))
