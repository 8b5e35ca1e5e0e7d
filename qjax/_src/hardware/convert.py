"""Derive a model's integer-only parameters for a hardware spec, and run it under that spec.

:func:`convert` takes an imported :class:`~qjax.QModel` (torch's float scales, float bias)
and an example input (to read each layer's input scale and zero point), and returns a new
``QModel`` whose conv, linear, quantized add and input-quantize nodes are integer-only:

* weights: the model's int8 weights and zero points, unchanged;
* bias: ``bq = round(b / (sx * sw))`` (float64, offline, ``spec.bias_rounding``), int32;
* multiplier: ``M = sx * sw / sy`` (float64 of the float32 scales) as ``(m0, shift)``;
* add: TFLite's three multipliers (see :func:`qjax.engines.hardware.add_integer`).

Nodes of other kinds (pooling, concatenation, activations, ...) keep the arithmetic they
were imported with; :func:`layer_table` lists which nodes are integer-only.  The result
is a pytree like any ``QModel`` (jit, vmap, ``capture``), and :func:`layer_params` gives
the derived numbers for export.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..engines.hardware import add_integer, conv_integer, get_spec, linear_integer, quantize_input
from ..graph import Node, QModel, node_args, register_op, thaw
from ..ops import conv_geometry
from ..qarray import QArray
from ..requant.derive import derive_add, derive_layer

__all__ = ["convert", "layer_params", "layer_table", "with_key", "HARDWARE_OPS"]

HARDWARE_OPS = ("hw_quantize", "hw_conv", "hw_linear", "hw_add")


# -- offline derivation (the rules: qjax.requant.derive) ---------------------------------------------------

def _layer_rng(key, index):
    if key is None:
        return None
    data = np.asarray(jax.random.key_data(jax.random.fold_in(key, index))).ravel()
    return np.random.default_rng([int(v) for v in data])


def _derive_weighted(name, p, xq: QArray, spec, rng):
    w = p["weight"]
    out_ch = w.shape[0]
    bq, m0, shift, lost = derive_layer(xq.scale, w.scale, p["scale"], p.get("bias"), out_ch, spec, name, rng)
    new = dict(weight=w, scale=p["scale"], zero_point=p["zero_point"], m0=jnp.asarray(m0), shift=jnp.asarray(shift),
               bias_q=None if bq is None else jnp.asarray(bq))
    return new, dict(lost_shift_bits=lost)


def _derive_add(name, p, a: QArray, b: QArray, spec):
    derived, lost = derive_add(a.scale, b.scale, p["scale"], spec, name)
    new = dict(scale=p["scale"], zero_point=p["zero_point"], **{k: jnp.asarray(v) for k, v in derived.items()})
    return new, dict(lost_shift_bits=lost)


# -- runtime ops --------------------------------------------------------------------------------------

def _key(p):
    return None if p is None else p.get("key")


@register_op("hw_quantize")
def _rt_hw_quantize(cfg, p, x):
    return quantize_input(x, p, spec=cfg["spec"], key=_key(p))


@register_op("hw_conv")
def _rt_hw_conv(cfg, p, x):
    geom = conv_geometry(len(cfg["stride"]), cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    return conv_integer(x, p, spec=cfg["spec"], geometry=geom, relu=cfg["relu"], key=_key(p))


@register_op("hw_linear")
def _rt_hw_linear(cfg, p, x):
    return linear_integer(x, p, spec=cfg["spec"], relu=cfg["relu"], key=_key(p))


@register_op("hw_add")
def _rt_hw_add(cfg, p, a, b):
    return add_integer(a, b, p, spec=cfg["spec"], relu=cfg["relu"], key=_key(p))


# -- conversion ---------------------------------------------------------------------------------------

def _spec_for(node: Node, spec, layers):
    if layers is None:
        return spec
    if callable(layers):
        s = layers(node)
    elif node.name in layers:
        s = layers[node.name]
    else:
        return spec
    return None if s is None else get_spec(s)


def _convertible(node: Node, args) -> bool:
    if node.op in ("conv", "linear"):
        return isinstance(args[0], QArray) and args[0].dtype.name == "quint8"
    if node.op == "binary":
        return (node.config()["kind"] == "add" and all(isinstance(a, QArray) and a.dtype.name == "quint8"
                                                       and a.axis is None for a in args))
    if node.op == "quantize":
        return node.config()["dtype"].name == "quint8"
    return False


def convert(model: QModel, example_input, spec="gemmlowp", *,
            layers: Mapping[str, object] | Callable[[Node], object] | None = None, key=None) -> QModel:
    """``model`` with integer-only arithmetic under ``spec`` (see the module docstring).

    Args:
      model: an imported model (:func:`qjax.from_torch`).
      example_input: one input batch; each layer's input scale and zero point are read from it
        (they are static in a converted torch model, so any input gives the same).
      spec: a :class:`HardwareSpec` or preset name for every convertible node.
      layers: per-node choice overriding ``spec``: ``{node name: spec or None}`` or a function of
        the :class:`~qjax.graph.Node`; ``None`` keeps that node's imported (fbgemm) arithmetic.
      key: PRNG key for stochastic rounding (bias rounding offline; stored per node for the
        run-time roundings — replace it with :func:`with_key`).

    Raises:
      QuantizationError: a multiplier beyond the spec's shift range or a bias beyond int32.
    """
    spec = get_spec(spec)
    _, env = model.capture(example_input)
    env = dict(env, **dict(zip(model.inputs, (example_input,))))

    nodes, params, infos = [], dict(model.params), {}
    for index, node in enumerate(model.nodes):
        s = _spec_for(node, spec, layers)
        args = node_args(node, env)
        if s is None or not _convertible(node, args):
            nodes.append(node)
            continue
        p = model.params.get(node.name)
        rng = _layer_rng(key, index) if s.bias_rounding == "stochastic" else None
        cfg = dict(node.static)
        if node.op == "quantize":
            new, info, op = dict(scale=p["scale"], zero_point=p["zero_point"]), {}, "hw_quantize"
            static = (("spec", s),)
        elif node.op == "binary":
            new, info = _derive_add(node.name, p, args[0], args[1], s)
            op, static = "hw_add", (("spec", s), ("relu", cfg["relu"]))
        else:
            new, info = _derive_weighted(node.name, p, args[0], s, rng)
            op = "hw_" + node.op
            keep = ("stride", "padding", "dilation", "groups", "relu") if node.op == "conv" else ("relu",)
            static = (("spec", s),) + tuple((k, cfg[k]) for k in keep)
        stochastic = "stochastic" in (s.requant_rounding, s.quantize_rounding if op == "hw_quantize" else "")
        if stochastic:
            if key is None:
                raise ValueError(f"spec {s.name!r} rounds stochastically at run time: pass convert(..., key=...)")
            new["key"] = jax.random.fold_in(key, index)
        params[node.name] = new
        infos[node.name] = dict(info, op=node.op, spec=s.name)
        nodes.append(dataclasses.replace(node, op=op, static=static))
    meta = dict(model.info, hardware=spec.name, hardware_layers=_freeze_infos(infos))
    return QModel(model.inputs, nodes, thaw(model.output), params, meta)


def _freeze_infos(infos):
    # meta must be hashable (it is pytree aux data): keep only small static facts
    return tuple((k, (v["op"], v["spec"], v.get("lost_shift_bits", 0))) for k, v in infos.items())


def with_key(model: QModel, key) -> QModel:
    """The model with fresh per-node keys for its stochastic roundings (``fold_in(key, i)``)."""
    params = dict(model.params)
    for i, node in enumerate(model.nodes):  # the node's index, as convert(..., key=) derives it
        p = params.get(node.name)
        if isinstance(p, dict) and "key" in p:
            params[node.name] = dict(p, key=jax.random.fold_in(key, i))
    return model.with_params(params)


def layer_params(model: QModel) -> dict[str, dict]:
    """The integer-only parameters of every hardware node as numpy arrays (for export)."""
    out = {}
    for node in model.nodes:
        if node.op not in HARDWARE_OPS:
            continue
        p = model.params[node.name]
        d = {}
        for k, v in p.items():
            if v is None or k == "key":
                continue
            if isinstance(v, QArray):
                d[k] = np.asarray(v.values)
                d[k + "_zero_point"] = np.asarray(v.zero_point)
                d[k + "_scale"] = np.asarray(v.scale)
            else:
                d[k] = np.asarray(v)
        out[node.name] = d
    return out


def layer_table(model: QModel) -> list[tuple[str, str, str]]:
    """``(node, op, arithmetic)`` for every node: the hardware spec name or ``"imported"``."""
    specs = {k: v[1] for k, v in dict(model.info).get("hardware_layers", ())}
    return [(n.name, n.op, specs.get(n.name, "imported")) for n in model.nodes]
