"""TorchScript archives (torch.jit.save) import bit-exactly, as the Python models do."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax._src.interop.torchscript import load, record

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


@pytest.mark.parametrize("name, engine", [("mobilenet_v3_block", "qnnpack"), ("resnet_basic_block", "qnnpack"),
                                          ("resnet_basic_block", "x86")])
def test_saved_model_is_bit_exact_on_other_engines(name, engine, tmp_path):
    """qnnpack's own add / hardswish / pooling kernels and x86's per-layer dispatch, reached through the nodes'
    engine (the TorchScript importer stores it and torch's recorded qparams / formats on every node): every
    node's integers equal torch's, on several inputs."""
    try:
        torch.backends.quantized.engine = engine
        m, x = models.BUILDERS[name](engine=engine)
        path = tmp_path / f"{name}.pt"
        torch.jit.save(torch.jit.script(m), str(path))
        ts = load(path)
        qm = qjax.from_torch(ts, x, engine=engine)
        gen = torch.Generator().manual_seed(1)
        checked = 0
        for xi in [x] + [torch.randn(x.shape, generator=gen) * (0.5 + i) for i in (1, 2)]:
            want = record(ts, (xi,), engine=engine)
            _, got = qm.capture(xi.numpy())
            for node, q in got.items():
                t = want.get(node)
                if isinstance(q, qjax.QArray) and isinstance(t, torch.Tensor) and t.is_quantized:
                    np.testing.assert_array_equal(np.asarray(q.values), t.int_repr().numpy(),
                                                  err_msg=f"{name} on {engine}, node {node}")
                    checked += 1
    finally:
        torch.backends.quantized.engine = "fbgemm"
    assert qm.info["engine"] == engine
    assert checked >= 3 * 4  # at least four quantized nodes compared per input
