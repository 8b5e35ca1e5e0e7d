"""Node ops of the float-output quantized modules: dynamic linear (``nnqd.Linear``) and the quantized
embeddings (``nnq.Embedding`` / ``nnq.EmbeddingBag``).

They take float (or integer index) inputs and return float32, through the public ops
(:func:`qjax.linear_dynamic`, :func:`qjax.embedding`, :func:`qjax.embedding_bag`) with the node's engine.
"""

from __future__ import annotations

from ..ops import embedding, embedding_bag, linear_dynamic
from .model import register_op

__all__: list = []


@register_op("linear_dynamic")
def linear_dynamic_node(cfg, p, x):
    """``p``: ``weight`` (qint8 QArray ``(O, K)``), ``bias``; ``cfg``: ``relu``, ``reduce_range``, ``engine``."""
    return linear_dynamic(x, p["weight"], p.get("bias"), relu=cfg["relu"], reduce_range=cfg["reduce_range"],
                          engine=cfg["engine"])


@register_op("embedding")
def embedding_node(cfg, p, indices):
    """``p``: ``values`` uint8 ``(R, D)`` (4-bit unpacked), per-row float ``scale`` / ``zero_point``; ``cfg``:
    ``bits``, ``engine``."""
    return embedding(p["values"], indices, scale=p["scale"], zero_point=p["zero_point"], bits=cfg["bits"],
                     engine=cfg["engine"])


@register_op("embedding_bag")
def embedding_bag_node(cfg, p, indices, offsets=None, per_sample_weights=None):
    """As :func:`embedding_node`, plus ``cfg["include_last_offset"]``; inputs indices, offsets, weights."""
    return embedding_bag(p["values"], indices, offsets, scale=p["scale"], zero_point=p["zero_point"],
                         per_sample_weights=per_sample_weights, bits=cfg["bits"],
                         include_last_offset=cfg["include_last_offset"], engine=cfg["engine"])
