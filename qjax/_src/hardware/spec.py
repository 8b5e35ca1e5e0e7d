"""Composable hardware-spec transforms, like optax's: each a function ``HardwareSpec -> HardwareSpec``.

    spec = chain(preset("gemmlowp"), multiplier(bits=16), accumulator(24, "wrap"))

The spec itself (fields, presets, parsing, and its integer-only arithmetic as an engine) is
:class:`qjax.engines.HardwareSpec`.
"""

from __future__ import annotations

from typing import Callable

from ..engines.hardware import PRESETS, HardwareSpec, get_spec

__all__ = ["chain", "preset", "multiplier", "bias", "quantize", "accumulator", "output_range", "SpecTransform"]


SpecTransform = Callable[[HardwareSpec], HardwareSpec]


def chain(*transforms: SpecTransform, base: HardwareSpec | None = None) -> HardwareSpec:
    """Apply ``transforms`` in order to ``base`` (default: the ``gemmlowp`` preset)."""
    spec = base or PRESETS["gemmlowp"]
    for t in transforms:
        spec = t(spec)
    return spec


def preset(name: str) -> SpecTransform:
    """Start over from a preset."""
    return lambda _spec: get_spec(name)


def _setter(**changes) -> SpecTransform:
    changes = {k: v for k, v in changes.items() if v is not None}
    return lambda spec: spec.replace(**changes)


def multiplier(style: str | None = None, bits: int | None = None, rounding: str | None = None,
               shift_range: tuple | None = None) -> SpecTransform:
    """Fixed-point multiplier style, its bits, its final rounding and the shift limits."""
    return _setter(multiplier=style, multiplier_bits=bits, requant_rounding=rounding, shift_range=shift_range)


def bias(rounding: str) -> SpecTransform:
    """Rounding of the int32 bias ``b / (sx*sw)``."""
    return _setter(bias_rounding=rounding)


def quantize(rounding: str) -> SpecTransform:
    """Rounding of the model input's quantization."""
    return _setter(quantize_rounding=rounding)


def accumulator(bits: int, overflow: str = "saturate") -> SpecTransform:
    """Accumulator width and what happens beyond it (``"wrap"`` or ``"saturate"``)."""
    return _setter(accumulator_bits=bits, accumulator_overflow=overflow)


def output_range(lo: int, hi: int) -> SpecTransform:
    """Output clamp, e.g. ``(0, 127)`` for hardware storing 7-bit activations."""
    return _setter(output_range=(lo, hi))

