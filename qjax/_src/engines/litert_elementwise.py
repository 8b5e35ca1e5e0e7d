"""LiteRT's ADD / SUB / MUL / CONCATENATION / QUANTIZE / DEQUANTIZE, per kernel family (a mixin of ``LiteRT``).

The arithmetic of each family is in :mod:`qjax.qops.tflite_elementwise` (formulas and runtime sources in
its docstring).  What the XNNPACK delegate takes (``tflite/delegates/xnnpack/xnnpack_delegate.cc``,
checked with :func:`qjax.interop.litert_runtime.delegated_ops`): int8 ADD / SUB with every input/output
scale ratio in ``[2**-10, 2**8)``, MUL with ``sa*sb/sy`` in ``[2**-16, 2**8)``, CONCATENATION (it ignores
a fused activation, which the builtin kernel refuses), QUANTIZE float32 -> int8/uint8 and int8 -> int8 /
uint8 -> uint8 (not int8 <-> uint8), DEQUANTIZE.  Outside those conditions a node runs on the optimized
builtin kernels, and ``LiteRT("xnnpack")`` refuses it (the importer gives such nodes ``LiteRT("optimized")``).

Parameters the kernels derive in ``Prepare`` (multipliers, shifts, clamp bounds) come from the qparams:
on the host (numpy, float64) when they are concrete, in the graph when traced (exact float64 quotients on
32-bit lanes, :mod:`qjax.requant.derive_traced`) — the same integers.  Where LiteRT's Prepare refuses values
(XNNPACK's ADD / SUB / MUL / requantize scale ranges, CONCATENATION's equal qparams, a builtin ADD / SUB's output
multiplier below one), the check needs them: those ops refuse traced qparams (under a plain ``jax.jit`` QArray
qparams are tracers: call them inside ``jax.ensure_compile_time_eval()``, as the importer's nodes do).  MUL
(builtin), QUANTIZE, DEQUANTIZE and the builtin requantize take traced qparams.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import is_concrete
from ..dtypes import as_qdtype, qint8, quint8
from ..qarray import QArray
from ..qops import tflite_elementwise as te
from ..qops.tflite_common import ACTIVATIONS, STATIC_QPARAMS, activation_range, activation_range_xnnpack
from .base import refuse

__all__ = ["LiteRTElementwise"]

_OUT_DTYPES = {"int8": qint8, "uint8": quint8}

def _every_activation(rule):
    """The fused-activation bounds of every activation at once: one compilation per rule (qparams traced)."""
    return jax.jit(lambda scale, zero_point: {a: rule(a, scale, zero_point) for a in ACTIVATIONS})


_ACTIVATION_RANGE = {"builtin": _every_activation(activation_range),
                     "xnnpack": _every_activation(activation_range_xnnpack)}


def _scalar(engine, v, what: str, op: str, kind=float, traced_ok: bool = False):
    if not is_concrete(v):
        if traced_ok:  # the op's arithmetic takes the qparam in the graph
            return jnp.reshape(jnp.asarray(v, jnp.float32 if kind is float else jnp.int32), ())
        refuse(engine, op, f"{what} must be concrete (the kernel derives its parameters at Prepare time)")
    a = np.asarray(v)
    if a.size != 1:
        refuse(engine, op, f"{what} must be per-tensor (one value), got shape {a.shape}")
    return kind(np.float32(a.reshape(())) if kind is float else a.reshape(()))


def _require_concrete(engine, op: str, why: str, *values):
    """Refuse traced qparams where LiteRT's Prepare checks them (``why``): an unchecked answer could be one LiteRT
    never gives."""
    if not all(is_concrete(v) for v in values):
        refuse(engine, op, f"traced qparams: {why} is checked at Prepare time; {STATIC_QPARAMS}")


def _qparams(engine, x, op: str, name: str, traced_ok: bool = False):
    if not isinstance(x, QArray):
        raise TypeError(f"{op}: {name} must be a QArray, got {type(x).__name__}")
    if x.axis is not None:
        refuse(engine, op, f"{name} must be per-tensor quantized")
    return (_scalar(engine, x.scale, f"{name}.scale", op, float, traced_ok),
            _scalar(engine, x.zero_point, f"{name}.zero_point", op, int, traced_ok))


def _out_dtype(engine, dtype, op):
    if dtype not in _OUT_DTYPES:
        refuse(engine, op, f"dtype={dtype!r}; the int8 models' QUANTIZE outputs 'int8' or 'uint8'")
    return _OUT_DTYPES[dtype]


def _output(values, scale, zero_point, dtype=qint8):
    return QArray(values.astype(dtype.storage), jnp.float32(scale), jnp.int32(zero_point), dtype, check=False)


class LiteRTElementwise:
    """Elementwise ops of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks the family.

    Binary ops broadcast numpy-style; all take and return per-tensor QArrays (qint8 unless stated)."""

    def _activation_range(self, activation, sy, zy):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; int8 kernels fuse one of {ACTIVATIONS}")
        rule = _ACTIVATION_RANGE["xnnpack" if self.kernels == "xnnpack" else "builtin"]
        return rule(jnp.float32(sy), jnp.int32(zy))[activation]

    def _binary(self, op, a, b, out_scale, out_zero_point, activation):
        sa, za = _qparams(self, a, op, "a", traced_ok=True)
        sb, zb = _qparams(self, b, op, "b", traced_ok=True)
        sy = _scalar(self, out_scale, "out_scale", op, float, traced_ok=True)
        zy = _scalar(self, out_zero_point, "out_zero_point", op, int, traced_ok=True)
        for name, x in (("a", a), ("b", b)):
            if as_qdtype(x.dtype) != qint8:
                refuse(self, op, f"{name} must be qint8 (LiteRT's int8 kernels), got {as_qdtype(x.dtype).name}")
        shape = np.broadcast_shapes(tuple(a.values.shape), tuple(b.values.shape))
        lo, hi = self._activation_range(activation, sy, zy)
        # broadcast before the jitted arithmetic: one compilation per output shape
        av, bv = jnp.broadcast_to(a.values, shape), jnp.broadcast_to(b.values, shape)
        return sa, sb, sy, zy, za, zb, lo, hi, av, bv

    def _add_or_sub(self, op, a, b, out_scale, out_zero_point, activation):
        sa, sb, sy, zy, za, zb, lo, hi, av, bv = self._binary(op, a, b, out_scale, out_zero_point, activation)
        subtract = op == "SUB"
        _require_concrete(self, op, "XNNPACK's scale range" if self.kernels == "xnnpack" else
                          "the output multiplier (below one)", sa, sb, sy)
        if self.kernels == "xnnpack":
            try:
                params = te.add_params_xnnpack(sa, sb, sy, -1 if subtract else 1)
            except ValueError as e:
                refuse(self, op, f"the XNNPACK delegate does not take it ({e}); it runs on LiteRT('optimized')")
            values = te.add_xnnpack(av, bv, za, zb, params, zy, lo, hi)
        else:
            params = te.add_params_builtin(sa, sb, sy)
            if params[2][1] > 0:
                refuse(self, op, f"output multiplier 2*max(sa, sb)/(2**20*sy) >= 1 (sy={sy!r}): outside the kernel's "
                                 "MultiplyByQuantizedMultiplierSmallerThanOneExp domain")
            # int8 SUB is reference_ops::Sub in both builtin families: no NEON paths
            paths = None
            if self.kernels == "optimized" and not subtract:
                paths = te.optimized_binary_paths(a.values.shape, b.values.shape, scalar_broadcast_block=8)
            values = te.add_builtin(av, bv, za, zb, params, zy, lo, hi, subtract, paths)
        return _output(values, sy, zy)

    def tfl_add(self, a, b, out_scale, out_zero_point, activation="NONE"):
        """ADD (int8, numpy broadcasting, fused activation)."""
        return self._add_or_sub("ADD", a, b, out_scale, out_zero_point, activation)

    def tfl_sub(self, a, b, out_scale, out_zero_point, activation="NONE"):
        """SUB (int8, numpy broadcasting, fused activation)."""
        return self._add_or_sub("SUB", a, b, out_scale, out_zero_point, activation)

    def tfl_mul(self, a, b, out_scale, out_zero_point, activation="NONE"):
        """MUL (int8, numpy broadcasting, fused activation)."""
        op = "MUL"
        sa, sb, sy, zy, za, zb, lo, hi, av, bv = self._binary(op, a, b, out_scale, out_zero_point, activation)
        if self.kernels == "xnnpack":
            _require_concrete(self, op, "XNNPACK's scale range", sa, sb, sy)
            scale = te.mul_scale_xnnpack(sa, sb, sy)
            if not (2.0**-16 <= float(scale) < 2.0**8):
                refuse(self, op, f"sa*sb/sy={float(scale)!r} outside XNNPACK's [2**-16, 2**8): the delegate does not "
                                 "take it; it runs on LiteRT('optimized')")
            values = te.mul_xnnpack(av, bv, za, zb, jnp.float32(scale), zy, lo, hi)
        else:
            paths = None
            if self.kernels == "optimized":
                paths = te.optimized_binary_paths(a.values.shape, b.values.shape, scalar_broadcast_block=16)
            values = te.mul_builtin(av, bv, za, zb, te.mul_multiplier_builtin(sa, sb, sy), zy, lo, hi, paths)
        return _output(values, sy, zy)

    def tfl_concat(self, xs, axis, out_scale, out_zero_point, activation="NONE"):
        """CONCATENATION of QArrays along ``axis`` into the output's qparams.

        LiteRT's int8 CONCATENATION requires every input to carry the output's scale and zero point
        (``kernels/concatenation.cc`` Prepare; the XNNPACK delegate fails on such nodes too), so it copies
        bytes: differing qparams are refused.  The builtin kernels refuse a fused activation; the XNNPACK
        delegate takes the node and ignores the activation (measured), and so does this rule."""
        op = "CONCATENATION"
        sy = _scalar(self, out_scale, "out_scale", op, float, traced_ok=True)
        zy = _scalar(self, out_zero_point, "out_zero_point", op, int, traced_ok=True)
        if not xs:
            raise ValueError("CONCATENATION: xs must hold at least one QArray")
        for i, x in enumerate(xs):
            s, z = _qparams(self, x, op, f"xs[{i}]", traced_ok=True)
            if as_qdtype(x.dtype) != qint8:
                refuse(self, op, f"xs[{i}] must be qint8, got {as_qdtype(x.dtype).name}")
            _require_concrete(self, op, "the inputs' qparams equal to the output's", s, z, sy, zy)
            if s != sy or z != zy:
                refuse(self, op, f"xs[{i}] has scale/zero point ({s!r}, {z}) != the output's ({sy!r}, {zy}): LiteRT's "
                                 "int8 CONCATENATION requires equal qparams")
        if activation != "NONE" and self.kernels != "xnnpack":
            refuse(self, op, f"activation={activation!r}: the builtin kernels require NONE")
        values = jnp.concatenate([x.values for x in xs], axis=int(axis))
        return _output(values, sy, zy)

    def tfl_quantize(self, x, out_scale, out_zero_point, dtype="int8"):
        """QUANTIZE: float32 array -> QArray of ``dtype`` (``"int8"``, ``"uint8"``)."""
        op = "QUANTIZE"
        qd = _out_dtype(self, dtype, op)
        sy = _scalar(self, out_scale, "out_scale", op, float, traced_ok=True)
        zy = _scalar(self, out_zero_point, "out_zero_point", op, int, traced_ok=True)
        x = jnp.asarray(x)
        if x.dtype != jnp.float32:
            raise TypeError(f"QUANTIZE: x must be float32, got {x.dtype}")
        s, z = jnp.float32(sy), jnp.int32(zy)
        if self.kernels == "optimized":
            values = te.quantize_optimized(x, s, z, qd.qmin, qd.qmax)
        elif self.kernels == "reference":
            values = te.quantize_reference(x, s, z, qd.qmin, qd.qmax)
        else:
            values = te.quantize_xnnpack(x, s, z, qd.qmin, qd.qmax)
        return _output(values, sy, zy, qd)

    def tfl_requantize(self, x, out_scale, out_zero_point, dtype="int8"):
        """QUANTIZE of a quantized tensor (int8/uint8 -> int8/uint8 with new qparams)."""
        op = "QUANTIZE (requantize)"
        qd = _out_dtype(self, dtype, op)
        si, zi = _qparams(self, x, op, "x", traced_ok=True)
        sy = _scalar(self, out_scale, "out_scale", op, float, traced_ok=True)
        zy = _scalar(self, out_zero_point, "out_zero_point", op, int, traced_ok=True)
        in_dtype = as_qdtype(x.dtype)
        if in_dtype not in (qint8, quint8):
            refuse(self, op, f"x must be qint8 or quint8, got {in_dtype.name}")
        x1 = x.values.astype(jnp.int32) - jnp.int32(zi)
        if self.kernels == "xnnpack":
            _require_concrete(self, op, "XNNPACK's scale range", si, sy)
            if in_dtype != qd or (not (2.0**-8 <= float(np.float32(si) / np.float32(sy)) <= 2.0**7)):
                refuse(self, op, "the XNNPACK delegate takes int8->int8 / uint8->uint8 with si/so in [2**-8, 2**7] "
                                 "only; the node runs on LiteRT('optimized')")
            values = te.requantize_xnnpack(x1, te.requant_multiplier_xnnpack(si, sy), zy, qd.qmin, qd.qmax)
        else:
            multiplier = te.requant_multiplier_builtin(si, sy)
            # optimized_ops::Requantize has NEON bodies for every int8/uint8 pair; the int8->int8 one was
            # measured (blocks of 16); the others are assumed to share it (checked by the sweep script)
            values = te.requantize_builtin(x1, multiplier, zy, qd.qmin, qd.qmax,
                                           optimized=self.kernels == "optimized")
        return _output(values, sy, zy, qd)

    def tfl_dequantize(self, x):
        """DEQUANTIZE: QArray -> float32 array."""
        op = "DEQUANTIZE"
        s, z = _qparams(self, x, op, "x", traced_ok=True)
        if as_qdtype(x.dtype) not in (qint8, quint8):
            refuse(self, op, f"x must be qint8 or quint8, got {as_qdtype(x.dtype).name}")
        if self.kernels == "optimized":
            return te.dequantize_optimized(x.values, jnp.float32(s), jnp.int32(z))
        return te.dequantize_reference(x.values, jnp.float32(s), jnp.int32(z))
