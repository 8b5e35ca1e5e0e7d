"""Which elements torch's vectorised kernels compute with the vector formula and which with the scalar one.

ATen's quantized elementwise kernels (``cpu_kernel_vec`` in ``QuantizedOpKernels.cpp``)
carry two lambdas that round differently (the vector one dequantizes with an FMA and
rounds *before* adding the zero point; the scalar one does neither), so an element's
result depends on its position:

* ``TensorIterator`` orders the loop by the output's memory format (contiguous or
  channels-last tensors become one 1-d run in memory order);
* ``TensorIterator::for_each`` runs serially below 32768 elements, else splits the run
  into ``min(threads, ceil(n/32768))`` OpenMP chunks of ``ceil(n/threads)``;
* in each chunk, ``floor(len/block)*block`` elements take the vector lambda, the rest
  the scalar one.  ``block`` is two AVX2 vectors (64 elements for 8-bit types): the
  quantized kernels are registered for AVX2 only, even on AVX512 machines.
* operands that are not contiguous in the output's memory order run all-scalar.

:func:`vector_mask` returns that partition as a static boolean array.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["CONTIGUOUS", "CHANNELS_LAST", "STRIDED", "vector_mask", "memory_order", "GRAIN", "suggest_memory_format"]

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
STRIDED = "strided"  # neither: every element takes the scalar lambda
GRAIN = 32768  # at::internal::GRAIN_SIZE


def _channels_last_strides(sizes, strides, order):
    # c10 is_channels_last_strides_{2d,3d}_s4: the implicit memory format of a strided tensor
    if strides[1] == 0:
        return False
    smallest = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:  # ambiguous N111-like tensors default to contiguous
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def suggest_memory_format(sizes, strides) -> str:
    """torch's ``Tensor.suggest_memory_format()`` from sizes and strides (in elements).

    A dense NCHW tensor whose spatial size is 1 is *contiguous* here even though
    ``is_contiguous(channels_last)`` also holds: this is the distinction behind the
    pooling layout bug that :mod:`qjax.qops.pooling` reproduces.
    """
    sizes, strides = tuple(sizes), tuple(strides)
    if len(sizes) == 4 and _channels_last_strides(sizes, strides, (1, 3, 2, 0)):
        return CHANNELS_LAST
    if len(sizes) == 5 and _channels_last_strides(sizes, strides, (1, 4, 3, 2, 0)):
        return CHANNELS_LAST
    return CONTIGUOUS


def memory_order(ndim: int, memory_format: str):
    """Permutation of logical dims in memory order (slowest first)."""
    if memory_format == CHANNELS_LAST and ndim in (4, 5):
        return (0,) + tuple(range(2, ndim)) + (1,)
    return tuple(range(ndim))


@functools.lru_cache(maxsize=256)
def _mask(shape, memory_format, block, threads):
    n = int(np.prod(shape)) if shape else 1
    if memory_format == STRIDED or n == 0:
        return np.zeros(shape, bool)
    flat = np.zeros(n, bool)
    if n < GRAIN or threads <= 1:
        chunks = [(0, n)]
    else:
        nt = min(threads, -(-n // GRAIN))
        size = -(-n // nt)
        chunks = [(b, min(n, b + size)) for b in range(0, n, size)]
    for b, e in chunks:
        flat[b : b + (e - b) // block * block] = True
    perm = memory_order(len(shape), memory_format)
    mem_shape = tuple(shape[d] for d in perm)
    mask = flat.reshape(mem_shape).transpose(np.argsort(perm))
    mask.setflags(write=False)
    return mask


def vector_mask(shape, memory_format=CONTIGUOUS, block=64, threads=1):
    """Boolean array (logical ``shape``): True where torch uses the vector lambda."""
    return _mask(tuple(int(s) for s in shape), memory_format, int(block), int(threads))
