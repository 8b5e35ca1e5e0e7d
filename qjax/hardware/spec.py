"""Integer-only hardware arithmetic as a composable, hashable spec.

A :class:`HardwareSpec` says how an INT8 accelerator without a float unit computes one
conv/linear layer.  With ``acc = sum (x - zx)(w - zw)`` the exact integer sum:

1. **bias** — ``bq = round_bias(b / (sx*sw))`` to int32, offline;
2. **accumulator** — ``a = narrow(acc + bq)`` where ``narrow`` is identity for 32 bits and
   otherwise wraps (two's complement, the same as wrapping at every step) or saturates
   the final sum to ``accumulator_bits`` (hardware with a wide adder tree and a narrow
   register; per-step saturation depends on summation order and is not modelled);
3. **multiplier** — ``M = sx*sw/sy`` as fixed point (see :mod:`qjax.requant.fixed_point`):
   ``gemmlowp`` (SRDHM + RoundingDivideByPOT, TFLite's default), ``single`` (one rounding of the
   64-bit product, TFLite's single-rounding build) or ``dyadic`` (``m / 2**e``, HAWQ-V3/TVM),
   keeping ``multiplier_bits`` bits; ``shift_range`` bounds the stored shift (``shift`` in
   ``M = M0 * 2**(shift-31)`` for gemmlowp/single, the right shift ``e`` for dyadic);
   a multiplier needing more right shift than allowed loses low bits (down to 0);
4. **output** — ``q = clamp(round_requant(a*M) + zy, lo, hi)``, ``[lo, hi]`` the output
   range (default the dtype's, 0..255), with a fused ReLU raising ``lo`` to ``zy``.

The model's input is quantized with ``quantize_rounding``.  Rounding modes are those of
:mod:`qjax.rounding`; ``stochastic`` needs a PRNG key (see :meth:`qjax.hardware.HardwareModel.with_key`).

Build specs from presets (:data:`PRESETS`, :func:`get_spec`) and compose changes like optax
transforms: ``chain(preset("gemmlowp"), multiplier(bits=16), accumulator(24, "wrap"))``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable

from ..rounding import check_mode

__all__ = [
    "HardwareSpec", "PRESETS", "get_spec", "parse_spec", "chain", "preset", "multiplier", "bias", "quantize",
    "accumulator", "output_range",
]

STYLES = ("gemmlowp", "single", "dyadic")
OVERFLOW = ("wrap", "saturate")


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    """How one layer's integer-only arithmetic rounds, shifts and saturates (see the module doc)."""

    name: str = "custom"
    multiplier: str = "gemmlowp"
    multiplier_bits: int = 31
    shift_range: tuple = (-31, 30)
    requant_rounding: str = "half_away"
    bias_rounding: str = "half_away"
    quantize_rounding: str = "half_away"
    accumulator_bits: int = 32
    accumulator_overflow: str = "wrap"
    output_range: tuple | None = None

    def __post_init__(self):
        def pair(value, name):
            try:
                lo, hi = (int(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name}={value!r}; give two integers (lo, hi)") from None
            return lo, hi

        # normalise to hashable ints: a spec is a static argument of jitted functions
        object.__setattr__(self, "shift_range", pair(self.shift_range, "shift_range"))
        if self.output_range is not None:
            object.__setattr__(self, "output_range", pair(self.output_range, "output_range"))
        for name in ("multiplier_bits", "accumulator_bits"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be an int")
            object.__setattr__(self, name, int(value))
        if self.multiplier not in STYLES:
            raise ValueError(f"multiplier={self.multiplier!r}; use one of {STYLES}")
        if not 2 <= self.multiplier_bits <= 31:
            raise ValueError(f"multiplier_bits={self.multiplier_bits}; hardware multipliers here have 2..31 bits")
        lo, hi = self.shift_range
        if lo > hi:
            raise ValueError(f"shift_range={self.shift_range}: low end above high end")
        if self.multiplier == "dyadic" and (lo < 0 or hi > 62):
            raise ValueError(f"shift_range={self.shift_range}: a dyadic right shift must lie in 0..62")
        if self.multiplier != "dyadic" and (lo < -31 or hi > 31):
            raise ValueError(f"shift_range={self.shift_range}: a gemmlowp/single shift must lie in -31..31")
        if self.multiplier == "gemmlowp" and self.requant_rounding == "stochastic":
            raise ValueError("gemmlowp's RoundingDivideByPOT cannot round stochastically; use multiplier='single'")
        for arg in ("requant_rounding", "bias_rounding", "quantize_rounding"):
            check_mode(getattr(self, arg), arg)
        if not 8 <= self.accumulator_bits <= 32:
            raise ValueError(f"accumulator_bits={self.accumulator_bits}; use 8..32")
        if self.accumulator_overflow not in OVERFLOW:
            raise ValueError(f"accumulator_overflow={self.accumulator_overflow!r}; use one of {OVERFLOW}")
        if self.output_range is not None:
            lo, hi = self.output_range
            if not (0 <= lo <= hi <= 255):
                raise ValueError(f"output_range={self.output_range}; needs 0 <= lo <= hi <= 255 (quint8 outputs)")

    def replace(self, **changes) -> "HardwareSpec":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        acc = f"int{self.accumulator_bits}" + ("" if self.accumulator_bits == 32 else f" {self.accumulator_overflow}")
        return (f"{self.name}: {self.multiplier} multiplier {self.multiplier_bits} bits (shift {self.shift_range}), "
                f"requant {self.requant_rounding}, bias {self.bias_rounding}, quantize {self.quantize_rounding}, "
                f"acc {acc}" + (f", out {self.output_range}" if self.output_range else ""))


PRESETS: dict[str, HardwareSpec] = {
    # TFLite / gemmlowp reference kernels: QuantizeMultiplier, MultiplyByQuantizedMultiplier,
    # std::round (half away) for bias and input quantization
    "gemmlowp": HardwareSpec("gemmlowp"),
    # TFLite built with TFLITE_SINGLE_ROUNDING: one rounding of the 64-bit product, ties up
    "tflite_single": HardwareSpec("tflite_single", multiplier="single", requant_rounding="half_up"),
    # HAWQ-V3 / TVM QNN dyadic numbers (TVM's default rounding "UPWARD" = half up)
    "dyadic16": HardwareSpec("dyadic16", multiplier="dyadic", multiplier_bits=16, shift_range=(0, 62),
                             requant_rounding="half_up"),
    "dyadic8": HardwareSpec("dyadic8", multiplier="dyadic", multiplier_bits=8, shift_range=(0, 62),
                            requant_rounding="half_up"),
    # fbgemm's rounding choices (half to even everywhere) with a fixed-point multiplier
    "fbgemm_fixed": HardwareSpec("fbgemm_fixed", multiplier="single", requant_rounding="half_even",
                                 bias_rounding="half_even", quantize_rounding="half_even"),
    # a narrow accelerator: 16-bit multiplier, 24-bit wrapping accumulator
    "int24acc": HardwareSpec("int24acc", multiplier_bits=16, accumulator_bits=24, accumulator_overflow="wrap"),
}


def get_spec(spec) -> HardwareSpec:
    """A :class:`HardwareSpec` from a spec, a preset name or a ``"name:key=value,..."`` string."""
    if isinstance(spec, HardwareSpec):
        return spec
    if isinstance(spec, str):
        return parse_spec(spec)
    raise TypeError(f"spec must be a HardwareSpec or a preset name {sorted(PRESETS)}, got {spec!r}")


_KEYS = {"bits": ("multiplier_bits", int), "multiplier": ("multiplier", str), "rounding": ("requant_rounding", str),
         "bias": ("bias_rounding", str), "quantize": ("quantize_rounding", str), "acc": ("accumulator_bits", int),
         "overflow": ("accumulator_overflow", str)}


def parse_spec(text: str) -> HardwareSpec:
    """``"gemmlowp"`` or ``"gemmlowp:bits=16,acc=24,overflow=saturate,rounding=half_even"``.

    Keys: ``bits``, ``multiplier``, ``rounding`` (requant), ``bias``, ``quantize``, ``acc``,
    ``overflow``, ``shift=lo..hi``, ``out=lo..hi``.
    """
    name, _, rest = text.partition(":")
    if name not in PRESETS:
        raise ValueError(f"spec {name!r} is not a preset; presets: {sorted(PRESETS)}")
    spec = PRESETS[name]
    changes = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"spec option {item!r} must be key=value")
        try:
            if key in ("shift", "out"):
                lo, sep, hi = value.partition("..")
                if not sep:
                    raise ValueError("expected lo..hi")
                changes["shift_range" if key == "shift" else "output_range"] = (int(lo), int(hi))
            elif key in _KEYS:
                field, typ = _KEYS[key]
                changes[field] = typ(value)
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(f"unknown spec option {key!r}; use {sorted(_KEYS) + ['shift', 'out']}") from None
        except ValueError as e:
            raise ValueError(f"spec option {item!r}: {e}") from None
    if changes:
        spec = spec.replace(name=text, **changes)
    return spec


# -- composable transforms (each a function HardwareSpec -> HardwareSpec) ------------------------------

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

