"""Quantized LayerNorm / GroupNorm / InstanceNorm (``quantized::layer_norm``, ``group_norm``,
``instance_norm``), torch 2.13 CPU, bit-exact.

Source: ``aten/src/ATen/native/quantized/cpu/qnormalization.cpp`` (which kernel) and
``kernels/QuantizedOpKernels.cpp`` ``quantized_normalize_kernel`` / ``quantized_groupnorm_nhwc_kernel``
(the arithmetic).  Both stubs are registered with ``REGISTER_DISPATCH``, which has no AVX512 entry, so on
an AVX512 machine torch runs the **AVX2 build**: ``Vectorized<float>`` has 8 lanes and
``Vectorized<quint8/qint8>`` 32 (4 float vectors); that build is compiled with FMA contraction, which
the formulas below carry as explicit ``fma`` (each checked against live torch).

Per row (LayerNorm: the trailing ``normalized_shape`` elements; GroupNorm: one group of one sample),
with ``q`` the raw integers, ``n`` the element count, ``xs`` / ``zx`` the input's float32 scale and
zero point, ``eps`` a double::

    s, ss   = sum(q), sum(q*q)                           exact integers (hsum / hsum_sq)
    ms      = fl32(float(s) / n)                         mean / xs + zx
    mean    = fl32(ms - zx)                              mean / xs
    var     = max(fma(-ms, ms, fl32(float(ss) / n)), 0)  var / xs**2 (contracted)
    t       = fl32(fl32(var * xs) * xs)
    inv     = fl32(double(xs) / sqrt(double(t) + eps))   in double: xs / std

then per element (``gamma`` / ``beta`` default to 1 / 0):

* contiguous, per-element affine (LayerNorm): ``y = fma(fl32(fl32(q - zx) - mean) * inv), gamma, beta)``;
  elements below ``n // 32 * 32`` quantize with the vector rule, the rest with ``quantize_val``;
* contiguous, per-channel affine (GroupNorm / InstanceNorm): ``g = fl32(inv * gamma[c])``,
  ``y = fma(fl32(float(q - zx) - mean), g, beta[c])``, all with the vector rule (the tail is a
  partial vector load);
* channels-last 4-d GroupNorm / InstanceNorm2d (``quantized_groupnorm_nhwc_kernel``):
  ``g = fl32(inv * gamma[c])``, ``b = fma(-g, mean, beta[c])``, ``y = fma(float(q - zx), g, b)``.
  With ``H*W < 512`` the vector rule covers the first ``(C/G) // 32 * 32`` channels of each group; with
  ``H*W >= 512`` the first ``C // 32 * 32`` channels, and the sums are **float32** running sums (per
  channel over the positions in order, then over the group's channels) — reproduced for one thread.

The vector rule is ``clamp(rne(fl32(y * fl32(1/ys))) + zy)`` (``QuantizeAvx2``), the scalar one
``clamp(rne(fl32(fl32(y * inv) + zy)))``.  The double-precision ``inv`` is computed exactly with integer
arithmetic (:func:`inv_std_double`): no ``jax_enable_x64``.

Refused: more than 65,792 elements per row (the exact float conversion of the sums), channels-last
tensors with ``H*W >= 512`` and several threads (torch's per-thread float partial sums), other dtypes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..checks import QuantizationError
from ..qarray import QArray, as_f32, as_i32, scale_words
from .arith import quantize_vec
from .elementwise import check_8bit, check_output_qparams
from .paths import CHANNELS_LAST, CONTIGUOUS

__all__ = ["layer_norm", "group_norm", "instance_norm", "inv_std_double", "row_stats"]

F = np.float32
_U32 = jnp.uint32
_I32 = jnp.int32
#: torch's AVX2 build: 8 float lanes x 4 = 32 integers per quantized vector
INT_VLEN = 32
#: quantized_groupnorm_nhwc_kernel switches to float accumulation at this many positions
NHWC_FEATURE_MAP_THRESHOLD = 512
#: beyond this many elements per row the exact float conversion of sum(q*q) is not modelled
MAX_ROW = 65792


# -- exact double arithmetic on uint32 pairs (positive normal values) --------------------------------------
# A 64-bit unsigned integer is (hi, lo) uint32; a positive double is m * 2**e with m a 53-bit integer.


def _u(v):
    return jnp.asarray(v, _U32)


def _shl32(x, k):
    k = jnp.asarray(k, _I32)
    return jnp.where(k >= 32, _u(0), x << jnp.clip(k, 0, 31).astype(_U32))


def _shr32(x, k):
    k = jnp.asarray(k, _I32)
    return jnp.where(k >= 32, _u(0), x >> jnp.clip(k, 0, 31).astype(_U32))


def _shr64(h, l, k):
    """((h, l) >> k, sticky) for k >= 0; sticky says whether a set bit was shifted out."""
    k = jnp.asarray(k, _I32)
    k1 = jnp.clip(k, 1, 31).astype(_U32)  # the shift within a word (k < 32), or of h into l (32 <= k < 64)
    k2 = jnp.clip(k - 32, 0, 31).astype(_U32)
    lt32 = k < 32
    nh = jnp.where(lt32, jnp.where(k == 0, h, h >> k1), _u(0))
    nl_small = jnp.where(k == 0, l, (l >> k1) | (h << (_u(32) - k1)))
    nl = jnp.where(lt32, nl_small, jnp.where(k < 64, h >> k2, _u(0)))
    lost_small = jnp.where(k == 0, False, (l & ((_u(1) << k1) - _u(1))) != 0)
    lost_big = (l != 0) | ((h & ((_u(1) << k2) - _u(1))) != 0)
    lost = jnp.where(lt32, lost_small, jnp.where(k < 64, lost_big, (h | l) != 0))
    return nh, nl, lost


def _add64(a, b):
    lo = a[1] + b[1]
    return a[0] + b[0] + (lo < a[1]).astype(_U32), lo


def _sub64(a, b):
    lo = a[1] - b[1]
    return a[0] - b[0] - (a[1] < b[1]).astype(_U32), lo


def _ge64(a, b):
    return (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] >= b[1]))


def _round_drop(h, l, drop: int, sticky):
    """Round (h, l) >> drop to nearest even (a constant drop in 1..31), with extra sticky bits below."""
    nh, nl = h >> _u(drop), (l >> _u(drop)) | (h << _u(32 - drop))
    rem = l & ((_u(1) << _u(drop)) - _u(1))
    half = _u(1) << _u(drop - 1)
    up = (rem > half) | ((rem == half) & (sticky | ((nl & _u(1)) == 1)))
    return _add64((nh, nl), (jnp.zeros_like(nh), up.astype(_U32)))


def _normalize53(h, l, e):
    """A rounding carry (m == 2**53) renormalized to m = 2**52, e + 1."""
    carry = h == _u(1 << 21)
    return jnp.where(carry, _u(1 << 20), h), l, e + carry.astype(_I32)


def _add_rn(m32, e32, eps_h, eps_l, eps_e):
    """RN64(m32 * 2**e32 + eps), m32 a uint32 with at most 24 bits (0 allowed), eps = (eps_h, eps_l) * 2**eps_e
    with bit 63 of the uint32 pair set."""
    # both as 64-bit significands with bit 63 set: value = M * 2**E
    lz = lax.clz(m32).astype(_I32)
    bh, bl = m32 << jnp.minimum(lz, 31).astype(_U32), jnp.zeros_like(m32)  # the float's bits on top of hi
    eb = e32 - 32 - lz  # m32 * 2**e32 == (bh, bl) * 2**eb
    ah = jnp.broadcast_to(eps_h, m32.shape)
    al = jnp.broadcast_to(eps_l, m32.shape)
    ea = jnp.broadcast_to(eps_e, e32.shape)
    b_big = (eb > ea) & (m32 != 0)
    big = (jnp.where(b_big, bh, ah), jnp.where(b_big, bl, al))
    small = (jnp.where(b_big, ah, bh), jnp.where(b_big, al, bl))
    e = jnp.where(b_big, eb, ea)
    k = jnp.where(m32 == 0, 64, jnp.abs(eb - ea))
    sh, sl, sticky = _shr64(small[0], small[1], k)
    s = _add64(big, (sh, sl))
    carry = _ge64(big, s) & ((sh | sl) != 0)  # wrapped past 2**64
    ch, cl, lost = s[0] >> _u(1), (s[1] >> _u(1)) | (s[0] << _u(31)), (s[1] & _u(1)) != 0
    s = (jnp.where(carry, ch | _u(0x80000000), s[0]), jnp.where(carry, cl, s[1]))
    sticky = sticky | (carry & lost)
    e = e + carry.astype(_I32)
    h, l = _round_drop(s[0], s[1], 11, sticky)
    return _normalize53(h, l, e + 11)


def _shl64c(h, l, k: int):
    """(h, l) << k for a constant 0 < k < 32."""
    return (h << _u(k)) | (l >> _u(32 - k)), l << _u(k)


def _sqrt_rn(h, l, e):
    """RN64(sqrt(m * 2**e)), restoring square root (55 bits, then round with the remainder)."""
    odd = (e & 1) == 1
    mh, ml = _shl64c(h, l, 1)  # m' = m * 2 when e is odd: 53-54 bits
    mh, ml = jnp.where(odd, mh, h), jnp.where(odd, ml, l)
    e2 = e - odd.astype(_I32)
    # the radicand m' * 2**56 has 55 two-bit digits: the first 27 are m' (aligned to the top of a
    # 64-bit word, taken two bits at a time), the other 28 are zero
    mh, ml = _shl64c(mh, ml, 10)
    zero = jnp.zeros_like(h)

    def step(i, carry):
        rh, rl, qh, ql, mh, ml = carry
        digit = mh >> _u(30)
        mh, ml = _shl64c(mh, ml, 2)
        rh, rl = _shl64c(rh, rl, 2)
        rl = rl | digit
        th, tl = _shl64c(qh, ql, 2)
        tl = tl | _u(1)
        ge = _ge64((rh, rl), (th, tl))
        nh, nl = _sub64((rh, rl), (th, tl))
        rh, rl = jnp.where(ge, nh, rh), jnp.where(ge, nl, rl)
        qh, ql = _shl64c(qh, ql, 1)
        return rh, rl, qh, ql | ge.astype(_U32), mh, ml

    rh, rl, qh, ql, _, _ = lax.fori_loop(0, 55, step, (zero, zero, zero, zero, mh, ml))
    # root in [2**54, 2**55): drop 2 bits; sqrt(m' * 2**e2) = root * 2**((e2 - 56) / 2)
    h2, l2 = _round_drop(qh, ql, 2, (rh | rl) != 0)
    return _normalize53(h2, l2, (e2 - 56) // 2 + 2)


def _div_rn(mx, ex, h, l, e):
    """RN64(mx * 2**ex / (m * 2**e)), mx a 24-bit float significand, by restoring division."""
    zero = jnp.zeros_like(h)
    r0 = (mx >> _u(3), mx << _u(29))  # mx * 2**29 in [2**52, 2**53); the divisor m is in [2**52, 2**53)

    def step(i, carry):
        rh, rl, qh, ql = carry
        ge = _ge64((rh, rl), (h, l))
        nh, nl = _sub64((rh, rl), (h, l))
        rh, rl = jnp.where(ge, nh, rh), jnp.where(ge, nl, rl)
        qh, ql = _shl64c(qh, ql, 1)
        rh, rl = _shl64c(rh, rl, 1)
        return rh, rl, qh, ql | ge.astype(_U32)

    rh, rl, qh, ql = lax.fori_loop(0, 56, step, (r0[0], r0[1], zero, zero))
    # Q = floor(r0 / m * 2**55) in [2**54, 2**56); value = Q * 2**(ex - e - 29 - 55)
    wide = qh >= _u(1 << 23)
    rest = (rh | rl) != 0
    wh, wl = _round_drop(qh, ql, 3, rest)
    nh, nl = _round_drop(qh, ql, 2, rest)
    h2, l2 = jnp.where(wide, wh, nh), jnp.where(wide, wl, nl)
    e2 = ex - e - 84 + jnp.where(wide, 3, 2)
    return _normalize53(h2, l2, e2)


def _to_float32(h, l, e):
    """RN32(m * 2**e) for a 53-bit m (normal float32 results)."""
    kh, kl = _round_drop(h, l, 29, jnp.zeros_like(h, bool))
    m24 = kl  # at most 2**24 after rounding
    carry = m24 == _u(1 << 24)
    m24 = jnp.where(carry, _u(1 << 23), m24)
    e32 = e + 29 + carry.astype(_I32)  # value = m24 * 2**e32
    biased = jnp.clip(e32 + 150, 1, 254).astype(_U32)
    return lax.bitcast_convert_type((biased << _u(23)) | (m24 & _u(0x7FFFFF)), jnp.float32)


def _float_parts(x):
    """A finite float32 ``x >= 0`` as (m, e): x == m * 2**e, m < 2**24 (0 for zero)."""
    b = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), _U32)
    ef = ((b >> _u(23)) & _u(0xFF)).astype(_I32)
    m = jnp.where(ef != 0, (b & _u(0x7FFFFF)) | _u(0x800000), b & _u(0x7FFFFF))
    return m, jnp.maximum(ef, 1) - 150


@jax.jit
def _inv_std_lanes(t, xs, eps_h, eps_l, eps_e):
    mt, et = _float_parts(t)
    d = _add_rn(mt, et, eps_h, eps_l, eps_e)
    s = _sqrt_rn(*d)
    mx, ex = _float_parts(jnp.broadcast_to(xs, t.shape))
    return _to_float32(*_div_rn(mx, ex, *s))


#: rows are padded to a multiple of this for the double arithmetic (one compilation serves them all)
_LANES = 256


def inv_std_double(t, x_scale, eps):
    """``fl32(double(xs) / sqrt(double(t) + eps))`` exactly, for float32 ``t >= 0`` and ``xs > 0``.

    What ``quantized_normalize_kernel`` computes as ``x_scale / std::sqrt(var * x_scale * x_scale + eps)``:
    the float product meets the double ``eps``, so the sum, the square root and the quotient are
    IEEE double operations, rounded to float32 once at the end.  Here each is one correctly
    rounded double operation done in integers (53-bit significands on uint32 pairs, a restoring
    square root and division), so the double roundings are the same.  ``eps`` is a concrete
    positive double; the results must be normal floats (they are for any real scale and eps).
    """
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise QuantizationError(f"eps must be a positive finite number, got {eps}")
    fm, fe = math.frexp(eps)
    m64 = int(fm * 2**53) << 11  # the significand on top of 64 bits: eps = m64 * 2**(fe - 64)
    t = jnp.asarray(t, jnp.float32)
    r = _inv_std_lanes(_pad_lanes(t), jnp.asarray(x_scale, jnp.float32), np.uint32(m64 >> 32), np.uint32(m64 & 0xFFFFFFFF),
                       np.int32(fe - 64))
    return r[:t.size].reshape(t.shape)


# -- the kernels -------------------------------------------------------------------------------------------


def _exact_float_sum_sq(q2):
    """``float(sum(q*q))`` over the last axis, exact int64 -> float32 rounding (rows <= MAX_ROW)."""
    sq = jnp.square(q2.astype(_I32))
    hi = jnp.sum(sq >> 8, axis=-1)  # each < 2**24 for rows <= MAX_ROW: exact floats
    lo = jnp.sum(sq & 255, axis=-1)
    # one float add of two exact floats is the correctly rounded sum hi * 256 + lo; the scaling by 256 is
    # done in float (exact), as hi * 256 overflows int32 once hi >= 2**23 (rows of ~33k large values)
    return hi.astype(jnp.float32) * 256.0 + lo.astype(jnp.float32)


@jax.jit
def _integer_sums(q2):
    """``(float(sum), float(sum of squares))`` of each row of ``q2`` (hsum / hsum_sq: exact integers)."""
    return jnp.sum(q2.astype(_I32), axis=-1).astype(jnp.float32), _exact_float_sum_sq(q2)


def mean_and_t(s_f, ss_f, n, x_scale, x_zero_point):
    """``(mean, t)`` per row from ``float(sum)`` / ``float(sum of squares)`` (float32 arrays):
    ``mean = fl32(fl32(s/n) - zx)``, ``t = fl32(fl32(var * xs) * xs)`` (see the module)."""
    nf = jnp.asarray(n, jnp.float32)  # ``/ N``: the int64 N converted to float
    ms = f32x.div_rn(s_f, nf)
    mean = ms - jnp.asarray(x_zero_point).astype(jnp.float32)
    # var: ``l_sum_sq / N - ms * ms``, contracted into one fnmadd by the AVX2 build
    var = jnp.maximum(f32x.fma(-ms, ms, f32x.div_rn(ss_f, nf)), F(0))
    xs = jnp.asarray(x_scale, jnp.float32)
    return mean, f32x.mul_rn(f32x.mul_rn(var, xs), xs)


def row_stats(s_f, ss_f, n: int, x_scale, x_zero_point, eps):
    """``(mean, inv)`` per row: :func:`mean_and_t`, then ``inv = fl32(xs / sqrt(double(t) + eps))``."""
    shape = jnp.shape(s_f)
    s_f, ss_f = _pad_lanes(s_f), _pad_lanes(ss_f)  # one compilation for every row count up to _LANES
    mean, t = _mean_and_t_jit(s_f, ss_f, np.float32(n), x_scale, x_zero_point)
    size = int(np.prod(shape))
    return mean[:size].reshape(shape), inv_std_double(t, x_scale, eps)[:size].reshape(shape)


_mean_and_t_jit = jax.jit(mean_and_t)


def _pad_lanes(v):
    flat = jnp.asarray(v, jnp.float32).reshape(-1)
    pad = -flat.size % _LANES
    return jnp.pad(flat, (0, pad)) if pad else flat


def _check(x, scale, zero_point, op):
    check_8bit(x, "x")
    check_output_qparams(x, scale, zero_point)


def _affine(v, shape, default, name, op):
    if v is None:
        return jnp.full(shape, F(default))
    v = jnp.asarray(v, jnp.float32)
    if v.shape != tuple(shape):
        raise QuantizationError(f"{op} {name} must have shape {tuple(shape)}, got {v.shape}")
    return v


def _out(x, values, scale, zero_point):
    return QArray(values.astype(x.dtype.storage), as_f32(scale), as_i32(zero_point), x.dtype, None, check=False,
                  scale64=scale_words(scale))  # torch's double output scale stays on the result


def _inv_out_scale(scale):
    # ``float y_inv_scale = 1.0f / y_scale`` with ``float y_scale = Y->q_scale()``
    return f32x.div_rn(F(1), as_f32(scale))


def layer_norm(x: QArray, normalized_shape, weight=None, bias=None, eps=1e-5, scale=1.0, zero_point=0) -> QArray:
    """``quantized::layer_norm``: normalize over the trailing ``normalized_shape`` dims.

    ``x`` any 8-bit per-tensor QArray (torch makes it contiguous first, so the memory format does not
    matter); ``weight`` / ``bias`` float32 of ``normalized_shape`` or None; output ``scale`` /
    ``zero_point``, same shape and dtype as ``x``.
    """
    _check(x, scale, zero_point, "layer_norm")
    normalized_shape = tuple(int(d) for d in np.atleast_1d(normalized_shape))
    k = len(normalized_shape)
    if tuple(x.shape[x.ndim - k:]) != normalized_shape:
        raise QuantizationError(f"layer_norm normalized_shape {normalized_shape} must be x's trailing dims, "
                                f"x has shape {tuple(x.shape)}")
    n = int(np.prod(normalized_shape))
    if n > MAX_ROW:
        raise QuantizationError(f"layer_norm over {n} elements per row: more than {MAX_ROW} is not modelled "
                                "(torch's float conversion of the sum of squares)")
    g = _affine(weight, normalized_shape, 1.0, "weight", "layer_norm").reshape(-1)
    b = _affine(bias, normalized_shape, 0.0, "bias", "layer_norm").reshape(-1)
    q2 = x.values.reshape(-1, n)
    mean, inv = row_stats(*_integer_sums(q2), n, x.scale, x.zero_point, eps)
    out = _layer_norm_apply(q2, mean, inv, g, b, x.zero_point, _inv_out_scale(scale), as_i32(zero_point),
                            x.dtype.qmin, x.dtype.qmax)
    return _out(x, out.reshape(x.shape), scale, zero_point)


def _layer_norm_apply(q2, mean, inv, g, b, zx, yi, zo, qmin, qmax):
    n = q2.shape[-1]
    d = (q2.astype(_I32) - jnp.asarray(zx).astype(_I32)).astype(jnp.float32) - mean[:, None]
    vec = np.arange(n) < n // INT_VLEN * INT_VLEN
    return _elementwise(_scaled_affine_quantize, (), d, inv[:, None], g, b, vec, yi, zo, np.int32(qmin),
                        np.int32(qmax))


# -- elementwise kernels on flat arrays padded to a few sizes (one compilation serves every shape) --------

_FLAT = 1 << 15  # one size class serves every tensor up to 32768 elements


def _elementwise(fn, static, *args):
    """``fn(*args, *static)`` elementwise on the broadcast ``args``, flattened and zero-padded to a power of
    two (at least ``_FLAT``) so that the jitted ``fn`` compiles once per size class, not per shape."""
    shape = tuple(np.broadcast_shapes(*(np.shape(a) for a in args)))
    size = int(np.prod(shape))
    bucket = max(_FLAT, 1 << max(size - 1, 0).bit_length())
    flat = [jnp.pad(jnp.broadcast_to(jnp.asarray(a), shape).reshape(-1), (0, bucket - size)) for a in args]
    return fn(*flat, *static)[:size].reshape(shape)


def _quantize_either(y, vec, yi, zo, qmin, qmax):
    """The vector rule where ``vec``, else ``quantize_val`` (8-bit, bounds traced: one compilation per kernel
    serves quint8 and qint8): ``clamp(rne(fl32(fl32(y * inv) + zy)))``, NaN giving 0."""
    v = f32x.uncontracted(y * yi) + zo.astype(jnp.float32)  # the product cannot be contracted with the add
    scalar = jnp.where(jnp.isnan(v), 0, jnp.clip(jnp.round(v), qmin.astype(jnp.float32),
                                                 qmax.astype(jnp.float32)).astype(_I32))
    return jnp.where(vec, quantize_vec(y, yi, zo, qmin, qmax), scalar)


@jax.jit
def _scaled_affine_quantize(d, inv, g, b, vec, yi, zo, qmin, qmax):
    # ``(dq - mean) * inv * gamma + beta``: the second product fused with the add (vfmadd)
    return _quantize_either(f32x.fma(f32x.mul_rn(d, inv), g, b), vec, yi, zo, qmin, qmax)


@jax.jit
def _affine_quantize(d, g, b, vec, yi, zo, qmin, qmax):
    # ``dq * scale + bias``, fused
    return _quantize_either(f32x.fma(d, g, b), vec, yi, zo, qmin, qmax)


@jax.jit
def _fma_flat(a, b, c):
    return f32x.fma(a, b, c)


@jax.jit
def _mul_flat(a, b):
    return f32x.mul_rn(a, b)


def _sequential_sum(v, axis):
    """Left-to-right float32 sum along ``axis`` (a scan: XLA does not reassociate it)."""
    v = jnp.moveaxis(v, axis, 0)
    total, _ = lax.scan(lambda acc, row: (acc + row, None), jnp.zeros(v.shape[1:], jnp.float32), v)
    return total


@functools.partial(jax.jit, static_argnums=1)
def _nhwc_sums(x_values, G):
    """The per-group ``(float(sum), float(sum of squares))`` of ``quantized_groupnorm_nhwc_kernel``."""
    B, C, H, W = x_values.shape
    cpg, hw = C // G, H * W
    q = jnp.moveaxis(x_values, 1, -1).reshape(B, hw, G, cpg).astype(_I32)  # the NHWC memory order
    if hw < NHWC_FEATURE_MAP_THRESHOLD:  # impl-1: exact integer hsum / hsum_sq per group
        qg = jnp.moveaxis(q, 2, 1).reshape(B, G, cpg * hw)
        return jnp.sum(qg, axis=-1).astype(jnp.float32), _exact_float_sum_sq(qg)
    # impl-2: float running sums per channel over the positions (one thread's buffer), then over the
    # group's channels, in that order
    sum_c = _sequential_sum(q.astype(jnp.float32), 1)  # (B, G, cpg)
    sq_c = _sequential_sum(jnp.square(q).astype(jnp.float32), 1)
    return _sequential_sum(sum_c, 2), _sequential_sum(sq_c, 2)


def _nhwc_apply(x_values, G, mean, inv, gamma, beta, zx, yi, zo, qmin, qmax):
    B, C, H, W = x_values.shape
    cpg, hw = C // G, H * W
    q = jnp.moveaxis(x_values, 1, -1).reshape(B, hw, G, cpg).astype(_I32)
    if hw < NHWC_FEATURE_MAP_THRESHOLD:  # vectors over each group's channels, scalar tail per group
        vec = np.broadcast_to(np.arange(cpg) < cpg // INT_VLEN * INT_VLEN, (G, cpg))
    else:  # vectors over all C channels of a position, scalar tail
        vec = (np.arange(G)[:, None] * cpg + np.arange(cpg)[None]) < C // INT_VLEN * INT_VLEN
    sc = _elementwise(_mul_flat, (), inv[..., None], gamma.reshape(G, cpg))  # scale_ptr[d] = rstd * gamma
    # bias_ptr[d] = -scale * mean + beta (contracted)
    bi = _elementwise(_fma_flat, (), -sc, mean[..., None], beta.reshape(G, cpg))
    d = (q - jnp.asarray(zx).astype(_I32)).astype(jnp.float32)
    out = _elementwise(_affine_quantize, (), d, sc[:, None], bi[:, None], vec, yi, zo, np.int32(qmin),
                      np.int32(qmax))  # (B, hw, G, cpg)
    return jnp.moveaxis(out.reshape(B, H, W, C), -1, 1)


def _contiguous_apply(x_values, G, mean, inv, gamma, beta, zx, yi, zo, qmin, qmax):
    B, C = x_values.shape[:2]
    cpg = C // G
    q = x_values.reshape(B, G, cpg, -1).astype(_I32)
    gp = _elementwise(_mul_flat, (), inv[..., None], gamma.reshape(G, cpg))  # gamma_p = scale_x / std * gamma
    d = (q - jnp.asarray(zx).astype(_I32)).astype(jnp.float32) - mean[..., None, None]
    # (dq - mean) * gamma_p + beta, fused; every element, the partial last vector of each channel
    # included, takes the vector rule
    out = _elementwise(_affine_quantize, (), d, gp[..., None], beta.reshape(G, cpg)[..., None], True, yi, zo,
                       np.int32(qmin), np.int32(qmax))
    return out.reshape(x_values.shape)


def group_norm(x: QArray, num_groups: int, weight=None, bias=None, eps=1e-5, scale=1.0, zero_point=0, *,
               memory_format=CONTIGUOUS, threads=1) -> QArray:
    """``quantized::group_norm``: normalize each of ``num_groups`` channel groups of each sample.

    ``x`` 8-bit per-tensor ``(N, C, *spatial)`` (at least 3-d) in torch's logical order, ``memory_format``
    torch's (a 4-d ``channels_last`` input runs the NHWC kernel, anything else the contiguous one);
    ``weight`` / ``bias`` float32 ``(C,)`` or None; ``threads`` torch's thread count (matters only for the
    NHWC kernel's float sums).  Returns the QArray with the output ``scale`` / ``zero_point``.
    """
    _check(x, scale, zero_point, "group_norm")
    if x.ndim < 3:
        raise QuantizationError(f"group_norm x must be at least 3-d (N, C, *spatial), got shape {tuple(x.shape)}")
    B, C = x.shape[:2]
    G = int(num_groups)
    if G <= 0 or C % G:
        raise QuantizationError(f"group_norm num_groups must be positive and divide the {C} channels, got {G}")
    n = int(np.prod(x.shape[1:])) // G
    if n > MAX_ROW:
        raise QuantizationError(f"group_norm over {n} elements per group: more than {MAX_ROW} is not modelled "
                                "(torch's float conversion of the sum of squares)")
    g_ = _affine(weight, (C,), 1.0, "weight", "group_norm")
    b_ = _affine(bias, (C,), 0.0, "bias", "group_norm")
    yi, zo = _inv_out_scale(scale), as_i32(zero_point)
    qmin, qmax = x.dtype.qmin, x.dtype.qmax
    # qx.is_contiguous(ChannelsLast) picks the NHWC kernel; a dense 4-d tensor with C == 1 or H*W == 1 is that too
    nhwc = x.ndim == 4 and (memory_format == CHANNELS_LAST or (memory_format == CONTIGUOUS and
                                                              (C == 1 or x.shape[2] * x.shape[3] == 1)))
    if nhwc:
        if x.shape[2] * x.shape[3] >= NHWC_FEATURE_MAP_THRESHOLD and threads != 1:
            raise QuantizationError(
                f"group_norm of a channels-last input with H*W >= {NHWC_FEATURE_MAP_THRESHOLD} on {threads} "
                "threads: torch's per-thread float partial sums are not modelled (run torch with 1 thread)")
        mean, inv = row_stats(*_nhwc_sums(x.values, G), n, x.scale, x.zero_point, eps)
        out = _nhwc_apply(x.values, G, mean, inv, g_, b_, x.zero_point, yi, zo, qmin, qmax)
    else:  # anything else is made contiguous: quantized_normalize_kernel with per-channel affine
        mean, inv = row_stats(*_integer_sums(x.values.reshape(B, G, n)), n, x.scale, x.zero_point, eps)
        out = _contiguous_apply(x.values, G, mean, inv, g_, b_, x.zero_point, yi, zo, qmin, qmax)
    return _out(x, out, scale, zero_point)


def instance_norm(x: QArray, weight=None, bias=None, eps=1e-5, scale=1.0, zero_point=0, *,
                  memory_format=CONTIGUOUS, threads=1) -> QArray:
    """``quantized::instance_norm``: :func:`group_norm` with one group per channel (torch's own definition)."""
    _check(x, scale, zero_point, "instance_norm")
    if x.ndim < 3:
        raise QuantizationError(f"instance_norm x must be at least 3-d (N, C, *spatial), got shape {tuple(x.shape)}")
    return group_norm(x, x.shape[1], weight, bias, eps, scale, zero_point, memory_format=memory_format,
                      threads=threads)
