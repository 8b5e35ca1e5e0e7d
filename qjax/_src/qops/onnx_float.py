"""ONNX Runtime's float ops between DequantizeLinear and QuantizeLinear, where they are provably reproducible.

ORT leaves some ops float in its optimized graph (see ``notes``: Conv / Add / MaxPool / GlobalAveragePool with
int8 activations after its S8->U8 pass mixes int8 and uint8 QDQ types, Convs whose bias was not an initializer,
HardSigmoid+Mul from Hardswish, AveragePool, Resize, ReduceMean, Tanh).  Two kinds:

* single correctly rounded IEEE ops (Add, Sub, Mul, Div, Max, Min, Relu, Clip, MaxPool, Resize nearest): the
  result is ``fl32(a op b)`` whatever the kernel, reproduced with contraction-proof float32 primitives
  (:mod:`qjax.float32`: XLA would otherwise fuse a DequantizeLinear's multiply with a following add);
* summations (Conv, MatMul, Gemm, AveragePool, GlobalAveragePool, ReduceMean) whose rounding depends on MLAS's
  blocking and FMA use.  They are reproduced only under :func:`exact_products_check`'s condition: every
  dequantized operand ``(q - zp) * s``, every product and every partial sum is exactly representable in float32
  (scales ``m * 2**e`` with a small odd ``m``, sums bounded below ``2**24`` units of the product's last place).
  Then any summation order, with or without FMA, gives the exact value, which is integer arithmetic scaled by a
  power of two.  Averages then divide once (MLAS ``pooling.cpp`` ``AveragePool``: ``Reduction / Size``).
  Otherwise the caller refuses.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..float32 import div_rn, uncontracted

__all__ = ["binary_f32", "unary_f32", "max_pool_f32", "resize_nearest_f32", "odd_mantissa", "exact_products_check",
           "exact_sum_check", "scaled_int_to_f32", "BINARY_OPS", "UNARY_OPS"]

BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min")
UNARY_OPS = ("Relu", "Clip", "HardSigmoid", "HardSwish", "Neg", "Abs", "Identity")
_F32 = jnp.float32


def binary_f32(op: str, a, b):
    """``fl32(a op b)`` with numpy broadcasting; ``op`` in :data:`BINARY_OPS`.

    The operands pass through :func:`uncontracted` so a multiply that produced them (a DequantizeLinear) is not
    fused into the add, and a product is returned uncontracted so a later add cannot fuse it either: ORT's
    elementwise kernels (Eigen / MLAS ``MlasEltwiseAdd``) round each op once."""
    a = uncontracted(jnp.asarray(a, _F32))
    b = uncontracted(jnp.asarray(b, _F32))
    if op == "Add":
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return uncontracted(a * b)
    if op == "Div":
        a, b = jnp.broadcast_arrays(a, b)
        return div_rn(a, b)
    if op == "Max":
        return jnp.maximum(a, b)
    if op == "Min":
        return jnp.minimum(a, b)
    raise ValueError(f"op={op!r}; use one of {BINARY_OPS}")


def unary_f32(op: str, x, *, alpha=None, beta=None, lo=None, hi=None):
    """ORT's float activation ``op`` (in :data:`UNARY_OPS`) of ``x`` (float32).

    Relu ``max(x, 0)``; Clip ``min(max(x, lo), hi)``; HardSigmoid ``max(0, min(1, fl(fl(alpha*x) + beta)))``
    (ORT ``activations.h`` HardSigmoid: Eigen ``alpha * x + beta`` then clamps, two roundings: measured vs
    ORT, the fused form differs); HardSwish ``fl(x * HardSigmoid(x; 1/6, 1/2))``."""
    x = uncontracted(jnp.asarray(x, _F32))
    if op == "Identity":
        return x
    if op == "Neg":
        return -x
    if op == "Abs":
        return jnp.abs(x)
    if op == "Relu":
        return jnp.maximum(x, _F32(0))
    if op == "Clip":
        y = x if lo is None else jnp.maximum(x, _F32(lo))
        return y if hi is None else jnp.minimum(y, _F32(hi))
    if op in ("HardSigmoid", "HardSwish"):
        if op == "HardSwish":
            alpha, beta = np.float32(1 / 6), np.float32(0.5)
        a = _F32(0.2 if alpha is None else alpha)
        c = _F32(0.5 if beta is None else beta)
        hs = jnp.clip(uncontracted(x * a) + c, _F32(0), _F32(1))
        return uncontracted(x * uncontracted(hs)) if op == "HardSwish" else hs
    raise ValueError(f"op={op!r}; use one of {UNARY_OPS}")


def pool_output_size(n, k, s, pb, pe, d, ceil_mode):
    """ONNX/ORT pool output extent (``pool_attributes.h``): floor or ceil of ``(n+pb+pe-d(k-1)-1)/s + 1``; with
    ceil_mode a last window starting in the end padding is dropped."""
    span = n + pb + pe - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pb:
        out -= 1
    return out


def max_pool_f32(x, *, kernel_shape, strides, pads, dilations, ceil_mode):
    """MaxPool of an ``(N, C, *spatial)`` float32 array (max is exact: any kernel order gives the same value).

    ``pads`` ONNX order ``(b1, .., e1, ..)``; padded taps are ``-inf`` (MLAS ``InitialValue`` is ``lowest()``;
    a window never lies wholly in padding)."""
    x = jnp.asarray(x, _F32)
    nd = len(kernel_shape)
    sp = x.shape[2:]
    cfg = [(0, 0), (0, 0)]
    for i in range(nd):
        out = pool_output_size(sp[i], kernel_shape[i], strides[i], pads[i], pads[nd + i], dilations[i], ceil_mode)
        need = (out - 1) * strides[i] + dilations[i] * (kernel_shape[i] - 1) + 1
        cfg.append((pads[i], max(need - sp[i] - pads[i], 0)))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1) + tuple(kernel_shape), (1, 1) + tuple(strides),
                             cfg, window_dilation=(1, 1) + tuple(dilations))


def _nearest_indices(n_in, n_out, scale, ctm, nearest_mode):
    """Source index per output index, ORT ``upsamplebase.h`` in float32 (numpy float32 = IEEE float32)."""
    f = np.float32
    xr = np.arange(n_out, dtype=f)
    s = f(scale)
    if ctm == "asymmetric":
        xo = xr / s
    elif ctm == "half_pixel":
        xo = (xr + f(0.5)) / s - f(0.5)
    elif ctm == "pytorch_half_pixel":
        xo = (xr + f(0.5)) / s - f(0.5) if n_out > 1 else np.zeros(n_out, f)
    elif ctm == "tf_half_pixel_for_nn":
        xo = (xr + f(0.5)) / s
    elif ctm == "align_corners":
        xo = np.zeros(n_out, f) if n_out == 1 else xr * f(n_in - 1) / f(n_out - 1)
    else:
        raise ValueError(f"coordinate_transformation_mode={ctm!r} is not reproduced for nearest Resize")
    # std::round rounds half away from zero (np.round would round half to even)
    std_round = np.sign(xo) * np.floor(np.abs(xo) + f(0.5))
    if nearest_mode == "floor":
        idx = np.floor(xo)
    elif nearest_mode == "ceil":
        idx = np.ceil(xo)
    elif nearest_mode == "round_prefer_floor":  # x == int64(x) + 0.5 (truncation) -> floor, else std::round
        idx = np.where(xo == np.trunc(xo) + f(0.5), np.floor(xo), std_round)
    elif nearest_mode == "round_prefer_ceil":
        idx = std_round
    else:
        raise ValueError(f"nearest_mode={nearest_mode!r}")
    return np.clip(idx.astype(np.int64), 0, n_in - 1)


def resize_nearest_f32(x, *, scales, out_shape, coordinate_transformation_mode="half_pixel",
                       nearest_mode="round_prefer_floor"):
    """Nearest Resize of a float array: a gather, exact.  ``scales`` are the float32 per-axis scales ORT uses
    (given, or ``out/in``); indices computed on the host as ORT computes them in float32."""
    x = jnp.asarray(x, _F32)
    for ax, (n_in, n_out, s) in enumerate(zip(x.shape, out_shape, scales)):
        if n_in == n_out and float(s) == 1.0:
            continue
        idx = _nearest_indices(n_in, n_out, s, coordinate_transformation_mode, nearest_mode)
        x = jnp.take(x, jnp.asarray(idx, jnp.int32), axis=ax)
    return x


# -- summations: exactness condition ---------------------------------------------------------------------------

def odd_mantissa(s: float):
    """``(m, e)`` with ``s == m * 2**e``, ``m`` odd (``s`` a positive finite float32 value)."""
    s = float(np.float32(s))
    m, e = math.frexp(s)  # s = m * 2**e, 0.5 <= m < 1
    mi, ei = int(m * (1 << 24)), e - 24
    while mi % 2 == 0:
        mi //= 2
        ei += 1
    return mi, ei


def _k_range(dtype_min, dtype_max, zp):
    zp = np.asarray(zp, np.int64)
    return np.maximum(np.abs(dtype_min - zp), np.abs(dtype_max - zp))


def exact_sum_check(scale, zp, qmin, qmax, n):
    """Why a sum of ``n`` dequantized values ``fl((q - zp) * scale)`` (per-tensor) may be inexact in float32, or
    None when every dequantized value and every partial sum is exact (the sum is ``S * m * 2**e``)."""
    m, e = odd_mantissa(scale)
    kmax = int(_k_range(qmin, qmax, zp))
    if e < -126:
        return f"scale {float(scale):.9g} has its last mantissa bit below 2**-126 (subnormal products)"
    if n * kmax * m >= 1 << 24:
        return (f"n * max|q - zp| * m = {n} * {kmax} * {m} >= 2**24 (scale = {m} * 2**{e}: its odd mantissa m is too "
                "wide for float32 to hold the sum exactly)")
    return None


def exact_products_check(sa, za, a_range, sb, zb, b_range, terms_bound, bias_units=None):
    """Why ``sum_i dq(a_i) * dq(b_i) (+ bias)`` may be inexact in float32, else None.

    ``sa`` scalar, ``sb`` scalar or per output channel; ``a_range``/``b_range`` the ``(qmin, qmax)`` of each
    operand; ``terms_bound[o]``: an upper bound of ``sum_i |qa_i - za| * |qb_i - zb|`` per output channel
    (in integer units); ``bias_units[o]``: the bias as an integer multiple of ``2**(ea + eb[o])`` (or None).
    Exact when ``(terms_bound * ma * mb[o] + |bias_units|) < 2**24`` and ``2**(ea+eb) >= 2**-126``: then every
    product and partial sum is an integer below 2**24 times that power of two."""
    ma, ea = odd_mantissa(sa)
    sb = np.atleast_1d(np.asarray(sb, np.float32))
    tb = np.broadcast_to(np.asarray(terms_bound, np.int64), sb.shape)
    for o, s in enumerate(sb):
        mb, eb = odd_mantissa(s)
        if ea + eb < -126:
            return f"scale product {float(sa) * float(s):.9g} has its last bit below 2**-126 (subnormal)"
        bias = 0 if bias_units is None else abs(int(np.asarray(bias_units).reshape(-1)[o if np.size(bias_units) > 1 else 0]))
        total = int(tb[o]) * ma * mb + bias
        if total >= 1 << 24:
            return (f"channel {o}: sum|qa-za||qb-zb| * ma * mb + |bias| = {int(tb[o])} * {ma} * {mb} + {bias} >= 2**24 "
                    f"(scales {float(sa):.9g} = {ma}*2**{ea}, {float(s):.9g} = {mb}*2**{eb}: partial sums not exact)")
    del a_range, b_range
    return None


def bias_units(bias_values, bias_scale, sa, sb):
    """The dequantized int32 bias ``fl(qb * sbias)`` as integers times ``2**(ea + eb[o])``, or None when some value
    is not such a multiple (or not exact itself)."""
    _, ea = odd_mantissa(sa)
    sb = np.broadcast_to(np.atleast_1d(np.asarray(sb, np.float32)), np.shape(bias_values))
    sbias = np.broadcast_to(np.asarray(bias_scale, np.float32), np.shape(bias_values))
    out = []
    for q, s_b, s_o in zip(np.asarray(bias_values).reshape(-1), sbias.reshape(-1), sb.reshape(-1)):
        d = np.float32(np.float32(q) * s_b)  # ORT's DequantizeLinear: float(q - 0) * scale, one rounding
        if float(np.float32(q)) != float(q):
            return None
        _, eb = odd_mantissa(s_o)
        u = math.ldexp(float(d), -(ea + eb))
        if u != int(u) or abs(u) >= 1 << 24:
            return None
        out.append(int(u))
    return np.asarray(out, np.int64)


def scaled_int_to_f32(units, exponent):
    """``units * 2**exponent`` in float32 (``units`` int32 below 2**24 in magnitude: exact; the power of two is
    split in two factors so neither overflows nor is subnormal)."""
    e = np.asarray(exponent, np.int64)
    e1 = e // 2
    e2 = e - e1
    f1 = jnp.asarray(np.ldexp(np.float32(1), e1).astype(np.float32))
    f2 = jnp.asarray(np.ldexp(np.float32(1), e2).astype(np.float32))
    return uncontracted(uncontracted(units.astype(_F32) * f1) * f2)
