"""Independent numpy (int64) reference accumulators, written from the kernel descriptions."""

import itertools

import numpy as np


def patches(x, zx, kernel, stride, padding, dilation):
    """(N, C, T, *out) raw activations per kernel tap (row-major taps); padding holds zx."""
    nd = len(kernel)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0)) + tuple(padding), constant_values=zx)
    out = [(xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    taps = list(itertools.product(*[range(k) for k in kernel]))
    P = np.empty(x.shape[:2] + (len(taps),) + tuple(out), np.int64)
    for t, kk in enumerate(taps):
        sl = tuple(slice(kk[i] * dilation[i], kk[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i]) for i in range(nd))
        P[:, :, t] = xp[(slice(None), slice(None)) + sl]
    return P


def conv_acc(x, zx, w, zw, stride, padding, dilation, groups, saturation=None):
    nd = x.ndim - 2
    kernel = w.shape[2:]
    P = patches(x, zx, kernel, stride, padding, dilation)
    o, cg = w.shape[:2]
    og = o // groups
    zw = np.broadcast_to(np.asarray(zw, np.int64), (o,))
    T = P.shape[2]
    out = np.zeros((x.shape[0], o) + P.shape[3:], np.int64)
    ex = (None,) * nd
    for g in range(groups):
        Pg = P[:, g * cg:(g + 1) * cg]  # N, cg, T, *out
        for j in range(og):
            oc = g * og + j
            wo = w[oc].astype(np.int64).reshape(cg, T)
            if saturation is None:
                out[:, oc] = np.einsum("nct...,ct->n...", Pg - zx, wo - zw[oc])
                continue
            if saturation == "depthwise_pairs":
                a = Pg[:, 0]  # N, T, *out  (taps in row-major order)
                b = wo[0]
            else:  # gemm_pairs: K ordered (tap, channel)
                a = np.moveaxis(Pg, 1, 2).reshape((Pg.shape[0], T * cg) + Pg.shape[3:])
                b = wo.T.reshape(-1)
            K = b.shape[0]
            raw = np.zeros((x.shape[0],) + P.shape[3:], np.int64)
            for k in range(0, K, 2):
                s = a[:, k] * b[k]
                if k + 1 < K:
                    s = s + a[:, k + 1] * b[k + 1]
                raw += np.clip(s, -32768, 32767)
            rows = a.sum(axis=1)
            if saturation == "depthwise_pairs":
                rows = np.minimum(rows, 32767)  # int16 saturating row-offset sum
            out[:, oc] = raw - zx * (b.sum() - zw[oc] * K) - zw[oc] * rows
    return out


def wrap32(a):
    return ((np.asarray(a, np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)
