"""Import of torch's quantized normalization modules (``nnq.LayerNorm``, ``nnq.GroupNorm``,
``nnq.InstanceNorm1d/2d/3d``) as ``norm`` nodes (:mod:`qjax.graph.ops_norm`)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["norm_static", "norm_params"]


def norm_static(m, layout, threads) -> dict:
    """The node's static configuration: kind, eps, output qparams (float32 / int buffers in torch), the
    normalized shape or group count, the input's memory format and torch's thread count."""
    kind = {"LayerNorm": "layer", "GroupNorm": "group"}.get(type(m).__name__, "instance")
    static = dict(kind=kind, eps=float(m.eps), scale=float(m.scale), zero_point=int(m.zero_point), layout=layout,
                  threads=threads)
    if kind == "layer":
        static["normalized_shape"] = tuple(int(d) for d in m.normalized_shape)
    elif kind == "group":
        static["num_groups"] = int(m.num_groups)
    return static


def norm_params(m) -> dict:
    """``weight`` / ``bias`` as float32 arrays (absent where the module has None)."""
    return {k: jnp.asarray(getattr(m, k).detach().numpy(), jnp.float32) for k in ("weight", "bias")
            if getattr(m, k, None) is not None}
