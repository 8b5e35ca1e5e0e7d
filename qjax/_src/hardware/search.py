"""Search per-layer hardware rounding choices that minimize a task loss.

Rounding modes are discrete, so they are *searched*, not differentiated (what is
differentiable — weights, bias, scales, zero points — is trained with :mod:`qjax.ste`).
:func:`search_rounding` is a greedy coordinate descent: for each integer-only layer in
graph order and each field (``requant_rounding``, ``bias_rounding``), try every candidate
mode with the other layers fixed and keep it if the task loss of the *exact* integer model
drops.  Each evaluation runs the same arithmetic the hardware (and the STE forward) runs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..graph import QModel
from .convert import convert
from ..engines.hardware import HardwareSpec, get_spec

__all__ = ["SearchResult", "search_rounding"]


@dataclasses.dataclass
class SearchResult:
    layers: dict  # node name -> HardwareSpec
    loss: float
    baseline_loss: float
    history: list  # (node, field, mode, loss) of every evaluation

    def model(self, qmodel: QModel, example_input, spec) -> QModel:
        return convert(qmodel, example_input, spec, layers=self.layers)


def search_rounding(qmodel: QModel, x, loss_fn: Callable, spec="gemmlowp", *,
                    fields=("requant_rounding", "bias_rounding"),
                    modes=("half_even", "half_away", "half_up", "floor"), layers=None) -> SearchResult:
    """Greedy per-layer search of rounding modes (see the module docstring).

    Args:
      qmodel: the imported model.
      x: the data the loss is evaluated on.
      loss_fn: ``loss_fn(output) -> float`` (e.g. cross-entropy against labels, or MSE to the
        float model's output).
      spec: the starting spec for every layer.
      fields: which spec fields to search per layer.
      modes: candidate rounding modes.
      layers: node names to search (default: every conv/linear).
    """
    spec = get_spec(spec)
    if layers is None:
        layers = [n.name for n in qmodel.nodes if n.op in ("conv", "linear")]
    choice: dict[str, HardwareSpec] = {name: spec for name in layers}

    def evaluate():
        hw = convert(qmodel, x, spec, layers=choice)
        return float(loss_fn(np.asarray(hw(x))))

    best = baseline = evaluate()
    history = []
    for name in layers:
        for field in fields:
            current = choice[name]
            for mode in modes:
                if getattr(current, field) == mode:
                    continue
                trial = current.replace(**{field: mode, "name": f"{spec.name}[{name}]"})
                choice[name] = trial
                loss = evaluate()
                history.append((name, field, mode, loss))
                if loss < best:
                    best, current = loss, trial
            choice[name] = current
    return SearchResult(dict(choice), best, baseline, history)
