"""The quantization lifecycle, with torch.ao's names: prepare → calibrate → prepare_qat → train → convert → export.

    model = MyNet(rngs=nnx.Rngs(0))           # built from qjax.nn modules
    qnn.prepare(model)                        # observers on
    for x in calibration: model(x)            # record ranges (torch-identical observers)
    qnn.prepare_qat(model)                    # scales/zero points from the observers; STE ops
    ... nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param) ...   # weights, bias, scales, zero points
    qnn.convert(model)                        # integer mode: QArray in, QArray out, bit-exact kernels
    torch_model = qnn.to_torch(model)         # fbgemm eager modules with the same integers
    qnn.save(model, "ckpt.safetensors"); qnn.load(model, "ckpt.safetensors")   # or .msgpack

Modes only change how modules compute; all state (weights, qparams, observer ranges) is
explicit NNX variables, checkpointed with safetensors or ``flax.serialization`` msgpack (no pickle).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx, serialization

from ..affine import integer_zero_point
from ..dtypes import qint8
from ..engines import layer_engine, resolve
from .elementwise import AvgPool, GlobalAvgPool, Hardswish, ReLU, ReLU6
from .modules import MODES, DeQuantStub, Flatten, MaxPool, QConv, QDense, QuantizedModule, QuantStub, Sequential

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
        if isinstance(m, QuantizedModule) and hasattr(m, "engine"):
            m.engine = resolve(m.engine)  # the engine, resolved once per mode change
        if mode in ("qat", "integer") and isinstance(m, QConv):
            _pin_dispatch(m)
    return model


def _pin_dispatch(conv):
    """torch's x86 engine picks onednn or fbgemm per conv from the weight zero points (at prepack time); decide it
    here, where they are concrete, so the jitted QAT / integer steps see a fixed engine."""
    zp = integer_zero_point(conv.w_zero_point.get_value(), qint8)
    conv.engine = layer_engine(conv.engine, zp, conv.groups)


def prepare(model):
    """Calibration mode: run data through the model to record observer ranges."""
    return set_mode(model, "calibrate")


def _load_qparams(model):
    for m in _modules(model):
        if isinstance(m, QuantizedModule):
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


def _flat_keys(tree):
    """``{"layers/1/kernel": leaf}`` for a pure-dict state (the names safetensors stores)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf for path, leaf in flat}


def save(model, path: str):
    """All state (weights, qparams, observer state) to ``path``: safetensors if it ends in ``.safetensors``,
    else msgpack (``flax.serialization``).  Neither format can execute code on load (no pickle)."""
    pure = nnx.to_pure_dict(nnx.state(model))
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({k: np.array(v, copy=True, order="C") for k, v in _flat_keys(pure).items()}, str(path))
        return
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(pure))


def load(model, path: str):
    """Restore what :func:`save` wrote into a model of the same structure (shapes and dtypes checked)."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import load_file

        stored = load_file(str(path))
        want = _flat_keys(pure)
        missing, extra = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
        if missing or extra:
            raise ValueError(f"load({path!r}): the checkpoint does not match the model (missing {missing[:5]}, "
                             f"unexpected {extra[:5]})")
        for k, v in want.items():
            if np.shape(v) != stored[k].shape or np.asarray(v).dtype != stored[k].dtype:
                raise ValueError(f"load({path!r}): {k} is {stored[k].dtype}{list(stored[k].shape)} in the checkpoint, "
                                 f"{np.asarray(v).dtype}{list(np.shape(v))} in the model")
        paths, treedef = jax.tree_util.tree_flatten_with_path(pure)
        names = list(_flat_keys(pure))
        restored = jax.tree_util.tree_unflatten(treedef, [stored[n] for n in names])
    else:
        with open(path, "rb") as f:
            restored = serialization.msgpack_restore(f.read())
    nnx.replace_by_pure_dict(state, restored)
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
    MaxPool (2-d), Flatten, QDense, DeQuantStub, ReLU, ReLU6, Hardswish, AvgPool (2-d) and
    GlobalAvgPool; anything else raises naming the layer.  With elementwise layers the model runs
    under their ``threads`` (torch's thread count decides which elements take the vector path).
    Binary layers (QAdd, QMul, QCat) need a graph, not a chain: compare those with torch's
    functional quantized ops (as ``tests/nn/test_elementwise.py`` does).
    """
    import torch
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if not isinstance(model, Sequential):
        raise TypeError("to_torch exports a qjax.nn.Sequential; export other models' layers with their "
                        "quantized_weight() / scale / zero_point")
    names = {_torch_engine_of(layer) for layer in model.layers if isinstance(layer, (QConv, QDense))}
    if len(names) > 1:
        raise ValueError(f"to_torch needs one torch engine for all layers, got {sorted(names)}")
    from ..interop.torch import torch_engine

    with torch_engine(names.pop() if names else "fbgemm"):  # prepack for that engine
        return _build(torch, nnq, nniq, model)


def _torch_engine_of(layer):
    """The torch engine whose kernels reproduce ``layer``'s arithmetic (the engine's ``torch_engine``)."""
    eng = resolve(layer.engine)
    if eng.torch_engine is None:
        raise TypeError(f"a layer runs engine {eng.name!r} (a hardware spec or qjax's reference arithmetic), which "
                        "torch has no quantized kernel for; use qjax.hardware.export for a hardware spec's integer "
                        "parameters")
    return eng.torch_engine


def _build(torch, nnq, nniq, model):
    mods, threads = [], set()
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
        elif isinstance(layer, (ReLU, ReLU6, Hardswish, AvgPool, GlobalAvgPool)):
            mods.append(_export_elementwise(torch, nnq, i, layer))
            if isinstance(layer, Hardswish):  # the only one of these whose path split depends on threads
                threads.add(layer.threads)
        else:
            raise TypeError(f"layer {i} ({type(layer).__name__}) has no torch export")
    seq = torch.nn.Sequential(*mods).eval()
    if not threads:
        return seq
    if len(threads) > 1:
        raise ValueError(f"to_torch: the elementwise layers assume different torch thread counts {sorted(threads)}")
    return _thread_pinned_cls()(seq, threads.pop()).eval()


def _export_elementwise(torch, nnq, i, layer):
    if isinstance(layer, (AvgPool, GlobalAvgPool, Hardswish, ReLU6)) and layer.memory_format not in (None,
                                                                                                 "channels_last"):
        raise ValueError(f"layer {i}: to_torch's tensors after a conv are channels-last; memory_format="
                         f"{layer.memory_format!r} has no export")
    if isinstance(layer, ReLU):
        return torch.nn.ReLU()
    if isinstance(layer, ReLU6):
        return nnq.ReLU6()
    if isinstance(layer, Hardswish):
        return nnq.Hardswish(float(layer._s()), int(layer._zp()))
    if isinstance(layer, GlobalAvgPool):
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))
    if len(layer.window) != 2:
        raise ValueError(f"layer {i} (AvgPool): to_torch exports 2-d pooling only")
    return torch.nn.AvgPool2d(layer.window, layer.strides, layer.padding, ceil_mode=layer.ceil_mode,
                              count_include_pad=layer.count_include_pad)


def _thread_pinned_cls():
    import torch

    class ThreadPinned(torch.nn.Module):
        """Runs the model with the torch thread count the qjax layers assumed (torch's elementwise kernels
        split vector / scalar paths by thread, and the two round differently)."""

        def __init__(self, model, threads):
            super().__init__()
            self.model, self.threads = model, int(threads)

        def forward(self, x):
            prev = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                return self.model(x)
            finally:
                torch.set_num_threads(prev)

    return ThreadPinned


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
