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
:mod:`qjax.rounding`; ``stochastic`` needs a PRNG key (see :func:`qjax.hardware.with_key`).

Build specs from presets (:data:`PRESETS`, :func:`get_spec`) and compose changes like optax
transforms (:mod:`qjax.hardware`): ``chain(preset("gemmlowp"), multiplier(bits=16), accumulator(24, "wrap"))``.

A spec is an engine (:class:`~qjax.engines.Engine`): ``quantize`` (the model input, with
``quantize_rounding``), ``conv``, ``linear`` and ``add`` (TFLite's integer ADD) are integer-only, their
parameters derived in the graph from the float scales exactly as :mod:`qjax.requant.derive` derives
them offline; ``conv_transpose`` is refused; the other non-GEMM ops (pooling, concatenation,
activations, ...) have no integer-only rule here and keep torch's CPU arithmetic — the arithmetic
:func:`qjax.hardware.convert` leaves on such nodes.
"""

from __future__ import annotations

import dataclasses
import numbers
import functools

import jax
import jax.numpy as jnp

from ..dtypes import quint8
from ..float32 import div_rn
from ..kernels.conv import conv_accumulate
from ..kernels.linear import linear_accumulate
from ..layout import channels_to_first, channels_to_last, weight_to_last
from ..qarray import QArray
from ..requant.derive_traced import check_derivable, check_derivable_add, derive_add_traced, derive_layer_traced
from ..requant.integer_only import ADD_LEFT_SHIFT, apply_multiplier, clamp_output, requantize_integer
from ..rounding import check_mode, round_float
from .base import refuse
from .torch_cpu import TorchCpuOps

__all__ = ["HardwareSpec", "PRESETS", "get_spec", "parse_spec", "conv_integer", "linear_integer", "add_integer",
           "quantize_input"]

STYLES = ("gemmlowp", "single", "dyadic")
OVERFLOW = ("wrap", "saturate")
PRODUCTS = ("float64", "float32")


@dataclasses.dataclass(frozen=True)
class HardwareSpec(TorchCpuOps):
    """How one layer's integer-only arithmetic rounds, shifts and saturates (see the module doc); an engine."""

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
    # how a per-tensor multiplier forms sx*sw: "float64" (exact) or "float32" (rounded to float32 first, as
    # TFLite's uint8 kernels do: kernel_util.cc GetQuantizedConvolutionMultipler); per channel it is float64
    per_tensor_product: str = "float64"
    torch_engine = None  # no torch kernel computes integer-only arithmetic (export: qjax.hardware.export)

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
        if self.per_tensor_product not in PRODUCTS:
            raise ValueError(f"per_tensor_product={self.per_tensor_product!r}; use one of {PRODUCTS}")
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
                f"acc {acc}" + (f", out {self.output_range}" if self.output_range else "")
                + (", per-tensor sx*sw in float32" if self.per_tensor_product == "float32" else ""))


    # -- the engine ------------------------------------------------------------------------------------
    def _key_for(self, key, what):
        if self.requant_rounding == "stochastic" and key is None:
            raise ValueError(f"spec {self.name!r} rounds stochastically: pass key= ({what})")
        return key

    def quantize(self, x, scale, zero_point, dtype, axis=None, key=None):
        """The host's quantization of the model input: ``clamp(round_mode(x / s) + z, 0, 255)``."""
        if getattr(dtype, "name", dtype) != "quint8" or axis is not None:
            refuse(self, f"quantize to {getattr(dtype, 'name', dtype)} (axis={axis})",
                   "integer-only inputs are per-tensor quint8")
        if self.quantize_rounding == "stochastic" and key is None:
            raise ValueError(f"spec {self.name!r} quantizes stochastically: pass key=")
        return quantize_input(x, dict(scale=scale, zero_point=zero_point), spec=self, key=key)

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry, relu: bool, key=None, scales64=None):
        bq, m0, shift = derive_layer_in_graph(self, w.shape[-1], x_scale, w_scale, out_scale, bias)
        return _conv_channels_last(x, x_zero_point, w, w_zero_point, bq, m0, shift, out_zero_point,
                                   self._key_for(key, "conv"), spec=self, geometry=geometry, relu=bool(relu))

    def conv_transpose(self, *args, **kwargs):
        refuse(self, "conv_transpose", "the integer-only hardware model covers conv, linear and add")

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu: bool, key=None, scales64=None):
        bq, m0, shift = derive_layer_in_graph(self, w.shape[0], x_scale, w_scale, out_scale, bias)
        return _linear_values(x, x_zero_point, w, w_zero_point, bq, m0, shift, out_zero_point,
                              self._key_for(key, "linear"), spec=self, relu=bool(relu))

    def add(self, a, b, scale, zero_point, *, relu=False, memory_format="contiguous", threads=1,
            input_formats=None, in_qparams=None, out_qparams=None, key=None):
        """TFLite's integer ADD (:func:`add_integer`), multipliers derived in the graph."""
        p = dict(derive_add_in_graph(self, a.scale, b.scale, scale), scale=jnp.asarray(scale, jnp.float32),
                 zero_point=jnp.asarray(zero_point, jnp.int32))
        return add_integer(a, b, p, spec=self, relu=relu, key=self._key_for(key, "add"))


PRESETS: dict[str, HardwareSpec] = {
    # TFLite's uint8 (quint8) CONV_2D kernels (reference_ops::Conv; LiteRT 2.3.0's BUILTIN_REF, checked):
    # QuantizeMultiplier of double(fl32(sx*sw)) / double(sy) (GetQuantizedConvolutionMultipler; per channel:
    # double(sx)*double(sw)/double(sy), PopulateConvolutionQuantizationParams), MultiplyByQuantizedMultiplier
    # (SRDHM, RoundingDivideByPOT half away), std::round (half away) for bias and input quantization.
    # Not LiteRT's FULLY_CONNECTED reference kernel (float requantization since 2.2.0), nor its optimized
    # kernels (both roundings half up), nor XNNPACK (float32): those are the litert engines.
    "gemmlowp": HardwareSpec("gemmlowp", per_tensor_product="float32"),
    # TFLite built with TFLITE_SINGLE_ROUNDING: one rounding of the 64-bit product, ties up (no LiteRT
    # wheel is built so; the multiplier as for "gemmlowp")
    "tflite_single": HardwareSpec("tflite_single", multiplier="single", requant_rounding="half_up",
                                  per_tensor_product="float32"),
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
         "overflow": ("accumulator_overflow", str), "product": ("per_tensor_product", str)}


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




# -- derivation in the graph -----------------------------------------------------------------------------

def derive_layer_in_graph(spec: HardwareSpec, out_channels: int, x_scale, w_scale, out_scale, bias):
    """``(bias_q, m0, shift)`` int32 ``(O,)``: :func:`qjax.requant.derive.derive_layer`'s integers computed in
    the graph (the scales may be traced: QAT learns them); ``bias_q`` is None without a bias.

    Concrete scales take the offline derivation itself, with its errors (a multiplier beyond the shift
    range, a bias beyond int32) and no compilation; traced ones the traced twin (bit-identical:
    ``tests/requant/test_derive_traced.py``, ``scripts/fuzz_derive.py``), which saturates there.
    """
    host = check_derivable(x_scale, w_scale, out_scale, bias, out_channels, spec, spec.name)
    if host is not None:
        return tuple(None if v is None else jnp.asarray(v, jnp.int32) for v in host)
    return _derive_layer_traced(x_scale, w_scale, out_scale, bias, out_channels=out_channels, spec=spec)


def derive_add_in_graph(spec: HardwareSpec, a_scale, b_scale, out_scale) -> dict:
    """TFLite ADD's multipliers of :func:`qjax.requant.derive.derive_add`, computed in the graph."""
    host = check_derivable_add(a_scale, b_scale, out_scale, spec, f"{spec.name} add")
    if host is not None:
        return {k: jnp.asarray(v, jnp.int32) for k, v in host.items()}
    return _derive_add_traced(a_scale, b_scale, out_scale, spec=spec)


# jitted once per spec / channel count: an eager caller (a module run op by op) compiles the derivation once
_derive_layer_traced = jax.jit(derive_layer_traced, static_argnames=("out_channels", "spec"))
_derive_add_traced = jax.jit(derive_add_traced, static_argnames=("spec",))


# -- the integer-only layers, from derived parameters ------------------------------------------------------
# ``p`` holds the derived integers (qjax.hardware.convert stores them per node): weight (QArray), bias_q,
# m0, shift, scale, zero_point (and m0_a/shift_a/m0_b/shift_b for add).

def _qarray(values, p):
    return QArray(values.astype(jnp.uint8), p["scale"], p["zero_point"], quint8, None, check=False)


@functools.partial(jax.jit, static_argnames=("spec", "geometry", "relu"))
def _conv_channels_last(x, zx, w, zw, bias_q, m0, shift, zy, key, *, spec, geometry, relu):
    acc = conv_accumulate(x, zx, w, zw, strides=geometry.strides, padding=geometry.padding,
                          dilation=geometry.dilation, groups=geometry.groups)
    return requantize_integer(acc, bias_q, m0, shift, zy, spec, relu, key)


def conv_integer(xq: QArray, p: dict, *, spec: HardwareSpec, geometry, relu: bool, key=None) -> QArray:
    """Integer-only conv, torch layout ``(N, C, *spatial)`` and ``(O, I, *K)`` weights; ``p``: derived parameters."""
    w = p["weight"]
    v = _conv_channels_last(channels_to_last(xq.values), xq.zero_point, weight_to_last(w.values), w.zero_point,
                            p["bias_q"], p["m0"], p["shift"], p["zero_point"], key, spec=spec, geometry=geometry,
                            relu=relu)
    return _qarray(channels_to_first(v), p)


@functools.partial(jax.jit, static_argnames=("spec", "relu"))
def _linear_values(x, zx, w, zw, bias_q, m0, shift, zy, key, *, spec, relu):
    acc = linear_accumulate(x, zx, w, zw)
    return requantize_integer(acc, bias_q, m0, shift, zy, spec, relu, key)


def linear_integer(xq: QArray, p: dict, *, spec: HardwareSpec, relu: bool, key=None) -> QArray:
    """Integer-only linear layer ``(..., K) -> (..., O)``."""
    w = p["weight"]
    v = _linear_values(xq.values, xq.zero_point, w.values, w.zero_point, p["bias_q"], p["m0"], p["shift"],
                       p["zero_point"], key, spec=spec, relu=relu)
    return _qarray(v, p)


def add_integer(a: QArray, b: QArray, p: dict, *, spec: HardwareSpec, relu: bool, key=None) -> QArray:
    """TFLite's integer ADD (``reference_ops::AddElementwise``) with ``spec``'s multiplier style::

        a' = round((qa - za) * 2**20 * Ma),  b' = round((qb - zb) * 2**20 * Mb)
        q  = clamp(round((a' + b') * Mo) + zy)

    with ``Ma = sa / (2 max(sa, sb))``, ``Mb`` likewise, ``Mo = 2 max(sa, sb) / (2**20 sy)``.
    """
    ka = kb = ko = None
    if key is not None:
        ka, kb, ko = jax.random.split(key, 3)
    xa = jnp.left_shift(a.values.astype(jnp.int32) - a.zero_point, ADD_LEFT_SHIFT)
    xb = jnp.left_shift(b.values.astype(jnp.int32) - b.zero_point, ADD_LEFT_SHIFT)
    sa = apply_multiplier(xa, p["m0_a"], p["shift_a"], spec, ka)
    sb = apply_multiplier(xb, p["m0_b"], p["shift_b"], spec, kb)
    r = apply_multiplier(sa + sb, p["m0"], p["shift"], spec, ko)
    return _qarray(clamp_output(r, p["zero_point"], spec, relu), p)


def quantize_input(x, p: dict, *, spec: HardwareSpec, key=None) -> QArray:
    """The host's quantization of the model input: ``clamp(round(x / s) + z, 0, 255)`` in ``spec``'s rounding."""
    q = round_float(div_rn(jnp.asarray(x, jnp.float32), p["scale"]), spec.quantize_rounding, key)
    q = jnp.clip(q, -256.0, 512.0).astype(jnp.int32) + p["zero_point"]
    return _qarray(jnp.clip(q, 0, 255), p)
