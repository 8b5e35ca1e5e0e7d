"""The QModel node ops: what each node of an imported model computes.

A node's op is ``fn(cfg, p, *args)``: ``cfg`` its static configuration (a dict), ``p`` its
parameters (or None), ``args`` the values of its inputs.  Every op that computes quantized
arithmetic takes its engine from ``cfg["engine"]`` (an engine instance, resolved once by the importer)
and calls only that engine's methods, with the concrete facts the importer recorded from the source
runtime's own run: the memory format the kernel iterates in (``layout``), the input's
(``input_format``), torch's thread count (``threads``), the inputs' concrete ``(scale, zero point)``
(``in_qparams``) and the output's (``out_qparams``).  Float ops on dequantized tensors and shape /
Python ops have no engine.  Importers (:mod:`qjax.interop`) only emit nodes naming these ops.
"""

from __future__ import annotations

import operator

import jax.numpy as jnp

from .. import float32 as f32x
from ..ops import conv, conv_transpose, linear
from ..qarray import QArray
from ..qops.paths import CONTIGUOUS
from .model import GraphError, register_op

__all__ = ["UNARY_KINDS"]

#: the ``kind`` values of a ``unary`` node
UNARY_KINDS = ("relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu", "elu",
               "identity")


def _out_qparams(p, x):
    """The output's ``(scale, zero point)``: the node's own where it has them, else the input's (torch's
    float-module forms ``nn.Hardswish`` / ``nn.LeakyReLU`` keep the input's)."""
    return (p["scale"], p["zero_point"]) if p else (x.scale, x.zero_point)


# -- quantize / dequantize -----------------------------------------------------------------------------


@register_op("quantize")
def quantize_node(cfg, p, x):
    """float ``x`` -> QArray of ``cfg["dtype"]`` with the node's scale / zero point.

    torch quantizes with the float32 scale; a double scale that is not float32-valued (``p["scale64"]``)
    stays on the result for the kernels that compute with the double (onednn)."""
    q = cfg["engine"].quantize(x, p["scale"], p["zero_point"], cfg["dtype"])
    if p.get("scale64") is None:
        return q
    return QArray(q.values, q.scale, q.zero_point, q.dtype, q.axis, check=False, scale64=p["scale64"])


@register_op("dequantize")
def dequantize_node(cfg, p, x):
    """QArray -> float32 (a float input passes through, as ``Tensor.dequantize`` of a float tensor does)."""
    return cfg["engine"].dequantize(x) if isinstance(x, QArray) else x


# -- GEMM ops (qjax.ops: NCHW in and out; the engine computes channels-last) --------------------------------


@register_op("conv")
def conv_node(cfg, p, x):
    return conv(x, p["weight"], p.get("bias"), scale=p["scale"], zero_point=p["zero_point"], stride=cfg["stride"],
                padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"], relu=cfg["relu"],
                engine=cfg["engine"], scale64=p.get("scale64"))


@register_op("conv_transpose")
def conv_transpose_node(cfg, p, x):
    return conv_transpose(x, p["weight"], p.get("bias"), scale=p["scale"], zero_point=p["zero_point"],
                          stride=cfg["stride"], padding=cfg["padding"], output_padding=cfg["output_padding"],
                          dilation=cfg["dilation"], groups=cfg["groups"], engine=cfg["engine"],
                          scale64=p.get("scale64"))


@register_op("linear")
def linear_node(cfg, p, x):
    return linear(x, p["weight"], p.get("bias"), scale=p["scale"], zero_point=p["zero_point"], relu=cfg["relu"],
                  engine=cfg["engine"], scale64=p.get("scale64"))


# -- non-GEMM quantized ops (the engine's, in torch's logical order) ------------------------------------------


@register_op("batch_norm")
def batch_norm_node(cfg, p, x):
    w, b, m, v = (cfg[k].value for k in ("weight", "bias", "mean", "var"))
    return cfg["engine"].batch_norm(x, w, b, m, v, cfg["eps"], cfg["scale"], cfg["zero_point"], relu=cfg["relu"],
                                    in_scale=cfg["in_scale"])


@register_op("binary")
def binary_node(cfg, p, a, b):
    """``kind`` add / mul of two QArrays into the node's scale / zero point."""
    engine = cfg["engine"]
    common = dict(relu=cfg["relu"], memory_format=cfg["layout"], threads=cfg["threads"],
                  input_formats=cfg["input_formats"])
    if cfg["kind"] == "add":
        return engine.add(a, b, p["scale"], p["zero_point"], in_qparams=cfg["in_qparams"],
                          out_qparams=cfg["out_qparams"], **common)
    if cfg["kind"] == "mul":
        return engine.mul(a, b, p["scale"], p["zero_point"], **common)
    raise GraphError(f"unknown binary op {cfg['kind']} (node {cfg.get('node')})")


@register_op("scalar")
def scalar_node(cfg, p, a):
    """``kind`` add_scalar / mul_scalar: QArray op Python float ``c``."""
    engine, in_qparams = cfg["engine"], cfg["in_qparams"][0]
    if cfg["kind"] == "add_scalar":
        return engine.add_scalar(a, cfg["c"], relu=cfg["relu"], memory_format=cfg["layout"], threads=cfg["threads"],
                                 in_qparams=in_qparams)
    if cfg["kind"] == "mul_scalar":
        return engine.mul_scalar(a, cfg["c"], relu=cfg["relu"], in_qparams=in_qparams)
    raise GraphError(f"unknown scalar op {cfg['kind']} (node {cfg.get('node')})")


@register_op("unary")
def unary_node(cfg, p, x):
    """Activations (``kind`` one of :data:`UNARY_KINDS`); a float input takes the exact float path."""
    kind = cfg["kind"]
    if not isinstance(x, QArray):
        return _float_unary(kind, cfg, x)
    if kind == "identity":
        return x
    engine = cfg["engine"]
    mf, th, in_fmt = cfg.get("layout", CONTIGUOUS), cfg.get("threads", 1), cfg.get("input_format")
    if kind == "relu":
        return engine.relu(x, memory_format=mf)
    if kind == "relu6":
        return engine.relu6(x, memory_format=mf, input_format=in_fmt)
    if kind == "hardtanh":
        return engine.hardtanh(x, cfg["min_val"], cfg["max_val"], memory_format=mf, input_format=in_fmt)
    if kind == "hardswish":
        return engine.hardswish(x, *_out_qparams(p, x), memory_format=mf, threads=th)
    if kind == "hardsigmoid":
        return engine.hardsigmoid(x, memory_format=mf, threads=th)
    if kind == "sigmoid":
        return engine.sigmoid(x, cfg.get("scale"), cfg.get("zero_point"), memory_format=mf, threads=th,
                              in_qparams=cfg["in_qparams"][0])
    if kind == "tanh":
        return engine.tanh(x, memory_format=mf, threads=th, in_qparams=cfg["in_qparams"][0])
    if kind == "leaky_relu":
        return engine.leaky_relu(x, cfg["slope"], *_out_qparams(p, x), threads=th)
    if kind == "elu":
        return engine.elu(x, cfg["scale"], cfg["zero_point"], cfg["alpha"], memory_format=mf, threads=th,
                          in_qparams=cfg["in_qparams"][0])
    raise GraphError(f"unknown unary op {kind} (node {cfg.get('node')})")


def _float_unary(kind, cfg, x):
    """The float activations whose float32 result is exact whatever the evaluation order (max / clip)."""
    if kind == "relu":
        return jnp.maximum(x, 0.0)
    if kind == "identity":
        return x
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else (cfg["min_val"], cfg["max_val"])
        return jnp.clip(x, lo, hi)
    raise GraphError(
        f"float {kind} on a dequantized tensor (node {cfg.get('node')}): only relu/relu6/hardtanh/identity "
        "float ops are reproduced exactly"
    )


@register_op("pool")
def pool_node(cfg, p, x):
    """``kind`` max / avg / adaptive (average) pooling."""
    engine, kind, mf = cfg["engine"], cfg["kind"], cfg["layout"]
    if kind == "max":
        return engine.max_pool(x, cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"],
                               memory_format=mf)
    if kind == "avg":
        return engine.avg_pool(x, cfg["kernel"], cfg["stride"], cfg["padding"], cfg["ceil_mode"],
                               cfg["count_include_pad"], cfg["divisor_override"], memory_format=mf)
    if kind == "adaptive":
        return engine.adaptive_avg_pool(x, cfg["output_size"], memory_format=mf)
    raise GraphError(f"unknown pooling {kind} (node {cfg.get('node')})")


@register_op("interpolate")
def interpolate_node(cfg, p, x):
    return cfg["engine"].interpolate(x, cfg["size"], cfg["scale_factor"], cfg["mode"], cfg["align_corners"],
                                     cfg["recompute_scale_factor"], memory_format=cfg["layout"])


@register_op("cat")
def cat_node(cfg, p, xs):
    """Concatenation: of QArrays into the node's (or, without params, the first input's) qparams, or of floats."""
    xs = list(xs)
    if not all(isinstance(x, QArray) for x in xs):
        if any(isinstance(x, QArray) for x in xs):
            raise GraphError(f"cat of quantized and float tensors (node {cfg['node']})")
        return jnp.concatenate(xs, axis=cfg["dim"])
    scale, zp = _out_qparams(p, xs[0])
    return cfg["engine"].cat(xs, scale, zp, dim=cfg["dim"], relu=cfg["relu"], channels_last=cfg["channels_last"])


@register_op("mean")
def mean_node(cfg, p, x):
    if not isinstance(x, QArray):
        raise GraphError(f"float mean (node {cfg['node']}) is not reproduced exactly")
    return cfg["engine"].mean(x, cfg["dims"], cfg["keepdim"], memory_format=cfg["layout"],
                              threads=cfg.get("threads", 1))


# -- shape ops (no arithmetic: the same integers, moved) ------------------------------------------------------


def _map_values(x, fn):
    if isinstance(x, QArray):
        if x.axis is not None:
            raise GraphError("shape ops on per-channel quantized activations are not supported")
        return x.with_values(fn(x.values))
    return fn(x)


def _dims(args):
    """``view(2, 3)`` and ``view((2, 3))`` alike."""
    return args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _take(x, dim, start, size):
    return _map_values(x, lambda v: jnp.take(v, jnp.arange(start, start + size), axis=dim))


@register_op("shape")
def shape_node(cfg, p, x, *args):
    """torch's view / shape methods (``kind``) on a QArray's integers or a float array."""
    kind = cfg["kind"]
    if kind == "size":
        shp = tuple(x.shape)
        return shp if not args else shp[args[0]]
    if kind == "dim":
        return len(x.shape)
    if kind in ("view", "reshape"):
        return _map_values(x, lambda v: v.reshape(tuple(int(s) for s in _dims(args))))
    if kind == "flatten":
        start, end = (list(args) + [0, -1])[:2] if args else (cfg.get("start", 0), cfg.get("end", -1))
        start = cfg.get("start", start)
        end = cfg.get("end", end)

        def fl(v):
            s0, e0 = start % v.ndim, end % v.ndim
            return v.reshape(v.shape[:s0] + (-1,) + v.shape[e0 + 1:])

        return _map_values(x, fl)
    if kind == "permute":
        return _map_values(x, lambda v: jnp.transpose(v, tuple(int(d) for d in _dims(args))))
    if kind == "transpose":
        return _map_values(x, lambda v: jnp.swapaxes(v, int(args[0]), int(args[1])))
    if kind == "contiguous":
        return x
    if kind == "squeeze":
        return _map_values(x, lambda v: jnp.squeeze(v, axis=args[0]) if args else jnp.squeeze(v))
    if kind == "unsqueeze":
        return _map_values(x, lambda v: jnp.expand_dims(v, int(args[0])))
    if kind == "getitem":
        idx = args[0]
        if isinstance(x, (tuple, list)):
            return x[idx]
        return _map_values(x, lambda v: v[idx])
    if kind == "chunk":
        # torch.chunk: ceil(n / chunks)-sized pieces, the last one shorter
        chunks, dim = int(args[0]), int(args[1]) if len(args) > 1 else cfg.get("dim", 0)
        n = x.shape[dim]
        size = -(-n // chunks)
        return tuple(_take(x, dim, b, min(size, n - b)) for b in range(0, n, size))
    if kind == "split":
        size, dim = args[0], int(args[1]) if len(args) > 1 else cfg.get("dim", 0)
        n = x.shape[dim]
        sizes = [size] * (-(-n // size)) if isinstance(size, int) else list(size)
        out, start = [], 0
        for s in sizes:
            s = min(s, n - start)
            out.append(_take(x, dim, start, s))
            start += s
        return tuple(out)
    raise GraphError(f"unknown shape op {kind} (node {cfg.get('node')})")


# -- Python-level ops (sizes; exact float32 arithmetic on float tensors) ----------------------------------------

_PY_OPS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
    "truediv": operator.truediv, "mod": operator.mod, "neg": operator.neg,
}


@register_op("python")
def python_node(cfg, p, *args):
    """Arithmetic on Python values (shapes) — or exact float32 elementwise arithmetic on tensors."""
    kind = cfg["kind"]
    if any(isinstance(a, QArray) for a in args):
        raise GraphError(f"python operator {kind} on a quantized tensor (node {cfg['node']}); torch "
                         "needs FloatFunctional / quantized ops for that")
    tensors = [a for a in args if hasattr(a, "shape") and hasattr(a, "dtype")]
    # correctly rounded float32 products / quotients (f32x), as torch's CPU kernels compute them
    if tensors and kind in ("mul",):
        return f32x.mul_rn(jnp.asarray(args[0], jnp.float32), jnp.asarray(args[1], jnp.float32))
    if tensors and kind in ("truediv",):
        return f32x.div_rn(jnp.asarray(args[0], jnp.float32), jnp.asarray(args[1], jnp.float32))
    return _PY_OPS[kind](*args)


_PYFUNCS = {
    "len": len, "int": int, "floordiv": operator.floordiv, "mul": operator.mul, "add": operator.add,
    "sub": operator.sub, "neg": operator.neg, "ne": operator.ne, "eq": operator.eq, "gt": operator.gt,
    "lt": operator.lt, "ge": operator.ge, "le": operator.le,
}


@register_op("pyfunc")
def pyfunc_node(cfg, p, *args):
    """Python arithmetic on static values (sizes) recorded from TorchScript graphs."""
    return _PYFUNCS[cfg["kind"]](*args)
