"""Import TorchScript quantized models (``torch.jit.save`` files) bit-exactly.

The module is frozen (``torch.jit.freeze`` inlines every method and turns packed
weights into constants), then its graph is interpreted once, node by node, with the
real torch ops on an example input — recording each tensor's memory format, exactly as
the fx importer does — while the same ops are emitted as qjax nodes.  Weights come out
of the packed-parameter objects with ``quantized::conv2d_unpack`` / ``linear_unpack``.
Shape-check branches that can only raise (``prim::If`` with ``prim::RaiseException``)
are run in torch and dropped from the qjax graph.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from ..dtypes import as_qdtype
from ..engines import layer_engine
from ..graph import Node, QModel, Ref, Static
from ..qarray import QArray
from ..qops.paths import CONTIGUOUS, STRIDED
from .torch_norm import norm_from_op
from .torch_common import (ENGINE_OPS, TorchImportError, check_mean, import_engine, import_settings,
                           memory_format_of, qarray_from_torch, scale_params, tensor_qparams, torch_engine)

__all__ = ["from_torchscript", "load", "record", "TorchScriptConverter"]

_QUANTIZED_CONV = re.compile(r"quantized::conv(_transpose)?([123])d(_relu)?$")


def _torch():
    import torch

    return torch


def load(path):
    """``torch.jit.load`` on the CPU (TorchScript archives are zip files of code and tensors, not pickles)."""
    torch = _torch()
    return torch.jit.load(str(path), map_location="cpu")


class TorchScriptConverter:
    """Interprets a frozen TorchScript graph once with torch's ops, emitting the same ops as QModel nodes.

    After :meth:`convert`: ``nodes`` / ``params`` the QModel's, ``names`` value id -> node name,
    ``torch_values`` value id -> torch's value on the example input."""

    def __init__(self, engine, threads):
        self.engine = engine
        self.threads = threads
        self.nodes: list[Node] = []
        self.params: dict = {}
        self.names: dict = {}
        self.torch_values: dict = {}
        self.specs: dict = {}
        self.size_scalars: set = set()  # ids of 0-d tensors that hold a size (traced size arithmetic)
        self.record: dict = {}
        self.inputs: list = []  # the QModel's input names, after convert
        self.output = None  # the QModel's output spec, after convert

    def name(self, value):
        key = value.unique()
        if key not in self.names:
            base = re.sub(r"[^0-9a-zA-Z_]", "_", value.debugName()) or "v"
            cand, i = base, 1
            while cand in self.names.values():
                cand, i = f"{base}_{i}", i + 1
            self.names[key] = cand
        return self.names[key]

    def tv(self, value):
        return self.torch_values[value.unique()]

    def spec(self, value):
        return self.specs[value.unique()]

    def set(self, value, torch_value, spec):
        self.torch_values[value.unique()] = torch_value
        self.specs[value.unique()] = spec

    def fmt(self, value):
        t = self.tv(value)
        torch = _torch()
        return memory_format_of(t) if isinstance(t, torch.Tensor) else CONTIGUOUS

    def emit(self, node, op, args, static=None, params=None, layer=None):
        out = node.output()
        static = dict(static or {})
        # arithmetic nodes: the engine (a conv's per-layer one where set) and the facts of torch's run their
        # kernels read (as the fx importer records them)
        if op in ENGINE_OPS:
            static.setdefault("engine", self.engine)
        if op in ("binary", "unary", "scalar"):
            static["in_qparams"] = tuple(tensor_qparams(self.tv(i)) for i in list(node.inputs())[:2]
                                         if tensor_qparams(self.tv(i)) is not None)
        if op == "binary":
            static["out_qparams"] = (float(params["scale"]), int(params["zero_point"]))
        if op == "unary":
            static["input_format"] = self.fmt(list(node.inputs())[0])
        if layer and out.unique() not in self.names and layer not in self.names.values():
            self.names[out.unique()] = layer
        name = self.name(out)
        static = dict(static or {})
        static.setdefault("node", name)
        self.nodes.append(Node(name, op, tuple(args), tuple(sorted(static.items())), node.kind()))
        if params:
            self.params[name] = params
        return name

    def run_torch(self, node, inputs):
        """Call the node's op in torch, passing keyword-only schema arguments by name."""
        torch = _torch()
        ns, op = node.kind().split("::")
        fn = getattr(getattr(torch.ops, ns), op)
        try:
            schema = torch._C.parse_schema(node.schema())
        except RuntimeError:
            return fn(*inputs)
        args, kwargs = [], {}
        for a, v in zip(schema.arguments, inputs):
            if str(a.type) in ("MemoryFormat", "Optional[MemoryFormat]", "MemoryFormat?") and isinstance(v, int):
                v = _MEMORY_FORMATS[v]
            if a.kwarg_only:
                kwargs[a.name] = v
            else:
                args.append(v)
        return fn(*args, **kwargs)

    def unary_layout(self, node, x):
        out, inp = self.fmt(node.output()), self.fmt(x)
        return dict(layout=out if out == inp else STRIDED, threads=self.threads)

    # -------------------------------------------------------------------------------------
    def convert(self, graph, example_inputs):
        torch = _torch()
        inputs = list(graph.inputs())
        if inputs and "__torch__" in str(inputs[0].type()):
            inputs = inputs[1:]
        if len(inputs) != len(example_inputs):
            raise TorchImportError(f"the model takes {len(inputs)} inputs, got {len(example_inputs)} examples")
        in_names = []
        for v, ex in zip(inputs, example_inputs):
            nm = self.name(v)
            in_names.append(nm)
            self.set(v, ex, Ref(nm))
        for node in graph.nodes():
            self.node(node)
        outs = list(graph.outputs())
        out = outs[0]
        del torch
        return in_names, self.spec(out)

    def node(self, node):
        torch = _torch()
        kind = node.kind()
        ins = list(node.inputs())
        if kind == "prim::Constant":
            v = node.output().toIValue() if node.outputsSize() else None
            if node.outputsSize():
                self.set(node.output(), v, v if not isinstance(v, torch.Tensor) else None)
            return
        if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            vals = [self.tv(i) for i in ins]
            specs = [self.spec(i) for i in ins]
            tv = vals if kind == "prim::ListConstruct" else tuple(vals)
            self.set(node.output(), tv, specs if kind == "prim::ListConstruct" else tuple(specs))
            return
        if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            vals, spec = self.tv(ins[0]), self.spec(ins[0])
            for i, o in enumerate(node.outputs()):
                if isinstance(spec, (list, tuple)):
                    s = spec[i]
                else:
                    nm = self.name(o)
                    self.nodes.append(Node(nm, "shape", (spec, i), (("kind", "getitem"), ("node", nm)), kind))
                    s = Ref(nm)
                self.set(o, vals[i], s)
            return
        if kind == "prim::If":
            cond = bool(self.tv(ins[0]))
            blocks = list(node.blocks())
            taken = blocks[0] if cond else blocks[1]
            if any(n.kind() == "prim::RaiseException" for n in taken.nodes()):
                raise TorchImportError("the model raised an exception on the example input (a shape check)")
            if node.outputsSize():
                raise TorchImportError("data-dependent control flow (prim::If with outputs) is not supported")
            return
        if kind == "prim::RaiseException":
            return
        if kind in ("aten::FloatImplicit", "aten::IntImplicit", "aten::ScalarImplicit", "aten::Float", "aten::Int") \
                and all(self.spec(i) is None or not isinstance(self.spec(i), (Ref, list, tuple)) for i in ins) \
                and isinstance(self.tv(ins[0]), torch.Tensor):
            t = self.tv(ins[0])
            v = float(t.item()) if kind in ("aten::FloatImplicit", "aten::Float") else (
                int(t.item()) if kind in ("aten::IntImplicit", "aten::Int") else t.item())
            self.set(node.output(), v, v)
            return
        if kind in ("prim::NumToTensor", "aten::floor_divide", "aten::Int") and self._size_arithmetic(node, kind, ins):
            return
        if kind == "prim::GetAttr":
            raise TorchImportError("prim::GetAttr in a frozen graph: freeze the module before importing")
        self.op(node, kind, ins)

    def _size_arithmetic(self, node, kind, ins):
        """Traced size arithmetic (torchvision's ``channel_shuffle``: ``size -> NumToTensor -> floor_divide ->
        Int -> view``): 0-d tensors that only hold sizes become Python ints (``pyfunc`` nodes, or constants when
        every input is one).  Returns False (not handled) for anything else."""
        torch = _torch()
        if not ins or not all(i.unique() in self.size_scalars or isinstance(self.tv(i), int) for i in ins):
            return False
        if kind != "prim::NumToTensor" and ins[0].unique() not in self.size_scalars:
            return False
        ints = [int(self.tv(i)) for i in ins]
        value = ints[0] // ints[1] if kind == "aten::floor_divide" else ints[0]
        out = node.output()
        if kind == "aten::Int":
            torch_value = value
        else:
            torch_value = torch.tensor(value)
            self.size_scalars.add(out.unique())
        self.torch_values[out.unique()] = torch_value
        if all(not isinstance(self.spec(i), (Ref, list, tuple)) for i in ins):
            self.set(out, torch_value, value)
        else:
            py = "floordiv" if kind == "aten::floor_divide" else "int"
            self.set(out, torch_value, Ref(self.emit(node, "pyfunc", [self.spec(i) for i in ins], dict(kind=py))))
        return True

    def op(self, node, kind, ins):
        torch = _torch()
        vals = [self.tv(i) for i in ins]
        out_t = self.run_torch(node, vals)
        if node.outputsSize() != 1:
            raise TorchImportError(f"{kind}: multi-output ops are not supported")
        out = node.output()
        self.torch_values[out.unique()] = out_t
        name = None
        m = _QUANTIZED_CONV.match(kind)
        if kind == "aten::quantize_per_tensor":
            scale, zp, dt = vals[1], vals[2], vals[3]
            name = self.emit(node, "quantize", [self.spec(ins[0])], dict(dtype=as_qdtype(_dtype_of_int(dt))),
                             scale_params(scale, zp))
        elif kind == "aten::dequantize":
            name = self.emit(node, "dequantize", [self.spec(ins[0])])
        elif m:
            transpose, nd, relu = bool(m.group(1)), m.group(2), bool(m.group(3))
            packed = vals[1]
            # conv1d packs its weight as a 2-d convolution
            pnd = "2" if nd == "1" else nd
            unpack = getattr(torch.ops.quantized, f"conv{'_transpose' if transpose else ''}{pnd}d_unpack")
            pref = f"conv{'_transpose' if transpose else ''}{pnd}d_"
            w, b = unpack(packed)
            geo = {k: getattr(torch.ops.quantized, pref + k)(packed) for k in ("stride", "padding", "dilation", "groups")}
            params = dict(weight=qarray_from_torch(w), **scale_params(vals[2], vals[3]))
            if b is not None:
                params["bias"] = jnp.asarray(b.detach().numpy(), jnp.float32)
            opad = tuple(getattr(torch.ops.quantized, pref + "output_padding")(packed)) if transpose else ()
            static = dict(stride=tuple(geo["stride"]), padding=tuple(geo["padding"]),
                          dilation=tuple(geo["dilation"]), groups=int(geo["groups"]),
                          engine=layer_engine(self.engine, np.asarray(params["weight"].zero_point),
                                              int(geo["groups"]), opad))
            if nd == "1":  # the packed 2-d geometry has a leading unit dimension
                static = {k: (v[-1:] if isinstance(v, tuple) else v) for k, v in static.items()}
                if params["weight"].ndim == 4:
                    w4 = params["weight"]
                    params["weight"] = QArray(w4.values[:, :, 0], w4.scale, w4.zero_point, w4.dtype, w4.axis)
            if transpose:
                static["output_padding"] = opad[-1:] if nd == "1" else opad
                name = self.emit(node, "conv_transpose", [self.spec(ins[0])], static, params,
                                 layer=_layer_name(ins[1]))
            else:
                static["relu"] = relu
                name = self.emit(node, "conv", [self.spec(ins[0])], static, params, layer=_layer_name(ins[1]))
        elif kind in ("quantized::linear", "quantized::linear_relu"):
            w, b = torch.ops.quantized.linear_unpack(vals[1])
            params = dict(weight=qarray_from_torch(w), **scale_params(vals[2], vals[3]))
            if b is not None:
                params["bias"] = jnp.asarray(b.detach().numpy(), jnp.float32)
            name = self.emit(node, "linear", [self.spec(ins[0])], dict(relu=kind.endswith("relu")), params,
                             layer=_layer_name(ins[1]))
        elif kind in ("quantized::layer_norm", "quantized::group_norm", "quantized::instance_norm"):
            name = self.emit(node, "norm", [self.spec(ins[0])], *norm_from_op(kind, vals, self.fmt(ins[0]),
                                                                              self.threads))
        elif kind in ("quantized::add", "quantized::add_relu", "quantized::mul", "quantized::mul_relu"):
            name = self.emit(node, "binary", [self.spec(ins[0]), self.spec(ins[1])],
                             dict(kind="add" if "add" in kind else "mul", relu=kind.endswith("relu"),
                                  layout=self.fmt(out), threads=self.threads,
                                  input_formats=(self.fmt(ins[0]), self.fmt(ins[1]))),
                             scale_params(vals[2], vals[3]))
        elif kind in ("quantized::add_scalar", "quantized::add_scalar_relu", "quantized::mul_scalar",
                      "quantized::mul_scalar_relu"):
            name = self.emit(node, "scalar", [self.spec(ins[0])],
                             dict(kind="add_scalar" if "add" in kind else "mul_scalar", c=float(vals[1]),
                                  relu=kind.endswith("relu"), layout=self.fmt(ins[0]), threads=self.threads))
        elif kind in ("quantized::cat", "quantized::cat_relu", "aten::cat"):
            xs = vals[0]
            fmts = [memory_format_of(t) for t in xs]
            cl = all(f == "channels_last" and t.dim() == 4 for f, t in zip(fmts, xs))
            params = None
            if kind != "aten::cat":
                params = scale_params(vals[2], vals[3])
            name = self.emit(node, "cat", [self.spec(ins[0])], dict(dim=int(vals[1]), relu=kind.endswith("relu"),
                                                                     channels_last=cl), params)
        elif kind == "quantized::hardswish":
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="hardswish", **self.unary_layout(node, ins[0])),
                             scale_params(vals[1], vals[2]))
        elif kind in ("quantized::batch_norm2d", "quantized::batch_norm3d", "quantized::batch_norm2d_relu",
                      "quantized::batch_norm3d_relu"):
            w, b, mean, var = (v.detach().numpy() for v in vals[1:5])
            name = self.emit(node, "batch_norm", [self.spec(ins[0])],
                             dict(weight=Static(w), bias=Static(b), mean=Static(mean), var=Static(var), eps=float(vals[5]),
                                  scale=float(vals[6]), zero_point=int(vals[7]), relu=kind.endswith("relu"),
                                  in_scale=float(np.float32(vals[0].q_scale()))))
        elif kind in ("aten::relu", "aten::relu_"):
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="relu", **self.unary_layout(node, ins[0])))
        elif kind in ("quantized::relu6",):
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="relu6", **self.unary_layout(node, ins[0])))
        elif kind in ("aten::hardtanh", "aten::hardtanh_"):
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="hardtanh", min_val=float(vals[1]),
                                                                       max_val=float(vals[2]),
                                                                       **self.unary_layout(node, ins[0])))
        elif kind in ("aten::hardsigmoid", "aten::hardsigmoid_", "aten::sigmoid", "aten::tanh", "aten::hardswish"):
            k = kind.split("::")[1].rstrip("_")
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind=k, **self.unary_layout(node, ins[0])))
        elif kind == "quantized::sigmoid":
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="sigmoid", scale=float(vals[1]),
                                                                       zero_point=int(vals[2]),
                                                                       **self.unary_layout(node, ins[0])))
        elif kind == "quantized::leaky_relu":
            name = self.emit(node, "unary", [self.spec(ins[0])],
                             dict(kind="leaky_relu", slope=float(vals[1]), threads=self.threads, layout=CONTIGUOUS),
                             dict(scale=jnp.float32(vals[3]), zero_point=jnp.int32(vals[4])))
        elif kind == "quantized::elu":
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="elu", scale=float(vals[1]),
                                                                       zero_point=int(vals[2]), alpha=float(vals[3]),
                                                                       **self.unary_layout(node, ins[0])))
        elif kind in ("aten::dropout", "aten::dropout_", "aten::contiguous", "aten::detach"):
            name = self.emit(node, "unary", [self.spec(ins[0])], dict(kind="identity"))
        elif kind in ("aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d"):
            k, s, p, d, c = vals[1:6]
            name = self.emit(node, "pool", [self.spec(ins[0])], dict(kind="max", kernel=tuple(k), stride=tuple(s) or tuple(k),
                                                                      padding=tuple(p), dilation=tuple(d),
                                                                      ceil_mode=bool(c), layout=self.fmt(ins[0])))
        elif kind in ("aten::avg_pool1d", "aten::avg_pool2d", "aten::avg_pool3d"):
            k, s, p, c, cip = vals[1:6]
            div = vals[6] if len(vals) > 6 else None
            name = self.emit(node, "pool", [self.spec(ins[0])], dict(kind="avg", kernel=tuple(k), stride=tuple(s) or tuple(k),
                                                                      padding=tuple(p), ceil_mode=bool(c),
                                                                      count_include_pad=bool(cip), divisor_override=div,
                                                                      layout=self.fmt(ins[0])))
        elif kind in ("aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d"):
            name = self.emit(node, "pool", [self.spec(ins[0])], dict(kind="adaptive", output_size=tuple(vals[1]),
                                                                      layout=self.fmt(ins[0])))
        elif kind == "aten::mean" and len(vals) >= 3 and isinstance(vals[1], (list, tuple)):
            dims, keepdim = tuple(int(d) for d in vals[1]), bool(vals[2])
            if len(vals) > 3 and vals[3] is not None:
                raise TorchImportError(f"aten::mean with dtype={vals[3]} at {node.output().debugName()}")
            check_mean(self.engine, vals[0], dims, keepdim, self.fmt(ins[0]), self.threads, self.name(node.output()))
            name = self.emit(node, "mean", [self.spec(ins[0])], dict(dims=dims, keepdim=keepdim,
                                                                      layout=self.fmt(ins[0]), threads=self.threads))
        elif kind == "aten::flatten":
            name = self.emit(node, "shape", [self.spec(ins[0])], dict(kind="flatten", start=int(vals[1]), end=int(vals[2])))
        elif kind in ("aten::view", "aten::reshape"):
            name = self.emit(node, "shape", [self.spec(ins[0]), self.spec(ins[1])], dict(kind="reshape"))
        elif kind in ("aten::transpose", "aten::permute", "aten::chunk", "aten::squeeze", "aten::unsqueeze"):
            k = kind.split("::")[1]
            name = self.emit(node, "shape", [self.spec(i) for i in ins], dict(kind=k))
        elif kind == "aten::size":
            name = self.emit(node, "shape", [self.spec(i) for i in ins], dict(kind="size"))
        elif kind in ("aten::__getitem__", "aten::select") and not isinstance(vals[0], torch.Tensor):
            name = self.emit(node, "shape", [self.spec(ins[0]), self.spec(ins[1])], dict(kind="getitem"))
        elif kind in ("aten::len", "aten::Int", "aten::ne", "aten::eq", "aten::gt", "aten::lt", "aten::ge", "aten::le",
                      "aten::floordiv", "aten::mul", "aten::add", "aten::sub", "aten::neg") and not any(
                isinstance(v, torch.Tensor) for v in vals):
            # Python-level arithmetic on sizes: a constant for this graph's shapes is not enough
            # (shapes change with the input); keep the value when every input is constant
            if all(not isinstance(self.spec(i), (Ref, list, tuple)) for i in ins):
                self.set(out, out_t, out_t)
                return
            py = {"aten::len": "len", "aten::Int": "int", "aten::floordiv": "floordiv", "aten::mul": "mul",
                  "aten::add": "add", "aten::sub": "sub", "aten::neg": "neg", "aten::ne": "ne", "aten::eq": "eq",
                  "aten::gt": "gt", "aten::lt": "lt", "aten::ge": "ge", "aten::le": "le"}[kind]
            name = self.emit(node, "pyfunc", [self.spec(i) for i in ins], dict(kind=py))
        else:
            raise TorchImportError(f"unsupported TorchScript op {kind} (node {node.output().debugName()})")
        self.set(out, out_t, Ref(name))


def _layer_name(packed_value):
    """``self.layer1.conv1._packed_params`` -> ``layer1.conv1`` (the module path of a frozen weight)."""
    name = packed_value.debugName()
    if name.startswith("self."):
        name = name[len("self."):]
    for suffix in ("._packed_params._packed_params", "._packed_params"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _memory_formats():
    torch = _torch()
    return {0: torch.contiguous_format, 1: torch.preserve_format, 2: torch.channels_last, 3: torch.channels_last_3d}


class _LazyFormats(dict):
    def __missing__(self, key):
        self.update(_memory_formats())
        return dict.__getitem__(self, key)


_MEMORY_FORMATS = _LazyFormats()


def _dtype_of_int(v):
    torch = _torch()
    if isinstance(v, torch.dtype):
        return v
    # ScalarType codes used by TorchScript constants
    return {12: torch.qint8, 13: torch.quint8, 14: torch.qint32}[int(v)]


def _run(module, examples, qengine, threads) -> TorchScriptConverter:
    """Freeze ``module`` and interpret its graph once on ``examples`` (torch's engine set by the caller)."""
    torch = _torch()
    frozen = torch.jit.freeze(module.eval()) if hasattr(module, "graph") else module
    conv = TorchScriptConverter(qengine, threads)
    with torch.no_grad():
        conv.inputs, conv.output = conv.convert(frozen.graph, examples)
    return conv


def record(module, example_inputs, *, engine, threads=1) -> dict:
    """Run a TorchScript module once, op by op, as the importer does: ``{QModel node name: torch's value}``.

    ``engine``: the torch engine name torch runs with (set by the caller, e.g. :func:`qjax.verify`)."""
    conv = _run(module, example_inputs, import_engine(engine), threads)
    return {nm: conv.torch_values[uid] for uid, nm in conv.names.items() if uid in conv.torch_values}


def from_torchscript(module, example_input, *, engine=None, threads=None) -> QModel:
    """Import a TorchScript quantized model (see the module docstring); arguments as :func:`qjax.from_torch`."""
    torch = _torch()
    engine, qengine, threads, examples = import_settings(engine, threads, example_input)
    with torch_engine(engine):
        conv = _run(module, examples, qengine, threads)
    meta = dict(engine=engine, threads=threads, torch_version=torch.__version__, source="torchscript")
    return QModel(conv.inputs, conv.nodes, conv.output, conv.params, meta)
