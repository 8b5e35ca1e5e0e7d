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
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..dtypes import qint8, quint8
from ..hardware import integer_ops as iops
from ..hardware.convert import derive_layer
from ..hardware.spec import HardwareSpec
from ..ops import conv as _int_conv
from ..ops import conv_geometry
from ..ops import linear as _int_linear
from ..qarray import QArray
from ..quantize import dequantize, quantize
from .estimators import Estimator, get_estimator
from .fake_quant import fake_quantize, integer_zero_point

__all__ = ["conv", "linear"]


@dataclasses.dataclass(frozen=True)
class _Layer:
    kind: str  # "conv" | "linear"
    geometry: object
    relu: bool
    engine: object
    has_bias: bool
    per_channel: bool
    act_estimator: Estimator
    weight_estimator: Estimator


def _derive_callback(spec: HardwareSpec, out_ch: int, sx, sw, sy, b):
    """In-graph call of the offline derivation (numpy float64), so training uses the same integers."""

    def host(sx, sw, sy, b):
        bq, m0, shift, _ = derive_layer(sx, sw, sy, b, out_ch, spec, "ste layer")
        bq = np.zeros(out_ch, np.int32) if bq is None else bq
        return bq.astype(np.int32), m0.astype(np.int32), shift.astype(np.int32)

    shapes = tuple(jax.ShapeDtypeStruct((out_ch,), jnp.int32) for _ in range(3))
    return jax.pure_callback(host, shapes, sx, sw, sy, b, vmap_method="sequential")


def _exact(cfg: _Layer, x, w, b, sx, zx, sw, zw, sy, zy, key=None):
    axis = 0 if cfg.per_channel else None
    xq = quantize(x, sx, integer_zero_point(zx, quint8), quint8)
    wq = quantize(w, sw, integer_zero_point(zw, qint8), qint8, axis=axis)
    zyi = integer_zero_point(zy, quint8)
    bias = b if cfg.has_bias else None
    if isinstance(cfg.engine, HardwareSpec):
        # x is quantized by torch's rule: a dequantized activation round-trips to its integers exactly
        # (round to nearest); the model input's hardware rounding belongs to the quantize stub
        out_ch = w.shape[0]
        bq, m0, shift = _derive_callback(cfg.engine, out_ch, sx, sw, sy, b if cfg.has_bias else None)
        p = dict(weight=wq, bias_q=bq if cfg.has_bias else None, m0=m0, shift=shift, scale=sy, zero_point=zyi)
        if cfg.kind == "conv":
            yq = iops.conv_integer(xq, p, spec=cfg.engine, geometry=cfg.geometry, relu=cfg.relu, key=key)
        else:
            yq = iops.linear_integer(xq, p, spec=cfg.engine, relu=cfg.relu, key=key)
    elif cfg.kind == "conv":
        g = cfg.geometry
        yq = _int_conv(xq, wq, bias, scale=sy, zero_point=zyi, stride=g.strides, padding=g.padding,
                       dilation=g.dilation, groups=g.groups, relu=cfg.relu, engine=cfg.engine)
    else:
        yq = _int_linear(xq, wq, bias, scale=sy, zero_point=zyi, relu=cfg.relu, engine=cfg.engine)
    return dequantize(yq)


def _surrogate(cfg: _Layer, x, w, b, sx, zx, sw, zw, sy, zy):
    axis = 0 if cfg.per_channel else None
    xh = fake_quantize(x, sx, zx, quint8, estimator=cfg.act_estimator)
    wh = fake_quantize(w, sw, zw, qint8, axis=axis, estimator=cfg.weight_estimator)
    if cfg.kind == "conv":
        g = cfg.geometry
        nd = x.ndim - 2
        spatial = "DHW"[-nd:] if nd > 1 else "W"
        dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NC" + spatial, "OI" + spatial, "NC" + spatial))
        y = lax.conv_general_dilated(xh, wh, g.strides, g.padding, rhs_dilation=g.dilation, dimension_numbers=dn,
                                     feature_group_count=g.groups, precision=lax.Precision.HIGHEST)
        if cfg.has_bias:
            y = y + b.reshape((1, -1) + (1,) * nd)
    else:
        y = jnp.matmul(xh, wh.T, precision=lax.Precision.HIGHEST)
        if cfg.has_bias:
            y = y + b
    if cfg.relu:
        y = jnp.maximum(y, 0.0)
    return fake_quantize(y, sy, zy, quint8, estimator=cfg.act_estimator)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key):
    return _exact(cfg, x, w, b, sx, zx, sw, zw, sy, zy, key)


def _layer_fwd(cfg, *args):
    return _exact(cfg, *args), args


def _layer_bwd(cfg, args, g):
    *diff, key = args
    _, vjp = jax.vjp(functools.partial(_surrogate, cfg), *diff)
    dkey = None if key is None else np.zeros(np.shape(key), jax.dtypes.float0)
    return tuple(vjp(g)) + (dkey,)


_layer.defvjp(_layer_fwd, _layer_bwd)


def resolve_arithmetic(engine):
    """A torch engine instance or a :class:`~qjax.hardware.HardwareSpec` from a name, a spec or an engine."""
    from ..engines import resolve_engine
    from ..hardware.spec import PRESETS, get_spec

    if isinstance(engine, HardwareSpec):
        return engine
    if isinstance(engine, str) and engine.split(":")[0] in PRESETS:
        return get_spec(engine)
    return resolve_engine(engine)


def _f32(v):
    return jnp.asarray(v, jnp.float32)


def _call(kind, geometry, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu, engine,
          estimator, weight_estimator, key=None):
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
    if hasattr(engine, "dispatch") and kind == "conv":
        # torch's x86 engine picks a conv backend per layer from the weight zero points (linear: always fbgemm)
        from ..checks import is_concrete

        if is_concrete(w_zero_point):
            engine = engine.dispatch(np.round(np.asarray(w_zero_point)).astype(np.int32), geometry.groups)
    cfg = _Layer(kind, geometry, bool(relu), engine, bias is not None, per_channel, est, west)
    b = _f32(bias) if bias is not None else jnp.zeros((w.shape[0],), jnp.float32)
    if isinstance(engine, HardwareSpec) and engine.requant_rounding == "stochastic" and key is None:
        raise ValueError(f"spec {engine.name!r} rounds stochastically: pass key=")
    return _layer(cfg, _f32(x), _f32(w), b, _f32(x_scale), _f32(x_zero_point), _f32(w_scale), _f32(w_zero_point),
                  _f32(scale), _f32(zero_point), key)


def conv(x, w, bias=None, *, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, stride=1, padding=0,
         dilation=1, groups=1, relu=False, engine="fbgemm", estimator="lsq", weight_estimator=None,
         channels_last=False, key=None):
    """Differentiable quantized conv, torch layout ``x (N, C, *S)``, ``w (O, C/groups, *K)``; float32 output.

    ``engine``: a torch engine name / instance (``"fbgemm"``, ``"qnnpack"``, ``"onednn"``,
    ``"x86"``, ``"reference"``) or a :class:`~qjax.hardware.HardwareSpec`.  ``w_scale`` and
    ``w_zero_point`` are scalars or ``(O,)`` (per channel).  ``estimator`` applies to the
    activations (input and output), ``weight_estimator`` (default: the same) to the weights.
    ``channels_last=True``: ``x (N, *S, C)``, ``w (*K, C/groups, O)`` (Flax's layout), output ``(N, *S', O)``
    (pure transposes around the same computation).  ``key``: PRNG key for a hardware spec's stochastic
    requantization.
    """
    if channels_last:
        nd = x.ndim - 2
        x = jnp.moveaxis(jnp.asarray(x), -1, 1)
        w = jnp.transpose(jnp.asarray(w), (nd + 1, nd) + tuple(range(nd)))
        y = conv(x, w, bias, x_scale=x_scale, x_zero_point=x_zero_point, w_scale=w_scale, w_zero_point=w_zero_point,
                 scale=scale, zero_point=zero_point, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 relu=relu, engine=engine, estimator=estimator, weight_estimator=weight_estimator, key=key)
        return jnp.moveaxis(y, 1, -1)
    geometry = conv_geometry(x.ndim - 2, stride, padding, dilation, groups)
    return _call("conv", geometry, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu,
                 engine, estimator, weight_estimator, key)


def linear(x, w, bias=None, *, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu=False,
           engine="fbgemm", estimator="lsq", weight_estimator=None, key=None):
    """Differentiable quantized linear ``(..., K) @ (O, K).T``; see :func:`conv`."""
    return _call("linear", None, x, w, bias, x_scale, x_zero_point, w_scale, w_zero_point, scale, zero_point, relu,
                 engine, estimator, weight_estimator, key)
