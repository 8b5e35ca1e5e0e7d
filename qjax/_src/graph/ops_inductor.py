"""Node ops of an inductor-lowered pt2e graph (``qjax.interop.pt2e_inductor``).

In that graph quantized tensors are plain ``uint8`` / ``int8`` tensors and their scales travel as op
arguments, so these nodes pass raw arrays in torch's logical order ``(N, C, *spatial)``: integer
arrays for quantized tensors, float32 for float ones.

* the ``quantized_decomposed`` quantize / dequantize ops are :mod:`qjax.graph.ops_pt2e`'s nodes;
* ``onednn_conv`` / ``onednn_linear`` — ``onednn::qconv_pointwise`` / ``qconv2d_pointwise.binary`` /
  ``qlinear_pointwise``, computed by the node's engine (``cfg["engine"].pointwise_conv`` /
  ``pointwise_linear``, channels last inside);
* ``exact_op`` — ATen ops whose float32 / integer result does not depend on evaluation order
  (max pooling, relu / hardtanh clamps, reshapes, transposes, split, cat, clone; float32 mul / add,
  one rounding each; ``hardswish`` ``fl32(fl32(x * clamp(x + 3, 0, 6)) / 6)`` and ``hardsigmoid``
  ``fl32(clamp(x + 3, 0, 6) / 6)`` — ATen's vectorized and scalar paths compute exactly these roundings;
  multiplying by ``1/6`` instead differs on ~30% of values);
* ``float_mean`` — ``aten.mean.dim`` over ``(H, W)`` of a dense channels-last float32 tensor (the
  global average pool before a classifier): ``fl32(sum / (H*W))`` with SumKernel.cpp's cascade sum in
  torch's order (:func:`qjax.qops.mean.channels_last_spatial_sum`) and a true float32 division
  (``mean_out``: ``sum_out(...).div_(dim_prod)``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from ..qops.mean import channels_last_spatial_sum
from .model import GraphError, register_op

__all__ = []

_INT_DTYPES = {"uint8": jnp.uint8, "int8": jnp.int8}


def _to_last(v):
    return jnp.moveaxis(v, 1, -1)


def _to_first(v):
    return jnp.moveaxis(v, -1, 1)


def _as_output(v, post):
    return v if post.out_dtype == "float32" else v.astype(_INT_DTYPES[post.out_dtype])


@register_op("onednn_conv")
def onednn_conv_node(cfg, p, x, accum=None):
    """``x`` uint8 ``(N, C, *spatial)``; ``p``: ``weight`` int8 ``(*kernel, C/groups, O)``, ``w_scale``,
    ``bias``; ``accum`` the ``sum`` operand (``(N, O, *spatial)``) or None."""
    post = cfg["post"]
    y = cfg["engine"].pointwise_conv(_to_last(x), cfg["x_scale"], cfg["x_zero_point"], p["weight"], p["w_scale"],
                                     p.get("bias"), cfg["geometry"], post,
                                     accum=None if accum is None else _to_last(accum))
    return _as_output(_to_first(y), post)


@register_op("onednn_linear")
def onednn_linear_node(cfg, p, x, accum=None):
    """``x`` uint8 ``(..., K)``; ``p``: ``weight`` int8 ``(O, K)``, ``w_scale``, ``bias``."""
    post = cfg["post"]
    y = cfg["engine"].pointwise_linear(x, cfg["x_scale"], cfg["x_zero_point"], p["weight"], p["w_scale"],
                                       p.get("bias"), post, accum=accum)
    return _as_output(y, post)


def _max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """torch's max_pool2d (``-inf`` / the dtype's minimum padding; ceil mode keeps windows that start inside)."""
    nd = len(kernel)
    spatial = x.shape[2:]
    hi = []
    for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation):
        eff = d * (k - 1) + 1
        out = (n + 2 * p - eff + ((s - 1) if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= n + p:
            out -= 1
        hi.append(max(0, (out - 1) * s + eff - n - p))
    init = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return lax.reduce_window(x, jnp.asarray(init, x.dtype), lax.max, (1, 1) + tuple(kernel), (1, 1) + tuple(stride),
                             [(0, 0), (0, 0)] + [(p, h) for p, h in zip(padding, hi)],
                             window_dilation=(1, 1) + tuple(dilation)) if nd else x


def _clamp06(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise GraphError("hardswish / hardsigmoid of an integer tensor")
    return jnp.clip(x + np.float32(3), np.float32(0), np.float32(6))


@register_op("exact_op")
def exact_op_node(cfg, p, x, *rest):
    kind = cfg["kind"]
    if kind == "max_pool":
        return _max_pool(x, cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"])
    if kind == "relu":
        return jnp.maximum(x, jnp.zeros((), x.dtype))
    if kind == "hardtanh":
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise GraphError(f"hardtanh of an integer tensor (node {cfg['node']})")
        return jnp.clip(x, np.float32(cfg["min_val"]), np.float32(cfg["max_val"]))
    if kind == "hardswish":  # ATen's hardswish_kernel: x * min(max(x + 3, 0), 6) / 6, a true division
        return f32x.div_rn(f32x.uncontracted(x * _clamp06(x)), np.float32(6))
    if kind == "hardsigmoid":  # hardsigmoid_kernel: min(max(x + 3, 0), 6) / 6
        return f32x.div_rn(_clamp06(x), np.float32(6))
    if kind == "mul":  # float32 tensors (broadcasting): one correctly rounded product, kept out of FMAs
        return f32x.uncontracted(x * rest[0])
    if kind == "add":
        return f32x.uncontracted(x) + f32x.uncontracted(rest[0])
    if kind == "reshape":
        if int(np.prod(cfg["shape"])) != x.size:  # torch.export records static shapes (the example's batch)
            raise GraphError(f"node {cfg['node']}: reshape to {tuple(cfg['shape'])} of an input of shape "
                             f"{tuple(x.shape)}; the graph was exported for the example input's shape: call it "
                             "with that shape")
        return x.reshape(cfg["shape"])
    if kind == "permute":
        return jnp.transpose(x, cfg["dims"])
    if kind == "split":
        bounds = np.cumsum((0,) + tuple(cfg["sizes"]))
        return tuple(lax.slice_in_dim(x, int(b), int(e), axis=cfg["dim"]) for b, e in zip(bounds[:-1], bounds[1:]))
    if kind == "identity":
        return x
    if kind == "cat":
        return jnp.concatenate((x,) + rest, axis=cfg["dim"])
    if kind == "getitem":
        return x[cfg["index"]]
    raise GraphError(f"unknown exact op {kind} (node {cfg.get('node')})")


@register_op("float_mean")
def float_mean_node(cfg, p, x):
    """``x`` float32 ``(N, C, H, W)`` (channels-last in torch) -> its mean over ``(H, W)``."""
    n, c, h, w = x.shape
    m = f32x.div_rn(channels_last_spatial_sum(x, cfg["threads"]), np.float32(h * w))
    return m.reshape(n, c, 1, 1) if cfg["keepdim"] else m
