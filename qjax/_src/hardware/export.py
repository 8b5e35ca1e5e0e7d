"""Export a hardware model's integer parameters: ``layers.json`` (spec, per-layer facts) + ``params.npz``.

No pickle anywhere: the arrays are plain ``.npz`` entries named ``<node>/<param>`` (load
with ``np.load(path, allow_pickle=False)``), and the JSON holds only numbers and strings.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from ..graph import QModel
from .convert import HARDWARE_OPS, layer_params
from ..engines.hardware import get_spec

__all__ = ["export", "load_params"]


def export(model: QModel, directory: str) -> dict:
    """Write ``directory/layers.json`` and ``directory/params.npz``; return the JSON document."""
    os.makedirs(directory, exist_ok=True)
    params = layer_params(model)
    layers = []
    for node in model.nodes:
        if node.op not in HARDWARE_OPS:
            continue
        cfg = node.config()
        spec = get_spec(cfg["spec"])
        p = params[node.name]
        entry = dict(node=node.name, op=node.op, source=node.source, spec=dataclasses.asdict(spec),
                     output_scale=float(p["scale"]), output_zero_point=int(p["zero_point"]),
                     config={k: v for k, v in cfg.items() if k != "spec"},
                     arrays={k: dict(shape=list(v.shape), dtype=str(v.dtype)) for k, v in p.items()})
        for tag in ("", "_a", "_b"):  # an add has input multipliers too
            if "m0" + tag in p:
                m0, sh = p["m0" + tag].astype(np.float64), p["shift" + tag].astype(np.float64)
                eff = m0 * 2.0 ** (sh - 31) if spec.multiplier != "dyadic" else m0 * 2.0 ** -sh
                entry["effective_multiplier" + tag] = np.atleast_1d(eff).tolist()
        layers.append(entry)
    doc = dict(format="qjax-hardware-1", spec=dict(model.info).get("hardware"), layers=layers)
    with open(os.path.join(directory, "layers.json"), "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
    flat = {f"{node}/{k}": v for node, d in params.items() for k, v in d.items()}
    np.savez(os.path.join(directory, "params.npz"), **flat)
    return doc


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


def load_params(directory: str) -> dict[str, dict[str, np.ndarray]]:
    """The exported arrays, ``{node: {param: array}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(os.path.join(directory, "params.npz"), allow_pickle=False) as data:
        for key in data.files:
            node, _, name = key.rpartition("/")
            out.setdefault(node, {})[name] = data[key]
    return out
