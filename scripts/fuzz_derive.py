"""Fuzz the in-graph derivation (qjax._src.requant.derive_traced) against the numpy float64 one; print mismatches.

    python scripts/fuzz_derive.py [--n 10000000] [--chunk 1000000] [--seed 0]

Each chunk: ``n`` scale triples spread over the presets and random custom specs (any style,
bits 2..31, any valid shift range: flushes and saturations included), a quarter of them
products of small odd integers over powers of two (exact multipliers: rounding ties of
``bitlen - 1`` bits); and ``n`` biases (random, zero, subnormal, near the int32 limit) rounded
in every deterministic mode.  One jitted graph per chunk shape (the spec's fields are data).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from qjax.hardware import PRESETS, HardwareSpec, derive_multiplier, round_offline
from qjax._src.requant import derive_traced as dt

BIAS_MODES = ("half_even", "half_away", "half_up", "half_down", "floor", "ceil", "toward_zero")


@jax.jit
def _multipliers(sx, sw, sy, bits, lo, hi, dyadic):
    return dt.quantize_float64_multiplier(dt.float64_quotient(sx, sw, sy), bits, (lo, hi), dyadic)


@jax.jit
def _biases(b, sx, sw):
    return {mode: dt.round_bias_flags(b, sx, sw, mode) for mode in BIAS_MODES}


def _f64(v):
    return np.asarray(v, np.float32).astype(np.float64)


def _random_spec(rng, i):
    style = ("gemmlowp", "single", "dyadic")[rng.integers(3)]
    if rng.random() < 0.3:  # any valid range: narrow ones flush and saturate often
        lo, hi = sorted(rng.integers(0, 63, 2) if style == "dyadic" else rng.integers(-31, 32, 2))
    else:  # a wide one, as real hardware has
        lo, hi = (rng.integers(0, 16), rng.integers(30, 63)) if style == "dyadic" else (rng.integers(-31, -10),
                                                                                          rng.integers(0, 32))
    return HardwareSpec(f"r{i}", multiplier=style, multiplier_bits=int(rng.integers(2, 32)),
                        shift_range=(int(lo), int(hi)))


def _scales(rng, n):
    e = np.where(rng.random(n) < 0.7, rng.integers(-25, 5, n), rng.integers(-70, 50, n))  # typical, or far out
    s = np.ldexp(rng.uniform(1, 2, n), e).astype(np.float32)
    sub = rng.random(n) < 0.01
    s[sub] = np.ldexp(rng.integers(1, 2**23, sub.sum()).astype(np.float64), -149).astype(np.float32)
    return s


def _exact(rng, n):
    """``sx = a 2**i``, ``sw = c 2**j``, ``sy = 2**k`` with odd ``a, c`` of random length: m exact, often a tie."""
    la, lc = rng.integers(1, 25, n), rng.integers(1, 25, n)
    a = (rng.integers(0, 2**24, n) % (2**la)) | (2 ** (la - 1)) | 1
    c = (rng.integers(0, 2**24, n) % (2**lc)) | (2 ** (lc - 1)) | 1
    i, j, k = (rng.integers(-40, 20, n) for _ in range(3))
    return (np.ldexp(a.astype(np.float64), i).astype(np.float32), np.ldexp(c.astype(np.float64), j).astype(np.float32),
            np.ldexp(1.0, k).astype(np.float32))


def _chunk(rng, n, specs):
    sx, sw, sy = (_scales(rng, n) for _ in range(3))
    # most multipliers where real layers have them (2**-25 .. 4): sy solved for it
    target = np.ldexp(rng.uniform(1, 2, n), rng.integers(-25, 2, n))
    with np.errstate(over="ignore", under="ignore"):
        solved = (_f64(sx) * _f64(sw) / target).astype(np.float32)
    use = (rng.random(n) < 0.6) & np.isfinite(solved) & (solved >= np.finfo(np.float32).tiny)
    sy = np.where(use, solved, sy)
    q = n // 4
    sx[:q], sw[:q], sy[:q] = _exact(rng, q)
    perm = rng.permutation(n)
    sx, sw, sy = sx[perm], sw[perm], sy[perm]
    which = rng.integers(0, len(specs), n)
    fields = np.array([(s.multiplier_bits, *s.shift_range, s.multiplier == "dyadic") for s in specs], np.int32)[which]
    return sx, sw, sy, which, fields


def _multiplier_mismatches(sx, sw, sy, which, fields, specs):
    m0, shift, flushed, saturated = map(np.asarray, _multipliers(sx, sw, sy, *fields.T[:3], fields[:, 3] == 1))
    m = _f64(sx) * _f64(sw) / _f64(sy)
    bad = 0
    for k, spec in enumerate(specs):
        sel = which == k
        ok = sel & ~saturated
        try:
            ref_m0, ref_shift, lost = derive_multiplier(m[ok], spec)
        except Exception:  # a saturated entry numpy accepts... or the reverse: count them all
            bad += int(ok.sum())
            continue
        bad += int(np.sum(m0[ok] != ref_m0) + np.sum(shift[ok] != ref_shift) + (lost != int(flushed[ok].sum())))
        for i in np.flatnonzero(sel & saturated)[:2]:  # and a saturated one does raise
            try:
                derive_multiplier(m[i], spec)
                bad += 1
            except ValueError:
                pass
    return bad, int(saturated.sum()), int(flushed.sum())


def _bias_mismatches(rng, n, sx, sw):
    b = (rng.standard_normal(n) * np.ldexp(1.0, rng.integers(-60, 45, n))).astype(np.float32)
    special = rng.random(n) < 0.02
    b[special] = rng.choice(np.array([0.0, -0.0, 1e-45, -1e-45, 1e-39], np.float32), special.sum())
    edge = rng.random(n) < 0.05  # next to +-2**31 (sx*sw)
    b[edge] = (rng.choice([-1.0, 1.0], edge.sum()) * 2.0**31 * _f64(sx[edge]) * _f64(sw[edge])
               * (1 + rng.integers(-4, 5, edge.sum()) * 2.0**-24)).astype(np.float32)
    got = _biases(b, sx, sw)
    v = _f64(b) / (_f64(sx) * _f64(sw))
    bad = 0
    for mode in BIAS_MODES:
        bq, overflow = map(np.asarray, got[mode])
        ref = round_offline(v, mode)
        ref_over = ~(np.abs(ref) < 2**31)
        bad += int(np.sum(overflow != ref_over) + np.sum(bq[~ref_over] != ref[~ref_over]))
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    total = mult_bad = bias_bad = sat = flush = 0
    t0 = time.perf_counter()
    while total < args.n:
        n = min(args.chunk, args.n - total)
        specs = list(PRESETS.values()) + [_random_spec(rng, i) for i in range(26)]
        sx, sw, sy, which, fields = _chunk(rng, n, specs)
        bad, s, f = _multiplier_mismatches(sx, sw, sy, which, fields, specs)
        mult_bad, sat, flush = mult_bad + bad, sat + s, flush + f
        bias_bad += _bias_mismatches(rng, n, sx, sw)
        total += n
        print(f"{total:>10} triples: multiplier mismatches {mult_bad}, bias mismatches {bias_bad} "
              f"({len(BIAS_MODES)} modes), saturated {sat}, flushed {flush}, {time.perf_counter() - t0:.1f} s",
              flush=True)
    print(f"TOTAL {total} scale triples x (1 multiplier + {len(BIAS_MODES)} bias roundings): "
          f"{mult_bad + bias_bad} mismatches")


if __name__ == "__main__":
    main()
