"""Integer-only INT8 hardware arithmetic: specs, parameter derivation, runs, deviation reports, export.

    spec = qjax.hardware.get_spec("gemmlowp")              # or chain(multiplier(bits=16), ...)
    hw = qjax.hardware.convert(qmodel, x, spec)            # a QModel under integer-only arithmetic
    print(qjax.hardware.deviation(qmodel, hw, x, labels))  # per-layer distance from fbgemm
    qjax.hardware.export(hw, "out/")                       # layers.json + params.npz

A :class:`HardwareSpec` is an engine (:mod:`qjax.engines`): pass it as ``engine=`` to the ops,
``qjax.ste`` and ``qjax.nn`` like ``"fbgemm"``.
"""

from ._src.hardware import (  # noqa: F401  (the curated public names)
    HardwareSpec,
    PRESETS,
    get_spec,
    parse_spec,
    chain,
    preset,
    multiplier,
    bias,
    quantize,
    accumulator,
    output_range,
    convert,
    derive_layer,
    derive_multiplier,
    round_offline,
    layer_params,
    layer_table,
    with_key,
    HARDWARE_OPS,
    export,
    load_params,
    deviation,
    DeviationReport,
    LayerDeviation,
    narrow_accumulator,
    apply_multiplier,
    requantize_integer,
    conv_integer,
    linear_integer,
    add_integer,
    quantize_input,
    search_rounding,
    SearchResult,
)

__all__ = ["HardwareSpec", "PRESETS", "get_spec", "parse_spec", "chain", "preset", "multiplier", "bias", "quantize", "accumulator", "output_range", "convert", "derive_layer", "derive_multiplier", "round_offline", "layer_params", "layer_table", "with_key", "HARDWARE_OPS", "export", "load_params", "deviation", "DeviationReport", "LayerDeviation", "narrow_accumulator", "apply_multiplier", "requantize_integer", "conv_integer", "linear_integer", "add_integer", "quantize_input", "search_rounding", "SearchResult"]
