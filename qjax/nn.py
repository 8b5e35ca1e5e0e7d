"""Flax NNX integration: quantized modules with four modes and the torch.ao-style lifecycle.

See :mod:`qjax.nn.modules` (modes, layout, state), :mod:`qjax.nn.elementwise` (add, mul, cat,
activations, average pooling), :mod:`qjax.nn.lifecycle`
(prepare → calibrate → prepare_qat → convert → to_torch / save / load), :mod:`qjax.nn.fusion`
(conv + BatchNorm folding) and :mod:`qjax.nn.linen` (the Linen equivalents).
"""

# the curated names: qjax._src.nn's own __all__ (one list: a name is exported where it is defined)
from ._src.nn import *  # noqa: F401,F403
from ._src.nn import __all__  # noqa: F401
