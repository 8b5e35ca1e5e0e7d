"""fbgemm requantization: int32 accumulator -> quint8, exactly as torch 2.13 runs it.

Mirrors ``fbgemm::ReQuantizeOutput`` → ``requantizeOutputProcessingAvx2``
(``include/fbgemm/OutputProcessing-inl.h``, ``src/QuantUtilsAvx2.cc``), with the
scales torch passes from ``PackedConvWeight::apply_impl`` / ``PackedLinearWeight``
(``aten/src/ATen/native/quantized/cpu/qconv.cpp``, ``qlinear.cpp``)::

    sx = fl32(x_scale); sw[o] = fl32(w_scale[o])
    atw[o]  = fl32(sx * sw[o])                  # act_times_w_scale
    mult[o] = fl32(atw[o] / fl32(out_scale))    # C_multiplier (a division)
    xf = fl32(acc)                                            # no bias
    xf = fma(bias[o], fl32(1 / atw), fl32(acc))               # per-tensor weights
    xf = fl32(fl32(acc) + fl32(bias[o] / atw[o]))             # per-channel weights
    y  = fl32(xf * mult[o]);  r = rne(y)   (|y| >= 2**31 or NaN -> INT32_MIN, cvtps2dq)
    q  = clamp(r + zy, 0, 255);  relu: q = max(q, zy)

The float bias is folded *unrounded*: rounding it to int32 first (the usual hand
formula) differs from torch on ~4 in 10,000 outputs.  The per-tensor FMA is not in
the C++ source: it is GCC contracting ``mul`` + ``add`` into ``vfmadd231ps`` in the
shipped binary, which is why :func:`qjax.float32.fma` is used here.  The clamp is a
saturating int16 pack, ``adds_epi16(zy)`` and ``packus``, which equals the plain clamp
for every int32 ``r`` — so a huge positive ``y`` (r = INT32_MIN) gives 0, not 255.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x

__all__ = ["requantize_fbgemm", "fbgemm_multipliers", "round_to_int32_cvtps2dq"]


def fbgemm_multipliers(x_scale, w_scale, out_scale):
    """``(atw, mult)``: ``fl32(sx*sw)`` and ``fl32(atw / fl32(sy))`` (scalar or per channel)."""
    sx = jnp.asarray(x_scale, jnp.float32)
    sw = jnp.asarray(w_scale, jnp.float32)
    atw = f32x.mul_rn(sx, sw)
    return atw, f32x.div_rn(atw, out_scale)


def round_to_int32_cvtps2dq(y):
    """``cvtps2dq``: round half to even; out of int32 range or NaN gives INT32_MIN."""
    r = jnp.round(y)
    ok = jnp.abs(r) < np.float32(2**31)  # False for NaN
    return jnp.where(ok, jnp.where(ok, r, 0.0).astype(jnp.int32), jnp.int32(-(2**31)))


def requantize_fbgemm(acc, *, x_scale, w_scale, bias, out_scale, out_zero_point, relu=False,
                      per_channel=None, qmin=0, qmax=255):
    """Requantize an int32 accumulator the way fbgemm does (see the module docstring).

    Args:
      acc: int32 accumulator with output channels on the **last** axis.
      x_scale: activation scale (scalar).
      w_scale: weight scale, scalar (per-tensor) or ``(O,)`` (per-channel).
      bias: float32 ``(O,)`` or ``None``.
      out_scale, out_zero_point: output quantization parameters (scalars).
      relu: fuse ReLU (``max(q, zy)``).
      per_channel: whether the weights were quantized per channel (selects the bias
        fold); defaults to ``w_scale`` being a vector.
      qmin, qmax: output clamp (0, 255 for quint8).

    Returns:
      int32 array shaped like ``acc`` with values in ``[qmin, qmax]``.
    """
    if per_channel is None:
        per_channel = np.ndim(w_scale) == 1
    return _requantize(acc, x_scale, w_scale, bias, out_scale, out_zero_point, relu=bool(relu),
                       per_channel=bool(per_channel), qmin=int(qmin), qmax=int(qmax))


# Jitted so that a model's layers with the same shapes share one trace and one lowered function:
# the exact float32 emulation (mul_rn, div_rn, fma) is a few hundred jax ops, and re-tracing it
# for every layer was most of the trace+lower time of an imported model.  The values are the same
# (XLA inlines the call before optimising).
@functools.partial(jax.jit, static_argnames=("relu", "per_channel", "qmin", "qmax"))
def _requantize(acc, x_scale, w_scale, bias, out_scale, out_zero_point, *, relu, per_channel, qmin, qmax):
    atw, mult = fbgemm_multipliers(x_scale, w_scale, out_scale)
    accf = acc.astype(jnp.float32)
    if bias is None:
        xf = accf
    else:
        b = jnp.asarray(bias, jnp.float32)
        if per_channel:
            xf = accf + f32x.div_rn(b, atw)
        else:
            xf = f32x.fma(b, f32x.div_rn(1.0, atw), accf)
    r = round_to_int32_cvtps2dq(xf * mult)
    zy = jnp.asarray(out_zero_point, jnp.int32)
    # r <= 2**31 - 128 and zy <= 255, so r + zy cannot overflow int32
    q = jnp.clip(r + zy, qmin, qmax)
    if relu:
        q = jnp.maximum(q, zy)
    return q
