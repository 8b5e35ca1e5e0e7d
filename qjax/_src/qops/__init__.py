"""Quantized non-GEMM ops with torch 2.13's CPU arithmetic: elementwise, activations, pooling, cat, ..."""

from . import elementwise, paths
from .elementwise import (
    add,
    add_scalar,
    elu,
    hardsigmoid,
    hardswish,
    hardtanh,
    leaky_relu,
    mul,
    mul_scalar,
    relu,
    relu6,
    sigmoid,
    tanh,
)

__all__ = [
    "paths",
    "elementwise",
    "add",
    "mul",
    "add_scalar",
    "mul_scalar",
    "relu",
    "relu6",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "elu",
]
