"""torch → qjax → QAT → torch: an imported torch model fine-tuned with qjax.nn and exported back, 0 mismatches."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import qjax
from qjax import nn as qnn

pytestmark = pytest.mark.torch


def _torch_cnn():
    import torch
    import torch.nn as nn
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, fuse_modules, get_default_qconfig, prepare

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.ReLU()
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            x = self.relu2(self.conv2(self.relu1(self.conv1(self.quant(x)))))
            return self.dequant(self.fc(torch.flatten(x, 1)))

    torch.manual_seed(0)
    torch.backends.quantized.engine = "fbgemm"
    m = Net().eval()
    fuse_modules(m, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)
    m.qconfig = get_default_qconfig("fbgemm")
    prepare(m, inplace=True)
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(8, 3, 8, 8))
    convert(m, inplace=True)
    return m


def test_torch_to_qjax_qat_and_back():
    import torch

    tm = _torch_cnn()
    rng = np.random.default_rng(0)
    x_nchw = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    x = np.ascontiguousarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    qm = qjax.from_torch(tm, x_nchw[:2], engine="fbgemm")
    net = qnn.from_qmodel(qm, x_nchw[:2], engine=qjax.Fbgemm.host())
    with torch.no_grad():
        want = tm(torch.from_numpy(x_nchw)).numpy()
    assert int((np.asarray(net(x)) != want).sum()) == 0  # the import is exact in qjax.nn too

    qnn.prepare_qat(net, from_observers=False)  # keep torch's scales
    labels = jnp.asarray(rng.integers(0, 10, 16))
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()
    opt = nnx.Optimizer(net, optax.adam(1e-4), wrt=nnx.Param)
    losses = []
    for _ in range(5):
        loss, g = nnx.value_and_grad(loss_fn)(net)
        opt.update(net, g)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    qnn.convert(net)
    y = np.asarray(net(x))
    back = qnn.to_torch(net)
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        with torch.no_grad():
            y_back = back(torch.from_numpy(x_nchw)).numpy()
    finally:
        torch.backends.quantized.engine = prev
    assert int((y != y_back).sum()) == 0
    assert int((y != want).sum()) > 0  # QAT changed the model

    hp = qnn.hardware_params(net, "gemmlowp")
    assert [d["kind"] for d in hp] == ["QConv", "QConv", "QDense"]
    assert hp[0]["weight"].dtype == np.int8 and hp[0]["m0"].dtype == np.int32 and hp[0]["bias_q"].dtype == np.int32
