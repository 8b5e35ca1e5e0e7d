"""Per-layer rounding search: the chosen specs are what the exact model evaluates to, and no worse than the start."""

import numpy as np
import pytest

from qjax import hardware as hw
from qjax._src.interop.torch import from_torch

pytestmark = pytest.mark.torch


def test_search_rounding_on_a_block():
    from tests.models import resnet_basic_block

    model, x = resnet_basic_block()
    qm = from_torch(model, x)
    xs = np.random.default_rng(0).standard_normal((4,) + tuple(x.shape[1:])).astype(np.float32)
    target = np.asarray(qm(xs))
    loss = lambda y: float(np.mean((y - target) ** 2))  # distance to fbgemm's output
    res = hw.search_rounding(qm, xs, loss, "dyadic8", fields=("requant_rounding",), modes=("half_up", "floor"))
    assert res.loss <= res.baseline_loss
    assert res.loss == min([res.baseline_loss] + [h[3] for h in res.history])
    assert len(res.history) == 2  # one alternative per conv layer
    # the reported loss is the loss of the model the choices build
    assert loss(np.asarray(res.model(qm, xs, "dyadic8")(xs))) == res.loss
    # floor (a biased rounding) must not have been preferred over half_up on both layers
    assert any(s.requant_rounding == "half_up" for s in res.layers.values())
