"""Integer linear (fully connected) accumulator: exact int32 ``sum_k (x - zx)(w - zw)``.

``x`` is ``(..., K)`` uint8, ``w`` is ``(O, K)`` int8 (torch's layout), the result
``(..., O)`` int32.  The exact path is an int8 x int8 ``dot_general`` of ``x - 128``
with int32 accumulation plus offset corrections; ``saturation="gemm_pairs"`` models
fbgemm's GEMM on ISAs without VNNI (``vpmaddubsw`` adds products of consecutive K
indices on raw u8 x s8 operands and saturates the pair sum to int16).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .conv import offset_corrected, pair_saturated_dot

__all__ = ["linear_accumulate"]

_I32 = jnp.int32


def linear_accumulate(x, zx, w, zw, *, saturation=None):
    """int32 accumulator of a quantized linear layer; see the module docstring."""
    k = x.shape[-1]
    out_ch = w.shape[0]
    zx = jnp.asarray(zx, _I32)
    zw = jnp.broadcast_to(jnp.asarray(zw, _I32), (out_ch,))
    if saturation is None:
        xs = lax.bitcast_convert_type(x ^ jnp.uint8(0x80), jnp.int8)  # x - 128, exact in int8
        zs = zx - 128
        raw = lax.dot_general(xs, w, (((xs.ndim - 1,), (1,)), ((), ())), preferred_element_type=_I32)
        sum_x = jnp.sum(xs.astype(_I32), axis=-1, keepdims=True)
        sum_w = jnp.sum(w.astype(_I32), axis=1)
        return offset_corrected(raw, zs, sum_w, zw, sum_x, k)
    if saturation != "gemm_pairs":
        raise ValueError(f"saturation={saturation!r}; linear supports None or 'gemm_pairs'")
    xi = x.astype(_I32)
    wi = w.astype(_I32)
    raw = pair_saturated_dot(xi[..., None, :], wi[None])[..., 0, :]
    return offset_corrected(raw, zx, jnp.sum(wi, axis=1), zw, jnp.sum(xi, axis=-1, keepdims=True), k)
