"""Node ops of torch.export / pt2e graphs as torch runs them (:mod:`qjax.interop.pt2e`, arithmetic ``"converted"``).

A ``convert_pt2e`` graph is a float32 program: ``quantized_decomposed`` ops turn float tensors into
plain integer tensors and back, with the quantization parameters as arguments, and ATen float ops run
in between.  These ops reproduce the ``quantized_decomposed`` ops of
``torch/ao/quantization/fx/_decomposed.py`` (the library the converted graph calls; torchao 0.18
registers no copy of its own) and the ATen float ops whose float32 result does not depend on an
evaluation order.  Integer tensors are plain ``jnp`` arrays of torch's dtype (``uint8``, ``int8``,
...), not :class:`~qjax.QArray` s, as in torch.

XLA's CPU backend flushes subnormal float32 values to zero; torch does not.  A dequantized value or a
product below ``2**-126`` (scales below ~``1e-38 / 255``) is the one place the two can differ.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x
from .model import GraphError, register_op

__all__ = ["FLOAT_KINDS", "quantize_decomposed", "dequantize_decomposed"]

#: the ``kind`` values of a ``pt2e_float`` node
FLOAT_KINDS = ("add", "sub", "mul", "relu", "clamp", "max_pool", "identity")

_STORAGE = {"torch.uint8": jnp.uint8, "torch.int8": jnp.int8, "torch.int16": jnp.int16, "torch.uint16": jnp.uint16,
            "torch.int32": jnp.int32}


def _channel(v, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return jnp.reshape(v, shape)


def quantize_decomposed(x, inv_scale, zero_point, qmin: int, qmax: int, dtype: str):
    """``quantized_decomposed.quantize_per_tensor`` / ``_per_channel``: float32 ``x`` -> integers of ``dtype``.

    ``q = clamp(rne(fl32(x * inv_scale)) + zero_point, qmin, qmax)``: the product is rounded to float32,
    then to an integer (half to even, ``torch.round``), and only then is the zero point added (in float32,
    exact) — unlike ``torch.quantize_per_tensor``, which adds the zero point before rounding.
    ``inv_scale`` is float32 and broadcasts against ``x``: per tensor ``fl32(1.0 / scale)`` with
    ``scale`` a Python float (``1.0 / scale`` is a double division; the tensor-times-scalar multiply
    casts the quotient to float32), per channel ``fl32(1.0f / scales)`` (float32 scales, a float32
    division).
    """
    v = f32x.uncontracted(jnp.asarray(x, jnp.float32) * inv_scale)
    r = jnp.round(v) + jnp.asarray(zero_point).astype(jnp.float32)
    return jnp.clip(r, np.float32(qmin), np.float32(qmax)).astype(_STORAGE[dtype])


def dequantize_decomposed(q, scale, zero_point):
    """``quantized_decomposed.dequantize_per_tensor`` / ``_per_channel``: integers -> float32.

    ``fl32(float(q - zero_point) * scale)`` with float32 ``scale`` (per tensor: the Python float
    cast to float32 by the tensor-times-scalar multiply; per channel: the float32 scales tensor).
    ``q - zero_point`` is exact (torch: in float32 per tensor, in int64 per channel); the product is
    kept out of XLA's FMA contraction with the float op that follows.
    """
    d = q.astype(jnp.float32) - jnp.asarray(zero_point).astype(jnp.float32)
    return f32x.uncontracted(d * jnp.asarray(scale, jnp.float32))


@register_op("pt2e_constant")
def constant_node(cfg, p):
    """A tensor constant of the graph (weights as integers, scales, zero points, biases): a leaf of the params."""
    return p["value"]


@register_op("pt2e_quantize")
def quantize_node(cfg, p, x, *channel_args):
    """Per tensor (``cfg["inv_scale"]``, ``cfg["zero_point"]``) or per channel (``scales``, ``zero_points``
    tensors and ``cfg["axis"]``)."""
    if cfg["per_channel"]:
        scales, zps = channel_args
        inv = f32x.div_rn(1.0, jnp.asarray(scales, jnp.float32))
        ax = cfg["axis"] % x.ndim
        return quantize_decomposed(x, _channel(inv, x.ndim, ax), _channel(zps, x.ndim, ax), cfg["qmin"], cfg["qmax"],
                                   cfg["dtype"])
    return quantize_decomposed(x, np.float32(cfg["inv_scale"]), cfg["zero_point"], cfg["qmin"], cfg["qmax"],
                               cfg["dtype"])


@register_op("pt2e_dequantize")
def dequantize_node(cfg, p, q, *channel_args):
    """Per tensor (``cfg["scale"]`` float32-valued, ``cfg["zero_point"]``) or per channel."""
    if cfg["per_channel"]:
        scales, zps = channel_args
        ax = cfg["axis"] % q.ndim
        z = 0 if zps is None else _channel(zps, q.ndim, ax)
        return dequantize_decomposed(q, _channel(scales, q.ndim, ax), z)
    return dequantize_decomposed(q, np.float32(cfg["scale"]), cfg["zero_point"])


def _max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """``aten.max_pool{1,2,3}d`` on float32: windows padded with -inf, torch's output size (ceil_mode:
    a last window must start inside the input or its left padding)."""
    nd = len(kernel)
    pads = []
    for i in range(nd):
        n, k, s, pd, d = x.shape[x.ndim - nd + i], kernel[i], stride[i], padding[i], dilation[i]
        span = n + 2 * pd - d * (k - 1) - 1
        out = (span + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= n + pd:
            out -= 1
        pads.append((pd, max(0, (out - 1) * s + d * (k - 1) + 1 - n - pd)))
    lead = x.ndim - nd
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) * lead + tuple(kernel), (1,) * lead + tuple(stride),
                             ((0, 0),) * lead + tuple(pads), window_dilation=(1,) * lead + tuple(dilation))


@register_op("pt2e_float")
def float_node(cfg, p, *args):
    """The ATen float ops whose float32 result is one rounding (or none) whatever the order: ``kind`` add / sub
    (``alpha`` 1) / mul (correctly rounded, :func:`qjax.float32.mul_rn`), relu, clamp (hardtanh, relu6),
    max_pool, identity (dropout in eval, clone, detach)."""
    kind = cfg["kind"]
    f = [jnp.asarray(a, jnp.float32) if not isinstance(a, (int, float)) else np.float32(a) for a in args]
    if kind == "add":
        return f32x.uncontracted(f[0]) + f32x.uncontracted(f[1])
    if kind == "sub":
        return f32x.uncontracted(f[0]) - f32x.uncontracted(f[1])
    if kind == "mul":
        return f32x.mul_rn(f[0], f[1])
    if kind == "relu":
        return jnp.maximum(f[0], np.float32(0))
    if kind == "clamp":
        y = f[0]
        if cfg["min"] is not None:
            y = jnp.maximum(y, np.float32(cfg["min"]))
        if cfg["max"] is not None:
            y = jnp.minimum(y, np.float32(cfg["max"]))
        return y
    if kind == "max_pool":
        return _max_pool(f[0], cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"])
    if kind == "identity":
        return args[0]
    raise GraphError(f"unknown pt2e float op {kind} (node {cfg.get('node')})")
