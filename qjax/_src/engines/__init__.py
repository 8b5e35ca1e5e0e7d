"""Engines: the one seam where an arithmetic is chosen, for every quantized op.

An engine is a frozen, hashable object (``jit`` caches by it) implementing :class:`Engine`:
quantize, conv, conv_transpose, linear and the non-GEMM ops (add, mul, cat, pooling, activations,
resize, batch norm, mean), or refusing an op (:func:`refuse`).  ``engine="fbgemm"`` anywhere in
qjax resolves (:func:`resolve`) to ``Fbgemm()``; pass an instance to change its options (e.g.
``Fbgemm(isa="avx2")``), a hardware preset (``"gemmlowp"``, ``"dyadic8:acc=24"``) or a
:class:`HardwareSpec`, or your own engine for your chip (see ``docs/architecture.md``).
"""

from __future__ import annotations

from .base import ENGINE_METHODS, ConvGeometry, ConvTransposeGeometry, Engine, EngineRefusal, refuse
from .fbgemm import Fbgemm
from .hardware import PRESETS, HardwareSpec, get_spec
from .inductor import Inductor
from .litert import LiteRT, parse_litert
from .onednn import Onednn
from .onnxruntime import OnnxRuntime, parse_onnxruntime
from .qnnpack import Qnnpack
from .reference import Reference
from .resolve import layer_engine, register_engine, registered_engines, resolve
from .torch_cpu import TorchCpuOps
from .x86 import X86

__all__ = ["Engine", "ENGINE_METHODS", "EngineRefusal", "refuse", "ConvGeometry", "ConvTransposeGeometry",
           "TorchCpuOps", "Fbgemm", "Onednn", "Inductor", "LiteRT", "OnnxRuntime", "Qnnpack", "Reference", "X86", "HardwareSpec", "resolve",
           "PRESETS", "get_spec", "layer_engine", "register_engine", "registered_engines", "host_engine"]


def host_engine(name: str) -> Engine:
    """The engine that reproduces torch's engine ``name`` as torch runs it on this machine (its CPU's ISA)."""
    from ..kernels.fbgemm_paths import host_isa

    engines = {"fbgemm": lambda: Fbgemm(isa=host_isa()), "x86": lambda: X86(isa=host_isa()),
               "qnnpack": Qnnpack, "onednn": Onednn}
    if name not in engines:
        raise ValueError(f"torch engine {name!r} is not supported; qjax models {sorted(engines)}")
    return engines[name]()


register_engine("fbgemm", lambda _name: Fbgemm())
register_engine("qnnpack", lambda _name: Qnnpack())
register_engine("onednn", lambda _name: Onednn())
register_engine("inductor", lambda _name: Inductor())
register_engine("x86", lambda _name: X86())
register_engine("reference", lambda _name: Reference())
register_engine("onnxruntime", parse_onnxruntime)  # ONNX Runtime CPU EP (MLAS)
register_engine("ort", parse_onnxruntime)
register_engine("litert", parse_litert)  # "litert" (XNNPACK), "litert:reference", "litert:optimized"
for _preset in PRESETS:
    register_engine(_preset, get_spec)  # "gemmlowp" or "gemmlowp:bits=16,acc=24"
