"""Import what torch's x86 inductor lowering of a pt2e model runs (arithmetic ``"inductor"``).

torchao 0.18's ``lower_pt2e_quantized_to_x86(converted, example_inputs)`` returns a GraphModule of
eager ops equal to ``torch.compile`` with freezing: ``onednn::qconv_pointwise`` (``.default`` /
``.tensor``), ``qconv2d_pointwise.binary`` (a fused residual ``sum``), ``qlinear_pointwise``, float32-output
variants, ``quantized_decomposed`` quantize / dequantize and ATen ops on the uint8 or float tensors
between them.  :func:`import_lowered` translates each op into a QModel node (:mod:`qjax.graph.ops_inductor`)
computed by the :class:`~qjax.engines.Inductor` engine; ops whose result torch computes in an order qjax
does not reproduce (float means, averages, transcendental activations) are refused with one line.
"""

from __future__ import annotations

import math

import operator

import numpy as np

from ..engines.base import ConvGeometry
from ..engines.inductor import Inductor, PostOps
from ..graph import Node, QModel, Ref
from ..graph import ops_inductor, ops_pt2e  # noqa: F401  (register the node ops)
from ..requant.onednn_pointwise import UNARY_POST_OPS
from .torch_common import TorchImportError

__all__ = ["import_lowered", "record_lowered"]

_DTYPES = {"torch.uint8": "uint8", "torch.int8": "int8", "torch.float32": "float32"}


def _torch():
    import torch

    return torch


def _dtype_name(dt, what):
    name = _DTYPES.get(str(dt))
    if name is None:
        raise TorchImportError(f"{what}: dtype {dt} is not supported (uint8, int8 or float32)")
    return name


def record_lowered(gm, example_inputs) -> dict:
    """Every call_function node's output (torch tensors) when ``gm`` runs ``example_inputs``."""
    torch = _torch()
    values = {}

    class _Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n.name] = out
            return out

    try:
        with torch.no_grad():
            _Rec(gm).run(*example_inputs)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TorchImportError(f"torch cannot run the lowered graph on example_inputs: {first}") from None
    return values


class _Lowering:
    """One pass over the lowered graph: fx nodes -> QModel nodes."""

    def __init__(self, gm, example_inputs, engine, threads):
        self.gm, self.engine, self.threads = gm, engine, threads
        self.torch = _torch()
        self.values = record_lowered(gm, example_inputs)
        self.nodes, self.params, self.consts, self.inputs = [], {}, {}, []

    # -- helpers ---------------------------------------------------------------------------------------
    def attr(self, target):
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def const(self, a, what):
        """A get_attr tensor's value (or a Python value passed through)."""
        torch = self.torch
        if isinstance(a, torch.fx.Node):
            if a.name not in self.consts:
                raise TorchImportError(f"{what} must be a constant of the graph, got the computed value {a.name}")
            return self.consts[a.name]
        return a

    def scalar(self, a, what, kind):
        v = self.const(a, what)
        if hasattr(v, "numel"):
            if v.numel() != 1:
                raise TorchImportError(f"{what} must be one value, got shape {tuple(v.shape)}")
            v = v.item()
        return kind(v)

    def ref(self, a, what):
        torch = self.torch
        if not isinstance(a, torch.fx.Node) or a.name in self.consts:
            raise TorchImportError(f"{what} must be a tensor computed by the graph")
        return Ref(a.name)

    def emit(self, n, op, args, static, params=None):
        cfg = dict(static)
        cfg["node"] = n.name
        self.nodes.append(Node(n.name, op, tuple(args), tuple(cfg.items()), source=str(n.target)))
        if params is not None:
            self.params[n.name] = params

    def exact(self, n, kind, args, **static):
        self.emit(n, "exact_op", args, dict(kind=kind, **static))

    # -- ops ---------------------------------------------------------------------------------------------
    def q(self, n):
        x, scale, zp, qmin, qmax, dtype = n.args[:6]
        what = f"{n.target} (node {n.name})"
        _dtype_name(dtype, what)
        # ops_pt2e's node: fl32(1.0 / scale), the double quotient the decomposition multiplies by
        inv_scale = float(np.float32(1.0 / self.scalar(scale, what + " scale", float)))
        self.emit(n, "pt2e_quantize", [self.ref(x, what)],
                  dict(per_channel=False, inv_scale=inv_scale, zero_point=self.scalar(zp, what, int),
                       qmin=int(qmin), qmax=int(qmax), dtype=str(dtype)))

    def dq(self, n):
        x, scale, zp = n.args[:3]
        what = f"{n.target} (node {n.name})"
        out_dtype = n.kwargs.get("out_dtype", n.args[6] if len(n.args) > 6 else None)
        if out_dtype is not None and str(out_dtype) != "torch.float32":
            raise TorchImportError(f"{what}: out_dtype {out_dtype} (only float32 is reproduced)")
        self.emit(n, "pt2e_dequantize", [self.ref(x, what)],
                  dict(per_channel=False, scale=self.scalar(scale, what + " scale", float),
                       zero_point=self.scalar(zp, what, int)))

    def _weights(self, what, packed, w_scale, w_zp, bias, linear):
        w = self.const(packed, what + " weight")
        w = (w.to_dense() if w.is_mkldnn else w).detach().cpu()
        if str(w.dtype) != "torch.int8":
            raise TorchImportError(f"{what}: weight dtype {w.dtype} (int8 weights only; bf16/fp32 weights are not "
                                   "quantized arithmetic)")
        zps = self.const(w_zp, what + " weight zero point")
        if zps is not None and bool((zps != 0).any()):
            raise TorchImportError(f"{what}: weight zero points must be 0 (oneDNN's symmetric weights)")
        ws = self.const(w_scale, what + " weight scale")
        ws = np.asarray(ws.detach().cpu().numpy() if hasattr(ws, "numpy") else ws, np.float32)
        w = w.numpy()
        if linear:
            w = np.ascontiguousarray(w.T)  # qlinear_prepack stores (K, O); the kernel wants torch's (O, K)
        else:
            nd = w.ndim - 2
            w = np.ascontiguousarray(np.transpose(w, tuple(range(2, nd + 2)) + (1, 0)))  # (*kernel, C/g, O)
        b = self.const(bias, what + " bias")
        p = {"weight": w, "w_scale": ws}
        if b is not None:
            if str(b.dtype) != "torch.float32":
                raise TorchImportError(f"{what}: bias dtype {b.dtype} (float32 only)")
            p["bias"] = b.detach().cpu().numpy()
        return p

    def _x(self, what, x, x_scale, x_zp):
        torch = self.torch
        if isinstance(x, torch.fx.Node) and str(self.values[x.name].dtype) != "torch.uint8":
            raise TorchImportError(f"{what}: input dtype {self.values[x.name].dtype} (uint8 activations only)")
        return self.ref(x, what), self.scalar(x_scale, what + " x_scale", float), self.scalar(x_zp, what, int)

    @staticmethod
    def _unary(what, attr, scalars):
        attr = "none" if attr in (None, "", "none") else str(attr)
        if attr not in UNARY_POST_OPS:
            raise TorchImportError(f"{what}: post-op {attr!r} is not reproduced exactly (supported: "
                                   f"{', '.join(UNARY_POST_OPS)})")
        return attr, tuple(float(s) for s in scalars) if attr == "hardtanh" else ()

    def _post(self, what, out_scale, out_zp, out_dtype, x_dtype, unary, scalars, binary=None):
        dt = x_dtype if out_dtype is None else _dtype_name(out_dtype, what + " output")
        attr, args = self._unary(what, unary, scalars)
        if dt == "float32" and (float(out_scale) != 1.0 or int(out_zp) != 0):
            raise TorchImportError(f"{what}: a float32 output takes output scale 1.0 / zero point 0, got "
                                   f"{out_scale} / {out_zp}")
        post = dict(out_dtype=dt, output_scale=float(out_scale), output_zero_point=int(out_zp), unary=attr,
                    unary_args=args)
        if binary is not None:
            post.update(binary)
        return PostOps(**post)

    def _binary(self, what, accum, accum_scale, accum_zp, attr, alpha, linear=False):
        if attr == "add" and linear:
            # qlinear's 'add' adds the other operand as it is (its scale / zero point unused): measured
            # against torch with a uint8 operand (scale 0.05, zero point 100) and a float32 one
            if str(self.values[accum.name].dtype) not in ("torch.uint8", "torch.float32"):
                raise TorchImportError(f"{what}: add operand dtype {self.values[accum.name].dtype}")
            if alpha is not None and float(alpha) != 1.0:
                raise TorchImportError(f"{what}: binary alpha {alpha} (only 1.0 is reproduced)")
            return self.ref(accum, what + " other"), dict(binary="sum", accum_scale=1.0, accum_zero_point=0)
        if attr != "sum":
            raise TorchImportError(f"{what}: binary post-op {attr!r} is not reproduced (only 'sum', and 'add' "
                                   "for linear)")
        if alpha is not None and float(alpha) != 1.0:
            raise TorchImportError(f"{what}: binary alpha {alpha} (only 1.0 is reproduced)")
        order = {m: i for i, m in enumerate(self.gm.graph.nodes)}
        if any(order[u] > order[self.current] for u in accum.users if u is not self.current):
            # torch writes the result into the accumulator (``Tensor(a!) qaccum``): a later reader would see it
            raise TorchImportError(f"{what}: the sum operand {accum.name} is read after the op overwrites it")
        dt = str(self.values[accum.name].dtype)
        if dt not in ("torch.uint8", "torch.float32"):
            raise TorchImportError(f"{what}: sum operand dtype {dt} (uint8 or float32 only)")
        if dt == "torch.float32" and (float(accum_scale) != 1.0 or int(accum_zp) != 0):
            raise TorchImportError(f"{what}: a float32 sum operand takes scale 1.0 / zero point 0")
        return self.ref(accum, what + " accum"), dict(binary="sum", accum_scale=float(accum_scale),
                                                      accum_zero_point=int(accum_zp))

    def conv(self, n):
        a = list(n.args)
        what = f"{n.target} (node {n.name})"
        binary = str(n.target).split(".")[-1] in ("binary", "binary_tensor")
        x, sx, zx = self._x(what, *a[:3])
        p = self._weights(what, a[3], a[4], a[5], a[7] if binary else a[6], linear=False)
        if binary:
            accum, bin_cfg = self._binary(what, a[6], a[15], a[16], a[17], a[18])
            stride, padding, dilation, groups, out_scale, out_zp, out_dtype = a[8:15]
            unary, scalars = a[19], a[20]
        else:
            accum, bin_cfg = None, None
            stride, padding, dilation, groups, out_scale, out_zp, out_dtype, unary, scalars = a[7:16]
        post = self._post(what, out_scale, out_zp, out_dtype, "uint8", unary, scalars, bin_cfg)
        geometry = ConvGeometry(tuple(int(s) for s in stride), tuple((int(q), int(q)) for q in padding),
                                tuple(int(d) for d in dilation), int(groups))
        args = [x] if accum is None else [x, accum]
        self.emit(n, "onednn_conv", args, dict(engine=self.engine, post=post, geometry=geometry, x_scale=sx,
                                               x_zero_point=zx), params=p)

    def linear(self, n):
        a = list(n.args)
        what = f"{n.target} (node {n.name})"
        binary = str(n.target).split(".")[-1] in ("binary", "binary_tensor")
        x, sx, zx = self._x(what, *a[:3])
        p = self._weights(what, a[3], a[4], a[5], a[7] if binary else a[6], linear=True)
        accum, bin_cfg = None, None
        if binary:
            out_scale, out_zp, out_dtype = a[8:11]
            if a[6] is not None and a[13] != "none":
                accum, bin_cfg = self._binary(what, a[6], a[11], a[12], a[13], a[14], linear=True)
            unary, scalars = a[15], a[16]
        else:
            out_scale, out_zp, out_dtype, unary, scalars = a[7:12]
        post = self._post(what, out_scale, out_zp, out_dtype, "uint8", unary, scalars, bin_cfg)
        args = [x] if accum is None else [x, accum]
        self.emit(n, "onednn_linear", args, dict(engine=self.engine, post=post, x_scale=sx, x_zero_point=zx),
                  params=p)

    def aten(self, n):
        torch = self.torch
        t = n.target
        aten = torch.ops.aten
        what = f"{t} (node {n.name})"
        a = list(n.args)
        x = self.ref(a[0], what) if not isinstance(a[0], (list, tuple)) else None
        if t in (aten.max_pool2d_with_indices.default, aten.max_pool2d.default):
            k = tuple(a[1])
            stride = tuple(a[2]) if len(a) > 2 and a[2] else k
            pad = tuple(a[3]) if len(a) > 3 else (0,) * len(k)
            dil = tuple(a[4]) if len(a) > 4 else (1,) * len(k)
            ceil = bool(a[5]) if len(a) > 5 else False
            pad = pad * len(k) if len(pad) == 1 else pad
            stride = stride * len(k) if len(stride) == 1 else stride
            dil = dil * len(k) if len(dil) == 1 else dil
            out = self.exact_max_pool(n, x, k, stride, pad, dil, ceil)
            return out
        if t in (aten.relu.default, aten.relu_.default):
            return self.exact(n, "relu", [x])
        if t in (aten.hardtanh.default, aten.hardtanh_.default):
            lo = a[1] if len(a) > 1 else n.kwargs.get("min_val", -1.0)
            hi = a[2] if len(a) > 2 else n.kwargs.get("max_val", 1.0)
            return self.exact(n, "hardtanh", [x], min_val=float(lo), max_val=float(hi))
        if t in (aten.clamp.default, aten.clamp_.default):
            # torch.export writes clamp(x, min=0) as clamp.default(x, 0.0): a missing bound is no bound
            lo = a[1] if len(a) > 1 else n.kwargs.get("min")
            hi = a[2] if len(a) > 2 else n.kwargs.get("max")
            return self.exact(n, "hardtanh", [x], min_val=-math.inf if lo is None else float(lo),
                              max_val=math.inf if hi is None else float(hi))
        if t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
                 aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default):
            return self.exact(n, "reshape", [x], shape=tuple(self.values[n.name].shape))
        if t in (aten.clone.default, aten.contiguous.default, aten.dropout.default, aten.alias.default,
                 aten._to_copy.default):
            if t == aten._to_copy.default and self.values[n.name].dtype != self.values[a[0].name].dtype:
                raise TorchImportError(f"{what}: a dtype conversion is not supported")
            return self.exact(n, "identity", [x])
        if t in (aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default,
                 aten.hardsigmoid_.default):
            self._float_only(what, a[:1])
            return self.exact(n, "hardswish" if "hardswish" in str(t) else "hardsigmoid", [x])
        if t in (aten.mul.Tensor, aten.add.Tensor):
            self._float_only(what, a[:2])
            if t == aten.add.Tensor and float(n.kwargs.get("alpha", 1)) != 1.0:
                raise TorchImportError(f"{what}: add with alpha {n.kwargs['alpha']} is not supported")
            return self.exact(n, "mul" if t == aten.mul.Tensor else "add", [x, self.ref(a[1], what)])
        if t in (aten.transpose.int, aten.permute.default):
            nd = self.values[a[0].name].dim()
            if t == aten.transpose.int:
                dims = list(range(nd))
                i, j = int(a[1]) % nd, int(a[2]) % nd
                dims[i], dims[j] = dims[j], dims[i]
            else:
                dims = [int(d) % nd for d in a[1]]
            return self.exact(n, "permute", [x], dims=tuple(dims))
        if t in (aten.split.Tensor, aten.split_with_sizes.default):
            parts = self.values[n.name]
            dim = int(a[2]) if len(a) > 2 else int(n.kwargs.get("dim", 0))
            dim %= self.values[a[0].name].dim()
            return self.exact(n, "split", [x], sizes=tuple(int(v.shape[dim]) for v in parts), dim=dim)
        if t == aten.mean.dim:
            return self.mean(n, what, x, a)
        if t == aten.cat.default:
            xs = [self.ref(v, what) for v in a[0]]
            dim = int(a[1]) if len(a) > 1 else 0
            return self.exact(n, "cat", xs, dim=dim % self.values[n.name].dim())
        raise TorchImportError(f"{what}: qjax does not reproduce this op of the lowered graph exactly")

    def _float_only(self, what, args):
        torch = self.torch
        for v in args:
            if not isinstance(v, torch.fx.Node) or self.values[v.name].dtype != torch.float32:
                raise TorchImportError(f"{what}: only float32 tensor operands are reproduced")

    def mean(self, n, what, x, a):
        torch = self.torch
        v = self.values[a[0].name]
        dims = sorted(int(d) % max(v.dim(), 1) for d in a[1]) if len(a) > 1 and a[1] is not None else None
        keepdim = bool(a[2]) if len(a) > 2 else bool(n.kwargs.get("keepdim", False))
        if (v.dtype != torch.float32 or v.dim() != 4 or dims != [2, 3] or n.kwargs.get("dtype") is not None
                or not v.is_contiguous(memory_format=torch.channels_last)):
            raise TorchImportError(f"{what}: only the float32 mean over (H, W) of a channels-last 4-d tensor is "
                                   f"reproduced (torch's cascade-sum order), got {str(v.dtype)} {tuple(v.shape)} "
                                   f"over {a[1] if len(a) > 1 else None}")
        self.emit(n, "float_mean", [x], dict(keepdim=keepdim, threads=self.threads))

    def exact_max_pool(self, n, x, k, stride, pad, dil, ceil):
        self.exact(n, "max_pool", [x], kernel=tuple(int(v) for v in k), stride=tuple(int(v) for v in stride),
                   padding=tuple(int(v) for v in pad), dilation=tuple(int(v) for v in dil), ceil_mode=ceil)
        self.pool_nodes = getattr(self, "pool_nodes", set()) | {n.name}

    def getitem(self, n):
        src, idx = n.args
        if src.name in getattr(self, "pool_nodes", set()):
            if idx != 0:
                raise TorchImportError(f"max pooling indices (node {n.name}) are not supported")
            self.exact(n, "identity", [Ref(src.name)])
            return
        self.exact(n, "getitem", [Ref(src.name)], index=int(idx))

    def run(self):
        torch = self.torch
        q_ops = {"quantized_decomposed.quantize_per_tensor.default", "quantized_decomposed.quantize_per_tensor.tensor",
                 "quantized_decomposed.quantize_per_tensor.tensor2"}
        dq_ops = {"quantized_decomposed.dequantize_per_tensor.default",
                  "quantized_decomposed.dequantize_per_tensor.tensor",
                  "quantized_decomposed.dequantize_per_tensor.tensor2"}
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                self.inputs.append(n.name)
            elif n.op == "get_attr":
                self.consts[n.name] = self.attr(n.target)
            elif n.op == "output":
                output = n.args[0]
            elif n.op == "call_function":
                self.current = n
                name = str(n.target)
                if name in q_ops:
                    self.q(n)
                elif name in dq_ops:
                    self.dq(n)
                elif name.startswith("onednn.qconv"):
                    self.conv(n)
                elif name.startswith("onednn.qlinear"):
                    self.linear(n)
                elif n.target is operator.getitem:
                    self.getitem(n)
                elif isinstance(n.target, torch._ops.OpOverload) and name.startswith("aten."):
                    self.aten(n)
                else:
                    raise TorchImportError(f"{name} (node {n.name}) is not an op of torchao's x86 lowering that "
                                           "qjax reproduces")
            else:
                raise TorchImportError(f"graph node {n.name} ({n.op}) is not supported in a lowered pt2e graph")

        def out_spec(o):
            if isinstance(o, (tuple, list)):
                return tuple(out_spec(v) for v in o)
            if isinstance(o, torch.fx.Node):
                return Ref(o.name)
            raise TorchImportError(f"graph output {o!r} is not a tensor")

        spec = out_spec(output)
        if isinstance(spec, tuple) and len(spec) == 1:
            spec = spec[0]
        return QModel(self.inputs, self.nodes, spec, self.params,
                      meta={"source": "torchao lower_pt2e_quantized_to_x86", "arithmetic": "inductor",
                            "engine": self.engine.name})


def import_lowered(gm, example_inputs, **settings) -> QModel:
    """A :class:`~qjax.QModel` computing what ``gm`` — torchao's ``lower_pt2e_quantized_to_x86`` output —
    computes, to the bit.

    ``example_inputs``: a tuple of float32 tensors ``gm`` accepts (used to read the dtypes and shapes of
    its intermediate tensors).  Settings: ``engine`` (default :class:`~qjax.engines.Inductor`; an engine
    with ``pointwise_conv`` / ``pointwise_linear``), ``threads`` (torch's intra-op thread count, default
    ``torch.get_num_threads()``: a float mean's summation order depends on it; the oneDNN kernels' does
    not).  The QModel takes the same float32 inputs (as jax arrays) and returns float32
    outputs (or the integers of a quantized output) in torch's logical order.
    """
    engine = settings.pop("engine", None) or Inductor()
    threads = settings.pop("threads", None) or _torch().get_num_threads()
    if settings:
        raise TypeError(f"import_lowered: unknown settings {sorted(settings)} (it takes engine, threads)")
    if not hasattr(engine, "pointwise_conv"):
        raise ValueError(f"engine {getattr(engine, 'name', engine)!r}: the inductor arithmetic needs an engine "
                         "with pointwise_conv / pointwise_linear (qjax.engines.Inductor)")
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    return _Lowering(gm, tuple(example_inputs), engine, int(threads)).run()
