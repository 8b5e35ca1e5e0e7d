"""A small ResNet-style quantized torch model (fbgemm), for ``qjax verify`` / ``qjax hardware`` demos.

    qjax hardware qjax.examples.resnet:model --spec gemmlowp

:func:`model` builds ``ResNetTiny`` (stem, max-pool, two basic blocks, a bottleneck, global
pool, fc) with seeded random weights and BatchNorm statistics, fuses it, calibrates torch's
default fbgemm observers on random data and converts it; it returns ``(model, example_input)``.
Needs torch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.ao.quantization import DeQuantStub, QuantStub, convert, fuse_modules, get_default_qconfig, prepare

__all__ = ["model", "ResNetTiny", "BasicBlock", "Bottleneck", "conv_bn_relu", "quantize_model"]


def _randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.2)


def quantize_model(model, example, fuse, seed, engine="fbgemm", calib_batches=4):
    gen = torch.Generator().manual_seed(seed)
    _randomize_bn(model, gen)
    model.eval()
    if fuse:
        model.fuse()
    torch.backends.quantized.engine = engine
    model.qconfig = get_default_qconfig(engine)
    prepare(model, inplace=True)
    with torch.no_grad():
        for _ in range(calib_batches):
            model(torch.randn(example.shape, generator=gen) * 1.5)
    convert(model, inplace=True)
    return model, torch.randn(example.shape, generator=gen)


def conv_bn_relu(cin, cout, k=3, s=1, g=1, relu=True, relu6=False):
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU6() if relu6 else nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.add_relu = nn.quantized.FloatFunctional()

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.add_relu.add_relu(y, idt)

    def fuse(self):
        fuse_modules(self, [["conv1", "bn1", "relu"], ["conv2", "bn2"]], inplace=True)
        if self.down is not None:
            fuse_modules(self.down, [["0", "1"]], inplace=True)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.skip_add_relu = nn.quantized.FloatFunctional()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.skip_add_relu.add_relu(y, self.down(x))

    def fuse(self):
        fuse_modules(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3"]], inplace=True)
        fuse_modules(self.down, [["0", "1"]], inplace=True)


class ResNetTiny(nn.Module):
    """Stem + max-pool + basic blocks (one strided) + bottleneck + global pool + fc."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.stem = conv_bn_relu(3, width, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = Bottleneck(2 * width, width)
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.pool(self.stem(self.quant(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.dequant(self.fc(torch.flatten(self.avg(x), 1)))

    def fuse(self):
        fuse_modules(self.stem, [["0", "1", "2"]], inplace=True)
        for b in (self.layer1, self.layer2, self.layer3):
            b.fuse()


def model(seed: int = 0, width: int = 16, classes: int = 10, engine: str = "fbgemm", size: int = 64):
    """The converted ResNetTiny and an example input ``(2, 3, size, size)``."""
    with torch.random.fork_rng():  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        net = ResNetTiny(width, classes)
    return quantize_model(net, torch.zeros(2, 3, size, size), True, seed, engine)
