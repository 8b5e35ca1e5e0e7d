"""Offline derivation of integer-only parameters from float scales (numpy, float64; the one home of these rules).

For one conv/linear layer with float32 scales ``sx``, ``sw`` (scalar or per channel), ``sy`` and a
float32 bias ``b`` (all widened to float64, where ``sx*sw`` is exact)::

    bias_q      = round_mode(b / (sx*sw))              int32, spec.bias_rounding
    (m0, shift) = fixed point of M = sx*sw / sy         spec.multiplier style, multiplier_bits, shift_range

and for TFLite's quantized ADD (``reference_ops::AddElementwise``, ``add.cc``) three multipliers::

    Ma = sa / (2 max(sa, sb)),  Mb = sb / (2 max(sa, sb)),  Mo = 2 max(sa, sb) / (2**20 sy).

What the accelerator's compiler does offline; :func:`qjax.hardware.convert` stores the results and
the integer-only engine (:class:`~qjax.engines.HardwareSpec`) derives the same integers in the graph.
"""

from __future__ import annotations

import jax
import numpy as np

from ..checks import QuantizationError
from ..rounding import round_offline
from .fixed_point import quantize_multiplier
from .integer_only import ADD_LEFT_SHIFT

__all__ = ["derive_multiplier", "derive_layer", "derive_add", "as_float64"]


def as_float64(v):
    """A (concrete) float32 value widened to float64 exactly, as the offline derivation computes with it."""
    return np.asarray(jax.device_get(v), np.float32).astype(np.float64)


def derive_multiplier(m, spec, where: str = "") -> tuple[np.ndarray, np.ndarray, int]:
    """``(m0, shift, lost)`` int32 arrays for real multipliers ``m`` under ``spec``.

    ``lost`` counts multipliers that needed more right shift than ``spec.shift_range``
    allows and lost low bits (``m0`` shifted right, rounding half away, possibly to 0).
    A multiplier needing more *left* shift than allowed is an error.
    """
    m = np.atleast_1d(np.asarray(m, np.float64))
    lo, hi = spec.shift_range
    # both styles as a total right shift n of the product (M ~= m0 * 2**-n) and its allowed range
    if spec.multiplier == "dyadic":
        m0, n = quantize_multiplier(m, spec.multiplier_bits, "dyadic")
        n_min, n_max = lo, hi
    else:
        m0, shift = quantize_multiplier(m, spec.multiplier_bits, spec.multiplier)
        n, n_min, n_max = 31 - shift, 31 - hi, 31 - lo
    if np.any(n < n_min):
        raise QuantizationError(f"{where}: multiplier {m.max():.6g} needs more left shift than shift_range="
                                f"{spec.shift_range} allows")
    over = np.maximum(n - n_max, 0)
    # a flushed multiplier is rounded once, from m itself (rounding the rounded m0 again would be off by one),
    # keeping the bits it still has: k low bits stay zero where m0 had more than `bits` bits of room
    k = np.zeros_like(over) if spec.multiplier == "dyadic" else np.maximum(31 - spec.multiplier_bits - over, 0)
    exponent = np.where(over > 0, n_max - k, 0).astype(np.int64)  # only flushed entries need it
    flushed = (np.floor(np.ldexp(m, exponent) + 0.5) * 2.0**k).astype(np.int64)
    m0 = np.where(over > 0, flushed, m0)
    n = np.minimum(n, n_max)
    stored = n if spec.multiplier == "dyadic" else 31 - n
    return m0.astype(np.int32), stored.astype(np.int32), int(np.count_nonzero(over))


def derive_layer(x_scale, w_scale, out_scale, bias, out_channels: int, spec, where: str = "",
                 rng: np.random.Generator | None = None):
    """The integer parameters of one conv/linear layer (numpy, float64 of the float32 scales).

    Returns ``(bias_q or None, m0, shift, lost)`` with ``bias_q``, ``m0``, ``shift`` int32 ``(O,)``:
    ``bias_q = round(b / (sx*sw))`` (``spec.bias_rounding``; the float64 product of two float32
    values is exact) and ``(m0, shift)`` from :func:`derive_multiplier` of ``M = sx*sw/sy`` — with
    ``sx*sw`` rounded to float32 first for per-tensor weights under ``spec.per_tensor_product="float32"``.
    """
    sx, sw, sy = as_float64(x_scale), as_float64(w_scale), as_float64(out_scale)
    atw = np.broadcast_to(sx * sw, (out_channels,))
    prod = atw
    if getattr(spec, "per_tensor_product", "float64") == "float32" and np.ndim(sw) == 0:
        # TFLite's uint8 kernels: static_cast<double>(input->params.scale * filter->params.scale)
        prod = atw.astype(np.float32).astype(np.float64)
    m0, shift, lost = derive_multiplier(prod / sy, spec, where)
    bq = None
    if bias is not None:
        bq = round_offline(as_float64(bias) / atw, spec.bias_rounding, rng)
        if np.any(np.abs(bq) >= 2**31):
            raise QuantizationError(f"{where}: bias / (sx*sw) reaches {np.abs(bq).max():.4g}, beyond int32")
        bq = bq.astype(np.int32)
    return bq, m0, shift, lost


def derive_add(a_scale, b_scale, out_scale, spec, where: str = "") -> tuple[dict, int]:
    """TFLite ADD's three multipliers: ``({m0_a, shift_a, m0_b, shift_b, m0, shift}: int32 scalars, lost)``."""
    sa, sb, sy = (float(as_float64(v)) for v in (a_scale, b_scale, out_scale))
    twice_max = 2 * max(sa, sb)
    out, lost = {}, 0
    for tag, mult in (("_a", sa / twice_max), ("_b", sb / twice_max), ("", twice_max / (2**ADD_LEFT_SHIFT * sy))):
        m0, shift, n = derive_multiplier(mult, spec, f"{where} (add{tag or ' output'})")
        out["m0" + tag], out["shift" + tag] = np.int32(m0[0]), np.int32(shift[0])
        lost += n
    return out, lost
