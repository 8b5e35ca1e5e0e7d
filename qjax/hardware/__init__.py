"""Integer-only INT8 hardware arithmetic: specs, parameter derivation, runs, deviation reports, export.

    spec = qjax.hardware.get_spec("gemmlowp")              # or chain(multiplier(bits=16), ...)
    hw = qjax.hardware.convert(qmodel, x, spec)            # a QModel under integer-only arithmetic
    print(qjax.hardware.deviation(qmodel, hw, x, labels))  # per-layer distance from fbgemm
    qjax.hardware.export(hw, "out/")                       # layers.json + params.npz
"""

from .convert import HARDWARE_OPS, convert, derive_layer, derive_multiplier, layer_params, layer_table, round_offline, with_key
from .export import export, load_params
from .integer_ops import (add_integer, apply_multiplier, conv_integer, linear_integer, narrow_accumulator,
                          quantize_input, requantize_integer)
from .search import SearchResult, search_rounding
from .report import DeviationReport, LayerDeviation, deviation
from .spec import (PRESETS, HardwareSpec, accumulator, bias, chain, get_spec, multiplier, output_range, parse_spec,
                   preset, quantize)

__all__ = [
    "HardwareSpec", "PRESETS", "get_spec", "parse_spec", "chain", "preset", "multiplier", "bias", "quantize",
    "accumulator", "output_range", "convert", "derive_layer", "derive_multiplier", "round_offline", "layer_params", "layer_table",
    "with_key", "HARDWARE_OPS", "export", "load_params", "deviation", "DeviationReport", "LayerDeviation",
    "narrow_accumulator", "apply_multiplier", "requantize_integer", "conv_integer", "linear_integer",
    "add_integer", "quantize_input", "search_rounding", "SearchResult",
]
