"""The PyTorch-forum model: a 1x1 quantized conv where "24 -> 30, but I compute 31".

Rebuilds the thread's model with its qconfig (HistogramObserver activations with
``reduce_range=True``, per-channel symmetric qint8 weights), the printed weight
(0.4808) and bias (0.0317), and its calibration recipe (``randint(0, 255) / 255``
on a 4x16 image, seeded here), converts it on fbgemm and runs the thread's input
``arange(64) / 255``.
"""

from __future__ import annotations

import numpy as np

THREAD_WEIGHT = 0.4808
THREAD_BIAS = 0.0317


def build(seed: int = 0):
    """Returns ``(model, input_tensor)``: the converted torch model and the thread's input."""
    import torch
    import torch.nn as nn
    from torch.ao.quantization import DeQuantStub, QConfig, QuantStub, convert, prepare
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    class CustomModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv1 = nn.Conv2d(in_channels=1, out_channels=1, kernel_size=1, stride=1)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.conv1(self.quant(x)))

    torch.manual_seed(seed)
    torch.backends.quantized.engine = "fbgemm"
    net = CustomModel().eval()
    with torch.no_grad():
        net.conv1.weight.fill_(THREAD_WEIGHT)
        net.conv1.bias.fill_(THREAD_BIAS)
    net.qconfig = QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  reduce_range=False),
    )
    prepare(net, inplace=True)
    calibrate = torch.randint(low=0, high=255, size=(1, 4, 16), dtype=torch.uint8).unsqueeze(0) / 255
    net(calibrate)
    convert(net, inplace=True)
    x = torch.arange(0, 64).view(4, 16).to(torch.uint8).unsqueeze(0).unsqueeze(0) / 255
    return net, x


def run(seed: int = 0, input_value: int = 24):
    """Explain the thread's question with qjax; returns the :class:`qjax.explain.Explanation`."""
    import torch

    import qjax
    from qjax import explain

    net, x = build(seed)
    qx_t = net.quant(x)
    conv_t = net.conv1
    out_t = conv_t(qx_t)
    xi = qx_t.int_repr().numpy()
    hits = np.argwhere(xi == input_value)
    if hits.size == 0:
        raise ValueError(f"no input element quantizes to {input_value}; inputs are {np.unique(xi)}")
    idx = tuple(int(i) for i in hits[0])
    xq = qjax.QArray(xi, qx_t.q_scale(), qx_t.q_zero_point(), qjax.quint8)
    w = conv_t.weight()
    wq = qjax.QArray(w.int_repr().numpy(), w.q_per_channel_scales().numpy(), w.q_per_channel_zero_points().numpy(),
                     qjax.qint8, axis=0)
    bias = conv_t.bias().detach().numpy()
    torch_out = int(out_t.int_repr().numpy()[idx])
    e = explain(xq, wq, bias, scale=conv_t.scale, zero_point=conv_t.zero_point, index=idx, torch_output=torch_out)
    full = qjax.conv(xq, wq, bias, scale=conv_t.scale, zero_point=conv_t.zero_point)
    mism = int((np.asarray(full.values) != out_t.int_repr().numpy()).sum())
    del torch
    return e, mism, out_t.int_repr().numpy().size


def hardware_rows(seed: int = 0, input_value: int = 24, specs=None):
    """The thread's layer under each hardware spec: ``[(spec, output at the traced input, layer outputs != fbgemm,
    description)]`` plus a first row for fbgemm itself (torch's answer)."""
    from qjax import hardware
    from qjax import from_torch

    net, x = build(seed)
    xv = x.numpy()
    qm = from_torch(net, xv)
    _, env = qm.capture(xv)
    conv = next(n.name for n in qm.nodes if n.op == "conv")
    xin = np.asarray(env[qm.node(conv).args[0].name].values)
    hits = np.argwhere(xin == input_value)
    if hits.size == 0:
        raise ValueError(f"no input element quantizes to {input_value}")
    idx = tuple(int(i) for i in hits[0])
    ref = np.asarray(env[conv].values)
    rows = [("fbgemm (torch)", int(ref[idx]), 0, "float32 multiplier, unrounded float bias, round half to even")]
    for name in specs or hardware.PRESETS:
        spec = hardware.get_spec(name)
        hwm = hardware.convert(qm, xv, spec)
        _, henv = hwm.capture(xv, names=(conv,))
        out = np.asarray(henv[conv].values)
        rows.append((name, int(out[idx]), int((out != ref).sum()), spec.describe().split(": ", 1)[1]))
    return rows, ref.size
