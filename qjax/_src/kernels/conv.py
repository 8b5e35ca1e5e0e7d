"""Integer convolution accumulators: exact int32 sums of ``(x - zx) * (w - zw)``.

Layout here is channels-last (the fast one for XLA's int8 convolution):
``x`` is ``(N, *spatial, C)`` uint8, ``w`` is ``(*kernel, C // groups, O)`` int8,
the result is ``(N, *out_spatial, O)`` int32.  Padding contributes nothing, as in
torch: padded taps hold the input zero point, so ``x - zx == 0`` there.

Three ways to accumulate, chosen by the caller (see :mod:`qjax.kernels.fbgemm_paths`):

* exact (``saturation=None``): the true int32 sum (wrapping on overflow, like the
  int32 registers of every CPU kernel).  Computed as an int8 x int8 convolution of
  ``x - 128`` with ``w`` plus zero-point corrections, the decomposition fbgemm uses
  (``raw - zx * col_offset - zw * row_offset``).
* ``"depthwise_pairs"``: fbgemm's depthwise kernels (``src/GenerateI8Depthwise.cc``)
  multiply raw u8 activations by raw s8 weights with ``vpmaddubsw``, which adds the
  products of taps ``(0,1), (2,3), ...`` (row-major over the kernel window, a last
  odd tap paired with 0) and saturates each pair sum to int16 — on every x86 ISA; they
  also sum the row offset (the window's raw activations) with saturating int16 adds.
* ``"gemm_pairs"``: fbgemm's GEMM kernels do the same on ISAs without VNNI, pairing
  consecutive K indices with K ordered ``(kernel tap, channel)`` within a group.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["conv_accumulate", "output_spatial", "pad_input", "offset_corrected", "pair_saturated_dot", "ones_dot",
           "when_nonzero", "int8_conv"]

_I32 = jnp.int32


def output_spatial(in_spatial, kernel, strides, padding, dilation):
    """Output extent per spatial dim: ``(in + lo + hi - dil*(k-1) - 1) // stride + 1``."""
    return tuple(
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, k, s, (lo, hi), d in zip(in_spatial, kernel, strides, padding, dilation)
    )


def pad_input(x, value, padding):
    """Pad the spatial dims of a channels-last array with ``value`` (a scalar of x's dtype)."""
    cfg = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def _taps(xp, kernel, strides, dilation, out_sp):
    """Strided views of the padded input, one per kernel tap, in row-major tap order."""
    views = []
    for tap in itertools.product(*[range(k) for k in kernel]):
        start = (0,) + tuple(t * d for t, d in zip(tap, dilation)) + (0,)
        limit = (
            (xp.shape[0],)
            + tuple(t * d + s * (o - 1) + 1 for t, d, s, o in zip(tap, dilation, strides, out_sp))
            + (xp.shape[-1],)
        )
        views.append(lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,)))
    return views


def offset_corrected(raw, zx, sum_w, zw, sum_x, taps):
    """``sum (x - zx)(w - zw)`` from ``raw = sum x w``: ``raw - zx*sum_w - zw*sum_x + taps*zx*zw``.

    fbgemm's row/column-offset decomposition; exact in wrapping int32 arithmetic.
    """
    return raw - zx * sum_w - zw * sum_x + taps * zx * zw


def conv_accumulate(x, zx, w, zw, *, strides, padding, dilation, groups, saturation=None):
    """int32 accumulator of a quantized convolution (channels-last layout).

    Args:
      x: ``(N, *spatial, C)`` uint8 activations.
      zx: int32 scalar activation zero point.
      w: ``(*kernel, C // groups, O)`` int8 weights.
      zw: int32 weight zero point, scalar or ``(O,)``.
      strides, dilation: one int per spatial dim.
      padding: one ``(lo, hi)`` pair per spatial dim.
      groups: feature groups; ``C`` and ``O`` are multiples of it.
      saturation: ``None`` (exact), ``"depthwise_pairs"`` or ``"gemm_pairs"`` (see module doc).

    Returns:
      ``(N, *out_spatial, O)`` int32.
    """
    kernel = w.shape[:-2]
    cg, out_ch = w.shape[-2], w.shape[-1]
    zx = jnp.asarray(zx, _I32)
    zw = jnp.broadcast_to(jnp.asarray(zw, _I32), (out_ch,))
    out_sp = output_spatial(x.shape[1:-1], kernel, strides, padding, dilation)
    depthwise = cg == 1  # one input channel per group (groups == C)
    if saturation == "depthwise_pairs":
        if not depthwise:
            raise ValueError("depthwise pair saturation needs a depthwise convolution (C // groups == 1)")
        return _depthwise(x, zx, w, zw, kernel, strides, padding, dilation, groups, out_sp, True)
    if saturation == "gemm_pairs":
        return _gemm_pairs(x, zx, w, zw, kernel, strides, padding, dilation, groups, out_sp)
    if saturation is not None:
        raise ValueError(f"saturation={saturation!r}; use None, 'depthwise_pairs' or 'gemm_pairs'")
    if depthwise:
        return _depthwise(x, zx, w, zw, kernel, strides, padding, dilation, groups, out_sp, False)
    return _exact_int8(x, zx, w, zw, kernel, strides, padding, dilation, groups)


def _exact_int8(x, zx, w, zw, kernel, strides, padding, dilation, groups):
    if len(kernel) == 1:
        # XLA's CPU int8 convolution is ~30x slower in 1-d than in 2-d: run a (1, k) 2-d conv
        out = _exact_int8(
            x[:, None], zx, w[None], zw, (1,) + tuple(kernel), (1,) + tuple(strides),
            ((0, 0),) + tuple(padding), (1,) + tuple(dilation), groups,
        )
        return out[:, 0]
    # x - 128 fits int8 exactly (flip the top bit); pad it with zx - 128 so padded taps
    # cancel.  With x' = x - 128 and z' = zx - 128, over the K taps of a window:
    #   sum (x - zx)(w - zw) = sum x'w - z' sum w - zw sum x' + K z' zw
    nd = len(kernel)
    if nd not in (1, 2, 3):
        raise ValueError("only 1-d, 2-d and 3-d convolutions are supported")
    zs = zx - 128
    out_ch = w.shape[-1]
    cg = w.shape[-2]
    taps = math.prod(kernel) * cg

    def shifted(x):  # x - 128 as int8, padded with zx - 128
        return pad_input(lax.bitcast_convert_type(x ^ jnp.uint8(0x80), jnp.int8), zs.astype(jnp.int8), padding)

    def window_sums(xp):
        # sum of x' over each window, per group: the same int8 convolution with all-ones
        # weights (one output channel per group)
        s = int8_conv(xp, jnp.ones(tuple(kernel) + (cg, groups), jnp.int8), strides, dilation, groups)
        return s if groups == 1 else jnp.repeat(s, out_ch // groups, axis=-1)

    sum_shape = x.shape[:1] + output_spatial(x.shape[1:-1], kernel, strides, padding, dilation) + (
        1 if groups == 1 else out_ch,)
    # the zw * sum_x term vanishes for symmetric weights (every fbgemm qconfig): the window
    # sums are skipped then (at run time with lax.cond when zw is traced)
    xp = shifted(x)
    sum_x = when_nonzero(zw, lambda: window_sums(xp), sum_shape)
    raw = int8_conv(xp, w, strides, dilation, groups)
    # sum of w per output channel: an int8 x int8 product with a ones vector, so the
    # weights are read once as int8 (a widening convert + reduce materialises an int32 copy)
    sum_w = ones_dot(w.reshape((taps, out_ch)), axis=0)  # (O,)

    return offset_corrected(raw, zs, sum_w, zw, sum_x, taps)


# XLA's CPU backend runs an s8 x s8 -> s32 convolution with YNNPACK only if it is 2-d, channels-last
# and max(C_in, C_out) > 16 (xla/backends/cpu/ynn_support.cc, IsConvolutionOpSupportedByYnn);
# anything else is upcast to an s32 convolution on XLA's generic loop.  That loop is fast for
# very few input channels (<= 8: 0.3-2 ms on 32x32x32 outputs, faster than YNNPACK there) but
# falls off a cliff above (C_in = 12..16: 9-21 ms against YNNPACK's 2.5-2.8 ms, measured on this
# project's 2-core bench machine), so narrow convolutions with C_in > 8 get padded filters.
_YNN_MIN_CHANNELS = 17
_GENERIC_MAX_CIN = 8


def int8_conv(xp, w, strides, dilation, groups):
    """``sum x * w`` (int8 x int8 -> exact int32), VALID, channels-last; a 1-d ``xp``/``w`` go through 2-d.

    Output channels are padded with zero filters (and sliced off again) where the
    convolution is too narrow for XLA's int8 kernel; zero filters change no sum.
    """
    nd = w.ndim - 2
    spatial = "DHW"[-nd:]
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    cin, out_ch = xp.shape[-1], w.shape[-1]
    if (nd == 2 and groups == 1 and cin * 4 <= _YNN_MIN_CHANNELS and math.prod(w.shape[:2]) > 9 and out_ch >= 32
            and tuple(strides) == (2, 2) and tuple(dilation) == (1, 1)):
        # a strided RGB stem (ResNet's 7x7/2 on 3 channels): space-to-depth turns it into a
        # stride-1 convolution of 2x2 pixel blocks (4C channels, ceil(k/2)^2 taps, the extra
        # taps zero weights), which runs on XLA's fast int8 convolution: ResNet-18's stem on
        # 4x224x224 took 36 ms against 56 ms for the im2col GEMM below
        return _space_to_depth_conv(xp, w)
    if nd == 2 and groups == 1 and cin <= _GENERIC_MAX_CIN and math.prod(w.shape[:2]) > 9 and out_ch >= 32:
        # few input channels and a large kernel (a 7x7 RGB stem): both YNNPACK's convolution and
        # XLA's generic loop are slow here (121 ms for ResNet-18's stem on 8x224x224); an im2col
        # of the int8 input (K = taps x C, tap-major like the HWIO weight) and one int8 GEMM
        # compute the same integer sums
        out_sp = output_spatial(xp.shape[1:-1], w.shape[:2], strides, ((0, 0), (0, 0)), dilation)
        cols = jnp.concatenate(_taps(xp, w.shape[:2], strides, dilation, out_sp), axis=-1)
        return lax.dot_general(cols, w.reshape((-1, out_ch)), (((3,), (0,)), ((), ())),
                               preferred_element_type=_I32)
    og = out_ch // groups
    pad_og = 0
    if nd == 2 and max(cin, out_ch) < _YNN_MIN_CHANNELS and cin > _GENERIC_MAX_CIN:
        pad_og = -(-_YNN_MIN_CHANNELS // groups) - og  # smallest og' with groups * og' >= 17
        wg = w.reshape(w.shape[:-1] + (groups, og))
        wg = jnp.pad(wg, [(0, 0)] * (wg.ndim - 1) + [(0, pad_og)])
        w = wg.reshape(w.shape[:-1] + (groups * (og + pad_og),))
    out = lax.conv_general_dilated(xp, w, window_strides=tuple(strides), padding="VALID",
                                   rhs_dilation=tuple(dilation), dimension_numbers=dn,
                                   feature_group_count=groups, preferred_element_type=_I32)
    if pad_og:
        out = out.reshape(out.shape[:-1] + (groups, og + pad_og))[..., :og].reshape(out.shape[:-1] + (out_ch,))
    return out


def _space_to_depth_conv(xp, w):
    """A VALID stride-2 convolution as a stride-1 one over 2x2 blocks (same integer sums).

    ``out[i, j] = sum_{u,v} xp[2i+u, 2j+v] w[u, v]``; with ``u = 2a + p`` this is
    ``sum_{a,b} blocks[i+a, j+b, (p, q, c)] w2[a, b, (p, q, c)]``, where taps beyond the
    kernel (odd k) get zero weights, so whatever the even-size padding holds adds nothing.
    """
    n, hp, wp, c = xp.shape
    kh, kw, _, out_ch = w.shape
    oh, ow = (hp - kh) // 2 + 1, (wp - kw) // 2 + 1
    bh, bw = -(-hp // 2), -(-wp // 2)
    kh2, kw2 = -(-kh // 2), -(-kw // 2)
    x2 = jnp.pad(xp, ((0, 0), (0, 2 * bh - hp), (0, 2 * bw - wp), (0, 0)))
    x2 = x2.reshape(n, bh, 2, bw, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, bh, bw, 4 * c)
    w2 = jnp.pad(w, ((0, 2 * kh2 - kh), (0, 2 * kw2 - kw), (0, 0), (0, 0)))
    w2 = w2.reshape(kh2, 2, kw2, 2, c, out_ch).transpose(0, 2, 1, 3, 4, 5).reshape(kh2, kw2, 4 * c, out_ch)
    out = int8_conv(x2, w2, (1, 1), (1, 1), 1)
    return out[:, :oh, :ow]


def ones_dot(a, axis):
    """Exact int32 sum of int8 ``a`` over ``axis`` (0 or -1 of a 2-d array) as an int8 dot with ones."""
    if axis == 0:
        ones = jnp.ones((1, a.shape[0]), jnp.int8)
        return lax.dot_general(ones, a, (((1,), (0,)), ((), ())), preferred_element_type=_I32)[0]
    ones = jnp.ones((a.shape[-1], 1), jnp.int8)
    return lax.dot_general(a, ones, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=_I32)


def when_nonzero(zw, fn, shape):
    """``fn()`` (int32 of ``shape``) where some weight zero point is nonzero, else zeros.

    Decided at trace time for concrete zero points, else with ``lax.cond`` (one branch
    runs); both give the same accumulator, since the result is only ever multiplied by zw.
    """
    from ..checks import is_concrete

    if is_concrete(zw):
        return fn() if np.any(np.asarray(zw) != 0) else jnp.zeros(shape, _I32)
    return lax.cond(jnp.any(zw != 0), fn, lambda: jnp.zeros(shape, _I32))


def _depthwise(x, zx, w, zw, kernel, strides, padding, dilation, groups, out_sp, saturate):
    # One input channel per group; output channel o reads input channel o // m.
    mult = w.shape[-1] // groups
    xp = pad_input(x, zx.astype(x.dtype), padding)
    views = _taps(xp, kernel, strides, dilation, out_sp)
    wt = w.reshape((-1, w.shape[-1])).astype(_I32)  # (T, O)

    def expand(v):  # (N, *out, C) -> (N, *out, O)
        v = v.astype(_I32)
        return jnp.repeat(v, mult, axis=-1) if mult > 1 else v

    if not saturate:
        acc = None
        for t, v in enumerate(views):
            term = (expand(v) - zx) * (wt[t] - zw)
            acc = term if acc is None else acc + term
        return acc
    # raw u8 * s8 products, tap pairs summed and saturated to int16 (vpmaddubsw)
    raw = None
    sum_x = None
    for t in range(0, len(views), 2):
        a = expand(views[t])
        pair = a * wt[t]
        sx = a
        if t + 1 < len(views):
            b = expand(views[t + 1])
            pair = pair + b * wt[t + 1]
            sx = sx + b
        pair = jnp.clip(pair, -32768, 32767)
        raw = pair if raw is None else raw + pair
        sum_x = sx if sum_x is None else sum_x + sx
    n_taps = len(views)
    sum_w = jnp.sum(wt, axis=0)
    # the kernel accumulates the row offset (sum of raw activations) with saturating int16
    # adds; it only matters when zw != 0, and only for >= 129 taps (e.g. 3x7x7)
    sum_x = jnp.minimum(sum_x, 32767)
    return offset_corrected(raw, zx, sum_w, zw, sum_x, n_taps)


def _gemm_pairs(x, zx, w, zw, kernel, strides, padding, dilation, groups, out_sp):
    # im2col with K ordered (tap, channel) inside each group, consecutive K pairs
    # saturated to int16, then fbgemm's exact row/column-offset corrections.
    cg, out_ch = w.shape[-2], w.shape[-1]
    og = out_ch // groups
    xp = pad_input(x, zx.astype(x.dtype), padding)
    views = _taps(xp, kernel, strides, dilation, out_sp)
    t = len(views)
    cols = jnp.stack(views, axis=-2).astype(_I32)  # (N, *out, T, C)
    cols = cols.reshape(cols.shape[:-1] + (groups, cg))  # (N, *out, T, G, Cg)
    cols = jnp.moveaxis(cols, -2, -3).reshape(cols.shape[:-3] + (groups, t * cg))  # (N,*out,G,K)
    wk = w.reshape((t, cg, groups, og)).astype(_I32)  # (T, Cg, G, Og)
    wk = jnp.transpose(wk, (2, 3, 0, 1)).reshape(groups, og, t * cg)  # (G, Og, K)
    raw = pair_saturated_dot(cols, wk).reshape(cols.shape[:-2] + (out_ch,))
    row = jnp.repeat(jnp.sum(cols, axis=-1), og, axis=-1)  # (N,*out,O)
    return offset_corrected(raw, zx, jnp.sum(wk, axis=-1).reshape(out_ch), zw, row, t * cg)


def pair_saturated_dot(a, b, chunk: int = 64):
    """``vpmaddubsw`` dot product: ``sum_j sat16(a[2j] b[2j] + a[2j+1] b[2j+1])``.

    ``a``: ``(..., G, K)`` raw activations, ``b``: ``(G, O_g, K)`` raw weights, both int32;
    an odd K is padded with a zero column.  Returns ``(..., G, O_g)`` int32.  K is
    processed in chunks of ``chunk`` pairs to bound the size of the pair tensor.
    """
    k = a.shape[-1]
    if k % 2:
        a = jnp.concatenate([a, jnp.zeros(a.shape[:-1] + (1,), _I32)], axis=-1)
        b = jnp.concatenate([b, jnp.zeros(b.shape[:-1] + (1,), _I32)], axis=-1)
    kp = a.shape[-1] // 2
    a2 = a.reshape(a.shape[:-1] + (kp, 2))
    b2 = b.reshape(b.shape[:-1] + (kp, 2))
    out = None
    for c0 in range(0, kp, chunk):
        pairs = jnp.einsum(
            "...gcp,gocp->...goc",
            a2[..., c0 : c0 + chunk, :],
            b2[..., c0 : c0 + chunk, :],
            preferred_element_type=_I32,
        )
        part = jnp.sum(jnp.clip(pairs, -32768, 32767), axis=-1)
        out = part if out is None else out + part
    return out
