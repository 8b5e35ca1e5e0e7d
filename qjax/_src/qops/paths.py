"""Which elements torch's vectorised kernels compute with the vector formula and which with the scalar one.

ATen's quantized elementwise kernels (``cpu_kernel_vec`` in ``QuantizedOpKernels.cpp``)
carry two lambdas that round differently (the vector one dequantizes with an FMA and
rounds *before* adding the zero point; the scalar one does neither), so an element's
result depends on its position.  The model:

* ``TensorIterator`` orders the loop dims by the output's strides (fastest first) and
  coalesces neighbouring dims where every operand allows it — a contiguous or
  channels-last operation becomes one 1-d run in memory order; a broadcast operand
  (stride 0) splits it into rows;
* ``TensorIterator::for_each`` runs serially below 32768 elements, else splits the flat
  range into ``min(threads, ceil(n/32768))`` OpenMP chunks of ``ceil(n/threads)``;
* ``cpu_kernel_vec`` handles each row piece of a chunk with the vector lambda on
  ``floor(len/block)*block`` elements when every operand's inner stride is 1 (or 0 for a
  broadcast scalar), the rest with the scalar lambda; other operands run all-scalar.
  ``block`` is two AVX2 vectors (64 elements for 8-bit types): the quantized kernels are
  registered for AVX2 only, even on AVX512 machines.

:func:`vector_mask` returns that partition as a static boolean array.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "CONTIGUOUS",
    "CHANNELS_LAST",
    "STRIDED",
    "GRAIN",
    "vector_mask",
    "memory_order",
    "strides_for",
    "suggest_memory_format",
]

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


def strides_for(shape, memory_format):
    """Dense element strides of ``shape`` in ``memory_format``."""
    perm = memory_order(len(shape), memory_format)
    strides = [0] * len(shape)
    acc = 1
    for d in reversed(perm):
        strides[d] = acc
        acc *= shape[d]
    return tuple(strides)


def _broadcast_strides(shape, strides, out_shape):
    pad = len(out_shape) - len(shape)
    shape = (1,) * pad + tuple(shape)
    strides = (0,) * pad + tuple(strides)
    return tuple(0 if (s == 1 and o != 1) else st for s, st, o in zip(shape, strides, out_shape))


@functools.lru_cache(maxsize=512)
def _mask(out_shape, out_format, operands, block, threads):
    nd = len(out_shape)
    n = int(np.prod(out_shape)) if nd else 1
    if n == 0 or nd == 0:
        return np.zeros(out_shape, bool)
    if out_format == STRIDED or any(f == STRIDED for _, f in operands):
        return np.zeros(out_shape, bool)
    out_st = strides_for(out_shape, out_format)
    all_st = [out_st] + [_broadcast_strides(s, strides_for(s, f), out_shape) for s, f in operands]
    # TensorIterator: fastest dim first, by the output's strides
    perm = sorted(range(nd), key=lambda d: (out_st[d] if out_shape[d] != 1 else 0, -d))
    sh = [out_shape[d] for d in perm]
    st = [[s[d] for d in perm] for s in all_st]
    dims = [[sh[0], [s[0] for s in st]]]
    for k in range(1, nd):
        prev = dims[-1]
        if all(prev[0] == 1 or sh[k] == 1 or s[k] == prev[1][i] * prev[0] for i, s in enumerate(st)):
            if prev[0] == 1:
                prev[1] = [s[k] for s in st]
            prev[0] *= sh[k]
        else:
            dims.append([sh[k], [s[k] for s in st]])
    inner, inner_st = dims[0]
    vectorisable = inner == 1 or all(s in (0, 1) for s in inner_st) and inner_st[0] == 1
    itmask = np.zeros(n, bool)
    if vectorisable:
        if n < GRAIN or threads <= 1:
            chunks = [(0, n)]
        else:
            nt = min(threads, -(-n // GRAIN))
            size = -(-n // nt)
            chunks = [(b, min(n, b + size)) for b in range(0, n, size)]
        for b, e in chunks:
            pos = b
            while pos < e:
                row_end = min((pos // inner + 1) * inner, e)
                length = row_end - pos
                itmask[pos : pos + length // block * block] = True
                pos = row_end
    # iteration order -> logical positions (iteration visits perm[0] fastest)
    logical = np.arange(n).reshape(out_shape).transpose(perm[::-1]).ravel()
    mask = np.zeros(n, bool)
    mask[logical] = itmask
    mask = mask.reshape(out_shape)
    mask.setflags(write=False)
    return mask


def vector_mask(shape, memory_format=CONTIGUOUS, block=64, threads=1, operands=None):
    """Boolean array (logical ``shape``): True where torch uses the vector lambda.

    ``memory_format`` is the output's; ``operands`` lists ``(shape, memory_format)`` of the
    inputs (default: one input like the output).  Broadcast inputs get stride 0.
    """
    shape = tuple(int(s) for s in shape)
    ops = tuple((tuple(int(x) for x in s), f) for s, f in (operands or [(shape, memory_format)]))
    return _mask(shape, memory_format, ops, int(block), int(threads))
