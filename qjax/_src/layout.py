"""Layout changes between torch's order and channels-last, the one layout of qjax's kernels.

Activations: torch ``(N, C, *spatial)`` <-> channels-last ``(N, *spatial, C)``; conv weights: torch
``(O, I, *kernel)`` <-> ``(*kernel, I, O)`` (Flax's, and XLA's preferred int8 kernel layout).  Only the
public API edge (torch-layout ops) and the importers call these.

Each is a transpose *between reshapes*.  A plain transpose lets XLA's layout assignment turn it into
a free relabelling, which hands the int8 convolution a non-row-major operand; XLA then falls back
from its fast int8 kernel to a generic int32 loop (~25x slower).  Reshapes need row-major operands,
so the data really moves.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["channels_to_last", "channels_to_first", "weight_to_last", "weight_to_torch"]


def channels_to_last(x):
    """``(N, C, *S) -> (N, *S, C)``."""
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    return jnp.transpose(x.reshape(n, c, -1), (0, 2, 1)).reshape((n,) + sp + (c,))


def channels_to_first(x):
    """``(N, *S, C) -> (N, C, *S)``."""
    n, c, sp = x.shape[0], x.shape[-1], x.shape[1:-1]
    return jnp.transpose(x.reshape(n, -1, c), (0, 2, 1)).reshape((n, c) + sp)


def weight_to_last(w):
    """Torch's ``(O, I, *K)`` conv weight as ``(*K, I, O)``."""
    o, i, k = w.shape[0], w.shape[1], w.shape[2:]
    return jnp.transpose(w.reshape(o, i, -1), (2, 1, 0)).reshape(k + (i, o))


def weight_to_torch(w):
    """A ``(*K, I, O)`` conv weight as torch's ``(O, I, *K)``."""
    k, i, o = w.shape[:-2], w.shape[-2], w.shape[-1]
    return jnp.transpose(w.reshape(-1, i, o), (2, 1, 0)).reshape((o, i) + k)
