"""The quantization lifecycle, with torch.ao's names: prepare → calibrate → prepare_qat → train → convert → export.

    model = MyNet(rngs=nnx.Rngs(0))           # built from qjax.nn modules
    qnn.prepare(model)                        # observers on
    for x in calibration: model(x)            # record ranges (torch-identical observers)
    qnn.prepare_qat(model)                    # scales/zero points from the observers; STE ops
    ... nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param) ...   # weights, bias, scales, zero points
    qnn.convert(model)                        # integer mode: QArray in, QArray out, bit-exact kernels
    torch_model = qnn.to_torch(model)         # fbgemm eager modules with the same integers
    qnn.save(model, "ckpt.msgpack"); qnn.load(model, "ckpt.msgpack")

Modes only change how modules compute; all state (weights, qparams, observer ranges) is
explicit NNX variables, checkpointed with ``flax.serialization`` (msgpack, no pickle).
"""

from __future__ import annotations

import numpy as np
from flax import nnx, serialization

from .modules import MODES, DeQuantStub, Flatten, MaxPool, QConv, QDense, QuantStub, Sequential, _Quantized

__all__ = ["set_mode", "prepare", "prepare_qat", "convert", "save", "load", "to_torch"]


def _modules(model):
    return [m for _, m in nnx.iter_modules(model)]


def set_mode(model, mode: str):
    """Put every qjax module of ``model`` in ``mode`` (one of ``float``, ``calibrate``, ``qat``, ``integer``)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    for m in _modules(model):
        if hasattr(m, "mode"):
            m.mode = mode
        if mode in ("qat", "integer") and isinstance(m, QConv):
            _pin_dispatch(m)
    return model


def _pin_dispatch(conv):
    """torch's x86 engine picks onednn or fbgemm per conv from the weight zero points (at prepack time); decide it
    here, where they are concrete, so the jitted QAT / integer steps see a fixed engine."""
    from ..ste.ops import resolve_arithmetic

    eng = resolve_arithmetic(conv.engine)
    if hasattr(eng, "dispatch"):
        zp = np.round(np.asarray(conv.w_zero_point.get_value())).astype(np.int32)
        conv.engine = eng.dispatch(zp, conv.groups)


def prepare(model):
    """Calibration mode: run data through the model to record observer ranges."""
    return set_mode(model, "calibrate")


def _load_qparams(model):
    for m in _modules(model):
        if isinstance(m, _Quantized):
            m.load_qparams()


def prepare_qat(model, from_observers: bool = True):
    """QAT mode; scales and zero points are (re)loaded from the observers first unless ``from_observers=False``."""
    if from_observers:
        _load_qparams(model)
    return set_mode(model, "qat")


def convert(model, from_observers: bool = False):
    """Integer mode (after QAT the trained qparams are kept; ``from_observers=True`` reloads them — PTQ)."""
    if from_observers:
        _load_qparams(model)
    return set_mode(model, "integer")


def save(model, path: str):
    """All state (weights, qparams, observer ranges) as msgpack (``flax.serialization``; no pickle)."""
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state(model))))


def load(model, path: str):
    """Restore what :func:`save` wrote into a model of the same structure."""
    state = nnx.state(model)
    with open(path, "rb") as f:
        nnx.replace_by_pure_dict(state, serialization.msgpack_restore(f.read()))
    nnx.update(model, state)
    return model


# -- export to torch ---------------------------------------------------------------------------------

def to_torch(model: Sequential):
    """A torch eager quantized model with the same integers, for a converted :class:`Sequential`.

    The weights are prepacked for the torch engine the qjax layers use (``fbgemm``, ``qnnpack``,
    ``onednn`` or ``x86``; torch selects kernels by the packing), so run the result with that
    ``torch.backends.quantized.engine``.  Hardware-spec layers have no torch kernel: export
    their integer parameters with :func:`qjax.hardware.export` instead.

    The torch model takes NCHW float input; it quantizes, runs ``nnq.Conv2d``/``ConvReLU2d``,
    ``nnq.Linear``/``LinearReLU`` with the qjax model's int8 weights, float bias, scales and zero
    points, and flattens in qjax's (channels-last) order.  Supports QuantStub, QConv (2-d),
    MaxPool (2-d), Flatten, QDense, DeQuantStub; anything else raises naming the layer.
    """
    import torch
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if not isinstance(model, Sequential):
        raise TypeError("to_torch exports a qjax.nn.Sequential; export other models' layers with their "
                        "quantized_weight() / scale / zero_point")
    names = {getattr(_engine_of(layer), "name", None) for layer in model.layers if isinstance(layer, (QConv, QDense))}
    names.discard(None)
    if len(names) > 1:
        raise ValueError(f"to_torch needs one torch engine for all layers, got {sorted(names)}")
    from ..interop.torch import torch_engine

    with torch_engine(names.pop() if names else "fbgemm"):  # prepack for that engine
        return _build(torch, nnq, nniq, model)


def _engine_of(layer):
    from ..hardware.spec import HardwareSpec
    from ..ste.ops import resolve_arithmetic

    eng = resolve_arithmetic(layer.engine)
    if isinstance(eng, HardwareSpec):
        raise TypeError(f"a layer runs hardware spec {eng.name!r}, which torch has no kernel for; use "
                        "qjax.hardware.export for its integer parameters")
    return eng


def _build(torch, nnq, nniq, model):
    mods = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, QuantStub):
            mods.append(nnq.Quantize(float(layer._s()), int(layer._zp()), torch.quint8))
        elif isinstance(layer, DeQuantStub):
            mods.append(nnq.DeQuantize())
        elif isinstance(layer, Flatten):
            mods.append(_ChannelsLastFlatten())
        elif isinstance(layer, MaxPool):
            if len(layer.window) != 2:
                raise ValueError(f"layer {i} (MaxPool): to_torch exports 2-d pooling only")
            mods.append(torch.nn.MaxPool2d(layer.window, layer.strides, layer.padding))
        elif isinstance(layer, QConv):
            if len(layer.strides) != 2:
                raise ValueError(f"layer {i} (QConv): to_torch exports 2-d convolutions only")
            wq = layer.quantized_weight()
            kh, kw, cin_g, out = wq.shape
            cls = nniq.ConvReLU2d if layer.relu else nnq.Conv2d
            m = cls(cin_g * layer.groups, out, (kh, kw), stride=layer.strides, padding=layer.padding,
                    groups=layer.groups, bias=layer.bias is not None)
            w = np.transpose(np.asarray(wq.values), (3, 2, 0, 1)).copy()  # (*K, I, O) -> (O, I, *K)
            m.set_weight_bias(_qweight(torch, w, wq), _bias(torch, layer))
            m.scale, m.zero_point = float(layer._s()), int(layer._zp())
            mods.append(m)
        elif isinstance(layer, QDense):
            wq = layer.quantized_weight()
            w = np.asarray(wq.values).T.copy()  # (in, out) -> (out, in)
            cls = nniq.LinearReLU if layer.relu else nnq.Linear
            m = cls(w.shape[1], w.shape[0], bias_=layer.bias is not None) if cls is nnq.Linear else \
                cls(w.shape[1], w.shape[0], bias=layer.bias is not None)
            m.set_weight_bias(_qweight(torch, w, wq), _bias(torch, layer))
            m.scale, m.zero_point = float(layer._s()), int(layer._zp())
            mods.append(m)
        else:
            raise TypeError(f"layer {i} ({type(layer).__name__}) has no torch export")
    return torch.nn.Sequential(*mods).eval()


def _qweight(torch, w_int, wq):
    scales = torch.tensor(np.asarray(wq.scale, np.float64))
    zps = torch.tensor(np.asarray(wq.zero_point, np.int64))
    return torch._make_per_channel_quantized_tensor(torch.from_numpy(w_int.astype(np.int8)), scales, zps, 0)


def _bias(torch, layer):
    return None if layer.bias is None else torch.from_numpy(np.asarray(layer.bias.get_value(), np.float32).copy())


def _channels_last_flatten_cls():
    import torch

    class ChannelsLastFlatten(torch.nn.Module):
        """Flatten (N, C, H, W) in (N, H, W, C) order, as the Flax model does."""

        def forward(self, x):
            return torch.flatten(x.permute(0, 2, 3, 1).contiguous(), 1) if x.dim() == 4 else torch.flatten(x, 1)

    return ChannelsLastFlatten


def _ChannelsLastFlatten():
    return _channels_last_flatten_cls()()
