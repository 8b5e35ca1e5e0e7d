"""Engines: how a quantized conv/linear accumulates and requantizes.

An engine is a small frozen dataclass (hashable, so ``jit`` caches by it) with two
methods, ``conv`` and ``linear``, that take integer operands in channels-last layout
and return the output integers.  ``engine="fbgemm"`` in the public ops resolves to
``Fbgemm()``; pass an instance to change its options (e.g. ``Fbgemm(isa="avx2")``)
or your own object with the same two methods to model your hardware.
"""

from __future__ import annotations

from .base import ConvGeometry, ConvTransposeGeometry, Engine, register_engine, resolve_engine
from .fbgemm import Fbgemm
from .onednn import Onednn
from .qnnpack import Qnnpack
from .reference import Reference
from .x86 import X86

__all__ = ["Engine", "ConvGeometry", "ConvTransposeGeometry", "Fbgemm", "Onednn", "Qnnpack", "Reference", "X86",
           "register_engine", "resolve_engine"]

register_engine("fbgemm", Fbgemm)
register_engine("qnnpack", Qnnpack)
register_engine("onednn", Onednn)
register_engine("x86", X86)
register_engine("reference", Reference)
