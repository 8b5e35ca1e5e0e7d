"""TorchScript archives (torch.jit.save) import bit-exactly, as the Python models do."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax.interop.torchscript import load

from .. import models

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_saved_model_is_bit_exact(name, tmp_path):
    torch.backends.quantized.engine = "fbgemm"
    m, x = models.BUILDERS[name]()
    path = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    ts = load(path)
    qm = qjax.from_torch(ts, x, engine="fbgemm")
    gen = torch.Generator().manual_seed(3)
    for xi in (x, torch.randn(x.shape, generator=gen) * 2):
        with torch.no_grad():
            # the Python model is the reference: torch itself cannot run a reloaded scripted quantized
            # BatchNorm2d ("Cannot input a tensor of dimension other than 0 as a scalar argument")
            want = m(xi).numpy()
        got = np.asarray(qm(xi.numpy()))
        assert (got.view(np.int32) != want.view(np.int32)).sum() == 0, name
    # dead shape-check arithmetic is pruned; conv layers keep their module paths as names
    assert not any(n.op == "pyfunc" and n.config()["kind"] == "ne" for n in qm.nodes)
