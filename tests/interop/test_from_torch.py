"""from_torch: whole converted models are bit-exact (0 mismatching outputs) against torch 2.13 fbgemm."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax._src.interop.torch import TorchImportError

from .. import models

pytestmark = pytest.mark.torch


def compare(model, x, n_inputs=3, seed=1, engine="fbgemm"):
    torch.backends.quantized.engine = engine
    qm = qjax.from_torch(model, x)
    gen = torch.Generator().manual_seed(seed)
    total = bad = 0
    for i in range(n_inputs):
        xi = x if i == 0 else torch.randn(x.shape, generator=gen) * (0.5 + i)
        with torch.no_grad():
            want = model(xi)
        got = qm(xi.numpy())
        want = want.int_repr().numpy() if want.is_quantized else want.numpy()
        got = np.asarray(got.values if isinstance(got, qjax.QArray) else got)
        assert got.shape == want.shape and got.dtype == want.dtype
        bad += int((got.view(np.int32) != want.view(np.int32)).sum()) if got.dtype == np.float32 else int((got != want).sum())
        total += want.size
    return bad, total, qm


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_model_is_bit_exact(name):
    model, x = models.BUILDERS[name]()
    bad, total, qm = compare(model, x)
    assert bad == 0, f"{name}: {bad} mismatching outputs of {total}"


@pytest.mark.parametrize("engine", ["x86", "onednn", "qnnpack"])
@pytest.mark.parametrize("name", ["resnet_basic_block", "mobilenet_v3_block", "shufflenet_unit", "conv1d_net"])
def test_model_is_bit_exact_on_other_engines(name, engine):
    model, x = models.BUILDERS[name](engine=engine)
    try:
        bad, total, qm = compare(model, x, engine=engine)
    finally:
        torch.backends.quantized.engine = "fbgemm"
    assert qm.info["engine"] == engine
    assert bad == 0, f"{name} on {engine}: {bad} mismatching outputs of {total}"


def test_fx_converted_model_is_bit_exact():
    model, x = models.fx_model()
    bad, total, _ = compare(model, x)
    assert bad == 0, f"fx model: {bad} of {total}"


def test_intermediate_integers_match_torch_layer_by_layer():
    model, x = models.mobilenet_v3_block()
    qm = qjax.from_torch(model, x)
    from qjax._src.interop.torch import record, trace

    values = record(trace(model), (x,))
    _, inter = qm.capture(x.numpy())
    checked = 0
    for name, t in values.items():
        if isinstance(t, torch.Tensor) and t.is_quantized and name in inter:
            np.testing.assert_array_equal(np.asarray(inter[name].values), t.int_repr().numpy(), err_msg=name)
            checked += 1
    assert checked >= 10


def test_model_is_a_pytree_jittable_and_vmappable():
    model, x = models.resnet_basic_block()
    qm = qjax.from_torch(model, x)
    leaves = jax.tree_util.tree_leaves(qm)
    assert any(getattr(l, "dtype", None) == np.int8 for l in leaves)  # int8 weights are visible leaves
    xs = np.stack([x.numpy(), x.numpy() * 0.5])
    batched = jax.vmap(qm)(xs)
    with torch.no_grad():
        want = np.stack([model(torch.from_numpy(v)).numpy() for v in xs])
    np.testing.assert_array_equal(np.asarray(batched), want)
    doubled = jax.jit(lambda m, v: m(v))(qm, x.numpy())
    np.testing.assert_array_equal(np.asarray(doubled), model(x).detach().numpy())


def test_unsupported_module_is_a_clear_error():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.lstm = torch.nn.GELU()

        def forward(self, x):
            return self.lstm(self.quant(x))

    m = M().eval()
    m.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    torch.ao.quantization.prepare(m, inplace=True)
    m(torch.randn(1, 4))
    torch.ao.quantization.convert(m, inplace=True)
    with pytest.raises(TorchImportError, match=r"unsupported module torch\.nn\.modules\.activation\.GELU at graph node 'lstm'"):
        qjax.from_torch(m, torch.randn(1, 4))


def test_training_mode_is_rejected():
    model, x = models.conv1d_net()
    model.train()
    with pytest.raises(TorchImportError, match="training mode"):
        qjax.from_torch(model, x)


@pytest.mark.parametrize("engine, match", [("reference", "reproduces no torch engine"),
                                           ("gemmlowp", "reproduces no torch engine"),
                                           ("nope", "not supported")])
def test_an_engine_without_torch_kernels_is_rejected_at_import(engine, match):
    model, x = models.conv1d_net()
    with pytest.raises(TorchImportError, match=match):
        qjax.from_torch(model, x, engine=qjax.engines.resolve(engine) if engine != "nope" else engine)


def test_a_float_op_on_a_dequantized_tensor_is_a_graph_error_when_the_model_runs():
    """The importer translates; the node op refuses what it cannot compute exactly (qjax._src.graph.GraphError)."""
    from qjax._src.graph import GraphError

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return torch.sigmoid(self.dequant(self.quant(x)))

    m = M().eval()
    m.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    torch.ao.quantization.prepare(m, inplace=True)
    m(torch.randn(1, 4))
    torch.ao.quantization.convert(m, inplace=True)
    qm = qjax.from_torch(m, torch.randn(1, 4))
    with pytest.raises(GraphError, match="float sigmoid on a dequantized tensor"):
        qm(np.zeros((1, 4), np.float32))
    assert issubclass(TorchImportError, GraphError)
