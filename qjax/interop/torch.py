"""Import converted torch quantized models bit-exactly: :func:`from_torch`.

Takes a model after ``torch.ao.quantization.convert`` (eager mode) or ``convert_fx``
(FX mode), captures its graph with ``torch.fx``, runs it once on an example input to
record what the arithmetic depends on besides the numbers — each tensor's memory
format (torch picks kernels by it) and torch's thread count — and returns a
:class:`qjax.graph.QModel` whose integer arithmetic is torch's, op by op.

Torch is imported lazily, only here.  Anything the importer does not know raises
:class:`TorchImportError` naming the module/function and the graph node: there is no
silent float fallback.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..checks import QuantizationError
from ..dtypes import as_qdtype
from ..graph import Node, QModel, Ref, Static, register_op
from ..ops import conv, conv_transpose, linear
from ..qarray import QArray
from ..qops import elementwise as ew
from ..qops import qnnpack as qq
from ..qops.batchnorm import batch_norm
from ..qops.concat import cat
from ..qops.paths import CHANNELS_LAST, CONTIGUOUS, STRIDED, suggest_memory_format
from ..qops.pooling import adaptive_avg_pool, avg_pool, max_pool
from ..qops.resize import interpolate
from ..quantize import dequantize, quantize

__all__ = ["from_torch", "TorchImportError", "qarray_from_torch", "memory_format_of", "torch_engine_of"]


class TorchImportError(QuantizationError):
    """A torch model contains something qjax cannot import exactly."""


# ---------------------------------------------------------------------------------------------- helpers


def _torch():
    import torch

    return torch


def qarray_from_torch(t) -> QArray:
    """A torch quantized tensor as a :class:`QArray` (scales rounded to float32, as the kernels use them)."""
    torch = _torch()
    if not t.is_quantized:
        raise TorchImportError(f"expected a quantized tensor, got dtype {t.dtype}")
    dt = as_qdtype(t.dtype)
    values = t.int_repr().detach().cpu().numpy()
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return QArray(values, float(t.q_scale()), int(t.q_zero_point()), dt)
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        scales = t.q_per_channel_scales().double().numpy()
        zps = t.q_per_channel_zero_points().numpy().astype(np.int32)
        return QArray(values, scales, zps, dt, axis=int(t.q_per_channel_axis()))
    raise TorchImportError(f"unsupported qscheme {t.qscheme()}")


def memory_format_of(t) -> str:
    """``contiguous`` / ``channels_last`` as torch's ``suggest_memory_format`` sees the tensor, else ``strided``."""
    fmt = suggest_memory_format(t.shape, t.stride())
    torch = _torch()
    if fmt == CHANNELS_LAST:
        return CHANNELS_LAST
    if t.is_contiguous():
        return CONTIGUOUS
    if t.dim() in (4, 5) and t.is_contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d):
        return CHANNELS_LAST
    return STRIDED


def torch_engine_of(model=None) -> str:
    return _torch().backends.quantized.engine


# ---------------------------------------------------------------------------------------------- runtime ops


def _engine(cfg):
    from ..engines import resolve

    return resolve(cfg["engine"])


def engine_for_torch(name: str):
    """The qjax engine that reproduces torch's engine ``name`` on this machine (its CPU's ISA)."""
    from ..engines import Fbgemm, Onednn, Qnnpack, X86
    from ..kernels.fbgemm_paths import host_isa

    engines = {"fbgemm": lambda: Fbgemm(isa=host_isa()), "x86": lambda: X86(isa=host_isa()),
               "qnnpack": Qnnpack, "onednn": Onednn}
    if name not in engines:
        raise TorchImportError(f"torch engine {name!r} is not supported; qjax models {sorted(engines)}")
    return engines[name]()


@contextlib.contextmanager
def torch_engine(name: str):
    """Run torch with ``torch.backends.quantized.engine = name`` (restored afterwards), warnings silenced."""
    torch = _torch()
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.backends.quantized.engine = name
            yield
        finally:
            torch.backends.quantized.engine = previous


def import_settings(engine, threads, example_input):
    """``(engine name, qjax engine, threads, example tensors)`` for an import (defaults: torch's current ones)."""
    torch = _torch()
    engine = engine or torch.backends.quantized.engine
    qengine = engine_for_torch(engine) if isinstance(engine, str) else engine
    engine = engine if isinstance(engine, str) else qengine.name
    threads = int(threads if threads is not None else torch.get_num_threads())
    if example_input is None:
        example_input = torch.zeros(1, 3, 224, 224)
    examples = example_input if isinstance(example_input, tuple) else (example_input,)
    examples = tuple(torch.as_tensor(np.asarray(e)) if not isinstance(e, torch.Tensor) else e for e in examples)
    return engine, qengine, threads, examples


def layer_engine(engine, weight: QArray, groups: int, output_padding=()):
    """Resolve per-layer dispatch (torch's x86 engine) at import, where the weights are concrete."""
    from ..engines import layer_engine as _layer

    return _layer(engine, np.asarray(weight.zero_point), groups, output_padding)


@register_op("quantize")
def _rt_quantize(cfg, p, x):
    return quantize(jnp.asarray(x, jnp.float32), p["scale"], p["zero_point"], cfg["dtype"])


@register_op("dequantize")
def _rt_dequantize(cfg, p, x):
    return dequantize(x) if isinstance(x, QArray) else x


@register_op("conv")
def _rt_conv(cfg, p, x):
    return conv(x, p["weight"], p.get("bias"), scale=p["scale"], zero_point=p["zero_point"], stride=cfg["stride"],
                padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"], relu=cfg["relu"],
                engine=_engine(cfg))


@register_op("conv_transpose")
def _rt_conv_transpose(cfg, p, x):
    return conv_transpose(x, p["weight"], p.get("bias"), scale=p["scale"], zero_point=p["zero_point"],
                          stride=cfg["stride"], padding=cfg["padding"], output_padding=cfg["output_padding"],
                          dilation=cfg["dilation"], groups=cfg["groups"], engine=_engine(cfg))


@register_op("linear")
def _rt_linear(cfg, p, x):
    return linear(x, p["weight"], p.get("bias"), scale=p["scale"], zero_point=p["zero_point"], relu=cfg["relu"],
                  engine=_engine(cfg))


@register_op("batch_norm")
def _rt_batch_norm(cfg, p, x):
    w, b, m, v = (cfg[k].value for k in ("weight", "bias", "mean", "var"))
    return batch_norm(x, w, b, m, v, cfg["eps"], cfg["scale"], cfg["zero_point"], relu=cfg["relu"],
                      in_scale=cfg["in_scale"])


@register_op("binary")
def _rt_binary(cfg, p, a, b):
    if cfg.get("qnnpack") and cfg["kind"] == "add" and a.dtype.name == "quint8" and a.shape == b.shape:
        return qq.add(a, b, cfg["scale"], cfg["zero_point"], relu=cfg["relu"], in_qparams=cfg["in_qparams"])
    fn = {"add": ew.add, "mul": ew.mul}[cfg["kind"]]
    return fn(a, b, p["scale"], p["zero_point"], relu=cfg["relu"], memory_format=cfg["layout"], threads=cfg["threads"],
              input_formats=cfg["input_formats"])


@register_op("scalar")
def _rt_scalar(cfg, p, a):
    if cfg["kind"] == "add_scalar":
        return ew.add_scalar(a, cfg["c"], relu=cfg["relu"], memory_format=cfg["layout"], threads=cfg["threads"],
                             in_qparams=cfg["in_qparams"][0])
    return ew.mul_scalar(a, cfg["c"], relu=cfg["relu"], in_qparams=cfg["in_qparams"][0])


@register_op("unary")
def _rt_unary(cfg, p, x):
    kind = cfg["kind"]
    if not isinstance(x, QArray):
        return _float_unary(kind, cfg, x)
    mf, th = cfg.get("layout", CONTIGUOUS), cfg.get("threads", 1)
    if cfg.get("qnnpack") and x.dtype.name == "quint8":
        if kind in ("relu6", "hardtanh") and cfg.get("in_layout") == CHANNELS_LAST:
            lo, hi = (0.0, 6.0) if kind == "relu6" else (cfg["min_val"], cfg["max_val"])
            return qq.clamp_channels_last(x, lo, hi)
        if kind == "hardswish":
            scale, zp = (p["scale"], p["zero_point"]) if p else (x.scale, x.zero_point)
            return qq.hardswish(x, scale, zp)
        if kind == "hardsigmoid":
            return qq.hardsigmoid(x)
        if kind == "sigmoid" and cfg.get("scale") is None:
            return qq.sigmoid(x, cfg["in_qparams"][0])
        if kind == "tanh":
            return qq.tanh(x, cfg["in_qparams"][0])
    if kind == "relu":
        return ew.relu(x)
    if kind == "relu6":
        return ew.relu6(x)
    if kind == "hardtanh":
        return ew.hardtanh(x, cfg["min_val"], cfg["max_val"])
    if kind == "hardswish":
        scale, zp = (p["scale"], p["zero_point"]) if p else (x.scale, x.zero_point)
        return ew.hardswish(x, scale, zp, memory_format=mf, threads=th)
    if kind == "hardsigmoid":
        return ew.hardsigmoid(x, memory_format=mf, threads=th)
    if kind == "sigmoid":
        return ew.sigmoid(x, cfg.get("scale"), cfg.get("zero_point"), memory_format=mf, threads=th,
                          in_qparams=cfg["in_qparams"][0])
    if kind == "tanh":
        return ew.tanh(x, memory_format=mf, threads=th, in_qparams=cfg["in_qparams"][0])
    if kind == "leaky_relu":
        scale, zp = (p["scale"], p["zero_point"]) if p else (x.scale, x.zero_point)
        return ew.leaky_relu(x, cfg["slope"], scale, zp, threads=th)
    if kind == "elu":
        return ew.elu(x, cfg["scale"], cfg["zero_point"], cfg["alpha"], memory_format=mf, threads=th,
                      in_qparams=cfg["in_qparams"][0])
    if kind == "identity":
        return x
    raise TorchImportError(f"unknown unary op {kind}")


def _float_unary(kind, cfg, x):
    if kind == "relu":
        return jnp.maximum(x, 0.0)
    if kind == "identity":
        return x
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else (cfg["min_val"], cfg["max_val"])
        return jnp.clip(x, lo, hi)
    raise TorchImportError(
        f"float {kind} on a dequantized tensor (node {cfg.get('node')}): only relu/relu6/hardtanh/identity "
        "float ops are reproduced exactly"
    )


@register_op("pool")
def _rt_pool(cfg, p, x):
    kind = cfg["kind"]
    if cfg.get("qnnpack") and x.dtype.name == "quint8" and x.ndim == 4:
        if kind == "avg" and not cfg["ceil_mode"]:
            return qq.avg_pool2d(x, cfg["kernel"], cfg["stride"], cfg["padding"])
        if kind == "adaptive":
            osz = cfg["output_size"]
            osz = (osz, osz) if isinstance(osz, int) else tuple(osz)
            (h, w) = x.shape[2:]
            oh, ow = (h if osz[0] is None else osz[0]), (w if osz[1] is None else osz[1])
            if (h, w) != (oh, ow) and h % oh == 0 and w % ow == 0:
                k = (h // oh, w // ow)
                return qq.avg_pool2d(x, k, k, 0)
    if kind == "max":
        return max_pool(x, cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"],
                        memory_format=cfg["layout"])
    if kind == "avg":
        return avg_pool(x, cfg["kernel"], cfg["stride"], cfg["padding"], cfg["ceil_mode"], cfg["count_include_pad"],
                        cfg["divisor_override"], memory_format=cfg["layout"])
    return adaptive_avg_pool(x, cfg["output_size"], memory_format=cfg["layout"])


@register_op("interpolate")
def _rt_interpolate(cfg, p, x):
    return interpolate(x, cfg["size"], cfg["scale_factor"], cfg["mode"], cfg["align_corners"],
                       cfg["recompute_scale_factor"], memory_format=cfg["layout"])


@register_op("cat")
def _rt_cat(cfg, p, xs):
    xs = list(xs)
    if not all(isinstance(x, QArray) for x in xs):
        if any(isinstance(x, QArray) for x in xs):
            raise TorchImportError(f"cat of quantized and float tensors (node {cfg['node']})")
        return jnp.concatenate(xs, axis=cfg["dim"])
    scale, zp = (p["scale"], p["zero_point"]) if p else (xs[0].scale, xs[0].zero_point)
    return cat(xs, scale, zp, dim=cfg["dim"], relu=cfg["relu"], channels_last=cfg["channels_last"])


def _map_values(x, fn):
    if isinstance(x, QArray):
        if x.axis is not None:
            raise TorchImportError("shape ops on per-channel quantized activations are not supported")
        return QArray(fn(x.values), x.scale, x.zero_point, x.dtype, None, check=False)
    return fn(x)


def _shape_of(x):
    return tuple(x.shape)


@register_op("shape")
def _rt_shape(cfg, p, x, *args):
    kind = cfg["kind"]
    if kind == "size":
        shp = _shape_of(x)
        return shp if not args else shp[args[0]]
    if kind == "dim":
        return len(_shape_of(x))
    if kind in ("view", "reshape"):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return _map_values(x, lambda v: v.reshape(tuple(int(s) for s in shape)))
    if kind == "flatten":
        start, end = (list(args) + [0, -1])[:2] if args else (cfg.get("start", 0), cfg.get("end", -1))
        start = cfg.get("start", start)
        end = cfg.get("end", end)

        def fl(v):
            s0, e0 = start % v.ndim, end % v.ndim
            return v.reshape(v.shape[:s0] + (-1,) + v.shape[e0 + 1:])

        return _map_values(x, fl)
    if kind == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return _map_values(x, lambda v: jnp.transpose(v, tuple(int(d) for d in dims)))
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
        chunks, dim = int(args[0]), int(args[1]) if len(args) > 1 else cfg.get("dim", 0)
        n = _shape_of(x)[dim]
        size = -(-n // chunks)
        bounds = list(range(0, n, size))
        return tuple(_map_values(x, lambda v, b=b: jnp.take(v, jnp.arange(b, min(b + size, n)), axis=dim))
                     for b in bounds)
    if kind == "split":
        size, dim = args[0], int(args[1]) if len(args) > 1 else cfg.get("dim", 0)
        n = _shape_of(x)[dim]
        sizes = [size] * (-(-n // size)) if isinstance(size, int) else list(size)
        out, start = [], 0
        for s in sizes:
            s = min(s, n - start)
            out.append(_map_values(x, lambda v, a=start, s=s: jnp.take(v, jnp.arange(a, a + s), axis=dim)))
            start += s
        return tuple(out)
    raise TorchImportError(f"unknown shape op {kind}")


_PY_OPS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
    "truediv": operator.truediv, "mod": operator.mod, "neg": operator.neg,
}


@register_op("python")
def _rt_python(cfg, p, *args):
    """Arithmetic on Python values (shapes) — or exact float32 elementwise arithmetic on tensors."""
    kind = cfg["kind"]
    if any(isinstance(a, QArray) for a in args):
        raise TorchImportError(f"python operator {kind} on a quantized tensor (node {cfg['node']}); torch "
                               "needs FloatFunctional / quantized ops for that")
    tensors = [a for a in args if hasattr(a, "shape") and hasattr(a, "dtype")]
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
def _rt_pyfunc(cfg, p, *args):
    """Python arithmetic on static values (sizes) recorded from TorchScript graphs."""
    return _PYFUNCS[cfg["kind"]](*args)


@register_op("mean")
def _rt_mean(cfg, p, x):
    if not isinstance(x, QArray):
        raise TorchImportError(f"float mean (node {cfg['node']}) is not reproduced exactly")
    dims = tuple(sorted(d % x.ndim for d in cfg["dims"]))
    if cfg["layout"] != CONTIGUOUS or dims != tuple(range(x.ndim - len(dims), x.ndim)):
        raise TorchImportError(
            f"quantized mean over dims {cfg['dims']} of a {cfg['layout']} tensor (node {cfg['node']}) runs torch's "
            "float dequantize/cascade-sum/quantize path, which qjax does not model; use AdaptiveAvgPool"
        )
    s = jnp.sum(x.values.astype(jnp.int32), axis=dims, keepdims=cfg["keepdim"])
    n = int(np.prod([x.shape[d] for d in dims]))
    v = jnp.round(f32x.div_rn(s.astype(jnp.float32), np.float32(n))).astype(x.dtype.storage)
    return QArray(v, x.scale, x.zero_point, x.dtype, None, check=False)


# ---------------------------------------------------------------------------------------------- conversion


class _Converter:
    def __init__(self, gm, engine, threads, record):
        self.gm = gm
        self.engine = engine
        self.threads = threads
        self.record = record  # node name -> torch value from the example run
        self.nodes: list[Node] = []
        self.params: dict[str, Any] = {}
        self.inputs: list[str] = []

    # -- utilities ---------------------------------------------------------------------------
    def fmt(self, arg):
        t = self.record.get(arg.name) if hasattr(arg, "name") else None
        torch = _torch()
        if isinstance(t, torch.Tensor):
            return memory_format_of(t)
        return CONTIGUOUS

    def qparams_of(self, arg):
        """(scale, zero point) of a recorded quantized tensor, or None for float values."""
        t = self.record.get(arg.name)
        if t is None or not getattr(t, "is_quantized", False):
            return None
        return float(np.float32(t.q_scale())), int(t.q_zero_point())

    def in_scale(self, arg):
        """The (static) scale of a quantized input, from the example run."""
        t = self.record.get(arg.name)
        if t is None or not getattr(t, "is_quantized", False):
            raise TorchImportError(f"input {arg.name} is not a quantized tensor")
        return float(np.float32(t.q_scale()))

    def shape(self, arg):
        t = self.record.get(arg.name) if hasattr(arg, "name") else None
        return tuple(t.shape) if hasattr(t, "shape") else ()

    def spec(self, a):
        """fx argument -> our arg spec (Refs for nodes, constants, nested containers)."""
        torch = _torch()
        if isinstance(a, torch.fx.Node):
            if a.op == "get_attr":
                return self.attr_value(a)
            return Ref(a.name)
        if isinstance(a, (list, tuple)):
            vals = [self.spec(x) for x in a]
            return vals if isinstance(a, list) else tuple(vals)
        if isinstance(a, slice):
            return slice(self.spec(a.start), self.spec(a.stop), self.spec(a.step))
        if isinstance(a, torch.dtype):
            return str(a)
        if isinstance(a, (int, float, bool, str)) or a is None or a is Ellipsis:
            return a
        raise TorchImportError(f"unsupported argument {a!r} of type {type(a).__name__}")

    def attr_value(self, node):
        val = self.gm
        for part in node.target.split("."):
            val = getattr(val, part)
        torch = _torch()
        if isinstance(val, torch.Tensor):
            if val.numel() == 1 and not val.is_quantized:
                return val.item()
            raise TorchImportError(f"get_attr {node.target}: tensor constants are not supported")
        return val

    def add(self, fxnode, op, args, static=None, params=None, source=""):
        static = dict(static or {})
        static.setdefault("node", fxnode.name)
        if op in ("binary", "unary", "scalar"):
            # the concrete input qparams, for kernels that derive tables / multipliers from them
            static["in_qparams"] = tuple(self.qparams_of(a) for a in args[:2] if hasattr(a, "name"))
        if op in ("binary", "unary", "pool") and getattr(self.engine, "name", "") == "qnnpack":
            static["qnnpack"] = True
            if op == "binary":  # q8vadd derives its fixed-point multipliers from concrete scales
                static["scale"], static["zero_point"] = float(params["scale"]), int(params["zero_point"])
            if op == "unary" and args and hasattr(args[0], "name"):
                static["in_layout"] = self.fmt(args[0])
        self.nodes.append(Node(fxnode.name, op, tuple(self.spec(a) for a in args),
                               tuple(sorted(static.items())), source or str(fxnode.target)))
        if params:
            self.params[fxnode.name] = params

    def qparams_static(self, scale, zp):
        return float(np.float32(scale)), int(zp)

    # -- dispatch ----------------------------------------------------------------------------
    def convert(self):
        torch = _torch()
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.inputs.append(n.name)
            elif n.op == "get_attr":
                continue
            elif n.op == "output":
                output = self.spec(n.args[0])
            elif n.op == "call_module":
                self.module(n, self.gm.get_submodule(n.target))
            elif n.op == "call_function":
                self.function(n)
            elif n.op == "call_method":
                self.method(n)
            else:  # pragma: no cover
                raise TorchImportError(f"unsupported fx node kind {n.op} ({n.name})")
        del torch
        return output

    def layout_static(self, n, arg):
        """Unary elementwise kernels iterate in the output's memory format (torch's record of it)."""
        out, inp = self.fmt(n), self.fmt(arg)
        return dict(layout=out if out == inp or len(self.shape(arg)) < 3 else STRIDED, threads=self.threads)

    # -- modules -----------------------------------------------------------------------------
    def module(self, n, m):
        torch = _torch()
        nnq = torch.ao.nn.quantized
        nniq = torch.ao.nn.intrinsic.quantized
        nn = torch.nn
        name = type(m).__name__
        src = f"{type(m).__module__}.{name} ({n.target})"
        if isinstance(m, nnq.Quantize):
            dt = as_qdtype(m.dtype)
            self.add(n, "quantize", n.args, dict(dtype=dt),
                     dict(scale=jnp.float32(m.scale.item()), zero_point=jnp.int32(m.zero_point.item())), src)
        elif isinstance(m, nnq.DeQuantize):
            self.add(n, "dequantize", n.args, source=src)
        elif isinstance(m, (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)):
            if m.padding_mode != "zeros":
                raise TorchImportError(f"{src}: padding_mode={m.padding_mode!r} is not supported (zeros only)")
            relu = isinstance(m, (nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.ConvReLU3d))
            params = dict(weight=qarray_from_torch(m.weight()), scale=jnp.float32(m.scale),
                          zero_point=jnp.int32(m.zero_point))
            if m.bias() is not None:
                params["bias"] = jnp.asarray(m.bias().detach().numpy(), jnp.float32)
            pad = m.padding
            if isinstance(pad, str):
                raise TorchImportError(f"{src}: string padding {pad!r} is not supported")
            self.add(n, "conv", n.args, dict(stride=tuple(m.stride), padding=tuple(pad), dilation=tuple(m.dilation),
                                             groups=m.groups, relu=relu,
                                             engine=layer_engine(self.engine, params["weight"], m.groups)),
                     params, src)
        elif isinstance(m, (nnq.ConvTranspose1d, nnq.ConvTranspose2d, nnq.ConvTranspose3d)):
            params = dict(weight=qarray_from_torch(m.weight()), scale=jnp.float32(m.scale),
                          zero_point=jnp.int32(m.zero_point))
            if m.bias() is not None:
                params["bias"] = jnp.asarray(m.bias().detach().numpy(), jnp.float32)
            self.add(n, "conv_transpose", n.args,
                     dict(stride=tuple(m.stride), padding=tuple(m.padding), output_padding=tuple(m.output_padding),
                          dilation=tuple(m.dilation), groups=m.groups,
                          engine=layer_engine(self.engine, params["weight"], m.groups, tuple(m.output_padding))),
                     params, src)
        elif isinstance(m, nnq.Linear) and not isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            relu = isinstance(m, nniq.LinearReLU)
            w, b = m._weight_bias()
            params = dict(weight=qarray_from_torch(w), scale=jnp.float32(m.scale), zero_point=jnp.int32(m.zero_point))
            if b is not None:
                params["bias"] = jnp.asarray(b.detach().numpy(), jnp.float32)
            self.add(n, "linear", n.args, dict(relu=relu, engine=self.engine), params, src)
        elif isinstance(m, (nnq.BatchNorm2d, nnq.BatchNorm3d)):
            relu = isinstance(m, (nniq.BNReLU2d, nniq.BNReLU3d))
            self.add(n, "batch_norm", n.args,
                     dict(weight=Static(m.weight.detach().numpy()), bias=Static(m.bias.detach().numpy()),
                          mean=Static(m.running_mean.detach().numpy()), var=Static(m.running_var.detach().numpy()),
                          eps=float(m.eps), scale=float(m.scale), zero_point=int(m.zero_point), relu=relu,
                          in_scale=self.in_scale(n.args[0])), None, src)
        elif isinstance(m, nnq.Hardswish):
            self.add(n, "unary", n.args, dict(kind="hardswish", **self.layout_static(n, n.args[0])),
                     dict(scale=jnp.float32(m.scale), zero_point=jnp.int32(m.zero_point)), src)
        elif isinstance(m, nnq.LeakyReLU):
            self.add(n, "unary", n.args, dict(kind="leaky_relu", slope=float(m.negative_slope), threads=self.threads,
                                              layout=CONTIGUOUS),
                     dict(scale=jnp.float32(m.scale), zero_point=jnp.int32(m.zero_point)), src)
        elif isinstance(m, nnq.ELU):
            self.add(n, "unary", n.args, dict(kind="elu", scale=float(m.scale), zero_point=int(m.zero_point),
                                              alpha=float(m.alpha), **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nnq.Sigmoid):
            self.add(n, "unary", n.args, dict(kind="sigmoid", scale=float(m.output_scale),
                                              zero_point=int(m.output_zero_point),
                                              **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, (nnq.ReLU6, nn.ReLU6)):
            self.add(n, "unary", n.args, dict(kind="relu6"), None, src)
        elif isinstance(m, nn.ReLU):
            self.add(n, "unary", n.args, dict(kind="relu"), None, src)
        elif isinstance(m, nn.Hardtanh):
            self.add(n, "unary", n.args, dict(kind="hardtanh", min_val=float(m.min_val), max_val=float(m.max_val)),
                     None, src)
        elif isinstance(m, nn.Hardswish):
            self.add(n, "unary", n.args, dict(kind="hardswish", **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nn.Hardsigmoid):
            self.add(n, "unary", n.args, dict(kind="hardsigmoid", **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nn.Sigmoid):
            self.add(n, "unary", n.args, dict(kind="sigmoid", **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nn.Tanh):
            self.add(n, "unary", n.args, dict(kind="tanh", **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nn.LeakyReLU):
            self.add(n, "unary", n.args, dict(kind="leaky_relu", slope=float(m.negative_slope), threads=self.threads,
                                              layout=CONTIGUOUS), None, src)
        elif isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            self.add(n, "unary", n.args, dict(kind="identity"), None, src)
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if m.return_indices:
                raise TorchImportError(f"{src}: return_indices=True is not supported")
            self.add(n, "pool", n.args, dict(kind="max", kernel=_t(m.kernel_size), stride=_t(m.stride),
                                             padding=_t(m.padding), dilation=_t(m.dilation), ceil_mode=m.ceil_mode,
                                             layout=self.fmt(n.args[0])), None, src)
        elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            self.add(n, "pool", n.args, dict(kind="avg", kernel=_t(m.kernel_size), stride=_t(m.stride),
                                             padding=_t(m.padding), ceil_mode=m.ceil_mode,
                                             count_include_pad=m.count_include_pad,
                                             divisor_override=getattr(m, "divisor_override", None),
                                             layout=self.fmt(n.args[0])), None, src)
        elif isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            self.add(n, "pool", n.args, dict(kind="adaptive", output_size=_t(m.output_size),
                                             layout=self.fmt(n.args[0])), None, src)
        elif isinstance(m, nn.Flatten):
            self.add(n, "shape", n.args, dict(kind="flatten", start=m.start_dim, end=m.end_dim), None, src)
        elif isinstance(m, nn.Upsample):
            self.add(n, "interpolate", n.args, dict(size=_t(m.size), scale_factor=_t(m.scale_factor), mode=m.mode,
                                                    align_corners=m.align_corners,
                                                    recompute_scale_factor=m.recompute_scale_factor,
                                                    layout=self.fmt(n.args[0])), None, src)
        elif isinstance(m, nn.ChannelShuffle):
            raise TorchImportError(f"{src}: nn.ChannelShuffle on quantized tensors — write the view/transpose form")
        else:
            raise TorchImportError(f"unsupported module {type(m).__module__}.{name} at graph node {n.name!r} "
                                   f"(target {n.target!r})")

    # -- functions ---------------------------------------------------------------------------
    def function(self, n):
        torch = _torch()
        F = torch.nn.functional
        f = n.target
        q = torch.ops.quantized
        args, kw = list(n.args), dict(n.kwargs)
        src = getattr(f, "__name__", str(f))
        if f in (q.add, q.add_relu, q.mul, q.mul_relu) or f in (q.add.default, q.add_relu.default, q.mul.default):
            kind = "add" if "add" in str(f) else "mul"
            relu = "relu" in str(f)
            scale = _arg(args, kw, 2, "scale", self)
            zp = _arg(args, kw, 3, "zero_point", self)
            self.add(n, "binary", args[:2], dict(kind=kind, relu=relu, layout=self.fmt(n), threads=self.threads,
                                                 input_formats=(self.fmt(args[0]), self.fmt(args[1]))),
                     dict(scale=jnp.float32(scale), zero_point=jnp.int32(zp)), src)
        elif f in (q.add_scalar, q.add_scalar_relu, q.mul_scalar, q.mul_scalar_relu):
            kind = "add_scalar" if "add" in str(f) else "mul_scalar"
            self.add(n, "scalar", args[:1], dict(kind=kind, c=float(self.spec(args[1])), relu="relu" in str(f),
                                                 **self.layout_static(n, args[0])), None, src)
        elif f in (q.cat, q.cat_relu):
            xs = args[0]
            scale, zp = _arg(args, kw, 2, "scale", self), _arg(args, kw, 3, "zero_point", self)
            self.add_cat(n, xs, _arg(args, kw, 1, "dim", self), scale, zp, f is q.cat_relu, src)
        elif f is torch.cat:
            self.add_cat(n, args[0], kw.get("dim", args[1] if len(args) > 1 else 0), None, None, False, src)
        elif f is q.hardswish:
            self.add(n, "unary", args[:1], dict(kind="hardswish", **self.layout_static(n, args[0])),
                     dict(scale=jnp.float32(_arg(args, kw, 1, "output_scale", self)),
                          zero_point=jnp.int32(_arg(args, kw, 2, "output_zero_point", self))), src)
        elif f is q.sigmoid:
            self.add(n, "unary", args[:1], dict(kind="sigmoid", scale=float(_arg(args, kw, 1, "output_scale", self)),
                                                zero_point=int(_arg(args, kw, 2, "output_zero_point", self)),
                                                **self.layout_static(n, args[0])), None, src)
        elif f is q.leaky_relu:
            self.add(n, "unary", args[:1], dict(kind="leaky_relu", slope=float(self.spec(args[1])),
                                                threads=self.threads, layout=CONTIGUOUS),
                     dict(scale=jnp.float32(self.spec(args[3])), zero_point=jnp.int32(self.spec(args[4]))), src)
        elif f is q.elu:
            self.add(n, "unary", args[:1], dict(kind="elu", scale=float(self.spec(args[1])),
                                                zero_point=int(self.spec(args[2])),
                                                alpha=float(self.spec(args[3])) if len(args) > 3 else 1.0,
                                                **self.layout_static(n, args[0])), None, src)
        elif f is q.relu6:
            self.add(n, "unary", args[:1], dict(kind="relu6"), None, src)
        elif f in (q.batch_norm2d, q.batch_norm3d, q.batch_norm2d_relu, q.batch_norm3d_relu):
            raise TorchImportError(f"{src} as a function (node {n.name}) is not supported; use the module")
        elif f in (torch.relu, F.relu, torch.relu_):
            self.add(n, "unary", args[:1], dict(kind="relu"), None, src)
        elif f in (F.relu6,):
            self.add(n, "unary", args[:1], dict(kind="relu6"), None, src)
        elif f in (F.hardtanh, torch.clamp):
            lo = _arg(args, kw, 1, "min_val" if f is F.hardtanh else "min", self)
            hi = _arg(args, kw, 2, "max_val" if f is F.hardtanh else "max", self)
            self.add(n, "unary", args[:1], dict(kind="hardtanh", min_val=float(lo), max_val=float(hi)), None, src)
        elif f in (F.hardsigmoid,):
            self.add(n, "unary", args[:1], dict(kind="hardsigmoid", **self.layout_static(n, args[0])), None, src)
        elif f in (F.hardswish,):
            self.add(n, "unary", args[:1], dict(kind="hardswish", **self.layout_static(n, args[0])), None, src)
        elif f in (torch.sigmoid, F.sigmoid):
            self.add(n, "unary", args[:1], dict(kind="sigmoid", **self.layout_static(n, args[0])), None, src)
        elif f in (torch.tanh, F.tanh):
            self.add(n, "unary", args[:1], dict(kind="tanh", **self.layout_static(n, args[0])), None, src)
        elif f is F.leaky_relu:
            slope = _arg(args, kw, 1, "negative_slope", self, 0.01)
            self.add(n, "unary", args[:1], dict(kind="leaky_relu", slope=float(slope), threads=self.threads,
                                                layout=CONTIGUOUS), None, src)
        elif f in (F.dropout, F.dropout2d, torch.nn.functional.dropout1d, F.dropout3d):
            self.add(n, "unary", args[:1], dict(kind="identity"), None, src)
        elif f in (F.max_pool1d, F.max_pool2d, F.max_pool3d):
            k = _arg(args, kw, 1, "kernel_size", self)
            self.add(n, "pool", args[:1], dict(kind="max", kernel=_t(k), stride=_t(_arg(args, kw, 2, "stride", self, None)) or _t(k),
                                               padding=_t(_arg(args, kw, 3, "padding", self, 0)),
                                               dilation=_t(_arg(args, kw, 4, "dilation", self, 1)),
                                               ceil_mode=bool(_arg(args, kw, 5, "ceil_mode", self, False)),
                                               layout=self.fmt(args[0])), None, src)
        elif f in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            k = _arg(args, kw, 1, "kernel_size", self)
            self.add(n, "pool", args[:1], dict(kind="avg", kernel=_t(k), stride=_t(_arg(args, kw, 2, "stride", self, None)) or _t(k),
                                               padding=_t(_arg(args, kw, 3, "padding", self, 0)),
                                               ceil_mode=bool(_arg(args, kw, 4, "ceil_mode", self, False)),
                                               count_include_pad=bool(_arg(args, kw, 5, "count_include_pad", self, True)),
                                               divisor_override=_arg(args, kw, 6, "divisor_override", self, None),
                                               layout=self.fmt(args[0])), None, src)
        elif f in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
            self.add(n, "pool", args[:1], dict(kind="adaptive", output_size=_t(_arg(args, kw, 1, "output_size", self)),
                                               layout=self.fmt(args[0])), None, src)
        elif f in (F.interpolate, F.upsample):
            self.add(n, "interpolate", args[:1], dict(
                size=_t(_arg(args, kw, 1, "size", self, None)), scale_factor=_t(_arg(args, kw, 2, "scale_factor", self, None)),
                mode=_arg(args, kw, 3, "mode", self, "nearest"), align_corners=_arg(args, kw, 4, "align_corners", self, None),
                recompute_scale_factor=_arg(args, kw, 5, "recompute_scale_factor", self, None), layout=self.fmt(args[0])),
                None, src)
        elif f is torch.quantize_per_tensor:
            scale, zp, dt = (self.spec(a) for a in args[1:4])
            self.add(n, "quantize", args[:1], dict(dtype=as_qdtype(dt)),
                     dict(scale=jnp.float32(scale), zero_point=jnp.int32(zp)), src)
        elif f is torch.flatten:
            self.add(n, "shape", args[:1], dict(kind="flatten", start=_arg(args, kw, 1, "start_dim", self, 0),
                                                end=_arg(args, kw, 2, "end_dim", self, -1)), None, src)
        elif f in (torch.reshape,):
            self.add(n, "shape", [args[0], args[1]], dict(kind="reshape"), None, src)
        elif f is torch.transpose:
            self.add(n, "shape", args[:3], dict(kind="transpose"), None, src)
        elif f is torch.permute:
            self.add(n, "shape", args[:2], dict(kind="permute"), None, src)
        elif f is torch.chunk:
            self.add(n, "shape", args[:3], dict(kind="chunk"), None, src)
        elif f is torch.squeeze or f is torch.unsqueeze:
            self.add(n, "shape", args, dict(kind=f.__name__), None, src)
        elif f is operator.getitem:
            self.add(n, "shape", args[:2], dict(kind="getitem"), None, src)
        elif f in (operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod):
            self.add(n, "python", args, dict(kind=f.__name__.strip("_")), None, src)
        elif f is torch.mean:
            self.method_mean(n, args, kw, src)
        else:
            raise TorchImportError(f"unsupported function {src} at graph node {n.name!r}")

    def add_cat(self, n, xs, dim, scale, zp, relu, src):
        fmts = [self.fmt(x) for x in xs]
        shapes = [self.shape(x) for x in xs]
        channels_last = all(f == CHANNELS_LAST and len(s) == 4 for f, s in zip(fmts, shapes))
        params = None if scale is None else dict(scale=jnp.float32(scale), zero_point=jnp.int32(zp))
        self.add(n, "cat", [xs], dict(dim=int(self.spec(dim)), relu=relu, channels_last=channels_last), params, src)

    def method_mean(self, n, args, kw, src):
        dims = _arg(args, kw, 1, "dim", self)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        self.add(n, "mean", args[:1], dict(dims=dims, keepdim=bool(_arg(args, kw, 2, "keepdim", self, False)),
                                           layout=self.fmt(args[0])), None, src)

    # -- methods -----------------------------------------------------------------------------
    def method(self, n):
        m = n.target
        args, kw = list(n.args), dict(n.kwargs)
        if m == "dequantize":
            self.add(n, "dequantize", args[:1], source=m)
        elif m in ("view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "chunk",
                   "split", "size", "dim"):
            if kw and m not in ("chunk", "split"):
                raise TorchImportError(f"method {m} with keyword arguments at node {n.name}")
            static = dict(kind=m)
            if m in ("chunk", "split") and "dim" in kw:
                static["dim"] = int(kw["dim"])
            self.add(n, "shape", args, static, None, m)
        elif m == "flatten":
            self.add(n, "shape", args[:1], dict(kind="flatten", start=_arg(args, kw, 1, "start_dim", self, 0),
                                                end=_arg(args, kw, 2, "end_dim", self, -1)), None, m)
        elif m == "mean":
            self.method_mean(n, args, kw, m)
        elif m in ("relu", "relu_"):
            self.add(n, "unary", args[:1], dict(kind="relu"), None, m)
        elif m in ("sigmoid",):
            self.add(n, "unary", args[:1], dict(kind="sigmoid", **self.layout_static(n, args[0])), None, m)
        else:
            raise TorchImportError(f"unsupported method .{m}() at graph node {n.name!r}")


def _t(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return tuple(v)
    return v


def _arg(args, kw, i, name, conv, default=...):
    if len(args) > i:
        return conv.spec(args[i])
    if name in kw:
        return conv.spec(kw[name])
    if default is ...:
        raise TorchImportError(f"missing argument {name}")
    return default


def _record(gm, example_inputs):
    """Run the GraphModule once in torch, keeping every node's output."""
    torch = _torch()
    record = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            record[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*example_inputs)
    return record


def trace(model):
    """``torch.fx.GraphModule`` of a converted model (FX models are returned as they are)."""
    torch = _torch()
    if isinstance(model, torch.fx.GraphModule):
        return model
    if isinstance(model, torch.jit.ScriptModule):
        raise TorchImportError("TorchScript modules are imported by qjax.interop.from_torchscript (from_torch "
                               "dispatches there)")
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - surface fx's reason
        raise TorchImportError(f"torch.fx could not trace the model: {e}") from e


def from_torch(model, example_input=None, *, engine=None, threads=None) -> QModel:
    """Import a converted torch quantized model as a bit-exact :class:`~qjax.graph.QModel`.

    Args:
      model: a model after ``torch.ao.quantization.convert`` (eager) or ``convert_fx`` (FX),
        in eval mode.
      example_input: an input (torch tensor or numpy array, or a tuple of them) — the
        importer runs torch once on it to record each tensor's memory format, which decides
        which kernel (and rounding) torch uses.  Default: a ``(1, 3, 224, 224)`` float tensor.
      engine: the torch quantized engine the model was converted for (default: torch's
        current ``torch.backends.quantized.engine``).
      threads: torch's intra-op thread count (default: ``torch.get_num_threads()``); it moves
        the boundaries between the vectorised and scalar formulas of elementwise kernels.

    Returns:
      A jittable, vmappable :class:`~qjax.graph.QModel`: ``model(x)`` takes the same float input
      (numpy or jax, same layout) and returns the same output as torch, bit for bit.
    """
    torch = _torch()
    engine, qengine, threads, examples = import_settings(engine, threads, example_input)
    if isinstance(model, torch.jit.ScriptModule):
        from .torchscript import from_torchscript

        return from_torchscript(model, examples, engine=engine, threads=threads)
    if getattr(model, "training", False):
        raise TorchImportError("the model is in training mode; call model.eval() first")
    gm = trace(model)
    with torch_engine(engine):
        record = _record(gm, examples)
    conv = _Converter(gm, qengine, threads, record)
    output = conv.convert()
    meta = dict(engine=engine, threads=threads, torch_version=torch.__version__, source=type(model).__name__)
    return QModel(conv.inputs, conv.nodes, output, conv.params, meta)
