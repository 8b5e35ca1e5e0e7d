"""Quantized elementwise ops with torch 2.13's CPU arithmetic (fbgemm / x86 engines).

Binary: :func:`add` (``quantized::add[_relu]``, FloatFunctional.add), :func:`mul`,
:func:`add_scalar`, :func:`mul_scalar`.  Activations: :func:`relu`, :func:`relu6`,
:func:`hardtanh`, :func:`hardswish`, :func:`hardsigmoid`, :func:`leaky_relu`,
:func:`sigmoid`, :func:`tanh`, :func:`elu`.

The vectorised kernels compute most elements with one formula and the tail of each
64-element block run with another (see :mod:`qjax.qops.paths`), so the ops take the
tensor's torch ``memory_format`` (``"contiguous"`` or ``"channels_last"``) and torch's
thread count (it moves the block boundaries of tensors with >= 32768 elements).
Formulas, per op, are in the docstrings; the building blocks in :mod:`qjax.qops.arith`.
All ops take and return 8-bit per-tensor :class:`~qjax.QArray` values (quint8 or qint8).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..checks import QuantizationError, check_scale, check_zero_point, is_concrete
from ..dtypes import qint8, quint8
from ..float64 import from_words
from ..qarray import QArray, as_f32, as_i32, scale_words
from . import transcendental as tr
from .arith import (
    dequantize_scalar,
    dequantize_vec,
    quantize_scalar,
    quantize_vec,
    requantize_scalar,
    requantize_vec,
    select_path,
)
from .paths import CONTIGUOUS, vector_mask

__all__ = [
    "add",
    "mul",
    "add_scalar",
    "mul_scalar",
    "relu",
    "relu6",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "elu",
    "FIXED_QPARAMS",
]

_F32 = jnp.float32

# output qparams torch fixes for these ops (aten/src/ATen/native/quantized/cpu: qsigmoid.cpp, qtanh.cpp,
# qhardsigmoid.cpp)
FIXED_QPARAMS = {
    ("sigmoid", "quint8"): (1.0 / 256, 0),
    ("sigmoid", "qint8"): (1.0 / 256, -128),
    ("hardsigmoid", "quint8"): (1.0 / 256, 0),
    ("hardsigmoid", "qint8"): (1.0 / 256, -128),
    ("tanh", "quint8"): (2.0 / 256, 128),
    ("tanh", "qint8"): (2.0 / 256, 0),
}


def check_8bit(q, argname="x"):
    if not isinstance(q, QArray):
        raise TypeError(f"{argname} must be a QArray, got {type(q).__name__}")
    if q.dtype not in (quint8, qint8):
        raise QuantizationError(f"{argname} must be quint8 or qint8 (torch's 8-bit kernels), got {q.dtype.name}")
    if q.axis is not None:
        raise QuantizationError(f"{argname} must be quantized per tensor, got axis={q.axis}")


def check_output_qparams(q, scale, zero_point):
    check_scale(scale, "scale")
    check_zero_point(zero_point, q.dtype, "zero_point")
    if np.ndim(scale) or np.ndim(zero_point):
        raise QuantizationError("output scale and zero_point must be scalars")


def _concrete(v, what):
    if not is_concrete(v):
        raise QuantizationError(f"{what} must be concrete (not traced): torch derives a table / qparams from it")
    return np.asarray(v)


def _wrap(q, values, scale, zero_point):
    # a Python-float output scale is torch's double (mul_scalar's c * s, add_scalar's derived scale): keep it
    return QArray(values.astype(q.dtype.storage), as_f32(scale), as_i32(zero_point), q.dtype, None, check=False,
                  scale64=scale_words(scale))


def _mask(shape, memory_format, threads, operands=None):
    return vector_mask(shape, memory_format, 64, threads, operands)


def _binary_shape(a, b, op):
    check_8bit(a, "a")
    check_8bit(b, "b")
    if a.dtype != b.dtype:
        raise QuantizationError(f"{op} needs equal dtypes, got {a.dtype.name} and {b.dtype.name}")
    try:
        return tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError as e:
        raise QuantizationError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from e


def _operands(a, b, memory_format, input_formats):
    fa, fb = input_formats if input_formats is not None else (memory_format, memory_format)
    return ((tuple(a.shape), fa), (tuple(b.shape), fb))


# ------------------------------------------------------------------------------------------------ binary


def add(a: QArray, b: QArray, scale, zero_point, *, relu=False, memory_format=CONTIGUOUS, threads=1,
        input_formats=None) -> QArray:
    """``quantized::add`` / ``add_relu``: ``a + b`` (broadcasting) requantized to (``scale``, ``zero_point``).

    vector: ``c = fl32(dq_vec(a) + dq_vec(b))``; relu: ``max(c, 0)``; ``quantize_vec(c, fl32(1/fl32(scale)))``.
    scalar: ``c = fl32(dq_scalar(a) + dq_scalar(b))``; relu; ``quantize_scalar``.
    ``memory_format`` is the output's (torch allocates it like ``a``), ``input_formats`` the
    inputs' (default: the same).
    """
    out_shape = _binary_shape(a, b, "add")
    check_output_qparams(a, scale, zero_point)
    v = _add_values(a.values, a.scale, a.zero_point, b.values, b.scale, b.zero_point, as_f32(scale),
                    as_i32(zero_point), qmin=a.dtype.qmin, qmax=a.dtype.qmax, relu=bool(relu),
                    memory_format=memory_format, threads=int(threads),
                    operands=_operands(a, b, memory_format, input_formats), out_shape=out_shape)
    return _wrap(a, v, scale, zero_point)


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "relu", "memory_format", "threads", "operands",
                                             "out_shape"))
def _add_values(qa, sa, za, qb, sb, zb, so, zo, *, qmin, qmax, relu, memory_format, threads, operands, out_shape):
    mask = _mask(out_shape, memory_format, threads, operands)
    inv = f32x.div_rn(1.0, so)
    cv = dequantize_vec(qa, sa, za) + dequantize_vec(qb, sb, zb)
    cs = dequantize_scalar(qa, sa, za) + dequantize_scalar(qb, sb, zb)
    if relu:
        cv, cs = jnp.maximum(cv, 0.0), jnp.maximum(cs, 0.0)
    return select_path(mask, quantize_vec(cv, inv, zo, qmin, qmax), quantize_scalar(cs, inv, zo, qmin, qmax))


def mul(a: QArray, b: QArray, scale, zero_point, *, relu=False, memory_format=CONTIGUOUS, threads=1,
        input_formats=None) -> QArray:
    """``quantized::mul`` / ``mul_relu``: integer product requantized.

    ``m = fl32(fl32(sa*sb) * fl32(1/so))`` (multiplications, left to right), ``c = (a-za)(b-zb)``
    exact int32; vector ``requantize_vec(c, m)`` (wraps on overflow), scalar ``requantize_scalar``;
    relu: ``max(q, zo)``.  Broadcasting as :func:`add`.
    """
    out_shape = _binary_shape(a, b, "mul")
    check_output_qparams(a, scale, zero_point)
    v = _mul_values(a.values, a.scale, a.zero_point, b.values, b.scale, b.zero_point, as_f32(scale),
                    as_i32(zero_point), qmin=a.dtype.qmin, qmax=a.dtype.qmax, relu=bool(relu),
                    memory_format=memory_format, threads=int(threads),
                    operands=_operands(a, b, memory_format, input_formats), out_shape=out_shape)
    return _wrap(a, v, scale, zero_point)


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "relu", "memory_format", "threads", "operands",
                                             "out_shape"))
def _mul_values(qa, sa, za, qb, sb, zb, so, zo, *, qmin, qmax, relu, memory_format, threads, operands, out_shape):
    mask = _mask(out_shape, memory_format, threads, operands)
    m = f32x.mul_rn(f32x.mul_rn(sa, sb), f32x.div_rn(1.0, so))
    c = (qa.astype(jnp.int32) - za) * (qb.astype(jnp.int32) - zb)
    out = select_path(mask, requantize_vec(c, m, zo, qmin, qmax), requantize_scalar(c, m, zo, qmin, qmax))
    return jnp.maximum(out, zo) if relu else out


def add_scalar_qparams(scale: float, zero_point: int, c: float, dtype):
    """torch's derived output qparams of ``quantized::add_scalar`` (``BinaryOps.cpp``, double arithmetic).

    Returns ``(out_scale, out_zero_point, c_q, requantize)``.
    """
    s, z = float(scale), int(zero_point)
    c_q = int(np.rint(c / s))
    qmin, qmax = dtype.qmin, dtype.qmax
    if qmin > z - c_q:
        return (qmax - (z - c_q)) / (qmax - qmin) * s, qmin, c_q, True
    if qmax < z - c_q:
        return ((z - c_q) - qmin) / (qmax - qmin) * s, qmax, c_q, True
    return s, z - c_q, c_q, False


def add_scalar(a: QArray, c: float, *, relu=False, memory_format=CONTIGUOUS, threads=1, in_qparams=None) -> QArray:
    """``quantized::add_scalar``: the output qparams are derived from ``a``'s and ``c`` (no rounding
    of the data unless the zero point would leave the dtype's range, then it requantizes with
    ``m = fl32(fl32(s) * fl32(1/fl32(s')))``)."""
    check_8bit(a, "a")
    s, z = _input_qparams_double(a, in_qparams)
    so, zo, c_q, requant = add_scalar_qparams(s, z, float(c), a.dtype)
    if not requant:
        v = a.values.astype(jnp.int32)
        v = jnp.maximum(v, zo) if relu else v
        return _wrap(a, v, so, zo)
    m = f32x.mul_rn(np.float32(s), f32x.div_rn(1.0, np.float32(so)))
    cc = a.values.astype(jnp.int32) - z + c_q
    mask = _mask(a.shape, memory_format, threads)
    out = select_path(mask, requantize_vec(cc, m, zo, a.dtype.qmin, a.dtype.qmax),
                      requantize_scalar(cc, m, zo, a.dtype.qmin, a.dtype.qmax))
    return _wrap(a, jnp.maximum(out, zo) if relu else out, so, zo)


def mul_scalar(a: QArray, c: float, *, relu=False, in_qparams=None) -> QArray:
    """``quantized::mul_scalar``: no data rounding — positive ``c`` rescales, 0 zeroes, negative mirrors."""
    check_8bit(a, "a")
    s, z = _input_qparams_double(a, in_qparams)
    c = float(c)
    v = a.values.astype(jnp.int32)
    if c > 0:
        so, zo = c * s, z
    elif c == 0:
        v, so, zo = jnp.zeros_like(v), 1.0, 0
    else:
        qmin, qmax = a.dtype.qmin, a.dtype.qmax
        v = qmax + qmin - v
        so, zo = -c * s, qmax - (z - qmin)
    if relu:
        v = jnp.maximum(v, zo)
    return _wrap(a, v, so, zo)


# ------------------------------------------------------------------------------------------------ clamps


def relu(a: QArray) -> QArray:
    """``max(q, zero_point)`` (qparams unchanged)."""
    check_8bit(a, "a")
    return _wrap(a, jnp.maximum(a.values.astype(jnp.int32), a.zero_point), a.scale, a.zero_point)


def _quantize_bound(value, a):
    s = jnp.asarray(a.scale, _F32)
    return quantize_scalar(jnp.float32(value), f32x.div_rn(1.0, s), a.zero_point, a.dtype.qmin, a.dtype.qmax)


def hardtanh(a: QArray, min_val=-1.0, max_val=1.0) -> QArray:
    """Integer clamp between the bounds quantized with the scalar rule (``qclamp_kernel``)."""
    check_8bit(a, "a")
    lo, hi = _quantize_bound(min_val, a), _quantize_bound(max_val, a)
    return _wrap(a, jnp.clip(a.values.astype(jnp.int32), lo, hi), a.scale, a.zero_point)


def relu6(a: QArray) -> QArray:
    """``min(max(q, zp), quantize_scalar(6.0))`` (``quantized::relu6``)."""
    check_8bit(a, "a")
    six = _quantize_bound(6.0, a)
    return _wrap(a, jnp.minimum(jnp.maximum(a.values.astype(jnp.int32), a.zero_point), six), a.scale, a.zero_point)


# ------------------------------------------------------------------------------------------------ float-formula


def _unary(a, scale, zero_point, core, inv, memory_format, threads):
    """Both lambdas of a ``dq -> core -> q`` kernel (dq_vec + quantize_vec vs dq_scalar + quantize_scalar)."""
    mask = _mask(a.shape, memory_format, threads)
    q = a.values
    qmin, qmax = a.dtype.qmin, a.dtype.qmax
    yv = core(dequantize_vec(q, a.scale, a.zero_point))
    ys = core(dequantize_scalar(q, a.scale, a.zero_point))
    zo = jnp.asarray(zero_point, jnp.int32)
    return select_path(mask, quantize_vec(yv, inv, zo, qmin, qmax), quantize_scalar(ys, inv, zo, qmin, qmax))


def _hardswish_core(x):
    # fl32(fl32(x * clamp(x + 3, 0, 6)) / 6): a division by the constant 6, which XLA
    # would turn into a multiplication by 1/6 -- div_rn keeps it a division
    return f32x.div_rn(f32x.mul_rn(x, jnp.clip(x + 3.0, 0.0, 6.0)), 6.0)


def hardswish(a: QArray, scale, zero_point, *, memory_format=CONTIGUOUS, threads=1) -> QArray:
    """``quantized::hardswish``: ``y = fl32(fl32(x * clamp(x+3, 0, 6)) / 6)``, inverse scale ``fl32(1/so)``."""
    check_8bit(a, "a")
    check_output_qparams(a, scale, zero_point)
    inv = f32x.div_rn(1.0, as_f32(scale))
    v = _unary(a, scale, zero_point, _hardswish_core, inv, memory_format, threads)
    return _wrap(a, v, scale, zero_point)


def hardsigmoid(a: QArray, *, memory_format=CONTIGUOUS, threads=1) -> QArray:
    """``F.hardsigmoid``: ``y = fl32(clamp(x+3, 0, 6) / 6)`` into torch's fixed qparams (1/256, 0 or -128)."""
    check_8bit(a, "a")
    so, zo = FIXED_QPARAMS[("hardsigmoid", a.dtype.name)]
    inv = jnp.float32(256.0)
    v = _unary(a, so, zo, lambda x: f32x.div_rn(jnp.clip(x + 3.0, 0.0, 6.0), 6.0), inv, memory_format, threads)
    return _wrap(a, v, so, zo)


def leaky_relu(a: QArray, negative_slope, scale, zero_point, *, threads=1) -> QArray:
    """``quantized::leaky_relu``: ``y = x > 0 ? x : fl32(x * fl32(slope))``, inverse scale ``fl32(1/so)``.

    The out-of-place kernel makes its input contiguous first, so the path split
    follows the contiguous (NCHW) order whatever the input's memory format.
    """
    check_8bit(a, "a")
    check_output_qparams(a, scale, zero_point)
    slope = jnp.float32(negative_slope)
    inv = f32x.div_rn(1.0, as_f32(scale))
    v = _unary(a, scale, zero_point, lambda x: jnp.where(x > 0, x, x * slope), inv, CONTIGUOUS, threads)
    return _wrap(a, v, scale, zero_point)


# ------------------------------------------------------------------------------------------------ tables


def _table_op(a, tables, scale, zero_point, memory_format, threads):
    lut_v, lut_s = tables
    idx = a.values.astype(jnp.int32) - a.dtype.qmin
    mask = _mask(a.shape, memory_format, threads)
    v = select_path(mask, jnp.asarray(lut_v)[idx], jnp.asarray(lut_s)[idx])
    return _wrap(a, v, scale, zero_point)


def _all_values(dtype):
    return jnp.arange(dtype.qmin, dtype.qmax + 1, dtype=jnp.int32)


@functools.lru_cache(maxsize=512)
def _sigmoid_tables(si, zi, so, zo, dtype):
    q = _all_values(dtype)
    qmin, qmax = dtype.qmin, dtype.qmax
    inv = f32x.div_rn(1.0, np.float32(so))
    # vector: the 2-argument dequantize (no FMA), SLEEF exp, float reciprocal
    xv = np.asarray(f32x.mul_rn((q - zi).astype(_F32), np.float32(si)))
    yv = (np.float32(1) / (np.float32(1) + tr.sleef_expf(-xv))).astype(np.float32)
    lut_v = np.asarray(quantize_vec(jnp.asarray(yv), inv, zo, qmin, qmax))
    # scalar: libm expf, then 1 / (1 + e) in double
    xs = np.asarray(dequantize_scalar(q, np.float32(si), zi))
    ys = (1.0 / (1.0 + tr.libm("expf", -xs).astype(np.float64))).astype(np.float32)
    lut_s = np.asarray(quantize_scalar(jnp.asarray(ys), inv, zo, qmin, qmax))
    return lut_v, lut_s


def _input_qparams(a, in_qparams):
    """Concrete input (scale, zero point): ``in_qparams`` when given (a traced ``a`` inside jit), else ``a``'s."""
    if in_qparams is not None:
        return float(in_qparams[0]), int(in_qparams[1])
    return float(_concrete(a.scale, "a.scale (pass in_qparams= inside jit)")), int(
        _concrete(a.zero_point, "a.zero_point (pass in_qparams= inside jit)"))


def _input_qparams_double(a, in_qparams):
    """:func:`_input_qparams` with torch's double ``q_scale()`` where ``a`` carries it (``scale64``):
    ``BinaryOps.cpp`` derives add_scalar / mul_scalar's output qparams from it in double."""
    if in_qparams is None and a.scale64 is not None:
        return float(from_words(_concrete(a.scale64, "a.scale64 (pass in_qparams= inside jit)"))), int(
            _concrete(a.zero_point, "a.zero_point (pass in_qparams= inside jit)"))
    return _input_qparams(a, in_qparams)


def sigmoid(a: QArray, scale=None, zero_point=None, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None) -> QArray:
    """``torch.sigmoid`` (fixed qparams) or ``quantized::sigmoid(x, scale, zero_point)``.

    vector: ``x = fl32(fl32(q - zi) * si)``; ``y = fl32(1 / fl32(1 + sleef_expf(-x)))``; quantize_vec.
    scalar: ``x = dq_scalar(q)``; ``y = fl32(1.0 / (1.0 + double(expf(-x))))``; quantize_scalar.
    Tabulated per input integer; needs concrete input qparams.
    """
    check_8bit(a, "a")
    if scale is None:
        scale, zero_point = FIXED_QPARAMS[("sigmoid", a.dtype.name)]
    check_output_qparams(a, scale, zero_point)
    si, zi = _input_qparams(a, in_qparams)
    tables = _sigmoid_tables(np.float32(si).item(), zi, np.float32(scale).item(), int(zero_point), a.dtype)
    return _table_op(a, tables, scale, zero_point, memory_format, threads)


@functools.lru_cache(maxsize=512)
def _tanh_tables(si, zi, so, zo, dtype):
    q = _all_values(dtype)
    qmin, qmax = dtype.qmin, dtype.qmax
    inv = f32x.div_rn(1.0, np.float32(so))
    yv = tr.sleef_tanhf(np.asarray(dequantize_vec(q, np.float32(si), zi)))
    lut_v = np.asarray(quantize_vec(jnp.asarray(yv), inv, zo, qmin, qmax))
    ys = tr.libm("tanhf", np.asarray(dequantize_scalar(q, np.float32(si), zi)))
    lut_s = np.asarray(quantize_scalar(jnp.asarray(ys), inv, zo, qmin, qmax))
    return lut_v, lut_s


def tanh(a: QArray, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None) -> QArray:
    """``torch.tanh`` on a quantized tensor: SLEEF ``tanhf`` (vector) / libm ``tanhf`` (scalar), fixed qparams."""
    check_8bit(a, "a")
    so, zo = FIXED_QPARAMS[("tanh", a.dtype.name)]
    si, zi = _input_qparams(a, in_qparams)
    tables = _tanh_tables(np.float32(si).item(), zi, np.float32(so).item(), zo, a.dtype)
    return _table_op(a, tables, so, zo, memory_format, threads)


@functools.lru_cache(maxsize=512)
def _elu_tables(si, zi, so, zo, alpha, dtype):
    q = _all_values(dtype)
    qmin, qmax = dtype.qmin, dtype.qmax
    inv = f32x.div_rn(1.0, np.float32(so))
    al = np.float32(alpha)
    xv = np.asarray(dequantize_vec(q, np.float32(si), zi))
    yv = np.where(xv > 0, xv, (tr.sleef_expm1f(xv) * al).astype(np.float32)).astype(np.float32)
    lut_v = np.asarray(quantize_vec(jnp.asarray(yv), inv, zo, qmin, qmax))
    xs = np.asarray(dequantize_scalar(q, np.float32(si), zi))
    ys = np.where(xs >= 0, xs, (tr.libm("expm1f", xs) * al).astype(np.float32)).astype(np.float32)
    lut_s = np.asarray(quantize_scalar(jnp.asarray(ys), inv, zo, qmin, qmax))
    return lut_v, lut_s


def elu(a: QArray, scale, zero_point, alpha=1.0, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None) -> QArray:
    """``quantized::elu``: ``y = x > 0 ? x : fl32(expm1(x) * alpha)`` (SLEEF vector, libm scalar)."""
    check_8bit(a, "a")
    check_output_qparams(a, scale, zero_point)
    si, zi = _input_qparams(a, in_qparams)
    tables = _elu_tables(np.float32(si).item(), zi, np.float32(scale).item(), int(zero_point), float(alpha), a.dtype)
    return _table_op(a, tables, scale, zero_point, memory_format, threads)


