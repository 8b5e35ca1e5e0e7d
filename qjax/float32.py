"""Exact float32 arithmetic that XLA cannot silently re-fuse.

XLA on CPU (and GPU) contracts ``a * b + c`` into a fused multiply-add whenever the
multiply and the add land in the same fused loop, and whether they do depends on
its fusion heuristics.  A fused and an unfused multiply-add differ in the last bit
for about a quarter of random float32 inputs, and torch's kernels use *both*:
per-tensor quantize and fbgemm's per-tensor bias fold are fused (``vfmadd``),
per-channel quantize and observers are unfused.  A bit-exact library therefore
cannot write ``a * b + c`` and hope.

XLA also rewrites ``x / broadcast(b)`` into a multiplication by ``1 / b`` and
``(x + C) - C`` into ``x`` for constants ``C``; :func:`div_rn` and :func:`two_sum`
keep those rewrites away with optimization barriers.

The functions here are immune to contraction by construction: every float
multiply whose result reaches an add is *exact* (its product fits in 24 bits), and
a fused multiply-add of an exact product equals the unfused one.  The only inexact
product, the correctly rounded ``fl32(a * b)``, is computed in integer arithmetic
(:func:`mul_rn`), so no float multiply exists that XLA could fuse.

Exactness domain: finite inputs whose partial products do not fall below the
float32 normal range (``|a*b| >= 2**-100`` or ``a*b == 0``).  XLA's CPU backend
flushes subnormals to zero, so nothing finer can be exact there anyway; all
callers in qjax only use these results after rounding to an integer, where that
range is irrelevant (see each caller).

References: T. J. Dekker, "A floating-point technique for extending the available
precision" (1971) for the exact product; S. Boldo and G. Melquiond, "Emulation of
FMA and correctly rounded sums: proved algorithms using rounding to odd",
IEEE Trans. Computers 57(4), 2008 (Algorithm 5) for the fused multiply-add.
"""

# the curated names: qjax._src.float32's own __all__ (one list: a name is exported where it is defined)
from ._src.float32 import *  # noqa: F401,F403
from ._src.float32 import __all__  # noqa: F401
