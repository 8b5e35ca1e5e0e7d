"""Quantized embedding lookups: torch 2.13's ``quantized::embedding_bag_byte`` / ``_4bit`` and
``quantized::embedding_byte`` / ``_4bit`` (``nnq.EmbeddingBag``, ``nnq.Embedding``), bit for bit.

The weight is rowwise quantized (``per_channel_affine_float_qparams``: one float scale and one
*float* zero point per row, values quint8 or quint4x2).  Prepacking
(``qembeddingbag_prepack.cpp``) stores per row a scale and a bias :func:`row_params`:
``bias = -fl32(zero_point * scale)``; the 4-bit format stores both as float16.

The lookup (``qembeddingbag.cpp`` -> FBGEMM ``EmbeddingSpMDM`` for 8-bit / ``EmbeddingSpMDMNBit``
for 4-bit, the JIT kernels whose reference is ``EmbeddingSpMDM_ref``) folds the rows of a bag in
index order into a float32 accumulator that starts at 0::

    s, b = scale[r], bias[r]            (x per-sample weight w: s = fl32(s*w), b = fl32(b*w))
    acc  = fma(s, float(q[r, j]), acc + b)

:func:`embedding_bag_sum` is that fold; :func:`embedding_lookup` the single-row case
(``fma(s, q, b)``) of ``quantized::embedding_byte``.  torch 2.13's ops compute this *sum* whatever
their ``mode`` argument says (``mode=1`` "mean" and ``mode=2`` "max" return the same sums,
measured; ``nnq.EmbeddingBag.forward`` passes 0 anyway), so only ``"sum"`` is offered.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import float32 as f32x

__all__ = ["row_params", "row_params_traced", "unpack_4bit", "embedding_lookup", "embedding_bag_sum", "bag_ids"]


def row_params(scale, zero_point, bits: int = 8):
    """The per-row ``(scale, bias)`` float32 the kernels read, from a float-qparams weight (numpy, host).

    ``bias = -fl32(zero_point * scale)`` (``PackedEmbeddingBagWeight::prepack``); ``bits=4`` rounds both
    to float16 (the 4-bit rows store ``at::Half``).
    """
    s = np.asarray(scale, np.float64).astype(np.float32)
    z = np.asarray(zero_point, np.float64).astype(np.float32)
    bias = -(z * s).astype(np.float32)
    if bits == 4:
        return s.astype(np.float16).astype(np.float32), bias.astype(np.float16).astype(np.float32)
    if bits != 8:
        raise ValueError(f"bits={bits!r}; the quantized embeddings are 8-bit (quint8) or 4-bit (quint4x2)")
    return s, bias


def row_params_traced(scale, zero_point, bits: int = 8):
    """:func:`row_params` in jax (traceable): ``-fl32(zero_point * scale)`` by :func:`qjax.float32.mul_rn`,
    float16 rounding by XLA's convert (round half to even)."""
    s = jnp.asarray(scale, jnp.float32)
    bias = -f32x.mul_rn(jnp.asarray(zero_point, jnp.float32), s)
    if bits == 4:
        return s.astype(jnp.float16).astype(jnp.float32), bias.astype(jnp.float16).astype(jnp.float32)
    return s, bias


def unpack_4bit(packed):
    """quint4x2 storage ``(R, D/2)`` uint8 -> values ``(R, D)``: the low nibble is the even element."""
    p = jnp.asarray(packed, jnp.uint8)
    return jnp.stack([p & jnp.uint8(15), p >> 4], axis=-1).reshape(p.shape[:-1] + (2 * p.shape[-1],))


def embedding_lookup(values, row_scale, row_bias, indices):
    """``quantized::embedding_byte``: ``fma(scale[r], float(q[r, :]), bias[r])`` for every index ``r``.

    ``values`` uint8 ``(R, D)``; ``row_scale`` / ``row_bias`` float32 ``(R,)`` (:func:`row_params`);
    ``indices`` int ``(...)``.  Returns float32 ``indices.shape + (D,)``.
    """
    idx = jnp.asarray(indices, jnp.int32)
    q = jnp.take(values, idx, axis=0).astype(jnp.float32)
    s = jnp.take(row_scale, idx)[..., None]
    b = jnp.take(row_bias, idx)[..., None]
    return f32x.fma(jnp.broadcast_to(s, q.shape), q, jnp.broadcast_to(b, q.shape))


def bag_ids(offsets, n: int):
    """The bag of each of ``n`` indices, given the bags' start ``offsets`` (non-decreasing, ``offsets[0] = 0``)."""
    k = jnp.arange(n, dtype=jnp.int32)
    return jnp.searchsorted(jnp.asarray(offsets, jnp.int32), k, side="right").astype(jnp.int32) - 1


def embedding_bag_sum(values, row_scale, row_bias, indices, offsets, per_sample_weights=None):
    """``quantized::embedding_bag_byte`` / ``_4bit`` in sum mode: each bag's rows folded in index order.

    ``values`` uint8 ``(R, D)``; ``row_scale`` / ``row_bias`` float32 ``(R,)``; ``indices`` int ``(n,)``;
    ``offsets`` int ``(B,)`` the bags' starts (bag ``i`` is ``indices[offsets[i]:offsets[i+1]]``, the
    last one runs to ``n``; empty bags give 0); ``per_sample_weights`` float32 ``(n,)`` or None.
    Returns float32 ``(B, D)``.  The fold is a ``lax.scan`` over the ``n`` indices (torch's order: one
    accumulator per bag, rows added one after the other).
    """
    idx = jnp.asarray(indices, jnp.int32)
    n = idx.shape[0]
    num_bags = jnp.shape(offsets)[0]
    d = values.shape[-1]
    out = jnp.zeros((num_bags, d), jnp.float32)
    if n == 0 or num_bags == 0:
        return out
    bag = bag_ids(offsets, n)
    s = jnp.take(row_scale, idx)
    b = jnp.take(row_bias, idx)
    if per_sample_weights is not None:
        w = jnp.asarray(per_sample_weights, jnp.float32)
        s, b = f32x.mul_rn(s, w), f32x.mul_rn(b, w)

    def step(acc, k):
        row = lax.dynamic_index_in_dim(acc, bag[k], keepdims=False)
        q = lax.dynamic_index_in_dim(values, idx[k], keepdims=False).astype(jnp.float32)
        new = f32x.fma(jnp.broadcast_to(s[k], (d,)), q, row + b[k])
        return lax.dynamic_update_index_in_dim(acc, new, bag[k], 0), None

    # indices before the first bag's start belong to no bag (bag id -1): torch requires offsets[0] == 0
    out, _ = lax.scan(step, out, jnp.arange(n, dtype=jnp.int32))
    return out
