"""Imported torch models into :mod:`qjax.nn` modules, for QAT: torch → qjax → QAT → torch / hardware.

:func:`from_qmodel` turns a chain-shaped :class:`~qjax.QModel` (``qjax.from_torch`` of a torch model
quantize → conv / linear (+ReLU) → flatten → … → dequantize) into a :class:`qjax.nn.Sequential` in
``integer`` mode that computes the same integers: float weights are the dequantized int8 weights
(they re-quantize to the same integers), scales and zero points are copied, and the dense layer
after a flatten gets its columns permuted from torch's NCHW order to the Flax model's NHWC order.
:func:`hardware_params` gives the integer-only parameters of every layer for a hardware spec.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from flax import nnx

from ..engines import host_engine
from ..graph import QModel
from ..qarray import QArray
from ..quantize import dequantize
from .modules import DeQuantStub, Flatten, QConv, QDense, QuantStub, Sequential

__all__ = ["from_qmodel", "hardware_params"]


def _weights(node, p):
    w: QArray = p["weight"]
    if w.axis is None:
        raise ValueError(f"node {node.name} ({node.source}): per-tensor weights are not supported by qjax.nn "
                         "(its layers quantize weights per channel, as torch's default fbgemm/x86 qconfig does)")
    return w


def from_qmodel(qm: QModel, example_input, engine=None) -> Sequential:
    """A :class:`Sequential` (integer mode, channels-last input) equivalent to the chain-shaped ``qm``."""
    engine = engine or host_engine(dict(qm.info).get("engine", "fbgemm"))
    _, env = qm.capture(example_input)
    layers, rngs, flat_from = [], nnx.Rngs(0), None
    for node in qm.nodes:
        cfg, p = node.config(), qm.params.get(node.name)
        if node.op == "quantize":
            m = QuantStub(mode="integer")
            m.scale.set_value(jnp.float32(p["scale"]))
            m.zero_point.set_value(jnp.float32(p["zero_point"]))
        elif node.op == "conv":
            if any(d != 1 for d in cfg["dilation"]):
                raise ValueError(f"node {node.name} ({node.source}): dilated convolutions are not supported by QConv")
            w = _weights(node, p)
            o, cg, *k = w.shape
            m = QConv(cg * cfg["groups"], o, tuple(k), strides=cfg["stride"], padding=cfg["padding"],
                      groups=cfg["groups"], relu=cfg["relu"], use_bias=p.get("bias") is not None, engine=engine,
                      mode="integer", rngs=rngs)
            nd = len(k)
            m.kernel.set_value(jnp.transpose(dequantize(w), tuple(range(2, 2 + nd)) + (1, 0)))
            _copy_qparams(m, w, p)
        elif node.op == "linear":
            w = _weights(node, p)
            kernel = np.asarray(dequantize(w)).T  # (in, out)
            if flat_from is not None:  # torch flattened (C, *S); the Flax model flattens (*S, C)
                c, sp = flat_from[0], flat_from[1:]
                idx = np.arange(kernel.shape[0]).reshape((c,) + sp)
                kernel = kernel[np.moveaxis(idx, 0, -1).reshape(-1)]
                flat_from = None
            m = QDense(kernel.shape[0], kernel.shape[1], relu=cfg["relu"], use_bias=p.get("bias") is not None,
                       engine=engine, mode="integer", rngs=rngs)
            m.kernel.set_value(jnp.asarray(kernel))
            _copy_qparams(m, w, p)
        elif node.op == "shape" and cfg.get("kind") == "flatten" and cfg.get("start", 1) == 1:
            shape = np.shape(env[node.args[0].name].values)
            flat_from = tuple(shape[1:]) if len(shape) > 2 else None
            m = Flatten(mode="integer")
        elif node.op == "unary" and cfg.get("kind") == "identity":
            continue
        elif node.op == "dequantize":
            m = DeQuantStub(mode="integer")
        else:
            raise ValueError(f"node {node.name} ({node.op}, {node.source}) has no qjax.nn equivalent; from_qmodel "
                             "takes chain-shaped models of quantize / conv / linear / flatten / dequantize")
        layers.append(m)
    return Sequential(*layers, mode="integer")


def _copy_qparams(m, w: QArray, p):
    m.w_scale.set_value(jnp.asarray(w.scale, jnp.float32))
    m.w_zero_point.set_value(jnp.asarray(w.zero_point, jnp.float32))
    m.scale.set_value(jnp.float32(p["scale"]))
    m.zero_point.set_value(jnp.float32(p["zero_point"]))
    if p.get("bias") is not None:
        m.bias.set_value(jnp.asarray(p["bias"], jnp.float32))


def hardware_params(model: Sequential, spec) -> list[dict]:
    """Per conv/dense layer: int8 weights, zero points, int32 bias, ``m0``/``shift`` under ``spec`` (numpy)."""
    from ..hardware import derive_layer, get_spec

    spec = get_spec(spec)
    out, x_scale = [], None
    for i, layer in enumerate(model.layers):
        if isinstance(layer, QuantStub):
            x_scale = layer._s()
        elif isinstance(layer, (QConv, QDense)):
            if x_scale is None:
                raise ValueError(f"layer {i}: no QuantStub before it, so its input scale is unknown")
            wq = layer.quantized_weight()
            bias = layer._bias()
            bq, m0, shift, lost = derive_layer(x_scale, wq.scale, layer._s(), bias, wq.shape[-1], spec, f"layer {i}")
            out.append(dict(layer=i, kind=type(layer).__name__, weight=np.asarray(wq.values),
                            weight_zero_point=np.asarray(wq.zero_point), bias_q=bq, m0=m0, shift=shift,
                            output_scale=float(layer._s()), output_zero_point=int(layer._zp()),
                            lost_shift_bits=lost))
            x_scale = layer._s()
    return out
