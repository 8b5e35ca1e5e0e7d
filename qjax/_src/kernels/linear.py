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

from .conv import offset_corrected, ones_dot, pair_saturated_dot, when_nonzero

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
        lead = xs.shape[:-1]
        x2 = xs.reshape((-1, k))
        m = x2.shape[0]
        # sum_k w[o, k] comes out of the same int8 GEMM as one extra row of ones: reading
        # the weights once, as int8 (a separate reduce widens them to an int32 copy first)
        xe = jnp.concatenate([x2, jnp.ones((1, k), jnp.int8)], axis=0)
        raw_e = lax.dot_general(xe, w, (((1,), (1,)), ((), ())), preferred_element_type=_I32)
        raw, sum_w = raw_e[:m].reshape(lead + (out_ch,)), raw_e[m]
        # the row sums only matter for a nonzero weight zero point
        sum_x = when_nonzero(zw, lambda: ones_dot(xs, axis=-1), lead + (1,))
        return offset_corrected(raw, zs, sum_w, zw, sum_x, k)
    if saturation != "gemm_pairs":
        raise ValueError(f"saturation={saturation!r}; linear supports None or 'gemm_pairs'")
    xi = x.astype(_I32)
    wi = w.astype(_I32)
    raw = pair_saturated_dot(xi[..., None, :], wi[None])[..., 0, :]
    return offset_corrected(raw, zx, jnp.sum(wi, axis=1), zw, jnp.sum(xi, axis=-1, keepdims=True), k)
