"""Integer-only INT8 hardware arithmetic: specs, parameter derivation, runs, deviation reports, export.

    spec = qjax.hardware.get_spec("gemmlowp")              # or chain(multiplier(bits=16), ...)
    hw = qjax.hardware.convert(qmodel, x, spec)            # a QModel under integer-only arithmetic
    print(qjax.hardware.deviation(qmodel, hw, x, labels))  # per-layer distance from fbgemm
    qjax.hardware.export(hw, "out/")                       # layers.json + params.npz

A :class:`HardwareSpec` is an engine (:mod:`qjax.engines`): pass it as ``engine=`` to the ops,
``qjax.ste`` and ``qjax.nn`` like ``"fbgemm"``.
"""

# the curated names: qjax._src.hardware's own __all__ (one list: a name is exported where it is defined)
from ._src.hardware import *  # noqa: F401,F403
from ._src.hardware import __all__  # noqa: F401
