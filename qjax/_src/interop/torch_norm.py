"""Import of torch's quantized normalization modules (``nnq.LayerNorm``, ``nnq.GroupNorm``,
``nnq.InstanceNorm1d/2d/3d``) as ``norm`` nodes (:mod:`qjax.graph.ops_norm`)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["norm_static", "norm_params", "norm_from_op"]


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


def norm_from_op(kind, vals, layout, threads):
    """``(static, params)`` of a ``norm`` node from a TorchScript ``quantized::layer_norm`` / ``group_norm`` /
    ``instance_norm`` call with the recorded argument values ``vals`` (input first)."""
    op = kind.split("::")[1].split("_")[0]
    static = dict(kind=op, layout=layout, threads=threads)
    if op == "layer":
        static["normalized_shape"] = tuple(int(d) for d in vals[1])
    elif op == "group":
        static["num_groups"] = int(vals[1])
    w, b, eps, scale, zero_point = vals[-5:]
    static.update(eps=float(eps), scale=float(scale), zero_point=int(zero_point))
    params = {k: jnp.asarray(v.detach().numpy(), jnp.float32) for k, v in (("weight", w), ("bias", b))
              if v is not None}
    return static, params
