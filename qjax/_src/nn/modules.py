"""Flax NNX modules that run in four modes: ``float``, ``calibrate``, ``qat`` and ``integer``.

=========  ====================================================================================
mode       what flows between modules and what each module does
=========  ====================================================================================
float      float arrays; plain float conv / dense
calibrate  float arrays; observers (:mod:`qjax.observers`, torch-identical) record weights and
           outputs
qat        :class:`QFloat` (dequantized value + its scale and zero point); :mod:`qjax.ste` ops —
           forward bit-identical to the integer path, learnable scales (LSQ) and weights
integer    :class:`~qjax.QArray`; the integer kernels (any torch engine or hardware spec)
=========  ====================================================================================

Layout is Flax's: activations ``(N, *spatial, C)``, conv kernels ``(*K, C/groups, O)``, dense
kernels ``(in, out)``.  State is explicit NNX variables: ``nnx.Param`` for weights,
:class:`QParam` (a ``Param``: trained in QAT) for scales and zero points, :class:`ObserverState`
for observer min/max.  Switch modes with :func:`qjax.nn.prepare`, :func:`qjax.nn.prepare_qat`,
:func:`qjax.nn.convert` (torch.ao's names) or :func:`qjax.nn.set_mode`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from .. import observers as obs
from .. import ste
from ..affine import integer_zero_point
from ..dtypes import qint8, quint8
from ..engines import HardwareSpec, resolve
from ..ops import conv as int_conv
from ..ops import linear as int_linear
from ..qarray import QArray
from ..quantize import dequantize, quantize

__all__ = ["Observer", "QParam", "ObserverState", "QFloat", "QuantStub", "DeQuantStub", "QConv", "QDense", "Flatten", "MaxPool",
           "Sequential", "MODES", "default_activation_observer", "default_weight_observer", "QuantizedModule",
           "check_mode"]

MODES = ("float", "calibrate", "qat", "integer")


def check_mode(mode):
    """``mode`` if it is one of :data:`MODES` (or the Linen lifecycle's internal ``"load"``), else a ValueError."""
    # "load" (internal, used by the Linen lifecycle): compute in float and load scales / zero points from the
    # observers on the way
    if mode not in MODES + ("load",):
        raise ValueError(f"mode={mode!r}; use one of {MODES}")
    return mode


class QParam(nnx.Param):
    """A scale or zero point: a parameter (QAT trains it), set from the observers by prepare_qat/convert."""


class ObserverState(nnx.Variable):
    """An observer's state, not trained: ``[min, max]`` stacked on the first axis (a histogram
    observer appends its counts: ``[min, max, *histogram]``)."""


def _pack(state):
    if "histogram" in state:  # HistogramObserver: [min, max, *counts]
        return jnp.concatenate([jnp.stack([state["min_val"], state["max_val"]]), state["histogram"]])
    return jnp.stack([state["min_val"], state["max_val"]])


def _unpack(a):
    if a.ndim == 1 and a.shape[0] > 2:
        return dict(min_val=a[0], max_val=a[1], histogram=a[2:])
    return dict(min_val=a[0], max_val=a[1])


@jax.tree_util.register_pytree_node_class
class QFloat:
    """A fake-quantized activation in QAT mode: ``value`` (dequantized floats) with its ``scale``/``zero_point``.

    ``integers`` (optional, uint8 like ``value``, not differentiable): the integers ``value`` dequantizes
    from, which the qjax.nn modules produce and pass on so that the next integer op need not quantize
    ``value`` again (it would get them back exactly); ``None`` where unknown (then it quantizes).
    """

    def __init__(self, value, scale, zero_point, integers=None):
        self.value, self.scale, self.zero_point, self.integers = value, scale, zero_point, integers

    def tree_flatten(self):
        return (self.value, self.scale, self.zero_point, self.integers), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def shape(self):
        return self.value.shape


@functools.lru_cache(maxsize=None)
def _observer(kind: str, kwargs: tuple) -> obs.Observer:
    return getattr(obs, kind)(**dict(kwargs))


def default_activation_observer():
    """torch's ``default_observer``: ``MinMaxObserver(quant_min=0, quant_max=127)`` (quint8, affine)."""
    return ("min_max", (("dtype", "quint8"), ("quant_min", 0), ("quant_max", 127)))


def default_weight_observer():
    """torch's ``default_per_channel_weight_observer``: per-channel symmetric qint8 (channel last here)."""
    return ("per_channel_min_max", (("ch_axis", -1), ("dtype", "qint8"), ("qscheme", "per_channel_symmetric")))


class Observer(nnx.Module):
    """An observer as a module (torch's observer modules): calling it records ``x`` and returns it unchanged.

    ``Observer("histogram", reduce_range=True)`` wraps :func:`qjax.observers.histogram`; any factory of
    :mod:`qjax.observers` by name.  State: one :class:`ObserverState`.  ``calculate_qparams()`` gives
    ``(scale, zero_point)`` as torch's ``calculate_qparams`` does.
    """

    def __init__(self, kind: str = "min_max", channels: int | None = None, **kwargs):
        if not callable(getattr(obs, kind, None)) or kind.startswith("calculate") or kind == "Observer":
            raise ValueError(f"kind={kind!r}: not an observer in qjax.observers")
        self.kind = (kind, tuple(sorted(kwargs.items())))
        self.state = ObserverState(_pack(_observer(*self.kind).init(channels)))

    def __call__(self, x):
        self.state.set_value(_pack(_observer(*self.kind).update(_unpack(self.state.get_value()), x)))
        return x

    def calculate_qparams(self):
        return _observer(*self.kind).qparams(_unpack(self.state.get_value()))


class QuantizedModule(nnx.Module):
    """The base of the modules with output qparams: the mode and the output's observer, scale and zero point."""

    def _init_output(self, observer, mode="float"):
        self.mode = check_mode(mode)
        self.act_observer = observer or default_activation_observer()
        o = _observer(*self.act_observer)
        self.act_obs = ObserverState(_pack(o.init()))
        self.scale = QParam(jnp.float32(1.0))
        self.zero_point = QParam(jnp.float32(0.0))

    def _observe_output(self, y):
        self.act_obs.set_value(_pack(_observer(*self.act_observer).update(_unpack(self.act_obs.get_value()), y)))

    def load_qparams(self):
        """scale / zero point from the observers (what prepare_qat / convert call)."""
        s, z = _observer(*self.act_observer).qparams(_unpack(self.act_obs.get_value()))
        self.scale.set_value(s)
        self.zero_point.set_value(z.astype(jnp.float32))

    def _zp(self):
        return integer_zero_point(self.zero_point.get_value(), quint8)

    # learned scales are clamped to eps where used, as torch's _LearnableFakeQuantize clamps them
    def _s(self):
        return jnp.maximum(self.scale.get_value(), obs.EPS)

    def _ws(self):
        return jnp.maximum(self.w_scale.get_value(), obs.EPS)


class QuantStub(QuantizedModule):
    """Float input → quantized (torch's ``QuantStub``)."""

    def __init__(self, observer=None, estimator="lsq", rounding=None, mode="float"):
        """``rounding``: ``None`` quantizes the input with torch's rule; a :mod:`qjax.rounding` mode uses the
        integer-only hardware rule ``clamp(round_mode(x / s) + z)`` (set it to the hardware spec's
        ``quantize_rounding``)."""
        self._init_output(observer, mode)
        self.estimator = estimator
        self.rounding = rounding

    def __call__(self, x, *, key=None):
        """``key``: PRNG key for a stochastic ``rounding`` (QAT and integer modes)."""
        if self.mode == "float":
            return x
        if self.mode in ("calibrate", "load"):
            if self.mode == "calibrate":
                self._observe_output(x)
            else:
                self.load_qparams()
            return x
        if self.mode == "qat":
            s, z = self._s(), self.zero_point.get_value()
            y, q = ste.fake_quantize(x, s, z, "quint8", estimator=self.estimator, rounding=self.rounding, key=key,
                                     return_integers=True)
            return QFloat(y, s, z, q)
        if self.rounding is not None:
            # the integer-only hardware input rule is a hardware engine's quantize (HardwareSpec's only
            # quantize option is its rounding)
            return HardwareSpec(quantize_rounding=self.rounding).quantize(x, self._s(), self._zp(), quint8, key=key)
        return quantize(x, self._s(), self._zp(), quint8)


class DeQuantStub(nnx.Module):
    """Quantized → float (torch's ``DeQuantStub``)."""

    def __init__(self, mode="float"):
        self.mode = check_mode(mode)

    def __call__(self, x):
        if isinstance(x, QArray):
            return dequantize(x)
        if isinstance(x, QFloat):
            return x.value
        return x


class Flatten(nnx.Module):
    """Flatten all but the batch axis, in any mode."""

    def __init__(self, mode="float"):
        self.mode = check_mode(mode)

    def __call__(self, x):
        if isinstance(x, QArray):
            return x.with_values(x.values.reshape(x.shape[0], -1))
        if isinstance(x, QFloat):
            q = None if x.integers is None else x.integers.reshape(x.shape[0], -1)
            return QFloat(x.value.reshape(x.shape[0], -1), x.scale, x.zero_point, q)
        return x.reshape(x.shape[0], -1)


class MaxPool(nnx.Module):
    """Max pooling over the spatial axes in any mode (a max of integers needs no requantization).

    Padded positions never win (torch's quantized max pool ignores them); the output keeps the
    input's scale and zero point.
    """

    def __init__(self, window, strides=None, padding=0, mode="float"):
        self.window = tuple(window)
        self.strides = tuple(strides) if strides is not None else self.window
        self.padding = (padding,) * len(self.window) if isinstance(padding, int) else tuple(padding)
        self.mode = check_mode(mode)

    def _pool(self, v, lowest):
        dims = (1,) + self.window + (1,)
        strides = (1,) + self.strides + (1,)
        pad = ((0, 0),) + tuple((p, p) for p in self.padding) + ((0, 0),)
        return lax.reduce_window(v, lowest, lax.max, dims, strides, pad)

    def __call__(self, x):
        if isinstance(x, QArray):
            v = self._pool(x.values.astype(jnp.int32), jnp.int32(-(2**31))).astype(x.values.dtype)
            return x.with_values(v)
        if isinstance(x, QFloat):
            # dequantization is monotone, so the integers' max is the max's integers; pooled as float32 (exact
            # for uint8) because reduce_window's generic (non-float) path fails under JVP even for integers
            q = None if x.integers is None else \
                self._pool(x.integers.astype(jnp.float32), -jnp.inf).astype(x.integers.dtype)
            return QFloat(self._pool(x.value, -jnp.inf), x.scale, x.zero_point, q)
        return self._pool(jnp.asarray(x, jnp.float32), -jnp.inf)


class _Weighted(QuantizedModule):
    def _init_weight(self, kernel_shape, out_features, use_bias, rngs, weight_observer, engine, estimator, relu):
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), kernel_shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.weight_observer = weight_observer or default_weight_observer()
        wo = _observer(*self.weight_observer)
        self.w_obs = ObserverState(_pack(wo.init(out_features)))
        self.w_scale = QParam(jnp.ones((out_features,), jnp.float32))
        self.w_zero_point = QParam(jnp.zeros((out_features,), jnp.float32))
        self.engine = resolve(engine)  # resolved once, here (qjax.nn.set_mode pins x86's per-layer backend)
        self.estimator = estimator
        self.relu = relu

    def load_qparams(self):
        super().load_qparams()
        s, z = _observer(*self.weight_observer).qparams(_unpack(self.w_obs.get_value()))
        self.w_scale.set_value(s)
        self.w_zero_point.set_value(z.astype(jnp.float32))

    def quantized_weight(self) -> QArray:
        """The int8 weights the integer mode (and the torch export) uses, channels last."""
        z = integer_zero_point(self.w_zero_point.get_value(), qint8)
        return quantize(self.kernel.get_value(), self._ws(), z, qint8, axis=self.kernel.get_value().ndim - 1)

    def _bias(self):
        return None if self.bias is None else self.bias.get_value()

    def _after_float(self, y):
        if self.mode == "calibrate":
            self._calibrate(y)
        elif self.mode == "load":
            self.load_qparams()

    def _calibrate(self, y):
        w_obs = _observer(*self.weight_observer)
        self.w_obs.set_value(_pack(w_obs.update(_unpack(self.w_obs.get_value()), self.kernel.get_value())))
        self._observe_output(y)


def _move_channels(x, src, dst):
    """Move the channel axis of a float array, QFloat or QArray (the NCHW layout option)."""
    if isinstance(x, QArray):
        return x.with_values(jnp.moveaxis(x.values, src, dst))
    if isinstance(x, QFloat):
        q = None if x.integers is None else jnp.moveaxis(x.integers, src, dst)
        return QFloat(jnp.moveaxis(x.value, src, dst), x.scale, x.zero_point, q)
    return jnp.moveaxis(x, src, dst)


class QConv(_Weighted):
    """Quantized convolution (1-d/2-d/3-d from the kernel size); ``relu`` fuses ReLU (ConvReLU).

    ``layout="NHWC"`` (Flax's, default) or ``"NCHW"`` (torch's order: channels at axis 1, for data kept in
    torch's layout); the kernel is stored in Flax's ``(*K, C/groups, O)`` either way.
    """

    def __init__(self, in_features, out_features, kernel_size, *, strides=1, padding=0, groups=1, relu=False,
                 use_bias=True, engine="fbgemm", estimator="lsq", observer=None, weight_observer=None,
                 layout="NHWC", mode="float", rngs: nnx.Rngs):
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout={layout!r}; use 'NHWC' (Flax) or 'NCHW' (torch)")
        self.layout = layout
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide in_features={in_features} and out_features={out_features}")
        ks = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.strides = (strides,) * len(ks) if isinstance(strides, int) else tuple(strides)
        self.padding = (padding,) * len(ks) if isinstance(padding, int) else tuple(padding)
        self.groups = groups
        self._init_output(observer, mode)
        self._init_weight(ks + (in_features // groups, out_features), out_features, use_bias, rngs, weight_observer,
                          engine, estimator, relu)

    def _float(self, x):
        nd = x.ndim - 2
        sp = "DHW"[-nd:] if nd > 1 else "W"
        k = self.kernel.get_value()
        dn = lax.conv_dimension_numbers(x.shape, k.shape, ("N" + sp + "C", sp + "IO", "N" + sp + "C"))
        pad = [(p, p) if isinstance(p, int) else tuple(p) for p in self.padding]
        y = lax.conv_general_dilated(x, self.kernel.get_value(), self.strides, pad, dimension_numbers=dn,
                                     feature_group_count=self.groups)
        if self.bias is not None:
            y = y + self.bias.get_value()
        return jnp.maximum(y, 0.0) if self.relu else y

    def __call__(self, x, *, key=None):
        """``key``: PRNG key for a hardware spec's stochastic rounding (QAT and integer modes)."""
        if self.layout == "NCHW":
            return _move_channels(self._call_nhwc(_move_channels(x, 1, -1), key), -1, 1)
        return self._call_nhwc(x, key)

    def _call_nhwc(self, x, key=None):
        if self.mode in ("float", "calibrate", "load"):
            y = self._float(x)
            self._after_float(y)
            return y
        if self.mode == "qat":
            s, z = self._s(), self.zero_point.get_value()
            y, q = ste.conv(x.value, self.kernel.get_value(), self._bias(), x_scale=x.scale,
                            x_zero_point=x.zero_point, w_scale=self._ws(),
                            w_zero_point=self.w_zero_point.get_value(), scale=s, zero_point=z, stride=self.strides,
                            padding=self.padding, groups=self.groups, relu=self.relu, engine=self.engine,
                            estimator=self.estimator, channels_last=True, key=key, x_integers=x.integers,
                            return_integers=True)
            return QFloat(y, s, z, q)
        return int_conv(x, self.quantized_weight(), self._bias(), scale=self._s(), zero_point=self._zp(),
                        stride=self.strides, padding=self.padding, groups=self.groups, relu=self.relu,
                        engine=self.engine, channels_last=True, key=key)


class QDense(_Weighted):
    """Quantized dense layer ``(..., in) -> (..., out)``; ``relu`` fuses ReLU (LinearReLU)."""

    def __init__(self, in_features, out_features, *, relu=False, use_bias=True, engine="fbgemm", estimator="lsq",
                 observer=None, weight_observer=None, mode="float", rngs: nnx.Rngs):
        self._init_output(observer, mode)
        self._init_weight((in_features, out_features), out_features, use_bias, rngs, weight_observer, engine,
                          estimator, relu)

    def __call__(self, x, *, key=None):
        """``key``: PRNG key for a hardware spec's stochastic rounding (QAT and integer modes)."""
        if self.mode in ("float", "calibrate", "load"):
            y = x @ self.kernel.get_value()
            if self.bias is not None:
                y = y + self.bias.get_value()
            y = jnp.maximum(y, 0.0) if self.relu else y
            self._after_float(y)
            return y
        w_t = self.kernel.get_value().T  # (out, in), torch's layout
        if self.mode == "qat":
            s, z = self._s(), self.zero_point.get_value()
            y, q = ste.linear(x.value, w_t, self._bias(), x_scale=x.scale, x_zero_point=x.zero_point,
                              w_scale=self._ws(), w_zero_point=self.w_zero_point.get_value(), scale=s, zero_point=z,
                              relu=self.relu, engine=self.engine, estimator=self.estimator, key=key,
                              x_integers=x.integers, return_integers=True)
            return QFloat(y, s, z, q)
        wq = self.quantized_weight()
        wq = QArray(wq.values.T, wq.scale, wq.zero_point, qint8, 0, check=False)
        return int_linear(x, wq, self._bias(), scale=self._s(), zero_point=self._zp(), relu=self.relu,
                          engine=self.engine, key=key)


class Sequential(nnx.Module):
    """Layers applied in order (what :func:`qjax.nn.to_torch` exports)."""

    def __init__(self, *layers, mode="float"):
        self.layers = nnx.List(layers) if hasattr(nnx, "List") else list(layers)
        self.mode = check_mode(mode)

    def __call__(self, x, *, key=None):
        """``key``: split over the layers that take one (stochastic rounding under a hardware spec)."""
        layers = list(self.layers)
        keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
        for layer, k in zip(layers, keys):
            x = layer(x, key=k) if k is not None and isinstance(layer, (QuantStub, QConv, QDense)) else layer(x)
        return x


_ = np  # numpy is used by submodules importing from here
