"""exp / expm1 / tanh exactly as torch's quantized sigmoid, tanh and elu compute them.

The vector lambdas call SLEEF's u10 float routines (``Sleef_expf8_u10``,
``Sleef_expm1f8_u10``, ``Sleef_tanhf8_u10``, AVX2+FMA build); the scalar lambdas call
the C library's ``expf`` / ``expm1f`` / ``tanhf``.  Neither is correctly rounded, so
``jnp.exp`` cannot stand in for them.

For 8-bit inputs an elementwise op is a function of the input integer alone, so the
quantized ops tabulate both paths once per set of quantization parameters (256
entries each) with the numpy routines here and gather from the tables in JAX.

* :func:`sleef_expf`, :func:`sleef_expm1f`, :func:`sleef_tanhf` — a numpy float32 port
  of SLEEF ``src/libm/sleefsimdsp.c`` (``xexpf``, ``expk2f``, ``xexpm1f``, ``xtanhf``) and
  ``src/common/df.h`` with the FMA branch, every operation rounded as in the C code.
* :func:`libm` — the platform C library's float function through ``ctypes`` (glibc on
  Linux, as linked into torch); results follow the installed glibc, as torch's do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

from ..float32 import fma32_numpy

__all__ = ["sleef_expf", "sleef_expm1f", "sleef_tanhf", "libm"]

F = np.float32


def _f(x):
    return np.asarray(x, dtype=F)


def _add(a, b):
    return (_f(a) + _f(b)).astype(F)


def _sub(a, b):
    return (_f(a) - _f(b)).astype(F)


def _mul(a, b):
    return (_f(a) * _f(b)).astype(F)


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return (_f(a) / _f(b)).astype(F)


def _mla(a, b, c):  # vmla_vf_vf_vf_vf with FMA: a*b + c
    return fma32_numpy(a, b, c)


def _mlapn(a, b, c):  # a*b - c
    return fma32_numpy(a, b, -_f(c))


def _mlanp(a, b, c):  # -a*b + c
    return fma32_numpy(-_f(a), b, c)


def _rint_i32(x):  # _mm256_cvtps_epi32: nearest even; NaN/overflow -> INT_MIN
    r = np.rint(_f(x).astype(np.float64))
    return np.where(~np.isfinite(r) | (np.abs(r) >= 2**31), -(2**31), r).astype(np.int64)


def _pow2i(q):  # reinterpret ((q + 0x7f) << 23) as float (int32 wrap-around)
    return ((((np.asarray(q, np.int64) + 0x7F) << 23) & 0xFFFFFFFF).astype(np.uint32)).view(F)


def _ldexp2(d, e):
    e = np.asarray(e, np.int64)
    h = e >> 1
    with np.errstate(over="ignore", invalid="ignore"):
        return _mul(_mul(d, _pow2i(h)), _pow2i(e - h))


R_LN2 = F(1.442695040888963407359924681001892137426645954152985934135449406931)
L2U = F(0.693145751953125)
L2L = F(1.428606765330187045e-06)


# double-float helpers (df.h, FMA branch)
def _dfadd2_f2_f(x, y):
    s = _add(x[0], y)
    v = _sub(s, x[0])
    t = _add(_sub(x[0], _sub(s, v)), _sub(y, v))
    return s, _add(t, x[1])


def _dfadd2_f2_f2(x, y):
    s = _add(x[0], y[0])
    v = _sub(s, x[0])
    t = _add(_sub(x[0], _sub(s, v)), _sub(y[0], v))
    return s, _add(t, _add(x[1], y[1]))


def _dfadd_f_f2(x, y):
    s = _add(x, y[0])
    return s, _add(_add(_sub(x, s), y[0]), y[1])


def _dfadd_f2_f2(x, y):
    s = _add(x[0], y[0])
    return s, _add(_add(_add(_sub(x[0], s), y[0]), x[1]), y[1])


def _dfmul_f2_f(x, y):
    s = _mul(x[0], y)
    return s, _mla(x[1], y, _mlapn(x[0], y, s))


def _dfmul_f2_f2(x, y):
    s = _mul(x[0], y[0])
    return s, _mla(x[0], y[1], _mla(x[1], y[0], _mlapn(x[0], y[0], s)))


def _dfsqu(x):
    s = _mul(x[0], x[0])
    return s, _mla(_add(x[0], x[0]), x[1], _mlapn(x[0], x[0], s))


def _dfrec(d):
    s = _div(F(1), d[0])
    return s, _mul(s, _mlanp(d[1], s, _mlanp(d[0], s, F(1))))


def _dfdiv(n, d):
    t = _div(F(1), d[0])
    s = _mul(n[0], t)
    u = _mlapn(t, n[0], s)
    v = _mlanp(d[1], t, _mlanp(d[0], t, F(1)))
    return s, _mla(s, v, _mla(n[1], t, u))


def sleef_expf(d):
    """SLEEF ``xexpf`` (u10)."""
    d = _f(d)
    with np.errstate(all="ignore"):
        q = _rint_i32(_mul(d, R_LN2))
        qf = q.astype(F)
        s = _mla(qf, -L2U, d)
        s = _mla(qf, -L2L, s)
        u = F(0.000198527617612853646278381)
        for c in (0.00139304355252534151077271, 0.00833336077630519866943359, 0.0416664853692054748535156,
                  0.166666671633720397949219, 0.5):
            u = _mla(u, s, F(c))
        u = _add(F(1.0), _mla(_mul(s, s), u, s))
        u = _ldexp2(u, q)
        u = np.where(d < F(-104), F(0), u)
        u = np.where(F(100) < d, F(np.inf), u)
        u = np.where(np.isnan(d), d, u)
    return u.astype(F)


def _expk2f(d):
    with np.errstate(all="ignore"):
        q = _rint_i32(_mul(_add(d[0], d[1]), R_LN2))
        qf = q.astype(F)
        s = _dfadd2_f2_f(d, _mul(qf, -L2U))
        s = _dfadd2_f2_f(s, _mul(qf, -L2L))
        u = F(+0.1980960224e-3)
        for c in (+0.1394256484e-2, +0.8333456703e-2, +0.4166637361e-1):
            u = _mla(u, s[0], F(c))
        t = _dfadd2_f2_f(_dfmul_f2_f(s, u), F(+0.166666659414234244790680580464e0))
        t = _dfadd2_f2_f(_dfmul_f2_f2(s, t), F(0.5))
        t = _dfadd2_f2_f2(s, _dfmul_f2_f2(_dfsqu(s), t))
        t = _dfadd_f_f2(F(1), t)
        tx, ty = _ldexp2(t[0], q), _ldexp2(t[1], q)
        small = d[0] < F(-104)
        return np.where(small, F(0), tx).astype(F), np.where(small, F(0), ty).astype(F)


def sleef_expm1f(a):
    """SLEEF ``xexpm1f`` (u10)."""
    a = _f(a)
    with np.errstate(all="ignore"):
        d = _dfadd2_f2_f(_expk2f((a, np.zeros_like(a))), F(-1.0))
        x = _add(d[0], d[1])
        x = np.where(a > F(88.72283172607421875), F(np.inf), x)
        x = np.where(a < F(-16.635532333438687426013570), F(-1), x)
        x = np.where((a == 0) & np.signbit(a), F(-0.0), x)
    return x.astype(F)


def sleef_tanhf(x):
    """SLEEF ``xtanhf`` (u10)."""
    x = _f(x)
    with np.errstate(all="ignore"):
        y = np.abs(x)
        d = _expk2f((y, np.zeros_like(y)))
        e = _dfrec(d)
        d = _dfdiv(_dfadd_f2_f2(d, (-e[0], -e[1])), _dfadd_f2_f2(d, e))
        y = _add(d[0], d[1])
        y = np.where((np.abs(x) > F(8.664339742)) | np.isnan(y), F(1.0), y)
        y = np.copysign(y, x)
        y = np.where(np.isnan(x), F(np.nan), y)
    return y.astype(F)


@functools.lru_cache(maxsize=None)
def _libm_fn(name):
    path = ctypes.util.find_library("m") or "libm.so.6"
    fn = getattr(ctypes.CDLL(path), name)
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float]
    return fn


def libm(name: str, x):
    """The C library's float ``name`` (``"expf"``, ``"expm1f"``, ``"tanhf"``) applied elementwise."""
    fn = _libm_fn(name)
    x = _f(x)
    return np.array([fn(float(v)) for v in x.ravel()], F).reshape(x.shape)
