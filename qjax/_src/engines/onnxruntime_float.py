"""ONNX Runtime's float ops between DequantizeLinear and QuantizeLinear (a mixin of ``OnnxRuntime``).

ORT's optimized graph keeps some ops float (measured with ORT 1.32 on quantize_static QDQ models; selectors in
``onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc``): Convs whose bias reached
quantize_static through an ``Identity`` (no int32 bias DQ when the fusion pass runs: ConvNodeGroupSelector needs
one; ORT's BiasQuantization pass adds it later), Conv / Add / MaxPool / GlobalAveragePool with int8 activations
(ORT's QDQS8ToU8 pass turns some Q/DQ pairs to uint8, and the selectors require ``dt_input == dt_output``), and
ops with no QDQ selector (HardSigmoid + Mul of a Hardswish, AveragePool, Resize, ReduceMean, Tanh).

Single-rounding ops are reproduced for any input; summations only when every dequantized value, product and
partial sum is exact in float32 (:mod:`qjax._src.qops.onnx_float`), refused otherwise in one line naming the
node and the violated condition.  Sigmoid / Tanh (MLAS polynomial kernels) and linear Resize are refused.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jax import lax

from ..checks import is_concrete
from ..float32 import div_rn
from ..qops import onnx_float as F
from ..qops.tflite_common import STATIC_QPARAMS
from .base import refuse

__all__ = ["OrtFloat"]

_I32 = jnp.int32


def _qrange(q):
    return q.dtype.qmin, q.dtype.qmax


def _weight_units(w):
    """``w.values - w.zero_point`` on the host (int64, zero point per output channel along axis 0)."""
    return np.asarray(w.values, np.int64) - np.asarray(w.zero_point, np.int64).reshape((-1,) + (1,) * (w.ndim - 1))


def _conv_int32(a, b, strides, pads, dilations, group):
    """The exact int32 convolution of integer arrays ``a`` ``(N, C, *sp)`` and ``b`` ``(O, C/group, *k)``."""
    nd = len(strides)
    return lax.conv_general_dilated(a, jnp.asarray(b, _I32), tuple(strides),
                                    [(pads[i], pads[nd + i]) for i in range(nd)], rhs_dilation=tuple(dilations),
                                    feature_group_count=group, preferred_element_type=_I32)


def _k(q):
    return q.values.astype(_I32) - jnp.asarray(q.zero_point, _I32)


def _kmax(q):
    lo, hi = _qrange(q)
    return int(np.max(np.maximum(np.abs(lo - np.asarray(q.zero_point, np.int64)),
                                 np.abs(hi - np.asarray(q.zero_point, np.int64)))))


_BIAS_NOT_EXACT = "the dequantized bias is not an exact integer multiple of the products' last place"


class OrtFloat:
    """Mixin of :class:`~qjax.engines.OnnxRuntime`: ``ort_float_*`` methods (signatures in the contract)."""

    # -- single correctly rounded ops ---------------------------------------------------------------------------
    def ort_float_binary(self, op: str, a, b):
        """``fl32(a op b)`` (float32, numpy broadcasting), ``op`` in Add/Sub/Mul/Div/Max/Min (ORT's element-wise
        kernels round each op once)."""
        if op not in F.BINARY_OPS:
            refuse(self, op, f"float {op} is not reproduced (use one of {F.BINARY_OPS})")
        return F.binary_f32(op, a, b)

    def ort_float_unary(self, op: str, x, *, alpha=None, beta=None, lo=None, hi=None):
        """Float activation (Relu, Clip, HardSigmoid, HardSwish, Neg, Abs, Identity) of float32 ``x``; see
        :func:`qjax._src.qops.onnx_float.unary_f32`.  Sigmoid / Tanh are refused."""
        if op in ("Sigmoid", "Tanh"):
            refuse(self, op, f"float {op} runs MLAS's polynomial kernel (logistic.cpp / tanh.cpp, FMA per ISA), "
                             "which qjax does not mirror")
        if op not in F.UNARY_OPS:
            refuse(self, op, f"float {op} is not reproduced")
        return F.unary_f32(op, x, alpha=alpha, beta=beta, lo=lo, hi=hi)

    def ort_float_max_pool(self, x, *, kernel_shape, strides, pads, dilations, ceil_mode=0):
        """MaxPool (also com.microsoft.nchwc:MaxPool) of ``(N, C, *spatial)`` float32: exact."""
        return F.max_pool_f32(x, kernel_shape=tuple(kernel_shape), strides=tuple(strides), pads=tuple(pads),
                              dilations=tuple(dilations), ceil_mode=bool(ceil_mode))

    def ort_float_resize(self, x, *, mode, coordinate_transformation_mode, nearest_mode, out_shape, scales=None):
        """Nearest Resize of float32 ``x`` (a gather with ORT's float32 coordinate math); linear/cubic refused.
        ``scales`` default ``out/in`` in float32 (as ORT derives them from ``sizes``)."""
        if mode != "nearest":
            refuse(self, "Resize", f"float mode={mode!r} interpolates with kernel-dependent float weights/order "
                                   "(upsamplebase.h / nchwc Upsample); only 'nearest' is reproduced")
        if scales is None:
            scales = [np.float32(o) / np.float32(i) for i, o in zip(x.shape, out_shape)]
        return F.resize_nearest_f32(x, scales=scales, out_shape=tuple(out_shape),
                                    coordinate_transformation_mode=coordinate_transformation_mode,
                                    nearest_mode=nearest_mode)

    # -- summations ---------------------------------------------------------------------------------------------
    def _exact_or_refuse(self, node, why):
        if why is not None:
            refuse(self, node, "the float result depends on MLAS's summation order / FMA and exactness is not "
                               f"provable: {why}")

    def _bias_units(self, node, bias, sa, sb, n_out):
        """The bias in units of the products' last place ``(n_out,)``, or None when it is not an integer there."""
        if bias is None:
            return np.zeros(n_out, np.int64)
        if not is_concrete(bias.values):
            refuse(self, node, "the bias must be a constant (its exactness is checked on the host)")
        u = F.bias_units(np.asarray(bias.values), np.asarray(bias.scale), sa, sb)
        return None if u is None else np.broadcast_to(u, (n_out,))

    def _bias(self, node, bias, sa, sb, n_out):
        u = self._bias_units(node, bias, sa, sb, n_out)
        self._exact_or_refuse(node, _BIAS_NOT_EXACT if u is None else None)
        return u

    def _check_static(self, node, *qs):
        for q in qs:
            if not (is_concrete(q.scale) and is_concrete(q.zero_point)):
                refuse(self, node, "the exactness proof runs on the host: " + STATIC_QPARAMS)
            if q.axis is not None and q is qs[0]:
                refuse(self, node, "a per-axis activation is not supported")

    def ort_float_conv(self, x, w, bias=None, *, strides, pads, dilations, group=1, activation=None,
                       activation_params=None, node="Conv"):
        """Float Conv (and com.microsoft FusedConv with ``activation`` Relu/Clip) of dequantized QArrays.

        ``x`` ``(N, C, *sp)`` per-tensor, ``w`` ``(O, C/group, *k)`` constant, per-tensor or axis 0, ``bias``
        int32 QArray ``(O,)`` or None.  Exact (then returns ORT's float32 ``(N, O, *out_sp)``) when every
        partial sum is exact (:func:`~qjax._src.qops.onnx_float.exact_products_check`): the value is
        ``(sum k_x k_w * m_x m_w[o] + bias_units[o]) * 2**(e_x + e_w[o])`` computed in int32."""
        why, kw, sw, bu = self._conv_exactness(x, w, bias, node)
        self._exact_or_refuse(node, why)
        n_out = kw.shape[0]
        nd = x.ndim - 2
        acc = _conv_int32(_k(x), kw, strides, pads, dilations, group)
        ma, ea = F.odd_mantissa(x.scale)
        me = [F.odd_mantissa(s) for s in sw]
        mult = jnp.asarray([ma * m for m, _ in me], _I32).reshape((1, n_out) + (1,) * nd)
        exps = np.asarray([ea + e for _, e in me]).reshape((1, n_out) + (1,) * nd)
        units = acc * mult + jnp.asarray(bu, _I32).reshape((1, n_out) + (1,) * nd)
        y = F.scaled_int_to_f32(units, exps)
        if activation is not None:
            p = list(activation_params or [])
            y = self.ort_float_unary(activation, y, lo=p[0] if p else None, hi=p[1] if len(p) > 1 else None)
        return y

    def _conv_exactness(self, x, w, bias, node):
        """``(why, kw, sw, bias_units)``: ``why`` None when every partial sum of the float Conv is exact in float32
        (:func:`~qjax._src.qops.onnx_float.exact_products_check`), else the violated condition; ``bias_units``
        None when the dequantized bias is not an integer multiple of the products' last place."""
        self._check_static(node, x, w)
        if not is_concrete(w.values):
            refuse(self, node, "the weight must be a constant")
        kw = _weight_units(w)
        n_out = kw.shape[0]
        sw = np.broadcast_to(np.asarray(w.scale, np.float32), (n_out,))
        bu = self._bias_units(node, bias, x.scale, sw, n_out)
        if bu is None:
            return _BIAS_NOT_EXACT, kw, sw, None
        terms = _kmax(x) * np.abs(kw).reshape(n_out, -1).sum(1)
        return F.exact_products_check(x.scale, x.zero_point, None, sw, w.zero_point, None, terms, bu), kw, sw, bu

    def _matmul(self, a, b, c, node, trans_a=0, trans_b=0):
        self._check_static(node, a, b)
        if b.axis is not None and b.axis != b.ndim - 1:
            refuse(self, node, "a per-axis B must be per column (its last axis)")
        ka = _k(a)
        kb = _k(b)
        if trans_a:
            ka = jnp.swapaxes(ka, -1, -2)
        if trans_b:
            kb = jnp.swapaxes(kb, -1, -2)
        n_out = kb.shape[-1]
        sb = np.broadcast_to(np.asarray(b.scale, np.float32), (n_out,))
        if is_concrete(b.values):
            kbn = np.asarray(b.values, np.int64) - np.asarray(b.zero_point, np.int64)
            if trans_b:
                kbn = np.swapaxes(kbn, -1, -2)
            terms = _kmax(a) * np.abs(kbn).reshape(-1, kbn.shape[-2], n_out).sum(-2).max(0)
        else:
            terms = np.full(n_out, ka.shape[-1] * _kmax(a) * _kmax(b), np.int64)
        bu = self._bias(node, c, a.scale, sb, n_out)
        self._exact_or_refuse(node, F.exact_products_check(a.scale, a.zero_point, None, sb, b.zero_point, None,
                                                           terms, bu))
        acc = jnp.matmul(ka, kb, preferred_element_type=_I32)
        ma, ea = F.odd_mantissa(a.scale)
        me = [F.odd_mantissa(s) for s in sb]
        units = acc * jnp.asarray([ma * m for m, _ in me], _I32) + jnp.asarray(bu, _I32)
        return F.scaled_int_to_f32(units, np.asarray([ea + e for _, e in me]))

    def ort_float_matmul(self, a, b, *, node="MatMul"):
        """Float MatMul of dequantized QArrays ``a`` ``(..., M, K)`` (per-tensor) and ``b`` ``(..., K, N)``
        (per-tensor or per column; constant or not), exact or refused (see :meth:`ort_float_conv`)."""
        return self._matmul(a, b, None, node)

    def ort_float_gemm(self, a, b, c=None, *, alpha=1.0, beta=1.0, trans_a=0, trans_b=0, node="Gemm"):
        """Float Gemm ``alpha * A' B' + beta * C`` of dequantized QArrays (C an int32 bias QArray ``(N,)``);
        only ``alpha == 1`` and ``beta == 1`` (a scaling would add roundings in MLAS's kernel)."""
        if float(alpha) != 1.0 or (c is not None and float(beta) != 1.0):
            refuse(self, node, f"alpha={alpha}, beta={beta}: only alpha = beta = 1 is reproduced")
        return self._matmul(a, b, c, node, trans_a, trans_b)

    def _mean(self, node, x, n, sums, counts):
        self._check_static(node, x)
        lo, hi = _qrange(x)
        self._exact_or_refuse(node, F.exact_sum_check(x.scale, x.zero_point, lo, hi, n))
        m, e = F.odd_mantissa(x.scale)
        total = F.scaled_int_to_f32(sums * m, np.asarray(e))
        # MLAS pooling.cpp AveragePool / ORT's mean: one division of the (exact) sum by the count
        return div_rn(total, jnp.broadcast_to(jnp.asarray(counts, jnp.float32), total.shape))

    def ort_float_avg_pool(self, x, *, kernel_shape, strides, pads, count_include_pad=0, ceil_mode=0,
                           node="AveragePool"):
        """Float AveragePool (also nchwc) of a dequantized per-tensor QArray ``(N, C, *sp)``: exact sum / count
        (count = kernel size with ``count_include_pad``, else the valid taps), when the sum is exact."""
        if ceil_mode:
            refuse(self, node, "ceil_mode=1 average pooling is not reproduced")
        nd = len(kernel_shape)
        cfg = [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)]
        win, st = (1, 1) + tuple(kernel_shape), (1, 1) + tuple(strides)
        sums = lax.reduce_window(_k(x), jnp.int32(0), lax.add, win, st, cfg)
        if count_include_pad:
            counts = np.float32(np.prod(kernel_shape))
        else:
            ones = jnp.ones((1, 1) + x.shape[2:], _I32)
            counts = lax.reduce_window(ones, jnp.int32(0), lax.add, win, st, cfg)
        return self._mean(node, x, int(np.prod(kernel_shape)), sums, counts)

    def ort_float_global_avg_pool(self, x, *, node="GlobalAveragePool"):
        """Float GlobalAveragePool ``(N, C, *sp) -> (N, C, 1, ...)`` of a dequantized QArray (exact or refused)."""
        axes = tuple(range(2, x.ndim))
        n = int(np.prod(x.shape[2:]))
        return self._mean(node, x, n, jnp.sum(_k(x), axis=axes, keepdims=True), np.float32(n))

    def ort_float_reduce_mean(self, x, *, axes, keepdims=1, node="ReduceMean"):
        """Float ReduceMean over ``axes`` of a dequantized QArray (exact or refused)."""
        axes = tuple(a % x.ndim for a in axes)
        n = int(np.prod([x.shape[a] for a in axes]))
        return self._mean(node, x, n, jnp.sum(_k(x), axis=axes, keepdims=bool(keepdims)), np.float32(n))

    # -- Conv fused with its QuantizeLinear: per-output proof -------------------------------------------------------
    def ort_float_conv_q(self, x, w, bias=None, *, strides, pads, dilations, group=1, out_scale, out_zero_point,
                         out_dtype, node="Conv"):
        """Float Conv followed by its sole consumer QuantizeLinear (MLAS ``quantize.cpp``: ``fl(v / out_scale)``,
        saturate, round half to even, ``+ zp``): ``(QArray (N, O, *out_sp), proven bool (N, O, *out_sp))``.

        When :meth:`ort_float_conv` is exact the result is ORT's and ``proven`` is all True.  Otherwise, for any
        summation order and FMA use (``|fl(sum) - sum| <= gamma_{K+2} * sum |terms|``, ``gamma_n = n u / (1 - n u)``,
        ``u = 2**-24``; the DQ roundings ``|fl(k s) - k s| <= u |k s|``), the exact-arithmetic quotient
        ``T = (acc * sx * sw + db) / sy`` lies within a margin ``M`` of ORT's ``fl(V / sy)``; where ``T`` is farther
        than ``M`` from every half-integer both round to the same integer and ``proven`` is True.  Elsewhere the
        integer is the exact-arithmetic one, NOT guaranteed to be ORT's: callers must report ``~proven``."""
        from ..dtypes import as_qdtype
        from ..qarray import QArray

        qd = as_qdtype(out_dtype)
        qlo, qhi = qd.qmin, qd.qmax
        sy, zy = np.float32(out_scale), int(out_zero_point)
        nd = x.ndim - 2

        def finish(t):
            t = jnp.clip(t, jnp.float32(qlo - zy), jnp.float32(qhi - zy))
            vals = (jnp.round(t).astype(_I32) + zy).astype(qd.storage)
            return QArray(vals, sy, np.int32(zy), qd, check=False)

        why, kw, sw, _ = self._conv_exactness(x, w, bias, node)
        if why is None:
            v = self.ort_float_conv(x, w, bias, strides=strides, pads=pads, dilations=dilations, group=group, node=node)
            return finish(div_rn(v, jnp.full(v.shape, sy, jnp.float32))), jnp.ones(v.shape, bool)
        n_out = kw.shape[0]
        if bias is not None:
            db = (np.asarray(bias.values).astype(np.float32) * np.asarray(bias.scale, np.float32)).astype(np.float32)
        else:
            db = np.zeros(n_out, np.float32)
        kx = _k(x)
        acc = _conv_int32(kx, kw, strides, pads, dilations, group)
        sabs = _conv_int32(jnp.abs(kx), np.abs(kw), strides, pads, dilations, group)  # sum |kx| |kw| (< 2**31: 255 * 128 * K)
        shape = (1, n_out) + (1,) * nd
        # products' scale fl(sx*sw) and the quotient in float32; each step's rounding is charged to the margin
        pscale = jnp.asarray((np.float32(x.scale) * sw).astype(np.float32).reshape(shape))
        dbv = jnp.asarray(db.reshape(shape))
        c = F.binary_f32("Add", F.binary_f32("Mul", acc.astype(jnp.float32), pscale), dbv)
        t = div_rn(c, jnp.full(c.shape, sy, jnp.float32))
        u = 2.0 ** -24
        k_terms = int(np.prod(kw.shape[1:])) + 2
        gamma = k_terms * u / (1 - k_terms * u)
        mag = F.binary_f32("Add", F.binary_f32("Mul", sabs.astype(jnp.float32), pscale), jnp.abs(dbv))
        # |V_exact - c_real| <= (2u + u^2) sabs*sx*sw ; |V_ort - V_exact| <= gamma (1+u)^2 mag ;
        # float32 evaluation of c and t: <= 6u (mag) / sy + 2u |t| ; x1.01 and +2**-20 slack for the bound's own roundings
        margin = (mag * np.float32((2 * u + u * u + gamma * (1 + u) ** 2 + 6 * u) * 1.01) / sy
                  + jnp.abs(t) * np.float32(2 * u * 1.01) + np.float32(2.0 ** -20))
        dist = jnp.abs(t - jnp.floor(t) - np.float32(0.5))  # exact for |t| < 2**22
        proven = (dist > margin) | (t <= np.float32(qlo - zy - 1)) | (t >= np.float32(qhi - zy + 1))
        return finish(t), proven
