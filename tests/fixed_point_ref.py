"""Exact Python-integer references for fixed-point requantization (gemmlowp / TFLite formulas)."""

from fractions import Fraction


def py_round(fr: Fraction, mode):
    """Exact rational rounding (the reference every mode must match)."""
    fl = fr.numerator // fr.denominator
    rem = fr - fl
    if mode == "floor" or rem == 0:
        return fl
    if mode == "ceil":
        return fl + 1
    if mode == "toward_zero":
        return fl if fr >= 0 else fl + 1
    if rem > Fraction(1, 2):
        return fl + 1
    if rem < Fraction(1, 2):
        return fl
    return {"half_up": fl + 1, "half_down": fl, "half_away": fl + 1 if fr > 0 else fl,
            "half_even": fl + (fl % 2)}[mode]


def py_srdhm(a, b):
    if a == b == -(2**31):
        return 2**31 - 1
    ab = a * b
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    s = ab + nudge
    return s // 2**31 if s >= 0 else -((-s) // 2**31)  # C division truncates toward zero


def py_rdpot(x, e):
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)
