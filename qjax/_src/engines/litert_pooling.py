"""LiteRT's AVERAGE_POOL_2D / MAX_POOL_2D / MEAN / HARD_SWISH / LOGISTIC / TANH / SOFTMAX, per kernel family
(a mixin of ``LiteRT``).

Which arithmetic each family runs (checked against ``ai-edge-litert`` 2.3.0 on x86-64;
``scripts/check_litert_pooling.py``):

* AVERAGE_POOL_2D, HARD_SWISH, SOFTMAX are not taken by the XNNPACK delegate: ``"xnnpack"`` = ``"optimized"``.
* AVERAGE_POOL_2D / MAX_POOL_2D: one integer rule for all three families (:mod:`qjax.qops.tflite_pooling`).
* MEAN: reference ``QuantizedMeanOrSum``; optimized: its 4-D H, W keep_dims kernel, else the reference;
  XNNPACK: its float32 qs8 reduce.
* LOGISTIC / TANH: the builtin kernels (reference and optimized) share one float LUT; XNNPACK builds
  its own from its reference kernel (double-precision sigmoid, ties to even).
* HARD_SWISH: reference and optimized share the int16 fixed-point rule.
* SOFTMAX: reference gemmlowp fixed point; optimized (and XNNPACK) the float32 table.

Every op here needs concrete qparams (tables and multipliers are built on the host, Prepare's checks need the
values); under a plain ``jax.jit`` QArray qparams are tracers, and the ops say what to do
(:data:`~qjax.qops.tflite_common.STATIC_QPARAMS`: ``jax.ensure_compile_time_eval``, as the importer's nodes).
"""

from __future__ import annotations

import numpy as np

from ..checks import is_concrete
from ..qarray import QArray
from ..qops import tflite_activations as ta
from ..qops import tflite_pooling as tp
from ..qops.tflite_common import STATIC_QPARAMS, activation_range, activation_range_xnnpack
from .base import refuse

__all__ = ["LiteRTPooling"]

F32 = np.float32


def _concrete_qparams(op, x, out_scale, out_zero_point):
    """``(s_in, z_in, s_out, z_out)`` as Python numbers (per-tensor), or a one-line error."""
    vals = (x.scale, x.zero_point, out_scale, out_zero_point)
    if not all(is_concrete(v) for v in vals):
        raise ValueError(f"{op}: the qparams are traced, but LiteRT derives this op's multipliers / tables from "
                         f"them at Prepare time (on the host here): {STATIC_QPARAMS}")
    if np.size(x.scale) != 1 or np.size(out_scale) != 1:
        raise ValueError(f"{op}: x and the output must be quantized per tensor")
    return (float(F32(np.asarray(x.scale).reshape(()))), int(np.asarray(x.zero_point).reshape(())),
            float(F32(np.asarray(out_scale).reshape(()))), int(np.asarray(out_zero_point).reshape(())))


def _geometry(filter_size, strides, padding):
    return (tuple(int(v) for v in filter_size), tuple(int(v) for v in strides),
            tuple((int(lo), int(hi)) for lo, hi in padding))


def _out(values, out_scale, out_zero_point):
    return QArray(values.astype(np.int8), F32(out_scale), np.int32(out_zero_point), "qint8")


class LiteRTPooling:
    """Pooling, reductions and nonlinear activations of :class:`~qjax.engines.LiteRT`; ``self.kernels`` picks
    the family.  QArrays qint8 per tensor, NHWC."""

    def tfl_avg_pool(self, x, filter_size, strides, padding, out_scale, out_zero_point, activation="NONE"):
        """AVERAGE_POOL_2D: ``filter_size`` / ``strides`` ``(h, w)``, ``padding`` explicit ``((lo, hi), (lo, hi))``
        (padded cells are not counted).  Every family: the rounded integer window mean of the raw values
        (the kernels assume output qparams = input qparams; the output's only set the activation range)."""
        _, _, so, zo = _concrete_qparams("AVERAGE_POOL_2D", x, out_scale, out_zero_point)
        lo, hi = activation_range(activation, so, zo)
        return _out(tp.avg_pool_int8(x.values, *_geometry(filter_size, strides, padding), lo, hi), so, zo)

    def tfl_max_pool(self, x, filter_size, strides, padding, out_scale, out_zero_point, activation="NONE"):
        """MAX_POOL_2D: the window maximum (every family), clamped to the fused activation's range (XNNPACK
        quantizes its bounds with ties to even: :func:`~qjax.qops.tflite_common.activation_range_xnnpack`).
        XNNPACK refuses output qparams other than the input's (its Prepare fails); the builtin kernels ignore them."""
        si, zi, so, zo = _concrete_qparams("MAX_POOL_2D", x, out_scale, out_zero_point)
        if self.kernels == "xnnpack" and (si, zi) != (so, zo):
            refuse(self, "MAX_POOL_2D", f"input qparams ({si!r}, {zi}) != output ({so!r}, {zo}): the XNNPACK delegate "
                   "fails to prepare it (the interpreter refuses the model)")
        rng = activation_range_xnnpack if self.kernels == "xnnpack" else activation_range
        lo, hi = rng(activation, so, zo)
        return _out(tp.max_pool_int8(x.values, *_geometry(filter_size, strides, padding), lo, hi), so, zo)

    def tfl_mean(self, x, axes, keep_dims, out_scale, out_zero_point):
        """MEAN over ``axes`` (a tuple of non-negative ints)."""
        si, zi, so, zo = _concrete_qparams("MEAN", x, out_scale, out_zero_point)
        ndim = x.values.ndim
        axes = tuple(sorted(set(int(a) % ndim for a in axes)))
        n = int(np.prod([x.values.shape[a] for a in axes])) if axes else 1
        if self.kernels == "xnnpack":
            s, z = tp.mean_xnnpack_params(si, zi, so, zo, n)
            v = tp.mean_xnnpack(x.values, axes, keep_dims, s, z)
        elif self.kernels == "optimized" and tp.is_hw_mean(ndim, axes, keep_dims):
            m, e, bias = tp.mean_optimized_hw_params(si, zi, so, zo, n)
            v = tp.mean_optimized_hw(x.values, m, e, bias)
        else:
            m, e = tp.mean_reference_params(si, so, n)
            v = tp.mean_reference(x.values, axes, keep_dims, zi, m, e, zo)
        return _out(v, so, zo)

    def tfl_hard_swish(self, x, out_scale, out_zero_point):
        """HARD_SWISH: ``reference_ops::HardSwish``'s int16 fixed point in every family (XNNPACK leaves it to
        the optimized kernel, which computes the same integers)."""
        si, zi, so, zo = _concrete_qparams("HARD_SWISH", x, out_scale, out_zero_point)
        return _out(ta.apply_lut(x.values, ta.lut_hard_swish_reference(si, zi, so, zo)), so, zo)

    def tfl_logistic(self, x, out_scale, out_zero_point):
        """LOGISTIC: the builtin kernels' float LUT (their Prepare requires the output scale 1/256); XNNPACK's
        double-precision one (any output qparams)."""
        si, zi, so, zo = _concrete_qparams("LOGISTIC", x, out_scale, out_zero_point)
        if self.kernels == "xnnpack":
            lut = ta.lut_xnnpack("logistic", si, zi, so, zo)
        else:
            if so != F32(1.0 / 256.0):
                raise ValueError(f"LOGISTIC: output scale {so!r}; LiteRT's builtin int8 kernel requires 1/256 "
                                 "(activations.cc, SigmoidPrepare)")
            lut = ta.lut_builtin("logistic", si, zi, so, zo)
        return _out(ta.apply_lut(x.values, lut), so, zo)

    def tfl_tanh(self, x, out_scale, out_zero_point):
        """TANH: the builtin kernels' float LUT (half away from zero); XNNPACK's (ties to even)."""
        si, zi, so, zo = _concrete_qparams("TANH", x, out_scale, out_zero_point)
        if self.kernels == "xnnpack":
            lut = ta.lut_xnnpack("tanh", si, zi, so, zo)
        else:
            lut = ta.lut_builtin("tanh", si, zi, so, zo)
        return _out(ta.apply_lut(x.values, lut), so, zo)

    def tfl_softmax(self, x, beta, out_scale, out_zero_point):
        """SOFTMAX over the last axis (output qparams 1/256, -128, as LiteRT's int8 kernel requires):
        reference: gemmlowp fixed point; optimized and xnnpack (not delegated): the float32 exp table."""
        si, zi, so, zo = _concrete_qparams("SOFTMAX", x, out_scale, out_zero_point)
        if zo != -128 or abs(so - 1.0 / 256.0) > 0.001 / 256.0:
            raise ValueError(f"SOFTMAX: output qparams ({so!r}, {zo}); LiteRT's int8 kernel requires "
                             "(1/256, -128)")
        if self.kernels == "reference":
            if x.values.shape[-1] > 4095:
                refuse(self, "SOFTMAX", f"a last axis of {x.values.shape[-1]} > 4095 overflows the reference "
                       "kernel's Q12.19 sum of exponentials")
            v = ta.softmax_reference(x.values, si, float(F32(beta)))
        else:
            v = ta.softmax_optimized(x.values, si, float(F32(beta)), so, zo)
        return _out(v, so, zo)
