"""Integer transposed-convolution accumulators.

``x`` is channels-last ``(N, *spatial, C_in)`` uint8, ``w`` torch's transposed layout
``(C_in, C_out // groups, *kernel)`` int8; the result ``(N, *out, C_out)`` int32 with
``out = (in - 1)*stride - 2*pad + dilation*(k - 1) + output_padding + 1``.

:func:`conv_transpose_accumulate` is the exact ``sum (x - zx)(w - zw)``: a transposed
convolution is a convolution of the stride-dilated input with the flipped kernel, and
the inserted zeros must contribute nothing, so the zero points are handled with four
int8 convolutions (``sum x'w``, ``sum w``, ``sum x'`` and the tap count over real input
positions, with ``x' = x - 128``) instead of widening to int32.

:func:`fbgemm_direct_conv_transpose` reproduces what torch 2.13's fbgemm computes on its
"direct convolution" path (2-d, groups 1, C_in and C_out multiples of 8, kernel ``2 x k``
with ``k <= 6``, stride 1 or 2, no padding or dilation), which is *not* a transposed
convolution when the height stride is 2: input row ``ih`` reaches output rows ``ih`` and
``ih + 1`` whatever the stride, products of consecutive input-channel pairs saturate to
int16, and only the column offsets use the true geometry.  fbgemm computes batch image 0
only (torch leaves the others uninitialised); here every image gets image 0's arithmetic.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from .conv import pair_saturated_dot

__all__ = ["conv_transpose_accumulate", "conv_transpose_output_size", "fbgemm_direct_conv_transpose",
           "fbgemm_direct_path"]

_I32 = jnp.int32


def conv_transpose_output_size(in_spatial, kernel, strides, padding, output_padding, dilation):
    return tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1
                 for i, k, s, p, op, d in zip(in_spatial, kernel, strides, padding, output_padding, dilation))


def _dn(nd):
    sp = "DHW"[-nd:]
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def _rhs(w, groups):
    """(C_in, Og, *K) -> flipped (*K, C_in/groups, groups*Og) for lax's grouped convolution."""
    cin, og = w.shape[:2]
    k = w.shape[2:]
    nd = len(k)
    cg = cin // groups
    r = w.reshape((groups, cg, og) + k)
    r = jnp.transpose(r, tuple(range(3, 3 + nd)) + (1, 0, 2)).reshape(k + (cg, groups * og))
    return jnp.flip(r, axis=tuple(range(nd)))


# Groups with at most this many input x output channels run tap by tap in int32 (below): XLA's
# CPU grouped convolution with an input dilation is a slow generic loop there (groups=150 with
# 2x2 channels per group, 3x3/2 on 2x300x16x16: 1,100 ms against torch's 132 ms).
_TAPWISE_MAX_GROUP_MACS = 16


def _tapwise(x, zx, w, zw, strides, padding, output_padding, dilation, groups):
    """``sum (x - zx)(w - zw)`` of a grouped transposed convolution as a scatter of tap products.

    Input position ``i`` and tap ``t`` reach output ``i*s - p + t*d``: per tap, the products
    ``(x - zx) w_t`` (summed over the group's few input channels, exact int32) are placed on
    that strided grid with ``lax.pad`` (interior padding ``s - 1``, negative edges crop) and
    added up.  Only real inputs contribute, as in the definition; int32 wraps like the kernels'.
    """
    nd = x.ndim - 2
    cin, og = w.shape[:2]
    kernel = w.shape[2:]
    cg = cin // groups
    out_sp = conv_transpose_output_size(x.shape[1:-1], kernel, strides, padding, output_padding, dilation)
    xd = (x.astype(_I32) - zx).reshape(x.shape[:-1] + (groups, cg))  # (N, *S, G, Cg)
    wd = w.astype(_I32).reshape((groups, cg, og) + kernel) - zw.reshape((groups, 1, og) + (1,) * nd)
    acc = None
    for tap in itertools.product(*[range(k) for k in kernel]):
        wt = wd[(slice(None),) * 3 + tap]  # (G, Cg, Og)
        y = None
        for c in range(cg):
            term = xd[..., c, None] * wt[:, c, :]  # (N, *S, G, Og)
            y = term if y is None else y + term
        cfg = [(0, 0, 0)]
        for i, o, t, s, p, d in zip(x.shape[1:-1], out_sp, tap, strides, padding, dilation):
            lo = t * d - p
            cfg.append((lo, o - lo - ((i - 1) * s + 1), s - 1))
        placed = lax.pad(y, jnp.int32(0), cfg + [(0, 0, 0), (0, 0, 0)])
        acc = placed if acc is None else acc + placed
    return acc.reshape(acc.shape[:-2] + (groups * og,))


def conv_transpose_accumulate(x, zx, w, zw, *, strides, padding, output_padding, dilation, groups):
    """Exact int32 accumulator of a quantized transposed convolution (see the module docstring)."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    cin, og = w.shape[:2]
    out_ch = og * groups
    zx = jnp.asarray(zx, _I32)
    zw = jnp.broadcast_to(jnp.asarray(zw, _I32), (out_ch,))
    if groups > 1 and (cin // groups) * og <= _TAPWISE_MAX_GROUP_MACS:
        return _tapwise(x, zx, w, zw, strides, padding, output_padding, dilation, groups)
    pads = tuple((d * (k - 1) - p, d * (k - 1) - p + op)
                 for k, p, op, d in zip(kernel, padding, output_padding, dilation))

    def conv(lhs, rhs, fgc):
        return lax.conv_general_dilated(lhs, rhs, (1,) * nd, pads, lhs_dilation=tuple(strides),
                                        rhs_dilation=tuple(dilation), dimension_numbers=_dn(nd),
                                        feature_group_count=fgc, preferred_element_type=_I32)

    xs = lax.bitcast_convert_type(x ^ jnp.uint8(0x80), jnp.int8)  # x - 128
    zs = zx - 128
    rhs = _rhs(w, groups)
    ones_in = jnp.ones((1,) + x.shape[1:], jnp.int8)  # marks real input positions
    ones_k = jnp.ones(kernel + (cin // groups, groups), jnp.int8)
    sum_xw = conv(xs, rhs, groups)
    sum_w = conv(ones_in, rhs, groups)
    sum_x = jnp.repeat(conv(xs, ones_k, groups), og, axis=-1)
    taps = jnp.repeat(conv(ones_in, ones_k, groups), og, axis=-1)
    return sum_xw - zs * sum_w - zw * (sum_x - zs * taps)


def fbgemm_direct_path(*, in_channels, out_channels, groups, kernel, strides, padding, dilation):
    """``takeDirectConvPath`` (``src/FbgemmConv.cc``) for a transposed convolution."""
    return (len(kernel) == 2 and groups == 1 and in_channels % 8 == 0 and out_channels % 8 == 0
            and all(s in (1, 2) for s in strides) and kernel[0] == 2 and kernel[1] <= 6
            and all(d == 1 for d in dilation) and all(p == 0 for p in padding))


def fbgemm_direct_conv_transpose(x, zx, w, zw, *, strides, output_padding):
    """fbgemm's direct transposed-conv path as torch 2.13 runs it (see the module docstring)."""
    n, ih, iw, cin = x.shape
    oc = w.shape[1]
    k0, k1 = w.shape[2:]
    sh, sw = strides
    oh, ow = conv_transpose_output_size((ih, iw), (k0, k1), strides, (0, 0), output_padding, (1, 1))
    zx = jnp.asarray(zx, _I32)
    zw = jnp.broadcast_to(jnp.asarray(zw, _I32), (oc,))
    xi = x.astype(_I32)
    wi = w.astype(_I32)
    raw = jnp.zeros((n, oh, ow, oc), _I32)
    rows = jnp.zeros((n, oh, ow), _I32)
    insum = jnp.sum(xi, axis=-1)
    for r in range(k0):
        for s in range(k1):
            # vpmaddubsw over consecutive input-channel pairs of this tap
            contrib = pair_saturated_dot(xi[..., None, :], wi[:, :, r, s].T[None])[..., 0, :]  # (N, IH, IW, OC)
            # height stride forced to 1: input row i lands on output row i + r
            idx_h = np.arange(ih) + r
            idx_w = np.arange(iw) * sw + s
            keep_h = idx_h < oh
            keep_w = idx_w < ow
            hh, ww = idx_h[keep_h], idx_w[keep_w]
            c = contrib[:, keep_h][:, :, keep_w]
            raw = raw.at[:, hh[:, None], ww[None, :]].add(c)
            rows = rows.at[:, hh[:, None], ww[None, :]].add(insum[:, keep_h][:, :, keep_w])
    # column offsets: the true geometry (oh = ih * stride_h + r), sum over input channels of w
    wsum = jnp.sum(wi, axis=0)  # (OC, K0, K1)
    col = jnp.zeros((oh, ow, oc), _I32)
    cnt = np.zeros((oh, ow), np.int64)
    for r in range(k0):
        for s in range(k1):
            hh = np.arange(ih) * sh + r
            ww = np.arange(iw) * sw + s
            hh, ww = hh[hh < oh], ww[ww < ow]
            col = col.at[hh[:, None], ww[None, :]].add(wsum[:, r, s])
            cnt[np.ix_(hh, ww)] += cin
    col = col - zw * jnp.asarray(cnt, _I32)[..., None]
    return raw - zx * col[None] - zw * rows[..., None]
