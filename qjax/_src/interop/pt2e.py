"""Import torch.export graphs — torchao's pt2e (``convert_pt2e``) and ``ExportedProgram`` s — and ``.pt2`` files.

``from_torch`` hands these here (:func:`is_exported`).  Two arithmetics, chosen by ``arithmetic``:

* ``"converted"`` (the default: ``from_torch(m)(x)`` equals ``m(x)``): the graph as torch runs it —
  ``quantized_decomposed`` quantize / dequantize ops (per tensor, per channel, ``.tensor`` variants)
  bit-exactly (:mod:`qjax.graph.ops_pt2e`) and the ATen float ops between them whose float32 result is
  order-independent (add, mul, relu, hardtanh / clamp, max pooling, shapes, cat).  torch's float32
  convolutions and matmuls sum in oneDNN's / MKL's blocked order, which qjax does not reproduce
  (measured on resnet18 / mobilenet_v2 layer shapes, one thread: XLA's float32 conv equals torch's on
  7-100 % of outputs depending on the shape; sequential FMA chains in either loop order on 4-11 %), so
  such nodes are refused at import, naming the node and pointing to ``"inductor"``.  Float averages
  (mean, avg / adaptive pooling) are refused too: their order is not pinned here.
* ``"inductor"``: what torch.compile deploys on x86 — torchao's ``lower_pt2e_quantized_to_x86`` turns
  the graph into oneDNN's integer kernels (``onednn.qconv_pointwise`` / ``qlinear_pointwise`` ...), which
  :func:`qjax.interop.pt2e_inductor.import_lowered` imports bit-exactly.

Files: :func:`load_model_file` tells a TorchScript archive from a ``torch.export.save`` one by its
entries and never unpickles — a ``.pt2`` whose weights, constants or sample inputs need Python pickles
(tensor subclasses, custom or opaque objects, the legacy layouts) is refused before
``torch.export.load`` sees it.
"""

from __future__ import annotations

import json
import operator
import os
import zipfile

import jax.numpy as jnp
import numpy as np

from ..graph import Node, QModel, Ref
from ..graph import ops_pt2e  # noqa: F401 - registers the pt2e node ops
from .torch_common import TorchImportError

__all__ = ["ARITHMETICS", "is_exported", "is_lowered", "from_pt2e", "load_model_file", "example_inputs_of",
           "without_guards"]

#: the values of ``from_torch``'s ``arithmetic`` for torch.export graphs
ARITHMETICS = ("converted", "inductor")


def _torch():
    import torch

    return torch


def _decomposed():
    """``torch.ops.quantized_decomposed`` (its library registers on importing torch's _decomposed module)."""
    torch = _torch()
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


def is_exported(model) -> bool:
    """An ``ExportedProgram``, or a ``GraphModule`` of ATen op overloads (``torch.export`` / ``convert_pt2e``)."""
    torch = _torch()
    if isinstance(model, torch.export.ExportedProgram):
        return True
    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes)


# ---------------------------------------------------------------------------------------------- files


def _archive_kind(names) -> str | None:
    """``"pt2"`` (torch.export.save), ``"torchscript"`` (torch.jit.save) or None, from a zip's entry names."""
    tops = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tops or any(t.startswith("models/") for t in tops):
        return "pt2"
    if any(t.startswith("code/") for t in tops) or "constants.pkl" in tops:
        return "torchscript"
    return None


def _check_pt2_without_pickles(path, zf):
    """Refuse a ``.pt2`` that ``torch.export.load`` would unpickle (``torch.load(weights_only=False)`` /
    ``pickle.loads`` in ``torch/export/pt2_archive/_package.py``: pickled tensor subclasses, custom and
    opaque objects, the legacy weight / constant files and the pre-2.8 layout)."""
    names = zf.namelist()
    root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    rel = {n[len(root):]: n for n in names if n.startswith(root)}
    fmt = rel.get("archive_format")
    if fmt is None or zf.read(fmt).decode().strip() != "pt2":
        raise TorchImportError(f"{path!r}: not a torch.export.save archive of this torch's layout (an old .pt2 "
                               "is unpickled by torch.export.load); re-save it with torch.export.save")
    for r, full in rel.items():
        if r.endswith(("_weights_config.json", "_constants_config.json")):
            config = json.loads(zf.read(full).decode())
            for fqn, payload in config.get("config", {}).items():
                if payload.get("use_pickle") or not str(payload.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise TorchImportError(f"{path!r}: {fqn} is stored as a Python pickle (a tensor subclass or an "
                                           "object); qjax never unpickles model files")
        elif (r.startswith("data/weights/") or r.startswith("data/constants/")) and r.endswith(".pt"):
            raise TorchImportError(f"{path!r}: {r} is a legacy pickled payload; re-save with torch.export.save")


def _sample_inputs_load_without_pickles(path, zf):
    """torch.export.load falls back to ``torch.load(weights_only=False)`` when its sample inputs do not load
    with ``weights_only=True``: try the restricted load first, and refuse where it fails."""
    import io

    torch = _torch()
    for n in zf.namelist():
        if "data/sample_inputs/" in n and n.endswith(".pt"):
            data = zf.read(n)
            if data:
                try:
                    torch.load(io.BytesIO(data), weights_only=True)
                except Exception as e:  # noqa: BLE001 - any failure means torch would unpickle
                    raise TorchImportError(f"{path!r}: its sample inputs need a full unpickle ({type(e).__name__}); "
                                           "qjax never unpickles model files") from None


def load_model_file(path):
    """A model file: a TorchScript archive (``torch.jit.load``) or a ``torch.export.save`` archive (an
    ``ExportedProgram``, ``torch.export.load`` after the no-pickle checks), told apart by their entries."""
    torch = _torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TorchImportError(f"model {path!r} is not a file")
    if not zipfile.is_zipfile(path):
        raise TorchImportError(f"model {path!r} is neither a TorchScript archive (torch.jit.save) nor a "
                               "torch.export.save archive (.pt2); qjax never unpickles torch.save files")
    with zipfile.ZipFile(path) as zf:
        kind = _archive_kind(zf.namelist())
        if kind == "pt2":
            _check_pt2_without_pickles(path, zf)
            _sample_inputs_load_without_pickles(path, zf)
    if kind == "torchscript":
        return torch.jit.load(path, map_location="cpu")
    if kind == "pt2":
        _decomposed()  # the quantized_decomposed ops a pt2e graph names must exist to deserialize it
        return torch.export.load(path)
    raise TorchImportError(f"model {path!r} is a zip archive but neither TorchScript nor torch.export's "
                           "(a torch.save file?); qjax never unpickles torch.save files")


# ---------------------------------------------------------------------------------------------- conversion

_CONV_LIKE = ("conv", "linear", "addmm", "mm.", "bmm", "matmul", "baddbmm", "einsum")
_AVERAGES = ("mean", "avg_pool", "adaptive_avg_pool", "sum.", "var", "std", "softmax", "layer_norm", "batch_norm")


def _refusal(n, why):
    return TorchImportError(f"node {n.name!r} ({n.target}): {why}")


def _is_op(target, packet):
    return getattr(target, "overloadpacket", None) is packet


class _Converter:
    """``convert_pt2e`` / ``ExportedProgram.module()`` graph -> QModel nodes of :mod:`qjax.graph.ops_pt2e`."""

    def __init__(self, gm):
        self.gm = gm
        self.nodes: list[Node] = []
        self.params: dict = {}
        self.inputs: list[str] = []
        self.constants: dict = {}  # get_attr node name -> host numpy value

    def spec(self, a):
        torch = _torch()
        if isinstance(a, torch.fx.Node):
            return Ref(a.name)
        if isinstance(a, (list, tuple)):
            vals = [self.spec(x) for x in a]
            return vals if isinstance(a, list) else tuple(vals)
        if isinstance(a, torch.dtype):
            return str(a)
        if isinstance(a, (int, float, bool, str)) or a is None:
            return a
        raise TorchImportError(f"unsupported argument {a!r} of type {type(a).__name__}")

    def emit(self, n, op, args, static=None, params=None):
        static = dict(static or {})
        static["node"] = n.name
        self.nodes.append(Node(n.name, op, tuple(self.spec(a) for a in args), tuple(sorted(static.items())),
                               str(n.target)))
        if params:
            self.params[n.name] = params

    def host(self, a, n, what):
        """A tensor argument's value at import: a get_attr constant (``.tensor`` variants' scale / zero point)."""
        torch = _torch()
        if isinstance(a, torch.fx.Node):
            if a.name not in self.constants:
                raise _refusal(n, f"its {what} is computed in the graph (dynamic quantization); only constant "
                                  "quantization parameters are imported")
            return self.constants[a.name]
        return a

    def convert(self):
        torch = _torch()
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.inputs.append(n.name)
            elif n.op == "get_attr":
                self.get_attr(n)
            elif n.op == "output":
                out = n.args[0]
                output = self.spec(out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out)
            elif n.op == "call_module":
                if n.target.startswith("_guards_fn"):  # torch.export's input-shape guards: no value
                    continue
                raise _refusal(n, "call_module in an exported graph is not supported")
            elif n.op == "call_function":
                self.function(n)
            else:
                raise _refusal(n, f"unsupported fx node kind {n.op}")
        del torch
        return output

    def get_attr(self, n):
        torch = _torch()
        val = self.gm
        for part in n.target.split("."):
            val = getattr(val, part)
        if not isinstance(val, torch.Tensor):
            raise _refusal(n, f"get_attr of a {type(val).__name__} is not supported")
        host = val.detach().cpu().numpy()
        if host.dtype == np.int64:
            if host.size and (host.min() < -2**31 or host.max() >= 2**31):
                raise _refusal(n, "int64 constant outside int32")
            host = host.astype(np.int32)
        if host.dtype == np.float64:
            raise _refusal(n, "float64 constants are not supported")
        self.constants[n.name] = host
        self.emit(n, "pt2e_constant", (), params=dict(value=jnp.asarray(host)))

    def function(self, n):
        torch = _torch()
        aten = torch.ops.aten
        qd = _decomposed()
        t, args, kw = n.target, list(n.args), dict(n.kwargs)
        name = str(t)
        if _is_op(t, qd.quantize_per_tensor) or _is_op(t, qd.dequantize_per_tensor):
            quant = _is_op(t, qd.quantize_per_tensor)
            if "out_dtype" in kw and kw["out_dtype"] not in (None, torch.float32):
                raise _refusal(n, f"out_dtype={kw['out_dtype']} is not supported (float32 only)")
            scale = self.host(args[1], n, "scale")
            zp = self.host(args[2], n, "zero point")
            scale = float(np.asarray(scale).reshape(-1)[0]) if np.size(scale) == 1 else None
            if scale is None:
                raise _refusal(n, "a per-tensor scale must have one element")
            zp = int(np.asarray(zp).reshape(-1)[0])
            qmin, qmax, dtype = int(args[3]), int(args[4]), str(args[5])
            if quant:
                # torch: inv_scale = 1.0 / scale (a Python double), cast to float32 by the multiply
                self.emit(n, "pt2e_quantize", args[:1], dict(per_channel=False, inv_scale=float(np.float32(1.0 / scale)),
                                                             zero_point=zp, qmin=qmin, qmax=qmax, dtype=dtype))
            else:
                self.emit(n, "pt2e_dequantize", args[:1], dict(per_channel=False, scale=float(np.float32(scale)),
                                                               zero_point=zp))
        elif _is_op(t, qd.quantize_per_channel):
            self.emit(n, "pt2e_quantize", args[:3], dict(per_channel=True, axis=int(args[3]), qmin=int(args[4]),
                                                         qmax=int(args[5]), dtype=str(args[6])))
        elif _is_op(t, qd.dequantize_per_channel):
            if "out_dtype" in kw and kw["out_dtype"] not in (None, torch.float32):
                raise _refusal(n, f"out_dtype={kw['out_dtype']} is not supported (float32 only)")
            self.emit(n, "pt2e_dequantize", args[:3], dict(per_channel=True, axis=int(args[3])))
        elif name.startswith("aten.") and any(k in name for k in _CONV_LIKE):
            raise _refusal(n, "torch computes this float32 convolution / matmul with oneDNN or MKL, whose summation "
                              "order qjax does not reproduce; import with arithmetic='inductor' (the integer kernels "
                              "torch.compile deploys, bit-exact)")
        elif name.startswith("aten.") and any(k in name for k in _AVERAGES):
            raise _refusal(n, "torch's float32 reduction order is not reproduced by arithmetic 'converted'; import "
                              "with arithmetic='inductor'")
        elif t in (aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor):
            if kw.get("alpha", 1) != 1:
                raise _refusal(n, "alpha != 1 is not supported")
            self.emit(n, "pt2e_float", args[:2], dict(kind="add" if "add" in name else "sub"))
        elif t in (aten.mul.Tensor, aten.mul_.Tensor):
            self.emit(n, "pt2e_float", args[:2], dict(kind="mul"))
        elif t in (aten.relu.default, aten.relu_.default):
            self.emit(n, "pt2e_float", args[:1], dict(kind="relu"))
        elif t in (aten.hardtanh.default, aten.hardtanh_.default):
            lo = args[1] if len(args) > 1 else kw.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kw.get("max_val", 1.0)
            self.emit(n, "pt2e_float", args[:1], dict(kind="clamp", min=float(lo), max=float(hi)))
        elif t in (aten.clamp.default, aten.clamp_.default):
            lo = args[1] if len(args) > 1 else kw.get("min")
            hi = args[2] if len(args) > 2 else kw.get("max")
            self.emit(n, "pt2e_float", args[:1], dict(kind="clamp", min=None if lo is None else float(lo),
                                                      max=None if hi is None else float(hi)))
        elif _is_op(t, aten.max_pool2d) or _is_op(t, aten.max_pool1d) or _is_op(t, aten.max_pool3d) or \
                _is_op(t, aten.max_pool2d_with_indices):
            x = args[0]
            nd = len(x.meta["val"].shape) - 2 if "val" in x.meta else 2
            k = _ntuple(args[1], nd)
            stride = _ntuple(args[2] if len(args) > 2 and args[2] else k, nd)
            pad = _ntuple(args[3] if len(args) > 3 else 0, nd)
            dil = _ntuple(args[4] if len(args) > 4 else 1, nd)
            ceil = bool(args[5]) if len(args) > 5 else False
            if _is_op(t, aten.max_pool2d_with_indices):
                raise _refusal(n, "max pooling with indices is not supported")
            self.emit(n, "pt2e_float", args[:1], dict(kind="max_pool", kernel=k, stride=stride, padding=pad,
                                                      dilation=dil, ceil_mode=ceil))
        elif t in (aten.dropout.default, aten.clone.default, aten.detach.default, aten.contiguous.default,
                   aten.alias.default) or (_is_op(t, aten.dropout)):
            self.emit(n, "pt2e_float", args[:1], dict(kind="identity"))
        elif t is aten.flatten.using_ints:
            self.emit(n, "shape", args[:1], dict(kind="flatten", start=int(args[1]) if len(args) > 1 else 0,
                                                 end=int(args[2]) if len(args) > 2 else -1))
        elif t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            self.emit(n, "shape", [args[0], [int(s) for s in args[1]]], dict(kind="reshape"))
        elif t is aten.permute.default:
            self.emit(n, "shape", [args[0], [int(s) for s in args[1]]], dict(kind="permute"))
        elif t is aten.transpose.int:
            self.emit(n, "shape", args[:3], dict(kind="transpose"))
        elif t in (aten.unsqueeze.default,):
            self.emit(n, "shape", args[:2], dict(kind="unsqueeze"))
        elif t in (aten.squeeze.dim, aten.squeeze.dims):
            dims = args[1] if isinstance(args[1], int) else tuple(args[1])
            self.emit(n, "shape", [args[0], dims], dict(kind="squeeze"))
        elif t is aten.cat.default:
            self.emit(n, "cat", [args[0]], dict(dim=int(args[1]) if len(args) > 1 else 0, relu=False,
                                                channels_last=False))
        elif t is operator.getitem:
            self.emit(n, "shape", args[:2], dict(kind="getitem"))
        elif name.startswith("aten._assert") or name.startswith("aten.sym_constrain"):
            return
        else:
            raise _refusal(n, "this op is not supported by arithmetic 'converted'")


def _ntuple(v, nd):
    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    return tuple(int(a) for a in (v * nd if len(v) == 1 else v))


def without_guards(gm):
    """``gm`` without torch.export's input-shape guards (the ``_guards_fn`` call in the graph, the
    ``_check_input_constraints_pre_hook`` forward pre-hook): it runs at any batch size, as its QModel does."""
    guards = [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target).startswith("_guards_fn")]
    for n in guards:
        if not n.users:
            gm.graph.erase_node(n)
    if guards:
        gm.recompile()
    for key, hook in list(gm._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del gm._forward_pre_hooks[key]
    return gm


def is_lowered(gm) -> bool:
    """A graph of torchao's x86 lowering (``torch.ops.onednn`` integer kernels)."""
    return any(n.op == "call_function" and str(n.target).startswith("onednn.") for n in gm.graph.nodes)


def example_inputs_of(gm) -> tuple:
    """Zeros shaped as the graph's inputs, from torch.export's placeholder metadata (``meta["val"]``)."""
    torch = _torch()
    out = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            if not isinstance(val, torch.Tensor) or any(not isinstance(s, int) for s in val.shape):
                raise TorchImportError(f"input {n.name!r} of the exported graph has no static shape; pass "
                                       "example_input")
            out.append(torch.zeros(tuple(val.shape), dtype=val.dtype))
    return tuple(out)


def _examples(example_input):
    torch = _torch()
    examples = example_input if isinstance(example_input, tuple) else (example_input,)
    return tuple(e if isinstance(e, torch.Tensor) else torch.as_tensor(np.asarray(e)) for e in examples)


def from_pt2e(model, example_input=None, *, arithmetic=None, engine=None, threads=None) -> QModel:
    """Import a ``convert_pt2e`` GraphModule or an ``ExportedProgram`` (see the module docstring).

    Args:
      model: a ``torch.export.ExportedProgram`` (its lifted parameters, buffers and constants are
        unlifted by ``ExportedProgram.module()``) or a GraphModule of ATen ops (``convert_pt2e``'s).
      example_input: only ``"inductor"`` needs one (torchao's lowering runs the graph); default: zeros of
        the shapes torch.export recorded for the inputs.
      arithmetic: ``"converted"`` (default: the graph as torch runs it) or ``"inductor"`` (x86 lowering); a
        graph torchao already lowered (``torch.ops.onednn`` kernels) is imported as ``"inductor"``.
      engine, threads: passed to the inductor importer (an engine instance; a torch engine's name is
        ignored: neither the converted graph's ops nor oneDNN's lowered ones read
        ``torch.backends.quantized.engine``).
    """
    torch = _torch()
    explicit = arithmetic is not None
    arithmetic = arithmetic or "converted"
    if arithmetic not in ARITHMETICS:
        raise TorchImportError(f"arithmetic={arithmetic!r}; use one of {ARITHMETICS}")
    gm = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    lowered = is_lowered(gm)
    if lowered and arithmetic == "converted" and explicit:
        raise TorchImportError("arithmetic='converted': this graph is already lowered to oneDNN's integer kernels "
                               "(arithmetic 'inductor')")
    if lowered or arithmetic == "inductor":
        examples = _examples(example_input) if example_input is not None else example_inputs_of(gm)
        try:
            from .pt2e_inductor import import_lowered
        except ImportError as e:
            raise TorchImportError(f"arithmetic='inductor' is not available: {e}") from None
        try:
            from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        except ImportError:
            raise TorchImportError("arithmetic='inductor' needs torchao (pip install 'qjax[pt2e]')") from None
        if not lowered:
            with torch.no_grad():
                gm = lower_pt2e_quantized_to_x86(gm, examples)
        # a torch quantized engine's name (verify passes torch's current one) does not change these graphs' ops
        settings = {k: v for k, v in dict(engine=None if isinstance(engine, str) else engine,
                                          threads=threads).items() if v is not None}
        return import_lowered(gm, examples, **settings)
    conv = _Converter(gm)
    output = conv.convert()
    meta = dict(arithmetic="converted", torch_version=torch.__version__, source=type(model).__name__)
    return QModel(conv.inputs, conv.nodes, output, conv.params, meta)
