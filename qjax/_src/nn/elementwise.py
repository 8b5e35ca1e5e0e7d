"""Quantized add / mul / cat, activations and average pooling as NNX modules, in the four modes.

============  ==========================================  =====================================
module        integer op (torch's kernel it reproduces)    output qparams
============  ==========================================  =====================================
QAdd          ``quantized::add`` / ``add_relu``             observed (its own scale, zero point)
QMul          ``quantized::mul`` / ``mul_relu``             observed
QCat          ``quantized::cat``                            observed
Hardswish     ``quantized::hardswish``                      observed
ReLU, ReLU6   ``relu`` / ``relu6`` on the integers          the input's
AvgPool       ``quantized avg_pool{1,2,3}d``                the input's
GlobalAvgPool ``adaptive_avg_pool`` to 1 (``Flatten``-ed)   the input's
============  ==========================================  =====================================

Modes as in :mod:`qjax.nn.modules`: ``float`` (plain op), ``calibrate`` (the output observer
records), ``qat`` (:class:`~qjax.nn.QFloat` in and out: the forward *is* the integer op on the
inputs' integers, so QAT sees the deployed values bit for bit; the backward differentiates the
float op followed by ``fake_quantize`` with the module's estimator, so output scales learn with
LSQ) and ``integer`` (:class:`~qjax.QArray` in and out).

torch's elementwise kernels take a vectorized path for most elements and a scalar path (which
rounds differently) for the rest, and where the split falls depends on the tensor's memory format
and on torch's thread count (``qjax.qops.paths``).  qjax.nn activations are NHWC; torch's
quantized conv outputs are channels-last, so 4-d inputs default to ``memory_format=
"channels_last"`` and other ranks to ``"contiguous"``; ``threads`` (default 1) must equal
``torch.get_num_threads()`` of the torch process the result is compared with.

Every integer op is a method of the module's engine (``engine=``: a name, an engine or a hardware
spec, resolved once at construction): ``engine.add`` / ``mul`` / ``cat`` / ``hardswish`` / ``relu`` /
``relu6`` / ``avg_pool`` / ``adaptive_avg_pool`` (qnnpack's own kernels where torch's qnnpack engine
uses them).  Under a hardware spec ``QAdd`` is TFLite's integer ADD (multipliers derived in the graph,
as :func:`qjax.hardware.convert` derives them); mul, cat, hardswish and pooling keep torch's CPU
arithmetic there, as ``hardware.convert`` does.  The QAT forward / backward is
:func:`qjax.ste.exact.exact_forward`, the custom VJP :func:`qjax.ste.conv` uses too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import observers as obs
from .. import ste
from ..affine import integer_zero_point
from ..buffers import own_buffer
from ..dtypes import quint8
from ..engines import resolve
from ..qarray import QArray
from ..qops.paths import CHANNELS_LAST, CONTIGUOUS
from ..quantize import dequantize, quantize
from ..ste.exact import exact_forward, output_backward, output_residuals, zero_cotangent
from ..ste.fake_quant import FakeQuantConfig
from .modules import QFloat, QuantizedModule, check_mode

__all__ = ["QAdd", "QMul", "QCat", "Hardswish", "ReLU", "ReLU6", "AvgPool", "GlobalAvgPool"]


# --------------------------------------------------------------------------- layout and the QAT forward
# The engines' non-GEMM methods take torch's logical order (N, C, *spatial): their arithmetic follows torch's
# memory order (vector / scalar path splits, qjax.qops.paths).  qjax.nn is NHWC, so each integer op moves the
# channel axis once in (_to_torch) and once out (_from_torch).

def _to_torch(q: QArray) -> QArray:
    """NHWC (Flax) -> NCHW (torch's logical order); the memory format says how torch stores it."""
    v = jnp.moveaxis(q.values, -1, 1) if q.ndim >= 3 else q.values
    return q.with_values(v)


def _from_torch(q: QArray) -> QArray:
    v = jnp.moveaxis(q.values, 1, -1) if q.ndim >= 3 else q.values
    return q.with_values(v)


def _fmt(memory_format, ndim):
    if memory_format is not None:
        return memory_format
    return CHANNELS_LAST if ndim == 4 else CONTIGUOUS


def _requantize(x: QFloat) -> QArray:
    """A QAT activation back to its integers: ``value = (q - z) * s`` is on the grid, so this is exact
    (the integers themselves where the producer passed them on: the same values, no quantize)."""
    z = integer_zero_point(x.zero_point, quint8)
    if x.integers is not None:
        return QArray(x.integers, jnp.asarray(x.scale, jnp.float32), z, quint8, None, check=False)
    return quantize(x.value, x.scale, z, quint8)


def _out_qparams(n, args):
    return (args[3 * n], args[3 * n + 1]) if len(args) > 3 * n else (args[1], args[2])


class _ElementwiseRule:
    """The :func:`~qjax.ste.exact.exact_forward` rule of an elementwise module in QAT.

    Arguments ``(ints, *args)``: ``args`` are ``n`` (value, scale, zero point) triples and, when the
    module has its own output qparams, its ``(scale, zero point)`` (otherwise the output takes the
    first input's); ``ints`` the inputs' integers where known (else ``None``), not differentiable.
    Forward: ``exact(ints, *args)`` (the integer op); backward: the VJP of the surrogate
    ``fq(float_op(values); s, z)`` (the values are on their grids already: no input fake quantization).
    """

    def __init__(self, exact, float_op, fq_cfg, n):
        self.exact, self.float_op, self.fq_cfg, self.n = exact, float_op, fq_cfg, n

    def forward(self, ints, *args):
        # the surrogate's float output and (for an estimator that learns the scale) its fake-quantized value,
        # computed once here: the backward needs nothing else
        n = self.n
        s, z = _out_qparams(n, args)
        y = self.float_op(*[args[3 * i] for i in range(n)])
        return self.exact(ints, *args), (ints, args, output_residuals(self.fq_cfg, y, s, z))

    def backward(self, res, g):
        ints, args, out_res = res
        n = self.n
        dy, ds, dz = output_backward(self.fq_cfg, out_res, g)
        dvalues = jax.vjp(self.float_op, *[args[3 * i] for i in range(n)])[1](dy)
        grads = [jnp.zeros_like(a) for a in args]
        for i in range(n):
            grads[3 * i] = dvalues[i]
        if len(args) > 3 * n:
            grads[3 * n], grads[3 * n + 1] = ds, dz
        else:  # the output's qparams are the first input's
            grads[1], grads[2] = ds, dz
        return (tuple(zero_cotangent(q) for q in ints),) + tuple(grads)


class _Op(QuantizedModule):
    def _init_op(self, observer, engine, estimator, memory_format, threads, mode):
        self._init_output(observer, mode)
        self.engine = resolve(engine)  # resolved once, here
        self.estimator = estimator
        self.memory_format = memory_format
        self.threads = int(threads)

    def _run(self, xs, float_op, int_op, own_qparams=True):
        """Dispatch on the mode; ``int_op(list of QArray) -> QArray`` (NHWC), ``float_op(*floats)``."""
        if self.mode in ("float", "calibrate", "load"):
            y = float_op(*xs)
            if own_qparams:
                if self.mode == "calibrate":
                    self._observe_output(y)
                elif self.mode == "load":
                    self.load_qparams()
            return y
        if self.mode == "integer":
            return int_op(list(xs))
        # qat
        n = len(xs)
        if own_qparams:
            so, zo = self._s(), self.zero_point.get_value()
        else:
            so, zo = xs[0].scale, xs[0].zero_point

        def exact(ints, *a):
            qs = [_requantize(QFloat(a[3 * i], a[3 * i + 1], a[3 * i + 2], ints[i])) for i in range(n)]
            if own_qparams:
                y = int_op(qs, scale=a[3 * n], zero_point=a[3 * n + 1])
            else:
                y = int_op(qs)
            yq = own_buffer(y.values, y.scale)
            return dequantize(y.with_values(yq)), yq

        args = [v for x in xs for v in (x.value, x.scale, x.zero_point)]
        if own_qparams:
            args += [so, zo]
        fq_cfg = FakeQuantConfig(quint8, None, ste.get_estimator(self.estimator))
        rule = _ElementwiseRule(exact, float_op, fq_cfg, n)
        y, yq = exact_forward(rule, tuple(x.integers for x in xs), *args)
        return QFloat(y, so, zo, yq)

    def _out(self, scale=None, zero_point=None):
        """The output's scale and integer zero point: the module's own, or the traced ones the QAT forward passes."""
        s = self.scale.get_value() if scale is None else scale
        z = self.zero_point.get_value() if zero_point is None else zero_point
        return jnp.maximum(s, obs.EPS), integer_zero_point(z, quint8)


class _Binary(_Op):
    def __init__(self, relu=False, *, engine="fbgemm", estimator="lsq", observer=None, memory_format=None, threads=1,
                 mode="float"):
        self.relu = bool(relu)
        self._init_op(observer, engine, estimator, memory_format, threads, mode)

    def _float(self, a, b):
        y = self._op(a, b)
        return jnp.maximum(y, 0.0) if self.relu else y

    def __call__(self, a, b):
        return self._run((a, b), self._float, self._integer)


class QAdd(_Binary):
    """``a + b`` (broadcasting), requantized to the module's scale / zero point; ``relu`` = torch's ``add_relu``.

    The engine's ``add``: ATen's ``quantized::add``, qnnpack's ``q8vadd`` (equal shapes; it derives its
    multipliers on the host from concrete scales) or a hardware spec's integer-only TFLite ADD.
    """

    _op = staticmethod(jnp.add)

    def _integer(self, xs, scale=None, zero_point=None):
        a, b = (_to_torch(x) for x in xs)
        s, z = self._out(scale, zero_point)
        y = self.engine.add(a, b, s, z, relu=self.relu, memory_format=_fmt(self.memory_format, a.ndim),
                            threads=self.threads)
        return _from_torch(y)


class QMul(_Binary):
    """``a * b`` (broadcasting) requantized; ``relu`` = torch's ``mul_relu``."""

    _op = staticmethod(jnp.multiply)

    def _integer(self, xs, scale=None, zero_point=None):
        a, b = (_to_torch(x) for x in xs)
        s, z = self._out(scale, zero_point)
        y = self.engine.mul(a, b, s, z, relu=self.relu, memory_format=_fmt(self.memory_format, a.ndim),
                            threads=self.threads)
        return _from_torch(y)


class QCat(_Op):
    """Concatenate along ``axis`` (Flax layout; default the channels) into the module's qparams."""

    def __init__(self, axis=-1, *, engine="fbgemm", estimator="lsq", observer=None, memory_format=None, threads=1,
                 mode="float"):
        self.axis = axis
        self._init_op(observer, engine, estimator, memory_format, threads, mode)

    def __call__(self, *xs):
        return self._run(xs, lambda *v: jnp.concatenate(v, axis=self.axis), self._integer)

    def _integer(self, xs, scale=None, zero_point=None):
        s, z = self._out(scale, zero_point)
        nd = xs[0].ndim
        axis = self.axis % nd
        # the same axis in torch's order (channels at 1)
        t_axis = axis if nd < 3 else (1 if axis == nd - 1 else (axis + 1 if axis >= 1 else 0))
        y = self.engine.cat([_to_torch(x) for x in xs], s, z, dim=t_axis,
                            channels_last=_fmt(self.memory_format, nd) == CHANNELS_LAST)
        return _from_torch(y)


class Hardswish(_Op):
    """``x * relu6(x + 3) / 6`` into the module's qparams (``quantized::hardswish``)."""

    def __init__(self, *, engine="fbgemm", estimator="lsq", observer=None, memory_format=None, threads=1, mode="float"):
        self._init_op(observer, engine, estimator, memory_format, threads, mode)

    def __call__(self, x):
        return self._run((x,), lambda v: v * jnp.clip(v + 3.0, 0.0, 6.0) / 6.0, self._integer)

    def _integer(self, xs, scale=None, zero_point=None):
        x = _to_torch(xs[0])
        s, z = self._out(scale, zero_point)
        y = self.engine.hardswish(x, s, z, memory_format=_fmt(self.memory_format, x.ndim), threads=self.threads)
        return _from_torch(y)


class _Passthrough(_Op):
    """Ops whose output keeps the input's scale and zero point (no observer, nothing to learn)."""

    def __init__(self, *, engine="fbgemm", estimator="lsq", memory_format=None, threads=1, mode="float"):
        self.mode = check_mode(mode)
        self.engine = resolve(engine)  # resolved once, here
        self.estimator = estimator
        self.memory_format = memory_format
        self.threads = int(threads)

    def load_qparams(self):  # no qparams of its own
        pass

    def __call__(self, x):
        return self._run((x,), self._float, self._integer, own_qparams=False)


class ReLU(_Passthrough):
    """``max(x, 0)``; on integers ``max(q, z)``."""

    def _float(self, x):
        return jnp.maximum(x, 0.0)

    def _integer(self, xs):
        x = _to_torch(xs[0])
        return _from_torch(self.engine.relu(x, memory_format=_fmt(self.memory_format, x.ndim)))


class ReLU6(_Passthrough):
    """``clamp(x, 0, 6)``; on integers ``clamp(q, z, quantize(6))`` (``quantized::relu6``)."""

    def _float(self, x):
        return jnp.clip(x, 0.0, 6.0)

    def _integer(self, xs):
        x = _to_torch(xs[0])
        fmt = _fmt(self.memory_format, x.ndim)
        return _from_torch(self.engine.relu6(x, memory_format=fmt, input_format=fmt))


class AvgPool(_Passthrough):
    """Average pooling over the spatial axes (Flax layout), torch's quantized ``avg_pool{1,2,3}d``."""

    def __init__(self, window, strides=None, padding=0, *, count_include_pad=True, ceil_mode=False,
                 memory_format=None, threads=1, engine="fbgemm", estimator="lsq", mode="float"):
        super().__init__(engine=engine, estimator=estimator, memory_format=memory_format, threads=threads, mode=mode)
        self.window = tuple(window)
        self.strides = tuple(strides) if strides is not None else self.window
        self.padding = (padding,) * len(self.window) if isinstance(padding, int) else tuple(padding)
        self.count_include_pad = bool(count_include_pad)
        self.ceil_mode = bool(ceil_mode)

    def _float(self, x):
        if self.ceil_mode:
            raise ValueError("AvgPool(ceil_mode=True) runs in the integer and QAT modes only")
        dims = (1,) + self.window + (1,)
        strides = (1,) + self.strides + (1,)
        pad = ((0, 0),) + tuple((p, p) for p in self.padding) + ((0, 0),)
        s = lax.reduce_window(x, 0.0, lax.add, dims, strides, pad)
        if self.count_include_pad:
            return s / float(np.prod(self.window))
        n = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, dims, strides, pad)
        return s / n

    def _integer(self, xs):
        x = _to_torch(xs[0])
        y = self.engine.avg_pool(x, self.window, self.strides, self.padding, self.ceil_mode, self.count_include_pad,
                                 None, memory_format=_fmt(self.memory_format, x.ndim))
        return _from_torch(y)


class GlobalAvgPool(_Passthrough):
    """Mean over the spatial axes, ``(N, *spatial, C) -> (N, C)``: torch's ``adaptive_avg_pool`` to 1 + flatten."""

    def _float(self, x):
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))

    def _integer(self, xs):
        x = _to_torch(xs[0])
        nd = x.ndim - 2
        y = self.engine.adaptive_avg_pool(x, (1,) * nd, memory_format=_fmt(self.memory_format, x.ndim))
        return y.with_values(y.values.reshape(y.shape[:2]))
