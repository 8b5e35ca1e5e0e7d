"""The ``litert`` engines: LiteRT's (TFLite's) three CPU kernel families for int8 models.

``LiteRT(kernels=...)`` computes what ``ai-edge-litert``'s interpreter computes with one op resolver
(:mod:`qjax.interop.litert_runtime`):

* ``"reference"`` — ``BUILTIN_REF``: ``reference_integer_ops`` (gemmlowp double rounding:
  ``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``), the golden model;
* ``"optimized"`` — ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``: the builtin ``optimized_ops`` (their own
  roundings, chosen per CPU: ``isa``);
* ``"xnnpack"`` — ``AUTO``: the ops the default XNNPACK delegate takes (float32 requantization, chosen
  per CPU), the others on the optimized builtin kernels.  :func:`qjax.from_tflite` records per operator
  which one ran it, so an imported model's nodes carry ``LiteRT("xnnpack")`` or ``LiteRT("optimized")``.

Its ops are LiteRT's, in LiteRT's layout (NHWC activations, int8 values with signed zero points,
per-channel int8 weights, int32 biases at scale ``x_scale * w_scale``): the ``tfl_*`` methods of the
mixins in ``litert_gemm`` (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED), ``litert_elementwise`` (ADD,
SUB, MUL, CONCATENATION, QUANTIZE, DEQUANTIZE) and ``litert_pooling`` (AVERAGE_POOL_2D, MAX_POOL_2D,
MEAN, HARD_SWISH, LOGISTIC, TANH, SOFTMAX).  The torch-convention protocol methods (uint8 activations,
float biases, torch's memory formats) are refused unless a mixin implements them.
"""

from __future__ import annotations

import dataclasses

from .base import ENGINE_METHODS, refuse
from .litert_elementwise import LiteRTElementwise
from .litert_gemm import LiteRTGemm
from .litert_pooling import LiteRTPooling

__all__ = ["LiteRT", "KERNEL_FAMILIES", "parse_litert"]

#: the three kernel families (op resolvers) of LiteRT's CPU interpreter
KERNEL_FAMILIES = ("reference", "optimized", "xnnpack")
#: the CPUs whose optimized / XNNPACK kernels were checked against the interpreter
ISAS = ("x86_64",)


class _ProtocolRefusals:
    """The torch-convention protocol methods, refused (a LiteRT model runs the ``tfl_*`` methods)."""

    def for_layer(self, w_zero_point, groups, output_padding=()):
        return self


def _refusing(op):
    def method(self, *args, **kwargs):
        refuse(self, op, "LiteRT's int8 ops are the engine's tfl_* methods (qjax.from_tflite builds models on them)")

    method.__name__ = op
    return method


for _op in ENGINE_METHODS:
    if _op != "for_layer":
        setattr(_ProtocolRefusals, _op, _refusing(_op))


@dataclasses.dataclass(frozen=True)
class LiteRT(LiteRTGemm, LiteRTElementwise, LiteRTPooling, _ProtocolRefusals):
    """One LiteRT CPU kernel family (see the module doc); frozen and hashable (a static jit argument)."""

    kernels: str = "xnnpack"  # "reference" | "optimized" | "xnnpack": the interpreter's op resolver
    isa: str = "x86_64"  # the CPU the optimized / XNNPACK kernels were chosen for (only x86_64 is verified)
    torch_engine = None  # no torch kernel

    def __post_init__(self):
        if self.kernels not in KERNEL_FAMILIES:
            raise ValueError(f"kernels={self.kernels!r}; use one of {KERNEL_FAMILIES}")
        if self.isa not in ISAS:
            raise ValueError(f"isa={self.isa!r}: LiteRT's kernels are verified on {ISAS} only")

    @property
    def name(self) -> str:
        return f"litert:{self.kernels}"


def parse_litert(text: str) -> LiteRT:
    """``"litert"`` (XNNPACK, the interpreter's default), ``"litert:reference"``, ``"litert:optimized"``,
    ``"litert:xnnpack"``."""
    _, _, kernels = text.partition(":")
    return LiteRT(kernels or "xnnpack")
