"""``own_buffer``: a value unchanged, but computed into a buffer of its own.

XLA's CPU fusion copies a producer's elementwise arithmetic into every consumer's loop.  For
qjax's exact arithmetic that is expensive: the exact float32 quantize (``qjax.float32``'s FMA
emulation) fused into the stem conv's NCHW->NHWC relayout ran unvectorised (~17 ms instead of
1 ms); a conv's requantization fused into its output's NHWC->NCHW relayout read the int32
accumulator with a stride of C (1x1 16->96 on 4x112x112: 56 ms instead of 38-41); a dequantize
table fused into its gather was evaluated again for every element looked up (12 ms instead of 1
for 800k elements); in QAT the exact quantize was copied into the integer conv's padding, the
dequantize and the next layer's quantize.

XLA drops ``optimization_barrier`` before fusion and hoists an identity out of a
``conditional``, but a conditional's result is always a materialised buffer.  So the values pass
through a ``cond`` whose predicate is always true but which XLA cannot fold, and whose
never-taken branch differs from the identity.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["own_buffer"]


def own_buffer(values, witness):
    """``values`` unchanged, as a materialised buffer of their own.

    ``witness``: a run-time value the always-true predicate reads (its first element): a float
    (a scale: ``w == w or w != w``, which NaN keeps XLA from folding) or an 8-bit integer (the
    values themselves: ``w ≤ 255`` for its byte, which depends on run-time data).
    """
    w = jnp.asarray(witness).reshape(-1)[0]
    if jnp.issubdtype(w.dtype, jnp.floating):
        always = (w == w) | (w != w)
    elif jnp.dtype(w.dtype).itemsize == 1:
        always = lax.bitcast_convert_type(w, jnp.uint8).astype(jnp.int32) <= 255
    else:
        raise TypeError(f"witness: a float or an 8-bit integer value, got {w.dtype}")
    if jnp.issubdtype(jnp.asarray(values).dtype, jnp.floating):
        return lax.cond(always, lambda a: a, lambda a: a + jnp.ones((), a.dtype), values)
    return lax.cond(always, lambda a: a, lambda a: a ^ jnp.ones((), a.dtype), values)
