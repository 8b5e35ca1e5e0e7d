"""Quantized conv / linear for training: the forward pass is the integer path, the backward pass an estimator.

``conv(x, w, b, ...)`` takes *float* activations, weights and bias plus float quantization
parameters and returns the float32 dequantized output of

    xq = quantize(x, sx, zx); wq = quantize(w, sw, zw)
    yq = engine.conv(xq, ..., wq, ..., b, sy, zy, geometry, relu, key)   # fbgemm, qnnpack, ..., a HardwareSpec

so what training sees is bit for bit what deployment runs (a :class:`~qjax.engines.HardwareSpec`
derives its integer-only parameters in the graph, as :func:`qjax.hardware.convert` derives them).
Inside, a conv is channels-last throughout — activations ``(N, *S, C)``, kernels ``(*K, C/groups, O)``
(Flax's layout, and the engines' GEMM layout) —; torch-layout calls are transposed once at the public
edge.  The backward pass differentiates the float surrogate

    x̂ = fq(x; sx, zx)   ŵ = fq(w; sw, zw)   y = fq(relu?(conv(x̂, ŵ) + b); sy, zy)

whose ``fq`` use the estimators of :mod:`qjax.ste.estimators`: gradients reach ``x``, ``w``,
``b`` and (with LSQ / LSQ+) every scale and zero point.  Under a hardware spec the fixed-point
multiplier is ``M = sx·sw/sy``, so it is learned through the scales (LSQ's ``∂/∂sy``).
Works under ``jit``, ``vmap``, ``grad`` and ``jax.checkpoint``.

The custom VJP is :func:`qjax.ste.exact.exact_forward` with :class:`_Layer` as its rule.  The
surrogate is not re-run in the backward pass: the forward pass keeps what its VJP needs (``x̂``,
``ŵ`` — the integer path's own dequantized operands —, the float ``conv(x̂, ŵ) + b`` and, for LSQ,
its fake-quantized value) and :func:`_layer_bwd` applies the estimators' formulas and the conv's
transposes to them; ``tests/ste/test_ops.py`` checks the result against ``jax.grad`` of
:func:`_surrogate` bit for bit.
"""


from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..affine import dequantize_values, integer_zero_point, quantize_values
from ..buffers import own_buffer
from ..checks import QuantizationError, check_scale
from ..dtypes import qint8, quint8
from ..engines import layer_engine, resolve
from ..layout import channels_to_first, channels_to_last, weight_to_last
from ..ops import check_accumulator, check_conv_shapes, conv_geometry
from .estimators import Estimator, get_estimator
from .exact import exact_forward, output_backward, output_residuals, zero_cotangent
from .fake_quant import FakeQuantConfig, fake_quant_backward, fake_quantize

__all__ = ["conv", "linear"]


@dataclasses.dataclass(frozen=True)
class _Layer:
    """The static configuration of one layer: the rule of :func:`~qjax.ste.exact.exact_forward`.

    Conv operands are channels-last: ``x`` ``(N, *S, C)``, ``w`` ``(*K, C/groups, O)``, output ``(N, *S', O)``;
    linear ``x`` ``(..., K)``, ``w`` ``(O, K)``.
    """

    kind: str  # "conv" | "linear"
    geometry: object  # ConvGeometry (conv) or None
    relu: bool  # fused ReLU
    engine: object  # the resolved engine (x86: already the layer's backend)
    has_bias: bool  # False: b is a zero placeholder and gets a zero gradient
    w_axis: int | None  # the weight's output-channel axis when per channel (conv: last, linear: 0), else None
    act_estimator: Estimator  # the input's and the output's fake-quant estimator
    weight_estimator: Estimator  # the weight's

    def exact(self, *args):
        return _exact(self, *args)

    def forward(self, *args):
        return _layer_fwd(self, *args)

    def backward(self, res, g):
        return _layer_bwd(self, res, g)


def _fq_configs(cfg: _Layer):
    """The three fake quantizations of the surrogate: input (quint8), weight (qint8), output (quint8)."""
    act = FakeQuantConfig(quint8, None, cfg.act_estimator)
    weight = FakeQuantConfig(qint8, cfg.w_axis, cfg.weight_estimator)
    return act, weight, act


def _integer_output(cfg: _Layer, xq, wq, b, sx, zxi, sw, zwi, sy, zyi, key):
    """The deployed integer op on the quantized operands: the output integers (uint8), channels last.

    ``xq`` / ``wq`` are the integer values, the zero points int32.  Under a hardware spec ``x`` is
    quantized by torch's rule too: a dequantized activation round-trips to its integers exactly (round
    to nearest); the model input's hardware rounding belongs to the quantize stub.
    """
    bias = b if cfg.has_bias else None
    per_channel = cfg.w_axis is not None
    if cfg.kind == "conv":
        y = cfg.engine.conv(xq, sx, zxi, wq, sw, zwi, per_channel, bias, sy, zyi, cfg.geometry, cfg.relu, key)
    else:
        y = cfg.engine.linear(xq, sx, zxi, wq, sw, zwi, per_channel, bias, sy, zyi, cfg.relu, key)
    return y.astype(jnp.uint8)


def _quantize_operands(cfg: _Layer, x, w, sx, zx, sw, zw, zy, xq=None):
    """Integer zero points and the quantized input / weight values (torch's exact quantize rules).

    ``xq``: the input's integers when known (``x == dequantize(xq)``: a qjax.nn activation, which
    is on its grid).  Quantizing such an ``x`` gives ``xq`` back exactly — ``(q - z)·s`` times the
    float32 reciprocal is within ``255 · 2⁻²²`` of ``q - z``, far from a rounding boundary, for
    every scale from ``2⁻²³`` (the scale floor of qjax.nn) to ``1e35`` (``tests/ste``: all 65,536
    ``(q, z)`` pairs) — so it is not quantized again.
    """
    zxi, zwi, zyi = integer_zero_point(zx, quint8), integer_zero_point(zw, qint8), integer_zero_point(zy, quint8)
    if xq is None:
        xq = own_buffer(quantize_values(x, sx, zxi, quint8, None), sx)
    wq = own_buffer(quantize_values(w, sw, zwi, qint8, cfg.w_axis), sw)
    return xq, wq, zxi, zwi, zyi


def _exact(cfg: _Layer, x, w, b, sx, zx, sw, zw, sy, zy, key=None, xq=None):
    """The forward pass: the deployed integers dequantized (float32), and the integers (uint8)."""
    xq, wq, zxi, zwi, zyi = _quantize_operands(cfg, x, w, sx, zx, sw, zw, zy, xq)
    yq = own_buffer(_integer_output(cfg, xq, wq, b, sx, zxi, sw, zwi, sy, zyi, key), sy)
    return dequantize_values(yq, sy, zyi, None), yq


def _linear_part(cfg: _Layer, xh, wh, b):
    """``conv(x̂, ŵ) + b`` (or ``x̂ @ ŵᵀ + b``) in float32, the surrogate's only non-elementwise step."""
    if cfg.kind == "conv":
        g = cfg.geometry
        nd = xh.ndim - 2
        spatial = "DHW"[-nd:] if nd > 1 else "W"
        io = "N" + spatial + "C"
        dn = lax.conv_dimension_numbers(xh.shape, wh.shape, (io, spatial + "IO", io))
        y = lax.conv_general_dilated(xh, wh, g.strides, g.padding, rhs_dilation=g.dilation, dimension_numbers=dn,
                                     feature_group_count=g.groups, precision=lax.Precision.HIGHEST)
        return y + b if cfg.has_bias else y
    y = jnp.matmul(xh, wh.T, precision=lax.Precision.HIGHEST)
    return y + b if cfg.has_bias else y


def _relu(y):
    return jnp.maximum(y, 0.0)


def _surrogate(cfg: _Layer, x, w, b, sx, zx, sw, zw, sy, zy):
    """The float function whose gradient the backward pass computes (the reference its tests differentiate):

        x̂ = fq(x; sx, zx)   ŵ = fq(w; sw, zw)   y = fq(relu?(conv(x̂, ŵ) + b); sy, zy)
    """
    fx, fw, fy = _fq_configs(cfg)
    xh = fake_quantize(x, sx, zx, quint8, estimator=fx.estimator)
    wh = fake_quantize(w, sw, zw, qint8, axis=fw.axis, estimator=fw.estimator)
    y = _linear_part(cfg, xh, wh, b)
    if cfg.relu:
        y = _relu(y)
    return fake_quantize(y, sy, zy, quint8, estimator=fy.estimator)


def _layer(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key, xq=None):
    """``(dequantized output, output integers)``; differentiable in the floats, as the surrogate."""
    return exact_forward(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key, xq)


def _layer_fwd(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key, xq=None):
    """The integer forward plus what the surrogate's backward needs, computed once.

    Residuals: ``x``, ``w`` and their fake-quantized values ``x̂ = (xq - zx)·sx``, ``ŵ`` (the
    dequantized integers the integer op consumed: bit for bit the surrogate's ``fq`` outputs),
    the float pre-activation ``y_lin = conv(x̂, ŵ) + b`` (as the conv's VJP closure, which holds
    x̂ and ŵ) and the output fake quantization's residuals (for an estimator that learns its scale,
    ``fq(relu?(y_lin))``).

    Why the float conv: the output fake-quant's clip mask and LSQ's ``(ŷ - y)/sy`` are functions
    of the surrogate's float ``y``.  The integer output (exact int32 sum, the engine's
    requantization) rounds to other integers than ``fq(y)`` wherever ``y·(1/sy)`` lies within the
    float conv's rounding error of a half-integer; using it would change those elements' LSQ
    terms by a whole step, so the gradients would no longer be the surrogate's.
    """
    fx, fw, fy = _fq_configs(cfg)
    xq_given = xq  # None or the caller's integers (they get a float0 cotangent)
    xq, wq, zxi, zwi, zyi = _quantize_operands(cfg, x, w, sx, zx, sw, zw, zy, xq)
    yq = own_buffer(_integer_output(cfg, xq, wq, b, sx, zxi, sw, zwi, sy, zyi, key), sy)
    out = dequantize_values(yq, sy, zyi, None)
    xh = dequantize_values(xq, sx, zxi, None)
    wh = dequantize_values(wq, sw, zwi, fw.axis)
    y_lin, lin_vjp = jax.vjp(functools.partial(_linear_part, cfg), xh, wh, b)
    y = _relu(y_lin) if cfg.relu else y_lin
    # fq(y)'s value enters LSQ's scale gradient only; the STE / clipped estimators never read it
    out_res = output_residuals(fy, y, sy, zy)
    return (out, yq), (x, xh, w, wh, y_lin, out_res, lin_vjp, sx, zx, sw, zw, key, xq_given)


def _layer_bwd(cfg, res, g):
    """The surrogate's VJP from the residuals: fq_y's, relu's, the conv's transposes, fq_x's and fq_w's."""
    x, xh, w, wh, y_lin, out_res, lin_vjp, sx, zx, sw, zw, key, xq_given = res
    fx, fw, fy = _fq_configs(cfg)
    dy, dsy, dzy = output_backward(fy, out_res, g)
    if cfg.relu:
        dy, = jax.vjp(_relu, y_lin)[1](dy)
    dxh, dwh, db = lin_vjp(dy)
    dx, dsx, dzx, _ = fake_quant_backward(fx, (x, xh, sx, zx, None), dxh)
    dw, dsw, dzw, _ = fake_quant_backward(fw, (w, wh, sw, zw, None), dwh)
    return dx, dw, db, dsx, dzx, dsw, dzw, dsy, dzy, zero_cotangent(key), zero_cotangent(xq_given)


def _f32(v):
    return jnp.asarray(v, jnp.float32)


# -- validation: once, at the public entry (the engine's GEMM methods check nothing) ------------------------

def _check_conv(x, w, geometry):
    """``x`` ``(N, *S, C)`` and ``w`` ``(*K, C/groups, O)`` fit ``geometry``; returns the taps per output."""
    return check_conv_shapes(x.shape[-1], x.shape[1:-1], w.shape[-1], w.shape[-2], w.shape[:-2], geometry, "x", "w")


def _check_linear(x, w):
    if x.ndim < 1:
        raise QuantizationError("x must have at least one dimension (features last)")
    if w.ndim != 2:
        raise QuantizationError(f"w must be (out_features, in_features), got shape {w.shape}")
    if x.shape[-1] != w.shape[1]:
        raise QuantizationError(f"x has {x.shape[-1]} features but w expects in_features={w.shape[1]}")
    return w.shape[1]


def _check_integers(x_integers, x):
    if x_integers is None:
        return None
    x_integers = jnp.asarray(x_integers)
    if x_integers.shape != np.shape(x) or x_integers.dtype != jnp.uint8:
        raise ValueError(f"x_integers must be uint8 of x's shape {np.shape(x)}, got {x_integers.dtype} "
                         f"{x_integers.shape}")
    return x_integers


def _call(kind, geometry, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu, engine,
          estimator, weight_estimator, key, x_integers):
    """Validate once (concrete values only), resolve the engine once, cast once, and run the custom-VJP layer.

    Conv operands are channels-last here (``x`` ``(N, *S, C)``, ``w`` ``(*K, C/groups, O)``).
    """
    for value, name in ((x_scale, "x_scale"), (w_scale, "w_scale"), (scale, "scale")):
        check_scale(value, name)  # concrete values only; traced scales are clamped by their owners
    out_ch = w.shape[-1] if kind == "conv" else w.shape[0]
    if np.ndim(w_scale) == 1 and np.shape(w_scale) != (out_ch,):
        raise ValueError(f"w_scale has shape {np.shape(w_scale)}; per-channel scales need one per output channel "
                         f"({out_ch})")
    if np.ndim(x_scale) != 0 or np.ndim(x_zero_point) != 0:
        raise QuantizationError("x_scale and x_zero_point must be scalars (per-tensor input)")
    if np.ndim(scale) != 0 or np.ndim(zero_point) != 0:
        raise QuantizationError("output scale and zero_point must be scalars (per-tensor output)")
    if bias is not None and np.shape(bias) != (out_ch,):
        raise QuantizationError(f"bias must have shape ({out_ch},) (one per output channel), got {np.shape(bias)}")
    taps = _check_conv(x, w, geometry) if kind == "conv" else _check_linear(x, w)
    check_accumulator(taps, integer_zero_point(x_zero_point, quint8), integer_zero_point(w_zero_point, qint8))
    est = get_estimator(estimator)
    west = get_estimator(weight_estimator if weight_estimator is not None else estimator)
    per_channel = np.ndim(w_scale) == 1
    engine = resolve(engine)
    if kind == "conv":
        # torch's x86 engine picks a conv backend per layer from the weight zero points (linear: always fbgemm)
        engine = layer_engine(engine, w_zero_point, geometry.groups)
    w_axis = (w.ndim - 1 if kind == "conv" else 0) if per_channel else None
    cfg = _Layer(kind, geometry, bool(relu), engine, bias is not None, w_axis, est, west)
    b = _f32(bias) if bias is not None else jnp.zeros((out_ch,), jnp.float32)
    return _layer(cfg, _f32(x), _f32(w), b, _f32(x_scale), _f32(x_zero_point), _f32(w_scale), _f32(w_zero_point),
                  _f32(scale), _f32(zero_point), key, x_integers)


def conv(x, w, bias=None, *, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, stride=1, padding=0,
         dilation=1, groups=1, relu=False, engine="fbgemm", estimator="lsq", weight_estimator=None,
         channels_last=False, key=None, x_integers=None, return_integers=False):
    """Differentiable quantized conv, torch layout ``x (N, C, *S)``, ``w (O, C/groups, *K)``; float32 output.

    ``engine``: a torch engine name / instance (``"fbgemm"``, ``"qnnpack"``, ``"onednn"``,
    ``"x86"``, ``"reference"``), a hardware preset or a :class:`~qjax.engines.HardwareSpec` (see
    :func:`qjax.engines.resolve`).  ``w_scale`` and ``w_zero_point`` are scalars or ``(O,)`` (per
    channel).  ``estimator`` applies to the activations (input and output), ``weight_estimator``
    (default: the same) to the weights.  ``channels_last=True``: ``x (N, *S, C)``, ``w (*K, C/groups,
    O)`` (Flax's layout), output ``(N, *S', O)``, the layout qjax computes in: nothing is transposed
    (torch-layout operands are transposed to it once here, and the output back).  ``key``: PRNG key
    for a hardware spec's stochastic requantization.  ``x_integers``: the uint8 integers ``x`` is the
    dequantization of (with ``x_scale``, ``x_zero_point``), when known — e.g. from ``fake_quantize(...,
    return_integers=True)`` or a previous layer's ``return_integers=True`` — so ``x`` is not quantized again;
    the result and the gradients are the same.  ``return_integers``: return ``(output, output integers)``.
    """
    x = jnp.asarray(x)
    w = jnp.asarray(w)
    x_integers = _check_integers(x_integers, x)
    if x.ndim not in (3, 4, 5):
        raise QuantizationError(f"x must be (N, C, *spatial) with 1-3 spatial dims, got shape {x.shape}")
    if w.ndim != x.ndim:
        raise QuantizationError(f"w must have rank {x.ndim} like x, got shape {w.shape}")
    if not channels_last:  # the public torch-layout edge: one transpose in, one out
        x, w = channels_to_last(x), weight_to_last(w)
        x_integers = None if x_integers is None else channels_to_last(x_integers)
    geometry = conv_geometry(x.ndim - 2, stride, padding, dilation, groups)
    y, yq = _call("conv", geometry, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point,
                  relu, engine, estimator, weight_estimator, key, x_integers)
    if not channels_last:
        y = channels_to_first(y)
        if return_integers:
            yq = channels_to_first(yq)
    return (y, yq) if return_integers else y


def linear(x, w, bias=None, *, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu=False,
           engine="fbgemm", estimator="lsq", weight_estimator=None, key=None, x_integers=None,
           return_integers=False):
    """Differentiable quantized linear ``(..., K) @ (O, K).T``; see :func:`conv`."""
    x = jnp.asarray(x)
    w = jnp.asarray(w)
    x_integers = _check_integers(x_integers, x)
    y, yq = _call("linear", None, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu,
                  engine, estimator, weight_estimator, key, x_integers)
    return (y, yq) if return_integers else y
