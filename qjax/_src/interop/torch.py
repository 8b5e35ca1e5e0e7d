"""Import converted torch quantized models bit-exactly: :func:`from_torch`.

Takes a model after ``torch.ao.quantization.convert`` (eager mode) or ``convert_fx``
(FX mode), captures its graph with ``torch.fx``, runs it once on an example input to
record what the arithmetic depends on besides the numbers — each tensor's memory
format (torch picks kernels by it) and torch's thread count — and returns a
:class:`qjax.graph.QModel` whose integer arithmetic is torch's, op by op.

The importer only translates: each fx node becomes a QModel node naming an op of
:mod:`qjax.graph.ops`, with the engine resolved once here (:func:`qjax.engines.host_engine`,
:func:`qjax.engines.layer_engine` per conv layer) and the facts torch's run recorded.  TorchScript
modules are handed to :func:`qjax.interop.torchscript.from_torchscript`.

Torch is imported lazily.  Anything the importer does not know raises
:class:`TorchImportError` naming the module/function and the graph node: there is no
silent float fallback.
"""

from __future__ import annotations

import contextlib
import operator
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..dtypes import as_qdtype
from ..engines import layer_engine
from ..graph import GraphError, Node, QModel, Ref, Static
from ..qops.paths import CHANNELS_LAST, CONTIGUOUS, STRIDED
from .torch_norm import norm_params, norm_static
from .torch_common import (ENGINE_OPS, TorchImportError, check_mean, import_engine, import_settings,
                           memory_format_of, qarray_from_torch, scale_params, tensor_qparams, torch_engine, torch_engine_of)
from .pt2e import ARITHMETICS, from_pt2e, is_exported, load_model_file
from .torch_dynamic import module_node
from .torchscript import from_torchscript

__all__ = ["from_torch", "trace", "record", "TorchImportError", "qarray_from_torch", "memory_format_of",
           "torch_engine", "torch_engine_of", "import_settings"]


def _torch():
    import torch

    return torch


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
        return tensor_qparams(self.record.get(arg.name))

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
        """Emit a node; arithmetic nodes get the engine (a conv's own per-layer one where set) and the facts of
        torch's run their kernels read: the inputs' concrete qparams (tables / multipliers derived on the host),
        a binary op's output qparams, an activation's input memory format."""
        static = dict(static or {})
        static.setdefault("node", fxnode.name)
        if op in ENGINE_OPS:
            static.setdefault("engine", self.engine)
        if op in ("binary", "unary", "scalar"):
            static["in_qparams"] = tuple(self.qparams_of(a) for a in args[:2] if hasattr(a, "name"))
        if op == "binary":
            static["out_qparams"] = (float(params["scale"]), int(params["zero_point"]))
        if op == "unary" and args and hasattr(args[0], "name"):
            static["input_format"] = self.fmt(args[0])
        self.nodes.append(Node(fxnode.name, op, tuple(self.spec(a) for a in args),
                               tuple(sorted(static.items())), source or str(fxnode.target)))
        if params:
            self.params[fxnode.name] = params

    def layer(self, weight, groups, output_padding=()):
        """The engine of one conv layer (torch's x86 picks per layer at prepack time: qjax.engines.layer_engine)."""
        return layer_engine(self.engine, np.asarray(weight.zero_point), groups, output_padding)

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
                     scale_params(m.scale.item(), m.zero_point.item()), src)
        elif isinstance(m, nnq.DeQuantize):
            self.add(n, "dequantize", n.args, source=src)
        elif (float_out := module_node(m, src, self.engine)) is not None:  # dynamic linear, embeddings
            args = list(n.args)
            for i, k in enumerate(("offsets", "per_sample_weights"), start=1):  # EmbeddingBag's keywords
                if k in n.kwargs:
                    args += [None] * (i + 1 - len(args))
                    args[i] = n.kwargs[k]
            self.add(n, float_out[0], tuple(args), float_out[1], float_out[2], src)
        elif isinstance(m, (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)):
            if m.padding_mode != "zeros":
                raise TorchImportError(f"{src}: padding_mode={m.padding_mode!r} is not supported (zeros only)")
            relu = isinstance(m, (nniq.ConvReLU1d, nniq.ConvReLU2d, nniq.ConvReLU3d))
            params = dict(weight=qarray_from_torch(m.weight()), **scale_params(m.scale, m.zero_point))
            if m.bias() is not None:
                params["bias"] = jnp.asarray(m.bias().detach().numpy(), jnp.float32)
            pad = m.padding
            if isinstance(pad, str):
                raise TorchImportError(f"{src}: string padding {pad!r} is not supported")
            self.add(n, "conv", n.args, dict(stride=tuple(m.stride), padding=tuple(pad), dilation=tuple(m.dilation),
                                             groups=m.groups, relu=relu,
                                             engine=self.layer(params["weight"], m.groups)),
                     params, src)
        elif isinstance(m, (nnq.ConvTranspose1d, nnq.ConvTranspose2d, nnq.ConvTranspose3d)):
            params = dict(weight=qarray_from_torch(m.weight()), **scale_params(m.scale, m.zero_point))
            if m.bias() is not None:
                params["bias"] = jnp.asarray(m.bias().detach().numpy(), jnp.float32)
            self.add(n, "conv_transpose", n.args,
                     dict(stride=tuple(m.stride), padding=tuple(m.padding), output_padding=tuple(m.output_padding),
                          dilation=tuple(m.dilation), groups=m.groups,
                          engine=self.layer(params["weight"], m.groups, tuple(m.output_padding))),
                     params, src)
        elif isinstance(m, nnq.Linear) and not isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            relu = isinstance(m, nniq.LinearReLU)
            w, b = m._weight_bias()
            params = dict(weight=qarray_from_torch(w), **scale_params(m.scale, m.zero_point))
            if b is not None:
                params["bias"] = jnp.asarray(b.detach().numpy(), jnp.float32)
            self.add(n, "linear", n.args, dict(relu=relu), params, src)
        elif isinstance(m, (nnq.BatchNorm2d, nnq.BatchNorm3d)):
            relu = isinstance(m, (nniq.BNReLU2d, nniq.BNReLU3d))
            self.add(n, "batch_norm", n.args,
                     dict(weight=Static(m.weight.detach().numpy()), bias=Static(m.bias.detach().numpy()),
                          mean=Static(m.running_mean.detach().numpy()), var=Static(m.running_var.detach().numpy()),
                          eps=float(m.eps), scale=float(m.scale), zero_point=int(m.zero_point), relu=relu,
                          in_scale=self.in_scale(n.args[0])), None, src)
        elif isinstance(m, (nnq.LayerNorm, nnq.GroupNorm, nnq.InstanceNorm1d, nnq.InstanceNorm2d, nnq.InstanceNorm3d)):
            self.add(n, "norm", n.args[:1], norm_static(m, self.fmt(n.args[0]), self.threads), norm_params(m), src)
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
            self.add(n, "unary", n.args, dict(kind="relu6", **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nn.ReLU):
            self.add(n, "unary", n.args, dict(kind="relu", **self.layout_static(n, n.args[0])), None, src)
        elif isinstance(m, nn.Hardtanh):
            self.add(n, "unary", n.args, dict(kind="hardtanh", min_val=float(m.min_val), max_val=float(m.max_val),
                                              **self.layout_static(n, n.args[0])),
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
                     scale_params(scale, zp), src)
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
            self.add(n, "unary", args[:1], dict(kind="relu6", **self.layout_static(n, args[0])), None, src)
        elif f in (q.batch_norm2d, q.batch_norm3d, q.batch_norm2d_relu, q.batch_norm3d_relu):
            raise TorchImportError(f"{src} as a function (node {n.name}) is not supported; use the module")
        elif f in (torch.relu, F.relu, torch.relu_):
            self.add(n, "unary", args[:1], dict(kind="relu", **self.layout_static(n, args[0])), None, src)
        elif f in (F.relu6,):
            self.add(n, "unary", args[:1], dict(kind="relu6", **self.layout_static(n, args[0])), None, src)
        elif f in (F.hardtanh, torch.clamp):
            lo = _arg(args, kw, 1, "min_val" if f is F.hardtanh else "min", self)
            hi = _arg(args, kw, 2, "max_val" if f is F.hardtanh else "max", self)
            self.add(n, "unary", args[:1], dict(kind="hardtanh", min_val=float(lo), max_val=float(hi),
                                                **self.layout_static(n, args[0])), None, src)
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
                     scale_params(scale, zp), src)
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
        params = None if scale is None else scale_params(scale, zp)
        self.add(n, "cat", [xs], dict(dim=int(self.spec(dim)), relu=relu, channels_last=channels_last), params, src)

    def method_mean(self, n, args, kw, src):
        dims = _arg(args, kw, 1, "dim", self)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        keepdim = bool(_arg(args, kw, 2, "keepdim", self, False))
        check_mean(self.engine, self.record.get(args[0].name), dims, keepdim, self.fmt(args[0]), self.threads, n.name)
        self.add(n, "mean", args[:1], dict(dims=dims, keepdim=keepdim, layout=self.fmt(args[0]),
                                           threads=self.threads), None, src)

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
            self.add(n, "unary", args[:1], dict(kind="relu", **self.layout_static(n, args[0])), None, m)
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


def record(gm, example_inputs) -> dict:
    """Run the GraphModule once in torch: ``{fx node name: its output}`` (the QModel's node names)."""
    torch = _torch()
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*example_inputs)
    return values


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


@contextlib.contextmanager
def _needs_example_input(example_input, examples):
    """Without an example input, torch's failure on the default one says to pass one (not torch's shape error)."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        if example_input is not None or isinstance(e, GraphError):
            raise
        shape = tuple(examples[0].shape)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchImportError(f"example_input: the model does not run on the default {shape} float input "
                               f"({reason[:200]}); pass example_input=, an input the model takes") from None


def from_torch(model, example_input=None, *, engine=None, threads=None, arithmetic=None) -> QModel:
    """Import a converted torch quantized model as a bit-exact :class:`~qjax.graph.QModel`.

    Args:
      model: a model after ``torch.ao.quantization.convert`` (eager) or ``convert_fx`` (FX),
        in eval mode; a TorchScript module; a ``torch.export.ExportedProgram`` or torchao's
        ``convert_pt2e`` GraphModule (:mod:`qjax.interop.pt2e`); or the path of a TorchScript or
        ``torch.export.save`` file (never unpickled).
      example_input: an input (torch tensor or numpy array, or a tuple of them) — the
        importer runs torch once on it to record each tensor's memory format, which decides
        which kernel (and rounding) torch uses.  Default: a ``(1, 3, 224, 224)`` float tensor.
      engine: the torch quantized engine the model was converted for (default: torch's
        current ``torch.backends.quantized.engine``), by name (resolved to this host's ISA by
        :func:`qjax.engines.host_engine`) or as an engine reproducing one (its ``torch_engine``).
      threads: torch's intra-op thread count (default: ``torch.get_num_threads()``); it moves
        the boundaries between the vectorised and scalar formulas of elementwise kernels.
      arithmetic: torch.export graphs only: ``"converted"`` (default; the graph as torch runs it)
        or ``"inductor"`` (what inductor's x86 lowering runs); see :mod:`qjax.interop.pt2e`.

    Returns:
      A jittable, vmappable :class:`~qjax.graph.QModel`: ``model(x)`` takes the same float input
      (numpy or jax, same layout) and returns the same output as torch, bit for bit.
    """
    torch = _torch()
    if isinstance(model, (str, os.PathLike)):
        # TorchScript archives repack their weights for the engine current at load time
        with torch_engine(import_engine(engine or torch.backends.quantized.engine).torch_engine):
            model = load_model_file(model)
    if is_exported(model):  # before the eager checks: exported graphs take no .eval() (and stay .training)
        return from_pt2e(model, example_input, arithmetic=arithmetic, engine=engine, threads=threads)
    if arithmetic is not None:
        raise TorchImportError(f"arithmetic={arithmetic!r} applies to torch.export graphs ({ARITHMETICS}); this "
                               f"{type(model).__name__} runs torch's quantized kernels")
    engine, qengine, threads, examples = import_settings(engine, threads, example_input)
    if isinstance(model, torch.jit.ScriptModule):
        with _needs_example_input(example_input, examples):
            return from_torchscript(model, examples, engine=qengine, threads=threads)
    if getattr(model, "training", False):
        raise TorchImportError("the model is in training mode; call model.eval() first")
    gm = trace(model)
    with torch_engine(engine), _needs_example_input(example_input, examples):
        values = record(gm, examples)
    conv = _Converter(gm, qengine, threads, values)
    output = conv.convert()
    meta = dict(engine=engine, threads=threads, torch_version=torch.__version__, source=type(model).__name__)
    return QModel(conv.inputs, conv.nodes, output, conv.params, meta)
