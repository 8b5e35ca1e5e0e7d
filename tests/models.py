"""Small quantized torch models for the import / verify tests and benchmarks.

Each builder makes a float model with random weights and BatchNorm statistics,
fuses, calibrates with torch's observers on random data and converts it for the
fbgemm engine; it returns ``(converted_model, example_input)``.  ResNet, MobileNetV2/V3
and ShuffleNetV2 blocks follow torchvision's quantizable versions.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

from qjax.examples.resnet import (BasicBlock, Bottleneck, ResNetTiny, _randomize_bn,  # noqa: F401
                                  conv_bn_relu, quantize_model)

warnings.filterwarnings("ignore")


_quantize = quantize_model


class Wrap(nn.Module):
    """QuantStub -> block -> DeQuantStub."""

    def __init__(self, block):
        super().__init__()
        self.quant, self.block, self.dequant = QuantStub(), block, DeQuantStub()

    def forward(self, x):
        return self.dequant(self.block(self.quant(x)))

    def fuse(self):
        if hasattr(self.block, "fuse"):
            self.block.fuse()


# ---------------------------------------------------------------------------------------------- MobileNet


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, project 1x1, skip add."""

    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(conv_bn_relu(c, h, 1, relu6=True), conv_bn_relu(h, h, 3, 1, h, relu6=True),
                                  nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
        self.skip_add = nn.quantized.FloatFunctional()

    def forward(self, x):
        return self.skip_add.add(x, self.conv(x))

    def fuse(self):
        # torchvision's quantizable MobileNetV2 fuses conv+bn+relu (ReLU6 stays a separate module here)
        for i in (0, 1):
            fuse_modules(self.conv[i], [["0", "1"]], inplace=True)
        fuse_modules(self.conv, [["2", "3"]], inplace=True)


class SqueezeExcitation(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.relu, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.ReLU(), nn.Conv2d(squeeze, c, 1)
        self.scale_activation = nn.Hardsigmoid()
        self.skip_mul = nn.quantized.FloatFunctional()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return self.skip_mul.mul(s, x)

    def fuse(self):
        fuse_modules(self, [["fc1", "relu"]], inplace=True)


class MobileNetV3Block(nn.Module):
    """expand 1x1 + hardswish, depthwise 5x5 + hardswish, SE (hardsigmoid, mul), project, skip add."""

    def __init__(self, c=16, expand=4):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 5, 1, 2, groups=h, bias=False), nn.BatchNorm2d(h), nn.Hardswish())
        self.se = SqueezeExcitation(h, h // 4)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
        self.skip_add = nn.quantized.FloatFunctional()

    def forward(self, x):
        return self.skip_add.add(x, self.project(self.se(self.dw(self.expand(x)))))

    def fuse(self):
        for seq in (self.expand, self.dw, self.project):
            fuse_modules(seq, [["0", "1"]], inplace=True)
        self.se.fuse()


# ---------------------------------------------------------------------------------------------- ShuffleNet


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (stride 1): split with chunk, branch, cat, channel shuffle."""

    def __init__(self, c=16):
        super().__init__()
        b = c // 2
        self.branch2 = nn.Sequential(conv_bn_relu(b, b, 1), conv_bn_relu(b, b, 3, 1, b, relu=False), conv_bn_relu(b, b, 1))
        self.cat = nn.quantized.FloatFunctional()

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = self.cat.cat([x1, self.branch2(x2)], dim=1)
        return channel_shuffle(out, 2)

    def fuse(self):
        for i, names in ((0, ["0", "1", "2"]), (1, ["0", "1"]), (2, ["0", "1", "2"])):
            fuse_modules(self.branch2[i], [names], inplace=True)


class ShuffleDown(nn.Module):
    """ShuffleNetV2 downsampling unit: two branches with torch.cat then channel shuffle."""

    def __init__(self, cin=16, cout=32):
        super().__init__()
        b = cout // 2
        self.branch1 = nn.Sequential(conv_bn_relu(cin, cin, 3, 2, cin, relu=False), conv_bn_relu(cin, b, 1))
        self.branch2 = nn.Sequential(conv_bn_relu(cin, b, 1), conv_bn_relu(b, b, 3, 2, b, relu=False), conv_bn_relu(b, b, 1))
        self.cat = nn.quantized.FloatFunctional()

    def forward(self, x):
        return channel_shuffle(self.cat.cat([self.branch1(x), self.branch2(x)], dim=1), 2)

    def fuse(self):
        fuse_modules(self.branch1[0], [["0", "1"]], inplace=True)
        fuse_modules(self.branch1[1], [["0", "1", "2"]], inplace=True)
        for i, names in ((0, ["0", "1", "2"]), (1, ["0", "1"]), (2, ["0", "1", "2"])):
            fuse_modules(self.branch2[i], [names], inplace=True)


class ShuffleNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.unit = ShuffleDown(16, 32), ShuffleUnit(32)

    def forward(self, x):
        return self.unit(self.down(x))

    def fuse(self):
        self.down.fuse()
        self.unit.fuse()


# ---------------------------------------------------------------------------------------------- 1-d


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.c1, self.b1, self.r1 = nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU()
        self.c2, self.r2 = nn.Conv1d(16, 16, 3, stride=2, padding=1, groups=4), nn.ReLU()
        self.pool = nn.MaxPool1d(2)
        self.avg = nn.AvgPool1d(3, 1, 1)
        self.fc = nn.Linear(16 * 8, 6)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(self.quant(x))))
        x = self.avg(self.pool(self.r2(self.c2(x))))
        return self.dequant(self.fc(x.flatten(1)))

    def fuse(self):
        fuse_modules(self, [["c1", "b1", "r1"], ["c2", "r2"]], inplace=True)


# ---------------------------------------------------------------------------------------------- builders


def resnet_basic_block(seed=0, engine="fbgemm"):
    return _quantize(Wrap(BasicBlock(16, 16)), torch.zeros(2, 16, 14, 14), True, seed, engine)


def resnet_bottleneck(seed=0, engine="fbgemm"):
    return _quantize(Wrap(Bottleneck(32, 8, 2)), torch.zeros(2, 32, 14, 14), True, seed, engine)


def mobilenet_v2_block(seed=0, engine="fbgemm"):
    return _quantize(Wrap(InvertedResidual(16)), torch.zeros(2, 16, 12, 12), True, seed, engine)


def mobilenet_v3_block(seed=0, engine="fbgemm"):
    return _quantize(Wrap(MobileNetV3Block(16)), torch.zeros(2, 16, 10, 10), True, seed, engine)


def shufflenet_unit(seed=0, engine="fbgemm"):
    return _quantize(Wrap(ShuffleNetTiny()), torch.zeros(2, 16, 12, 12), True, seed, engine)


def conv1d_net(seed=0, engine="fbgemm"):
    return _quantize(Conv1dNet(), torch.zeros(3, 4, 32), True, seed, engine)


def resnet_tiny(seed=0, width=16, classes=10, engine="fbgemm"):
    return _quantize(ResNetTiny(width, classes), torch.zeros(2, 3, 64, 64), True, seed, engine)


def resnet_tiny_1000(seed=0):
    """ResNet-style, 1000 classes (each input gives 1000 outputs) — for the large verify runs."""
    return resnet_tiny(seed, width=16, classes=1000)


def unfused_bn_model(seed=0, engine="fbgemm"):
    """Conv -> (unfused, quantized) BatchNorm2d -> ReLU: exercises quantized::batch_norm2d."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)))

    return _quantize(Wrap(M()), torch.zeros(2, 3, 9, 9), False, seed, engine)


BUILDERS = {
    "resnet_basic_block": resnet_basic_block,
    "resnet_bottleneck": resnet_bottleneck,
    "mobilenet_v2_block": mobilenet_v2_block,
    "mobilenet_v3_block": mobilenet_v3_block,
    "shufflenet_unit": shufflenet_unit,
    "conv1d_net": conv1d_net,
    "resnet_tiny": resnet_tiny,
    "unfused_bn": unfused_bn_model,
}


def fx_model(seed=0):
    """An FX-mode (prepare_fx / convert_fx) model with functional ops."""
    import torch.ao.quantization.quantize_fx as qfx
    from torch.ao.quantization import get_default_qconfig_mapping

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.c2 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.c3 = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            z = torch.nn.functional.hardswish(self.c2(y))
            y = y + self.c3(z)
            y = torch.nn.functional.max_pool2d(y, 2)
            y = torch.nn.functional.adaptive_avg_pool2d(y, (1, 1)).flatten(1)
            return self.fc(y)

    torch.backends.quantized.engine = "fbgemm"
    gen = torch.Generator().manual_seed(seed)
    m = M()
    _randomize_bn(m, gen)
    m.eval()
    ex = torch.randn(2, 3, 12, 12, generator=gen)
    p = qfx.prepare_fx(m, get_default_qconfig_mapping("fbgemm"), (ex,))
    with torch.no_grad():
        for _ in range(4):
            p(torch.randn(2, 3, 12, 12, generator=gen))
    return qfx.convert_fx(p), torch.randn(2, 3, 12, 12, generator=gen)
