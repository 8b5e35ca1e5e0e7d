"""Rules every LiteRT (TFLite) int8 kernel shares: SAME/VALID padding and the fused-activation range.

* **padding** (``tensorflow/lite/kernels/padding.h``, ``ComputePaddingHeightWidth``): the output extent
  is ``ceil(in / stride)`` for SAME and ``ceil((in - eff + 1) / stride)`` for VALID, ``eff = (k - 1) *
  dilation + 1``; the total padding ``max((out - 1) * stride + eff - in, 0)`` is split ``lo = total // 2``,
  ``hi = total - lo`` (the odd cell goes after).
* **fused activation** (``kernels/kernel_util.cc``, ``CalculateActivationRangeQuantizedImpl``): the output
  is clamped to ``[act_min, act_max]`` with ``quantize(f) = zp + (int32) TfLiteRound(f / scale)`` (float32
  division, ``std::round``: half away from zero): RELU ``[max(qmin, quantize(0)), qmax]``, RELU6
  ``[max(qmin, quantize(0)), min(qmax, quantize(6))]``, RELU_N1_TO_1 ``[max(qmin, quantize(-1)),
  min(qmax, quantize(1))]``, NONE ``[qmin, qmax]``.  Clamping the final integer to that range equals the
  kernels' clamp after adding the zero point.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..float32 import div_rn, uncontracted
from ..rounding import round_float

__all__ = ["ACTIVATIONS", "STATIC_QPARAMS", "output_size", "explicit_padding", "activation_range", "activation_range_xnnpack",
           "apply_activation"]

#: what to do where an op needs concrete qparams (QArray qparams are tracers under a plain ``jax.jit``)
STATIC_QPARAMS = ("pass concrete qparams: under jax.jit, build the QArrays and call the op inside "
                  "`with jax.ensure_compile_time_eval():` (as qjax.from_tflite's nodes do), or call it outside jit")

#: TFLite's ActivationFunctionType values that int8 kernels fuse (TANH / SIGN_BIT are not fused by them)
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


def output_size(mode: str, in_size: int, k: int, stride: int, dilation: int = 1) -> int:
    """``ComputeOutSize``: the output extent of one spatial dim for ``mode`` ``"SAME"`` / ``"VALID"``."""
    eff = (k - 1) * dilation + 1
    if mode == "SAME":
        return (in_size + stride - 1) // stride
    if mode == "VALID":
        return (in_size + stride - eff) // stride
    raise ValueError(f"padding={mode!r}; use 'SAME' or 'VALID'")


def explicit_padding(mode: str, in_spatial, kernel, strides, dilation=None) -> tuple:
    """One ``(lo, hi)`` pair per spatial dim, as TFLite pads for ``mode`` (see the module doc)."""
    dilation = dilation or (1,) * len(kernel)
    pads = []
    for n, k, s, d in zip(in_spatial, kernel, strides, dilation):
        out = output_size(mode, n, k, s, d)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def activation_range(activation: str, scale, zero_point, qmin: int = -128, qmax: int = 127):
    """``(act_min, act_max)`` int32 scalars (traced or concrete ``scale`` float32, ``zero_point`` int)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; int8 kernels fuse one of {ACTIVATIONS}")
    zp = jnp.asarray(zero_point, jnp.int32)

    def quantize(f):
        q = round_float(div_rn(np.float32(f), jnp.asarray(scale, jnp.float32)), "half_away")
        return zp + jnp.clip(q, -2.0**31, 2.0**31 - 128).astype(jnp.int32)  # static_cast<int32> of an in-range value

    lo, hi = jnp.int32(qmin), jnp.int32(qmax)
    if activation in ("RELU", "RELU6"):
        lo = jnp.maximum(lo, quantize(0.0))
    if activation == "RELU6":
        hi = jnp.minimum(hi, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        lo, hi = jnp.maximum(lo, quantize(-1.0)), jnp.minimum(hi, quantize(1.0))
    return lo, hi


def apply_activation(values, activation: str, scale, zero_point, qmin: int = -128, qmax: int = 127):
    """``clamp(values, act_min, act_max)`` (int32 in, int32 out)."""
    lo, hi = activation_range(activation, scale, zero_point, qmin, qmax)
    return jnp.clip(values, lo, hi)


def activation_range_xnnpack(activation: str, scale, zero_point, qmin: int = -128, qmax: int = 127):
    """``(act_min, act_max)`` as the XNNPACK delegate clamps a fused activation (int32 scalars).

    The delegate turns the activation into a float range (``xnnpack_delegate.cc``,
    ``ConvertActivationToOutputRange``: RELU ``[0, inf]``, RELU6 ``[0, 6]``, RELU_N1_TO_1 ``[-1, 1]``, NONE
    ``[-inf, inf]``) and XNNPACK quantizes each bound with ``xnn_qs8_quantize`` (``requantization.h``):
    ``lrintf(clamp(fl32(fl32(f / scale) + zp), qmin, qmax))`` — float32 division and addition, ties to
    even — where the builtin kernels round ``f / scale`` half away from zero before adding ``zp``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; int8 kernels fuse one of {ACTIVATIONS}")
    bounds = {"NONE": (-np.inf, np.inf), "RELU": (0.0, np.inf), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}
    zp = jnp.asarray(zero_point, jnp.float32)

    def quantize(f):
        if np.isinf(f):
            return jnp.int32(qmin if f < 0 else qmax)
        v = uncontracted(div_rn(np.float32(f), jnp.asarray(scale, jnp.float32))) + zp
        return jnp.round(jnp.clip(v, float(qmin), float(qmax))).astype(jnp.int32)

    lo, hi = bounds[activation]
    return quantize(lo), quantize(hi)
