"""qjax.float32: exactness of the contraction-proof primitives against numpy/float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qjax import float32 as f32x


def fma_reference(a, b, c):
    """fl32(a*b + c) with one rounding: float64 product is exact, the sum is rounded to odd."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    si = s.view(np.int64)
    fix = (err != 0) & ((si & 1) == 0)
    s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def bits_equal(x, y):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    return (x.view(np.uint32) == y.view(np.uint32)) | (np.isnan(x) & np.isnan(y))


def random_floats(rng, n, lo=-20, hi=20):
    return (rng.normal(size=n) * np.exp(rng.uniform(lo, hi, size=n))).astype(np.float32)


def test_mul_rn_matches_ieee_product_on_all_bit_patterns():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, size=400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    b = rng.integers(0, 2**32, size=400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with np.errstate(all="ignore"):
        want = a * b  # numpy: IEEE round-to-nearest-even, subnormals kept
    got = np.asarray(jax.jit(f32x.mul_rn)(a, b))
    assert bits_equal(got, want).all()


def test_mul_rn_subnormal_and_boundary_results():
    rng = np.random.default_rng(1)
    a = random_floats(rng, 200_000, -60, -30)
    b = random_floats(rng, 200_000, -60, -30)
    got = np.asarray(jax.jit(f32x.mul_rn)(a, b))
    assert bits_equal(got, a * b).all()
    big = np.float32(3e38)
    assert np.isinf(np.asarray(f32x.mul_rn(big, np.float32(2))))


def test_two_product_is_exact():
    rng = np.random.default_rng(2)
    a, b = random_floats(rng, 300_000), random_floats(rng, 300_000)
    h, l = jax.jit(f32x.two_product)(a, b)
    exact = a.astype(np.float64) * b.astype(np.float64)
    assert (np.asarray(h) == a * b).all()
    assert (np.asarray(h, np.float64) + np.asarray(l, np.float64) == exact).all()


@pytest.mark.parametrize("case", ["random", "cancel", "ties"])
def test_fma_is_correctly_rounded(case):
    rng = np.random.default_rng(3)
    n = 300_000
    a, b = random_floats(rng, n), random_floats(rng, n)
    if case == "random":
        c = random_floats(rng, n)
    elif case == "cancel":  # c ~ -a*b: massive cancellation, the low part decides
        p = a.astype(np.float64) * b.astype(np.float64)
        c = (-p + np.round(rng.normal(size=n)) * np.abs(p) * 2.0**-24).astype(np.float32)
    else:  # quantize-like: x*inv + zp lands within an ulp of k + 0.5
        s = np.float32(0.0123)
        a = ((rng.integers(-300, 300, size=n) + 0.5) * s).astype(np.float32)
        b = np.full(n, np.float32(1) / s)
        c = rng.integers(0, 256, size=n).astype(np.float32)
    got = np.asarray(jax.jit(f32x.fma)(a, b, c))
    assert bits_equal(got, fma_reference(a, b, c)).all()


def test_fma_and_mul_add_ignore_xla_contraction_and_constant_folding():
    # naive a*b+c under jit is fused or not at XLA's whim; ours must not depend on it,
    # also when the operands are closed-over compile-time constants.
    rng = np.random.default_rng(4)
    s = np.float32(0.07205085233861175)
    x = ((rng.integers(-300, 300, size=50_000) + 0.5) * s).astype(np.float32)
    inv = np.float32(1) / s
    zp = np.float32(130)
    fused = fma_reference(x, np.full_like(x, inv), np.full_like(x, zp))
    unfused = (x * inv).astype(np.float32) + zp
    assert (fused != unfused).any()  # the data really discriminates
    x_const = jnp.asarray(x)
    fma_variants = [
        lambda: f32x.fma(x, inv, zp),  # eager
        lambda: jax.jit(f32x.fma)(x, inv, zp),  # all traced
        lambda: jax.jit(lambda a: f32x.fma(a, inv, zp))(x),  # constants closed over
        lambda: jax.jit(lambda: f32x.fma(x_const, inv, zp))(),  # everything constant
    ]
    for run in fma_variants:
        assert bits_equal(run(), fused).all()
    mul_add_variants = [
        lambda: jax.jit(f32x.mul_add)(x, inv, zp),
        lambda: jax.jit(lambda a: f32x.mul_add(a, inv, zp))(x),
    ]
    for run in mul_add_variants:
        assert bits_equal(run(), unfused).all()


def test_add_round_to_odd():
    rng = np.random.default_rng(5)
    a, b = random_floats(rng, 200_000), random_floats(rng, 200_000)
    got = np.asarray(jax.jit(f32x.add_round_to_odd)(a, b))
    exact = a.astype(np.float64) + b.astype(np.float64)
    sure = ((exact - a) == b) & ((exact - b) == a)  # the float64 sum itself is exact
    a, b, got, exact = a[sure], b[sure], got[sure], exact[sure]
    r = exact.astype(np.float32)
    inexact = r.astype(np.float64) != exact
    # inexact results are odd and bracket the exact sum with the nearest float
    gb = got.view(np.uint32)
    assert ((gb[inexact] & 1) == 1).all()
    assert (np.abs(got.astype(np.float64) - exact)[inexact] < np.abs(np.spacing(r[inexact])) * 1.0001).all()
    assert (got[~inexact] == r[~inexact]).all()


@settings(max_examples=200)
@given(
    hnp.arrays(np.float32, 8, elements=st.floats(-2.0**100, 2.0**100, width=32, allow_subnormal=False)),
    hnp.arrays(np.float32, 8, elements=st.floats(-2.0**20, 2.0**20, width=32, allow_subnormal=False)),
    hnp.arrays(np.float32, 8, elements=st.floats(-2.0**100, 2.0**100, width=32, allow_subnormal=False)),
)
def test_fma_property(a, b, c):
    p = np.abs(a.astype(np.float64) * b.astype(np.float64))
    want = fma_reference(a, b, c)
    # the documented exactness domain (f32x.fma): Dekker's split halves and partial products stay normal
    # (XLA flushes subnormals): |a|, |b| >= 2**-103 and |a*b| >= 2**-90, or a*b == 0; a non-subnormal result
    normal = (np.abs(a) >= 2.0**-103) & (np.abs(b) >= 2.0**-103) & (p >= 2.0**-90)
    ok = ((p == 0) | normal) & ((want == 0) | (np.abs(want) >= 2.0**-126))
    got = np.asarray(f32x.fma(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)))
    assert bits_equal(got, want)[ok].all()


def test_div_rn_is_correctly_rounded_with_broadcast_and_constant_divisors():
    # XLA rewrites x / broadcast(b) as x * (1/b); div_rn must not be affected
    rng = np.random.default_rng(6)
    a = rng.uniform(0.1, 10, size=100_000).astype(np.float32)
    b = np.float32(3.3)
    want = a / b
    assert (np.asarray(jax.jit(lambda a, b: a / b)(a, b)) != want).any()  # the hazard is real
    np.testing.assert_array_equal(np.asarray(jax.jit(f32x.div_rn)(a, b)), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda a: f32x.div_rn(a, b))(a)), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda b: f32x.div_rn(a, b))(b)), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(f32x.div_rn)(np.float32(1), a)), np.float32(1) / a)


def test_uncontracted_product_is_rounded_before_the_add():
    """``uncontracted(a*b) + c`` is the unfused ``fl32(fl32(a*b) + c)`` where XLA fuses ``a*b + c``."""
    import jax

    rng = np.random.default_rng(7)
    a, b, c = random_floats(rng, 100_000, -4, 4), random_floats(rng, 100_000, -4, 4), random_floats(rng, 100_000, -4, 4)
    unfused = ((a * b).astype(np.float32) + c).astype(np.float32)
    got = jax.jit(lambda a, b, c: f32x.uncontracted(a * b) + c)(a, b, c)
    assert bits_equal(got, unfused).all()
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3e38], np.float32)
    out = np.asarray(jax.jit(f32x.uncontracted)(specials))
    assert bits_equal(out, specials).all()
