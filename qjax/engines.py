"""Engines: the one seam where an arithmetic is chosen, for every quantized op.

An engine is a frozen, hashable object (``jit`` caches by it) implementing :class:`Engine`:
quantize, conv, conv_transpose, linear and the non-GEMM ops (add, mul, cat, pooling, activations,
resize, batch norm, mean), or refusing an op (:func:`refuse`).  ``engine="fbgemm"`` anywhere in
qjax resolves (:func:`resolve`) to ``Fbgemm()``; pass an instance to change its options (e.g.
``Fbgemm(isa="avx2")``), a hardware preset (``"gemmlowp"``, ``"dyadic8:acc=24"``) or a
:class:`HardwareSpec`, or your own engine for your chip (see ``docs/architecture.md``).
"""

# the curated names: qjax._src.engines's own __all__ (one list: a name is exported where it is defined)
from ._src.engines import *  # noqa: F401,F403
from ._src.engines import __all__  # noqa: F401
