"""Node ops of the quantized normalization modules: ``nnq.LayerNorm``, ``nnq.GroupNorm`` and
``nnq.InstanceNorm1d/2d/3d`` (``quantized::layer_norm`` / ``group_norm`` / ``instance_norm``).

One op, ``norm``: ``cfg["kind"]`` is ``"layer"``, ``"group"`` or ``"instance"``; ``p`` holds the float32
``weight`` / ``bias`` (either may be absent: torch's default 1 / 0); ``cfg`` the ``eps``, the output
``scale`` / ``zero_point``, ``normalized_shape`` (layer) or ``num_groups`` (group), the input's memory
format torch saw (``layout``: the group / instance kernels pick the NHWC kernel on a channels-last 4-d
input) and ``threads``.  The arithmetic is the engine's (:mod:`qjax.qops.normalization` on torch's CPU
engines).
"""

from __future__ import annotations

from ..qops.paths import CONTIGUOUS
from .model import GraphError, register_op

__all__: list = []

#: the ``kind`` values of a ``norm`` node
NORM_KINDS = ("layer", "group", "instance")


@register_op("norm")
def norm_node(cfg, p, x):
    engine, kind = cfg["engine"], cfg["kind"]
    p = p or {}
    w, b = p.get("weight"), p.get("bias")
    common = (cfg["eps"], cfg["scale"], cfg["zero_point"])
    fmt = dict(memory_format=cfg.get("layout", CONTIGUOUS), threads=cfg.get("threads", 1))
    if kind == "layer":
        return engine.layer_norm(x, cfg["normalized_shape"], w, b, *common)
    if kind == "group":
        return engine.group_norm(x, cfg["num_groups"], w, b, *common, **fmt)
    if kind == "instance":
        return engine.instance_norm(x, w, b, *common, **fmt)
    raise GraphError(f"unknown norm kind {kind!r} (node {cfg.get('node')}); expected one of {NORM_KINDS}")
