"""Elementwise and pooling ops where torch's qnnpack engine computes differently (quint8).

* :func:`add` — QNNPACK ``q8vadd`` (``pytorch_qnnp_compute_add_quantization_params``), fixed point:
  ``a = fl32(fl32(sa)/fl32(so))``, likewise ``b``; ``shift = 21 - exponent(max(a, b))``;
  ``am = lrintf(a * 2**shift)``, ``bm`` likewise; ``acc = int32(-(am*za + bm*zb) + am*qa + bm*qb)``;
  ``r = (acc >> shift) + ((acc & mask) - (acc < 0) > mask >> 1)`` (rounding half away from zero);
  ``q = clamp(sat16(r) + zo, relu ? zo : 0, 255)``.  Used for equal shapes; torch raises when a scale
  ratio is outside ``[2**-14, 2**8)``.
* :func:`hardswish`, :func:`hardsigmoid`, :func:`sigmoid`, :func:`tanh` — 256-entry tables computed with
  the scalar formulas (every element takes ATen's scalar lambda); sigmoid divides in float.
* :func:`avg_pool2d` — the divisor is always ``kH*kW`` (``count_include_pad`` and ``divisor_override``
  are ignored), ``q = clamp(rne(fl32(acc * fl32(s / fl32(s*kH*kW)))) + zp)``; adaptive pooling with
  divisible sizes becomes this average pool.
* :func:`clamp_channels_last` — torch's qnnpack clamp / relu6 / hardtanh on a channels-last input
  computes in storage (NHWC) order and writes the results in logical (NCHW) order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..checks import QuantizationError
from ..dtypes import quint8
from ..qarray import QArray, as_f32, as_i32
from . import elementwise as ew
from . import transcendental as tr
from .arith import dequantize_scalar, quantize_scalar

__all__ = ["add", "add_params", "hardswish", "hardsigmoid", "sigmoid", "tanh", "avg_pool2d", "clamp_channels_last"]

F = np.float32


def _check(x, name="x"):
    if not isinstance(x, QArray) or x.dtype != quint8 or x.axis is not None:
        raise QuantizationError(f"{name}: the qnnpack kernels take per-tensor quint8 QArrays")


def add_params(sa, sb, so):
    """``(am, bm, shift)`` of ``q8vadd``, from concrete scales."""
    a_out = F(F(sa) / F(so))
    b_out = F(F(sb) / F(so))
    for r in (a_out, b_out):
        if not (2.0**-14 <= float(r) < 2.0**8):
            raise QuantizationError(f"qnnpack add needs input/output scale ratios in [2**-14, 2**8), got {float(r)}")
    e = int(np.array(max(a_out, b_out), F).view(np.uint32) >> 23) - 127
    shift = 21 - e
    sm = F(2.0**shift)
    am = int(np.rint(np.float64(F(a_out * sm))))
    bm = int(np.rint(np.float64(F(b_out * sm))))
    return am, bm, shift


def add(a: QArray, b: QArray, scale, zero_point, *, relu=False, in_qparams=None) -> QArray:
    """QNNPACK fixed-point add (see the module docstring); needs concrete scales
    (``in_qparams=((sa, za), (sb, zb))`` when ``a``/``b`` are traced)."""
    _check(a, "a")
    _check(b, "b")
    if a.shape != b.shape:
        raise QuantizationError("qnnpack add takes equal shapes (torch falls back to ATen's kernel otherwise)")
    if in_qparams is None:
        in_qparams = ((np.asarray(a.scale), np.asarray(a.zero_point)), (np.asarray(b.scale), np.asarray(b.zero_point)))
    (sa, za), (sb, zb) = ((float(s_), int(z_)) for s_, z_ in in_qparams)
    so, zo = float(scale), int(zero_point)
    am, bm, shift = add_params(sa, sb, so)
    zpp = ((-(am * za + bm * zb) + 2**31) % 2**32) - 2**31  # int32 wrap-around
    acc = jnp.int32(zpp) + jnp.int32(am) * a.values.astype(jnp.int32) + jnp.int32(bm) * b.values.astype(jnp.int32)
    mask = (1 << shift) - 1
    rem = (acc & mask) - (acc < 0).astype(jnp.int32)
    r = (acc >> shift) + (rem > (mask >> 1)).astype(jnp.int32)
    r = jnp.clip(jnp.clip(r, -32768, 32767) + zo, -32768, 32767)
    q = jnp.clip(r, zo if relu else 0, 255)
    return QArray(q.astype(np.uint8), as_f32(scale), as_i32(zero_point), quint8, None, check=False)


def _scalar_unary(a, core, so, zo):
    inv = f32x.div_rn(1.0, jnp.float32(so))
    y = core(dequantize_scalar(a.values, a.scale, a.zero_point))
    q = quantize_scalar(y, inv, zo, 0, 255)
    return QArray(q.astype(np.uint8), as_f32(so), as_i32(zo), quint8, None, check=False)


def hardswish(a: QArray, scale, zero_point) -> QArray:
    _check(a, "a")
    return _scalar_unary(a, ew._hardswish_core, scale, zero_point)


def hardsigmoid(a: QArray) -> QArray:
    _check(a, "a")
    so, zo = ew.FIXED_QPARAMS[("hardsigmoid", "quint8")]
    return _scalar_unary(a, lambda x: f32x.div_rn(jnp.clip(x + 3.0, 0.0, 6.0), 6.0), so, zo)


@functools.lru_cache(maxsize=256)
def _table(kind, si, zi):
    q = jnp.arange(0, 256, dtype=jnp.int32)
    x = np.asarray(dequantize_scalar(q, np.float32(si), zi))
    if kind == "sigmoid":
        y = (F(1) / (F(1) + tr.libm("expf", -x))).astype(F)  # float reciprocal (the ATen scalar lambda uses double)
        so, zo = ew.FIXED_QPARAMS[("sigmoid", "quint8")]
    else:
        y = tr.libm("tanhf", x)
        so, zo = ew.FIXED_QPARAMS[("tanh", "quint8")]
    inv = f32x.div_rn(1.0, np.float32(so))
    return np.asarray(quantize_scalar(jnp.asarray(y), inv, zo, 0, 255)), so, zo


def _lut(a, kind, in_qparams=None):
    _check(a, "a")
    si, zi = in_qparams if in_qparams is not None else (np.asarray(a.scale), np.asarray(a.zero_point))
    table, so, zo = _table(kind, float(np.float32(si)), int(zi))
    v = jnp.asarray(table)[a.values.astype(jnp.int32)]
    return QArray(v.astype(np.uint8), as_f32(so), as_i32(zo), quint8, None, check=False)


def sigmoid(a: QArray, in_qparams=None) -> QArray:
    return _lut(a, "sigmoid", in_qparams)


def tanh(a: QArray, in_qparams=None) -> QArray:
    return _lut(a, "tanh", in_qparams)


def avg_pool2d(x: QArray, kernel_size, stride=None, padding=0) -> QArray:
    """QNNPACK average pooling (see the module docstring); ``(N, C, H, W)``."""
    _check(x, "x")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    stride = stride or (kh, kw)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if kh * kw == 1:
        raise QuantizationError("qnnpack rejects 1x1 pooling (torch: '1x1 pooling is meaningless')")
    v = _avg_pool2d_values(x.values, x.scale, x.zero_point, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
    return x.with_values(v, quint8)


@functools.partial(jax.jit, static_argnames=("kh", "kw", "sh", "sw", "ph", "pw"))
def _avg_pool2d_values(values, s, zp, *, kh, kw, sh, sw, ph, pw):
    n, c, h, w = values.shape
    xp = jnp.pad(values.astype(jnp.int32), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=zp)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    acc = 0
    for i in range(kh):
        for j in range(kw):
            acc = acc + xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    acc = acc - zp * (kh * kw)
    m = f32x.div_rn(s, f32x.mul_rn(s, np.float32(kh * kw)))
    v = jnp.round(f32x.mul_rn(acc.astype(jnp.float32), m)).astype(jnp.int32) + zp
    return jnp.clip(v, 0, 255).astype(np.uint8)


def clamp_channels_last(x: QArray, lo: float, hi: float) -> QArray:
    """torch's qnnpack clamp on a channels-last input: NHWC-order results written in NCHW order."""
    _check(x, "x")
    y = ew.hardtanh(x, lo, hi).values
    mem = jnp.moveaxis(y, 1, -1).reshape(-1)
    return x.with_values(mem.reshape(x.shape), quint8)
