"""The engine protocol (every quantized op an engine provides), the static conv geometry, and refusals.

An engine is the one place an arithmetic is chosen: a frozen, hashable object (a static argument of
jitted functions) whose methods compute every quantized op the way one runtime does.  Callers
(``qjax.ops``, ``qjax.ste``, ``qjax.nn``, the QModel node ops) resolve a name to an engine once
(:func:`qjax.engines.resolve`) and then only call these methods; nothing outside ``qjax.engines``
asks what kind of engine it holds.

Two groups of methods, two layouts:

* GEMM ops (``conv``, ``conv_transpose``, ``linear``) take raw integer arrays in **channels-last**
  layout (what XLA's int8 kernels want) with their quantization parameters, and return the output
  integers as int32;
* the non-GEMM ops (quantize, add, mul, cat, pooling, activations, resize, batch norm, mean) take and
  return :class:`~qjax.QArray` values in torch's logical order ``(N, C, *spatial)`` together with
  torch's ``memory_format`` and thread count, because the CPU kernels they reproduce pick their
  vector/scalar paths and block boundaries from the memory order (see :mod:`qjax.qops.paths`).

An engine that has no arithmetic for an op refuses it with :class:`EngineRefusal` (a
:class:`~qjax.QuantizationError`) naming the engine and the op — never a silent substitute.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

from ..checks import QuantizationError

__all__ = ["ConvGeometry", "ConvTransposeGeometry", "Engine", "EngineRefusal", "refuse", "ENGINE_METHODS"]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Static convolution geometry (channels-last operands).

    ``strides`` and ``dilation`` have one int per spatial dim, ``padding`` one
    ``(lo, hi)`` pair per spatial dim, ``groups`` the feature group count.
    """

    strides: tuple
    padding: tuple
    dilation: tuple
    groups: int


@dataclasses.dataclass(frozen=True)
class ConvTransposeGeometry:
    """Static transposed-convolution geometry (one int per spatial dim; symmetric padding as in torch)."""

    strides: tuple
    padding: tuple
    output_padding: tuple
    dilation: tuple
    groups: int


class EngineRefusal(QuantizationError):
    """An engine has no arithmetic for the requested op."""


def refuse(engine, op: str, why: str = ""):
    """Raise :class:`EngineRefusal`: ``engine`` does not compute ``op``."""
    name = getattr(engine, "name", type(engine).__name__)
    raise EngineRefusal(f"engine {name!r} has no {op} arithmetic" + (f": {why}" if why else ""))


@runtime_checkable
class Engine(Protocol):
    """Every method callers use; implement them all (refuse with :func:`refuse` what your chip cannot do).

    Shared conventions — GEMM ops: ``x`` uint8 ``(N, *spatial, C)`` with per-tensor ``x_scale`` /
    ``x_zero_point``; ``w`` int8 ``(*kernel, C/groups, O)`` (conv), ``(C_in, O/groups, *kernel)``
    (conv_transpose, torch's layout) or ``(O, K)`` (linear) with ``w_scale`` / ``w_zero_point`` scalar
    or ``(O,)`` and ``w_per_channel``; ``bias`` float32 ``(O,)`` or None; ``out_scale`` /
    ``out_zero_point`` the output's; ``key`` a PRNG key for engines that round stochastically (else
    None); ``scales64`` None or ``(x, w, out)``: torch's double scales as :mod:`qjax.float64` words, each
    None where that scale is float32-valued (the float32 scales are always ``fl32`` of them; engines whose
    kernels cast the scales to float first ignore it; callers pass it only when one is not None).  They
    return the output integers as int32, channels last.  Non-GEMM ops take and return
    QArrays in torch's logical order; ``memory_format`` is torch's (``"contiguous"``,
    ``"channels_last"``, ``"strided"``) and ``threads`` torch's thread count; ``in_qparams`` / ``out_qparams``
    are the inputs' / output's concrete ``(scale, zero_point)`` when known (for kernels that derive
    constants on the host), ``input_format`` the input's memory format where it differs from the output's.
    """

    name: str  # what reports and errors call it
    torch_engine: str | None  # the torch.backends.quantized.engine it reproduces (to_torch, imports), or None

    # -- per-layer dispatch ----------------------------------------------------------------------
    def for_layer(self, w_zero_point, groups: int, output_padding: tuple = ()) -> "Engine":
        """The engine one layer with these concrete weight zero points runs on (torch's x86 picks per
        layer at prepack time); ``self`` for engines that do not dispatch."""

    # -- quantize / dequantize -------------------------------------------------------------------
    def quantize(self, x, scale, zero_point, dtype, axis=None, key=None): ...

    def dequantize(self, q): ...

    # -- GEMM ops --------------------------------------------------------------------------------
    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
             out_scale, out_zero_point, geometry: ConvGeometry, relu: bool, key=None, scales64=None): ...

    def conv_transpose(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
                       out_scale, out_zero_point, geometry: ConvTransposeGeometry, key=None, scales64=None): ...

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
               out_scale, out_zero_point, relu: bool, key=None, scales64=None): ...

    # -- elementwise -----------------------------------------------------------------------------
    def add(self, a, b, scale, zero_point, *, relu=False, memory_format="contiguous", threads=1,
            input_formats=None, in_qparams=None, out_qparams=None, key=None): ...

    def mul(self, a, b, scale, zero_point, *, relu=False, memory_format="contiguous", threads=1,
            input_formats=None): ...

    def add_scalar(self, a, c, *, relu=False, memory_format="contiguous", threads=1, in_qparams=None): ...

    def mul_scalar(self, a, c, *, relu=False, in_qparams=None): ...

    def cat(self, xs, scale, zero_point, *, dim, relu=False, channels_last=False): ...

    # -- activations -----------------------------------------------------------------------------
    def relu(self, x, *, memory_format="contiguous"): ...

    def relu6(self, x, *, memory_format="contiguous", input_format=None): ...

    def hardtanh(self, x, min_val, max_val, *, memory_format="contiguous", input_format=None): ...

    def hardswish(self, x, scale, zero_point, *, memory_format="contiguous", threads=1): ...

    def hardsigmoid(self, x, *, memory_format="contiguous", threads=1): ...

    def sigmoid(self, x, scale=None, zero_point=None, *, memory_format="contiguous", threads=1,
                in_qparams=None): ...

    def tanh(self, x, *, memory_format="contiguous", threads=1, in_qparams=None): ...

    def leaky_relu(self, x, negative_slope, scale, zero_point, *, threads=1): ...

    def elu(self, x, scale, zero_point, alpha=1.0, *, memory_format="contiguous", threads=1, in_qparams=None): ...

    # -- pooling, resize, normalisation, reductions ----------------------------------------------
    def max_pool(self, x, kernel_size, stride, padding, dilation, ceil_mode, *, memory_format="contiguous"): ...

    def avg_pool(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, *,
                 memory_format="contiguous"): ...

    def adaptive_avg_pool(self, x, output_size, *, memory_format="contiguous"): ...

    def interpolate(self, x, size, scale_factor, mode, align_corners, recompute_scale_factor, *,
                    memory_format="contiguous"): ...

    def batch_norm(self, x, weight, bias, mean, var, eps, scale, zero_point, *, relu=False, in_scale=None): ...

    def mean(self, x, dims, keepdim, *, memory_format="contiguous", threads=1): ...

    def layer_norm(self, x, normalized_shape, weight, bias, eps, scale, zero_point): ...

    def group_norm(self, x, num_groups, weight, bias, eps, scale, zero_point, *, memory_format="contiguous",
                   threads=1): ...

    def instance_norm(self, x, weight, bias, eps, scale, zero_point, *, memory_format="contiguous", threads=1): ...

    # -- float-output ops: dynamic quantization, quantized embeddings --------------------------------
    def linear_dynamic(self, x, w, w_scale, w_zero_point, w_per_channel, bias, *, relu=False, reduce_range=True):
        """``quantized::linear_dynamic``: float32 ``x (..., K)`` quantized per call, int8 ``w (O, K)``,
        float32 ``(..., O)`` out (:mod:`qjax._src.qops.dynamic`)."""

    def embedding_bag(self, values, row_scale, row_bias, indices, offsets, per_sample_weights=None):
        """``quantized::embedding_bag_byte`` / ``_4bit`` (sum): uint8 ``values (R, D)``, float32 row scale /
        bias ``(R,)``, ``indices (n,)``, bag starts ``offsets (B,)`` -> float32 ``(B, D)``."""

    def embedding(self, values, row_scale, row_bias, indices):
        """``quantized::embedding_byte`` / ``_4bit``: float32 ``indices.shape + (D,)``."""

    # -- explanation -----------------------------------------------------------------------------
    def describe(self, op, x_taps, w_taps, x_scale, x_zero_point, w_scale, w_zero_point, per_channel, bias,
                 out_scale, out_zero_point, relu, **shape) -> dict:
        """One conv/linear output element recomputed step by step (what :func:`qjax.explain` prints)."""


#: every method of the protocol (tests check each engine implements them all)
ENGINE_METHODS = tuple(name for name, v in vars(Engine).items() if callable(v) and not name.startswith("_"))
