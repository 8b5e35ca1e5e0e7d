"""Flax NNX integration: quantized modules with four modes and the torch.ao-style lifecycle.

See :mod:`qjax.nn.modules` (modes, layout, state), :mod:`qjax.nn.elementwise` (add, mul, cat,
activations, average pooling), :mod:`qjax.nn.lifecycle`
(prepare → calibrate → prepare_qat → convert → to_torch / save / load), :mod:`qjax.nn.fusion`
(conv + BatchNorm folding) and :mod:`qjax.nn.linen` (the Linen equivalents).
"""

from . import linen
from .interop import from_qmodel, hardware_params
from .elementwise import AvgPool, GlobalAvgPool, Hardswish, QAdd, QCat, QMul, ReLU, ReLU6
from .fusion import fold_batch_norm, fuse_conv_bn_weights
from .lifecycle import convert, load, prepare, prepare_qat, save, set_mode, to_torch
from .modules import (MODES, DeQuantStub, Observer, Flatten, MaxPool, ObserverState, QConv, QDense, QFloat, QParam, QuantStub,
                      Sequential, default_activation_observer, default_weight_observer)

__all__ = ["Observer", "QuantStub", "DeQuantStub", "QConv", "QDense", "Flatten", "MaxPool", "Sequential", "QAdd", "QMul", "QCat",
           "Hardswish", "ReLU", "ReLU6", "AvgPool", "GlobalAvgPool", "QParam", "ObserverState",
           "QFloat", "MODES", "set_mode", "prepare", "prepare_qat", "convert", "save", "load", "to_torch",
           "default_activation_observer", "default_weight_observer", "fuse_conv_bn_weights", "fold_batch_norm", "linen", "from_qmodel",
           "hardware_params"]
