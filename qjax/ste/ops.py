"""Quantized conv / linear for training: the forward pass is the integer path, the backward pass an estimator.

``conv(x, w, b, ...)`` takes *float* activations, weights and bias plus float quantization
parameters and returns the float32 dequantized output of

    xq = quantize(x, sx, zx); wq = quantize(w, sw, zw)
    yq = qjax.conv(xq, wq, b, scale=sy, zero_point=zy, engine=engine)     # fbgemm, qnnpack, ...
       | integer-only conv under a HardwareSpec (parameters derived as qjax.hardware.convert does)

so what training sees is bit for bit what deployment runs.  The backward pass differentiates
the float surrogate

    x̂ = fq(x; sx, zx)   ŵ = fq(w; sw, zw)   y = fq(relu?(conv(x̂, ŵ) + b); sy, zy)

whose ``fq`` use the estimators of :mod:`qjax.ste.estimators`: gradients reach ``x``, ``w``,
``b`` and (with LSQ / LSQ+) every scale and zero point.  Under a hardware spec the fixed-point
multiplier is ``M = sx·sw/sy``, so it is learned through the scales (LSQ's ``∂/∂sy``).
Works under ``jit``, ``vmap``, ``grad`` and ``jax.checkpoint``.

The surrogate is not re-run in the backward pass: the forward pass keeps what its VJP needs
(``x̂``, ``ŵ`` — the integer path's own dequantized operands —, the float ``conv(x̂, ŵ) + b`` and,
for LSQ, its fake-quantized value) and :func:`_layer_bwd` applies the estimators' formulas and
the conv's transposes to them; ``tests/ste/test_ops.py`` checks the result against ``jax.grad``
of :func:`_surrogate` bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..buffers import own_buffer
from ..dtypes import qint8, quint8
from ..engines import hardware as iops
from ..engines.hardware import HardwareSpec
from ..requant.derive import derive_layer
from ..ops import conv as _int_conv
from ..ops import conv_geometry
from ..ops import linear as _int_linear
from ..qarray import QArray
from ..quantize import _dequantize_values, _quantize_values
from .estimators import Estimator, get_estimator
from .fake_quant import FakeQuantConfig, _fq_bwd, fake_quantize, integer_zero_point

__all__ = ["conv", "linear"]


@dataclasses.dataclass(frozen=True)
class _Layer:
    kind: str  # "conv" | "linear"
    geometry: object  # ConvGeometry (conv) or None
    relu: bool  # fused ReLU
    engine: object  # a torch engine instance or a HardwareSpec
    has_bias: bool  # False: b is a zero placeholder and gets a zero gradient
    per_channel: bool  # weight scale / zero point per output channel
    act_estimator: Estimator  # the input's and the output's fake-quant estimator
    weight_estimator: Estimator  # the weight's
    # conv only: x (and the output) are (N, *S, C) instead of (N, C, *S); the weight is in torch's (O, I, *K)
    # layout either way (it is small: its transposes cost nothing, and its per-channel sums keep torch's order)
    channels_last: bool = False


def _derive_callback(spec: HardwareSpec, out_ch: int, sx, sw, sy, b):
    """In-graph call of the offline derivation (numpy float64), so training uses the same integers."""

    def host(sx, sw, sy, b):
        bq, m0, shift, _ = derive_layer(sx, sw, sy, b, out_ch, spec, "ste layer")
        bq = np.zeros(out_ch, np.int32) if bq is None else bq
        return bq.astype(np.int32), m0.astype(np.int32), shift.astype(np.int32)

    shapes = tuple(jax.ShapeDtypeStruct((out_ch,), jnp.int32) for _ in range(3))
    return jax.pure_callback(host, shapes, sx, sw, sy, b, vmap_method="sequential")


def _weight_to_torch(w):
    """Flax's ``(*K, I, O)`` kernel as torch's ``(O, I, *K)``."""
    nd = w.ndim - 2
    return jnp.transpose(w, (nd + 1, nd) + tuple(range(nd)))


def _weight_to_flax(w):
    """Torch's ``(O, I, *K)`` kernel as Flax's ``(*K, I, O)``."""
    nd = w.ndim - 2
    return jnp.transpose(w, tuple(range(2, nd + 2)) + (1, 0))


def _fq_configs(cfg: _Layer):
    """The three fake quantizations of the surrogate: input (quint8), weight (qint8), output (quint8)."""
    act = FakeQuantConfig(quint8, None, cfg.act_estimator)
    weight = FakeQuantConfig(qint8, 0 if cfg.per_channel else None, cfg.weight_estimator)
    return act, weight, act


def _integer_output(cfg: _Layer, xq, wq, b, sx, zxi, sw, zwi, sy, zyi, key):
    """The deployed integer op on the quantized operands: the output integers (uint8 values).

    ``xq`` / ``wq`` are the integer values (torch weight layout), the zero points int32.
    """
    w_axis = 0 if cfg.per_channel else None
    xa = QArray(xq, sx, zxi, quint8, None, check=False)
    wa = QArray(wq, sw, zwi, qint8, w_axis, check=False)
    bias = b if cfg.has_bias else None
    if isinstance(cfg.engine, HardwareSpec):
        # x is quantized by torch's rule: a dequantized activation round-trips to its integers exactly
        # (round to nearest); the model input's hardware rounding belongs to the quantize stub
        out_ch = wq.shape[0]
        bq, m0, shift = _derive_callback(cfg.engine, out_ch, sx, sw, sy, bias)
        p = dict(weight=wa, bias_q=bq if cfg.has_bias else None, m0=m0, shift=shift, scale=sy, zero_point=zyi)
        if cfg.kind == "linear":
            return iops.linear_integer(xa, p, spec=cfg.engine, relu=cfg.relu, key=key).values
        if cfg.channels_last:  # the integer-only conv takes torch's layout
            xa = QArray(jnp.moveaxis(xq, -1, 1), sx, zxi, quint8, None, check=False)
        yq = iops.conv_integer(xa, p, spec=cfg.engine, geometry=cfg.geometry, relu=cfg.relu, key=key).values
        return jnp.moveaxis(yq, 1, -1) if cfg.channels_last else yq
    if cfg.kind == "linear":
        return _int_linear(xa, wa, bias, scale=sy, zero_point=zyi, relu=cfg.relu, engine=cfg.engine).values
    g = cfg.geometry
    if cfg.channels_last:
        wa = QArray(_weight_to_flax(wq), sw, zwi, qint8, wq.ndim - 1 if cfg.per_channel else None, check=False)
    return _int_conv(xa, wa, bias, scale=sy, zero_point=zyi, stride=g.strides, padding=g.padding,
                     dilation=g.dilation, groups=g.groups, relu=cfg.relu, engine=cfg.engine,
                     channels_last=cfg.channels_last).values


def _quantize_operands(cfg: _Layer, x, w, sx, zx, sw, zw, sy, zy, xq=None):
    """Integer zero points and the quantized input / weight values (torch's exact quantize rules).

    ``xq``: the input's integers when known (``x == dequantize(xq)``: a qjax.nn activation, which
    is on its grid).  Quantizing such an ``x`` gives ``xq`` back exactly — ``(q - z)·s`` times the
    float32 reciprocal is within ``255 · 2⁻²²`` of ``q - z``, far from a rounding boundary, for
    every scale from ``2⁻²³`` (the scale floor of qjax.nn) to ``1e35`` (``tests/ste``: all 65,536
    ``(q, z)`` pairs) — so it is not quantized again.
    """
    fx, fw, _ = _fq_configs(cfg)
    zxi, zwi, zyi = integer_zero_point(zx, quint8), integer_zero_point(zw, qint8), integer_zero_point(zy, quint8)
    if xq is None:
        xq = own_buffer(_quantize_values(x, sx, zxi, quint8, None), sx)
    wq = own_buffer(_quantize_values(w, sw, zwi, qint8, fw.axis), sw)
    return xq, wq, zxi, zwi, zyi


def _exact(cfg: _Layer, x, w, b, sx, zx, sw, zw, sy, zy, key=None, xq=None):
    """The forward pass: the deployed integers dequantized (float32), and the integers (uint8)."""
    xq, wq, zxi, zwi, zyi = _quantize_operands(cfg, x, w, sx, zx, sw, zw, sy, zy, xq)
    yq = own_buffer(_integer_output(cfg, xq, wq, b, sx, zxi, sw, zwi, sy, zyi, key), sy)
    return _dequantize_values(yq, sy, zyi, None), yq


def _linear_part(cfg: _Layer, xh, wh, b):
    """``conv(x̂, ŵ) + b`` (or ``x̂ @ ŵᵀ + b``) in float32, the surrogate's only non-elementwise step."""
    if cfg.kind == "conv":
        g = cfg.geometry
        nd = xh.ndim - 2
        spatial = "DHW"[-nd:] if nd > 1 else "W"
        io = ("N" + spatial + "C") if cfg.channels_last else ("NC" + spatial)
        dn = lax.conv_dimension_numbers(xh.shape, wh.shape, (io, "OI" + spatial, io))
        y = lax.conv_general_dilated(xh, wh, g.strides, g.padding, rhs_dilation=g.dilation, dimension_numbers=dn,
                                     feature_group_count=g.groups, precision=lax.Precision.HIGHEST)
        if cfg.has_bias:
            y = y + (b if cfg.channels_last else b.reshape((1, -1) + (1,) * nd))
        return y
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key, xq=None):
    """``(dequantized output, output integers)``; differentiable in the floats, as the surrogate."""
    return _exact(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key, xq)


def _layer_fwd(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key, xq=None):
    """The integer forward plus what the surrogate's backward needs, computed once.

    Residuals: ``x``, ``w`` and their fake-quantized values ``x̂ = (xq - zx)·sx``, ``ŵ`` (the
    dequantized integers the integer op consumed: bit for bit the surrogate's ``fq`` outputs),
    the float pre-activation ``y_lin = conv(x̂, ŵ) + b`` (as the conv's VJP closure, which holds
    x̂ and ŵ) and, for an output estimator that learns its scale, ``fq(relu?(y_lin))``.

    Why the float conv: the output fake-quant's clip mask and LSQ's ``(ŷ - y)/sy`` are functions
    of the surrogate's float ``y``.  The integer output (exact int32 sum, the engine's
    requantization) rounds to other integers than ``fq(y)`` wherever ``y·(1/sy)`` lies within the
    float conv's rounding error of a half-integer; using it would change those elements' LSQ
    terms by a whole step, so the gradients would no longer be the surrogate's.
    """
    fx, fw, fy = _fq_configs(cfg)
    xq_given = xq  # None or the caller's integers (they get a float0 cotangent)
    xq, wq, zxi, zwi, zyi = _quantize_operands(cfg, x, w, sx, zx, sw, zw, sy, zy, xq)
    yq = own_buffer(_integer_output(cfg, xq, wq, b, sx, zxi, sw, zwi, sy, zyi, key), sy)
    out = _dequantize_values(yq, sy, zyi, None)
    xh = _dequantize_values(xq, sx, zxi, None)
    wh = _dequantize_values(wq, sw, zwi, fw.axis)
    y_lin, lin_vjp = jax.vjp(functools.partial(_linear_part, cfg), xh, wh, b)
    y = _relu(y_lin) if cfg.relu else y_lin
    # fq(y)'s value enters LSQ's scale gradient only; the STE / clipped estimators never read it
    yh = _dequantize_values(_quantize_values(y, sy, zyi, quint8, None), sy, zyi, None) \
        if fy.estimator.learn_scale else None
    return (out, yq), (x, xh, w, wh, y_lin, yh, lin_vjp, sx, zx, sw, zw, sy, zy, key, xq_given)


def _layer_bwd(cfg, res, g):
    """The surrogate's VJP from the residuals: fq_y's, relu's, the conv's transposes, fq_x's and fq_w's."""
    x, xh, w, wh, y_lin, yh, lin_vjp, sx, zx, sw, zw, sy, zy, key, xq_given = res
    fx, fw, fy = _fq_configs(cfg)
    y = _relu(y_lin) if cfg.relu else y_lin
    dy, dsy, dzy, _ = _fq_bwd(fy, (y, yh, sy, zy, None), g[0])  # g[1]: the integers' (float0) cotangent
    if cfg.relu:
        dy, = jax.vjp(_relu, y_lin)[1](dy)
    dxh, dwh, db = lin_vjp(dy)
    dx, dsx, dzx, _ = _fq_bwd(fx, (x, xh, sx, zx, None), dxh)
    dw, dsw, dzw, _ = _fq_bwd(fw, (w, wh, sw, zw, None), dwh)
    dkey = None if key is None else np.zeros(np.shape(key), jax.dtypes.float0)
    dxq = None if xq_given is None else np.zeros(np.shape(xq_given), jax.dtypes.float0)
    return dx, dw, db, dsx, dzx, dsw, dzw, dsy, dzy, dkey, dxq


_layer.defvjp(_layer_fwd, _layer_bwd)


def resolve_arithmetic(engine):
    """A torch engine instance or a :class:`~qjax.hardware.HardwareSpec` from a name, a spec or an engine."""
    from ..engines import resolve

    return resolve(engine)


def _f32(v):
    return jnp.asarray(v, jnp.float32)


def _call(kind, geometry, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu, engine,
          estimator, weight_estimator, key=None, channels_last=False, x_integers=None, return_integers=False):
    """Validate once (concrete values only), cast once, and run the custom-VJP layer.

    ``w`` is in torch's ``(O, I, *K)`` layout here; ``channels_last`` says how ``x`` is laid out.
    """
    from ..checks import check_scale

    for value, name in ((x_scale, "x_scale"), (w_scale, "w_scale"), (scale, "scale")):
        check_scale(value, name)  # concrete values only; traced scales are clamped by their owners
    if np.ndim(w_scale) == 1 and np.shape(w_scale) != (np.shape(w)[0],):
        raise ValueError(f"w_scale has shape {np.shape(w_scale)}; per-channel scales need one per output channel "
                         f"({np.shape(w)[0]})")
    est = get_estimator(estimator)
    west = get_estimator(weight_estimator if weight_estimator is not None else estimator)
    per_channel = np.ndim(w_scale) == 1
    engine = resolve_arithmetic(engine)
    if kind == "conv":
        # torch's x86 engine picks a conv backend per layer from the weight zero points (linear: always fbgemm)
        from ..engines import layer_engine

        engine = layer_engine(engine, w_zero_point, geometry.groups)
    cfg = _Layer(kind, geometry, bool(relu), engine, bias is not None, per_channel, est, west, bool(channels_last))
    b = _f32(bias) if bias is not None else jnp.zeros((w.shape[0],), jnp.float32)
    if isinstance(engine, HardwareSpec) and engine.requant_rounding == "stochastic" and key is None:
        raise ValueError(f"spec {engine.name!r} rounds stochastically: pass key=")
    if x_integers is not None:
        x_integers = jnp.asarray(x_integers)
        if x_integers.shape != np.shape(x) or x_integers.dtype != jnp.uint8:
            raise ValueError(f"x_integers must be uint8 of x's shape {np.shape(x)}, got {x_integers.dtype} "
                             f"{x_integers.shape}")
    y, yq = _layer(cfg, _f32(x), _f32(w), b, _f32(x_scale), _f32(x_zero_point), _f32(w_scale), _f32(w_zero_point),
                   _f32(scale), _f32(zero_point), key, x_integers)
    return (y, yq) if return_integers else y


def conv(x, w, bias=None, *, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, stride=1, padding=0,
         dilation=1, groups=1, relu=False, engine="fbgemm", estimator="lsq", weight_estimator=None,
         channels_last=False, key=None, x_integers=None, return_integers=False):
    """Differentiable quantized conv, torch layout ``x (N, C, *S)``, ``w (O, C/groups, *K)``; float32 output.

    ``engine``: a torch engine name / instance (``"fbgemm"``, ``"qnnpack"``, ``"onednn"``,
    ``"x86"``, ``"reference"``) or a :class:`~qjax.hardware.HardwareSpec`.  ``w_scale`` and
    ``w_zero_point`` are scalars or ``(O,)`` (per channel).  ``estimator`` applies to the
    activations (input and output), ``weight_estimator`` (default: the same) to the weights.
    ``channels_last=True``: ``x (N, *S, C)``, ``w (*K, C/groups, O)`` (Flax's layout), output ``(N, *S', O)``;
    the activations stay in that layout throughout (integer conv, float conv and their transposes), so no
    activation is transposed; the per-tensor gradient sums then run in channels-last order.  ``key``: PRNG
    key for a hardware spec's stochastic requantization.  ``x_integers``: the uint8 integers ``x`` is the
    dequantization of (with ``x_scale``, ``x_zero_point``), when known — e.g. from ``fake_quantize(...,
    return_integers=True)`` or a previous layer's ``return_integers=True`` — so ``x`` is not quantized again;
    the result and the gradients are the same.  ``return_integers``: return ``(output, output integers)``.
    """
    x = jnp.asarray(x)
    w = jnp.asarray(w)
    if channels_last:
        w = _weight_to_torch(w)
    geometry = conv_geometry(x.ndim - 2, stride, padding, dilation, groups)
    return _call("conv", geometry, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu,
                 engine, estimator, weight_estimator, key, channels_last, x_integers, return_integers)


def linear(x, w, bias=None, *, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu=False,
           engine="fbgemm", estimator="lsq", weight_estimator=None, key=None, x_integers=None,
           return_integers=False):
    """Differentiable quantized linear ``(..., K) @ (O, K).T``; see :func:`conv`."""
    return _call("linear", None, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu,
                 engine, estimator, weight_estimator, key, False, x_integers, return_integers)
