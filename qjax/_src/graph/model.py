"""The QModel graph: nodes, references, the op registry and the runner.

A :class:`QModel` is a pytree: its ``params`` (weights as :class:`~qjax.QArray`, biases,
scales and zero points — everything a user may inspect, change or train) are leaves;
the graph (op names, wiring, static configuration) is static metadata.  So

    model(x)                      # jitted forward
    jax.jit(lambda m, x: m(x))    # the model as an argument
    jax.vmap(model)(xs)           # batched
    model.apply(params, x)        # pure function of new parameters

all work.  :meth:`QModel.apply` with ``capture=True`` also returns every node's value
(the integers, for layer-by-layer verification).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from ..buffers import own_buffer
from ..checks import QuantizationError, is_concrete
from ..qarray import QArray

__all__ = ["Ref", "Node", "QModel", "register_op", "OPS", "Static", "GraphError", "substitute", "freeze", "thaw",
           "refs", "node_args"]

#: op name -> ``fn(static config dict, params or None, *args)``; importers and :mod:`qjax.hardware`
#: emit nodes naming these, :meth:`QModel.apply` calls them
OPS: dict[str, Callable] = {}
#: op name -> ``check(static, params) -> str | None``: a host-side check of a node's *concrete* params, run by
#: :meth:`QModel.__call__` / :meth:`QModel.capture` before they jit (inside jit the params are tracers).  A LiteRT
#: node computes with the quantization parameters fixed in its static configuration (LiteRT derives its
#: multipliers at Prepare); its check says when the params' qparams were changed without re-binding the model.
PARAM_CHECKS: dict[str, Callable] = {}


class GraphError(QuantizationError):
    """A QModel node cannot compute its op exactly (e.g. a float op qjax does not reproduce)."""


def register_op(name: str):
    """Register a runtime op ``fn(static, params, *args)`` under ``name``."""

    def deco(fn):
        OPS[name] = fn
        return fn

    return deco


def register_param_check(name: str, check: Callable) -> None:
    """Register ``check(static, params)`` (a message, or None when the params are fine) for op ``name``."""
    PARAM_CHECKS[name] = check


def _check_params(model) -> None:
    """Raise :class:`GraphError` when a registered check rejects a node's concrete params (traced ones are skipped)."""
    for node in model.nodes:
        check = PARAM_CHECKS.get(node.op)
        p = model.params.get(node.name)
        if check is None or p is None or not all(is_concrete(v) for v in jax.tree_util.tree_leaves(p)):
            continue
        problem = check(node.config(), p)
        if problem:
            raise GraphError(problem)


@dataclasses.dataclass(frozen=True)
class Ref:
    """A reference to another node's output (or to an input, by its placeholder name)."""

    name: str


class Static:
    """A hashable wrapper for static numpy data in a node's configuration."""

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        arr = np.asarray(value)
        self._key = (arr.dtype.str, arr.shape, arr.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, Static) and self._key == other._key

    def __repr__(self):
        return f"Static(shape={np.shape(self.value)})"


@dataclasses.dataclass(frozen=True)
class Node:
    """One op: ``op`` from :data:`OPS`, its ``args`` (Refs and constants, nested tuples
    allowed), static configuration ``static`` (a tuple of (key, value) pairs) and a
    human-readable ``source`` (the torch module or function it came from)."""

    name: str
    op: str
    args: tuple
    static: tuple = ()
    source: str = ""

    def config(self) -> dict:
        return dict(self.static)


def substitute(spec, env):
    """``spec`` (a node's thawed args or a model's output) with every :class:`Ref` replaced by ``env[ref.name]``."""
    if isinstance(spec, Ref):
        return env[spec.name]
    if isinstance(spec, tuple):
        return tuple(substitute(s, env) for s in spec)
    if isinstance(spec, list):
        return [substitute(s, env) for s in spec]
    if isinstance(spec, dict):
        return {k: substitute(v, env) for k, v in spec.items()}
    return spec


def freeze(spec):
    """Lists as tagged tuples, so that a node's args are hashable (pytree aux data); :func:`thaw` undoes it."""
    if isinstance(spec, list):
        return ("__list__",) + tuple(freeze(s) for s in spec)
    if isinstance(spec, tuple):
        return tuple(freeze(s) for s in spec)
    return spec


def thaw(spec):
    """The inverse of :func:`freeze`."""
    if isinstance(spec, tuple):
        if spec and spec[0] == "__list__":
            return [thaw(s) for s in spec[1:]]
        return tuple(thaw(s) for s in spec)
    return spec


def refs(spec, out=None) -> set:
    """The names every :class:`Ref` in ``spec`` points to, added to ``out`` (a set, returned)."""
    out = set() if out is None else out
    if isinstance(spec, Ref):
        out.add(spec.name)
    elif isinstance(spec, (tuple, list)):
        for s in spec:
            refs(s, out)
    elif isinstance(spec, dict):
        for s in spec.values():
            refs(s, out)
    return out


def node_args(node, env):
    """``node``'s arguments with the values of ``env`` (node name / input name -> value)."""
    return substitute(thaw(node.args), env)


def _materialize(value):
    """A node's integer result as its own buffer (:func:`qjax.buffers.own_buffer`); the values are unchanged.

    Without it XLA's CPU fusion pulls a node's elementwise arithmetic into its consumer's
    loops: a ResNet-style model took 25 ms where its nodes jitted one by one took 10 ms.
    """
    if not isinstance(value, QArray):
        return value
    v = own_buffer(value.values, value.scale)
    return value.with_values(v)


def _live(nodes, output):
    """Drop nodes the output does not depend on (e.g. TorchScript's shape-check arithmetic)."""
    needed = refs(output)
    keep = []
    for n in reversed(nodes):
        if n.name in needed:
            keep.append(n)
            refs(n.args, needed)
    return tuple(reversed(keep))


@jax.tree_util.register_pytree_node_class
class QModel:
    """An imported quantized model (see the module docstring)."""

    def __init__(self, inputs, nodes, output, params, meta=None):
        self.inputs = tuple(inputs)
        self.output = freeze(output)
        self.nodes = _live(tuple(nodes), self.output)
        live = {n.name for n in self.nodes}
        self.params = {k: v for k, v in dict(params).items() if k in live}
        self.meta = tuple(sorted((meta or {}).items()))

    # pytree -----------------------------------------------------------------------------
    def tree_flatten(self):
        keys = tuple(sorted(self.params))
        return tuple(self.params[k] for k in keys), (self.inputs, self.nodes, self.output, keys, self.meta)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.inputs, obj.nodes, obj.output, keys, obj.meta = aux
        obj.params = dict(zip(keys, children))
        return obj

    def with_params(self, params) -> "QModel":
        """The same graph with ``params`` (same keys as ``self.params``)."""
        if set(params) != set(self.params):
            raise KeyError(f"params must have the keys {sorted(self.params)}, got {sorted(params)}")
        obj = object.__new__(QModel)
        obj.inputs, obj.nodes, obj.output, obj.meta = self.inputs, self.nodes, self.output, self.meta
        obj.params = dict(params)
        return obj

    # running ----------------------------------------------------------------------------
    def apply(self, params, *inputs, capture=False):
        """Run the graph with ``params`` (same structure as ``self.params``) on ``inputs``.

        ``capture``: ``True`` returns ``(output, {node: value})`` for every node; a tuple of
        node names captures just those.
        """
        if len(inputs) != len(self.inputs):
            raise TypeError(f"the model takes {len(self.inputs)} input(s) {self.inputs}, got {len(inputs)}")
        env: dict[str, Any] = dict(zip(self.inputs, inputs))
        for node in self.nodes:
            fn = OPS[node.op]
            env[node.name] = _materialize(fn(node.config(), params.get(node.name), *node_args(node, env)))
        out = substitute(thaw(self.output), env)
        if capture is True:
            return out, {n.name: env[n.name] for n in self.nodes}
        if capture:
            return out, {name: env[name] for name in capture}
        return out

    def __call__(self, *inputs):
        _check_params(self)
        return _jitted_apply(self, *inputs)

    def capture(self, *inputs, names=None):
        """``(output, {node name: value})`` — every intermediate (or just ``names``), jitted."""
        _check_params(self)
        return _jitted_capture(self, *inputs, names=tuple(names) if names is not None else True)

    @property
    def info(self) -> dict:
        return dict(self.meta)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes: {[n.name for n in self.nodes]}")

    def summary(self) -> str:
        lines = [f"QModel({', '.join(self.inputs)}) with {len(self.nodes)} nodes:"]
        for n in self.nodes:
            lines.append(f"  {n.name:30s} {n.op:18s} {n.source}")
        return "\n".join(lines)

    def __repr__(self):
        return f"QModel(inputs={self.inputs}, nodes={len(self.nodes)}, params={len(self.params)})"


@jax.jit
def _jitted_apply(model, *inputs):
    return model.apply(model.params, *inputs)


@functools.partial(jax.jit, static_argnames=("names",))
def _jitted_capture(model, *inputs, names=True):
    return model.apply(model.params, *inputs, capture=names)
