"""Linen equivalents of :mod:`qjax.nn`'s modules (through ``flax.nnx.bridge.to_linen``).

Each factory returns a Linen module wrapping the NNX module; the mode is a constructor argument,
and the state lives in Linen collections: ``params`` (weights), ``QParam`` (scales, zero points —
trainable in QAT) and ``ObserverState`` (observer ranges).  The lifecycle:

    model = lambda mode: MyLinenNet(mode=mode)          # builds its layers with qjax.nn.linen.QConv(..., mode=mode)
    v = model("float").init(key, x)
    _, upd = model("calibrate").apply(v, x, mutable=["ObserverState"]);  v = {**v, **upd}
    _, upd = model("load").apply(v, x, mutable=["QParam"]);              v = {**v, **upd}   # qparams from observers
    y = model("qat").apply(v, x)                        # differentiable w.r.t. v["params"] and v["QParam"]
    y = model("integer").apply(v, x)                    # the integer path, bit-identical to the QAT forward
    qnn.to_torch(qnn.linen.load_into(nnx_sequential_with_the_same_layers, v))   # export (chains)
"""

from __future__ import annotations

from flax.nnx import bridge

from . import elementwise, modules

__all__ = ["QuantStub", "DeQuantStub", "QConv", "QDense", "Flatten", "MaxPool", "QAdd", "QMul", "QCat", "Hardswish",
           "ReLU", "ReLU6", "AvgPool", "GlobalAvgPool", "load_into"]


def QuantStub(**kwargs):
    return bridge.to_linen(modules.QuantStub, skip_rng=True, **kwargs)


def DeQuantStub(**kwargs):
    return bridge.to_linen(modules.DeQuantStub, skip_rng=True, **kwargs)


def Flatten(**kwargs):
    return bridge.to_linen(modules.Flatten, skip_rng=True, **kwargs)


def QConv(in_features, out_features, kernel_size, **kwargs):
    return bridge.to_linen(modules.QConv, in_features, out_features, kernel_size, **kwargs)


def QDense(in_features, out_features, **kwargs):
    return bridge.to_linen(modules.QDense, in_features, out_features, **kwargs)


def MaxPool(window, **kwargs):
    return bridge.to_linen(modules.MaxPool, window, skip_rng=True, **kwargs)


def QAdd(**kwargs):
    return bridge.to_linen(elementwise.QAdd, skip_rng=True, **kwargs)


def QMul(**kwargs):
    return bridge.to_linen(elementwise.QMul, skip_rng=True, **kwargs)


def QCat(**kwargs):
    return bridge.to_linen(elementwise.QCat, skip_rng=True, **kwargs)


def Hardswish(**kwargs):
    return bridge.to_linen(elementwise.Hardswish, skip_rng=True, **kwargs)


def ReLU(**kwargs):
    return bridge.to_linen(elementwise.ReLU, skip_rng=True, **kwargs)


def ReLU6(**kwargs):
    return bridge.to_linen(elementwise.ReLU6, skip_rng=True, **kwargs)


def AvgPool(window, **kwargs):
    return bridge.to_linen(elementwise.AvgPool, window, skip_rng=True, **kwargs)


def GlobalAvgPool(**kwargs):
    return bridge.to_linen(elementwise.GlobalAvgPool, skip_rng=True, **kwargs)


def load_into(sequential, variables):
    """Copy a chain-shaped Linen model's variables into an NNX :class:`~qjax.nn.Sequential` with the same layers.

    The Linen wrappers of a ``@compact`` chain are named ``ToLinen_<i>`` in call order; layer ``i`` of
    ``sequential`` receives every collection's ``ToLinen_<i>`` entries (weights, qparams, observer state).
    Use it to export a Linen model with :func:`qjax.nn.to_torch` or to checkpoint it with
    :func:`qjax.nn.save`.  Raises if a variable has no matching attribute or shape.
    """
    layers = list(sequential.layers)
    for coll, tree in variables.items():
        for name, entries in tree.items():
            if not name.startswith("ToLinen_"):
                raise ValueError(f"load_into: {coll}/{name} is not a qjax.nn.linen wrapper of a chain")
            i = int(name.split("_")[1])
            if i >= len(layers):
                raise ValueError(f"load_into: {coll}/{name} has no layer {i} in the Sequential ({len(layers)} layers)")
            for attr, value in entries.items():
                var = getattr(layers[i], attr, None)
                if var is None or not hasattr(var, "set_value") or var.get_value().shape != value.shape:
                    raise ValueError(f"load_into: {coll}/{name}/{attr} {value.shape} does not match layer {i} "
                                     f"({type(layers[i]).__name__})")
                var.set_value(value)
    return sequential
