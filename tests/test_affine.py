"""Per-channel dequantize with torch's double scales (qjax.float64) against torch."""

import numpy as np
import pytest

import qjax

from . import torch_ref

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("dtype", ["quint8", "qint32"])
def test_per_channel_dequantize_with_double_scales(dtype):
    """torch computes ``fl32(fl64((float(q) - zp) * d))``: 0 mismatches, while ``fl32(k * fl32(d))`` mismatches."""
    rng = np.random.default_rng(len(dtype))
    qd = getattr(qjax, dtype)
    scales = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), 6))  # doubles, not float32-valued
    zps = rng.integers(qd.qmin // 2 if dtype != "qint32" else -1000, 1 + (qd.qmax // 2 if dtype != "qint32" else 1000), 6)
    hi = 2**20 if dtype == "qint32" else qd.qmax + 1
    lo = -(2**20) if dtype == "qint32" else qd.qmin
    v = rng.integers(lo, hi, (3, 6, 40)).astype(qd.storage)
    q = qjax.QArray(v, scales, zps.astype(np.int32), qd, axis=1)
    assert q.scale64 is not None
    want = torch_ref.dequantize(v, scales, zps, axis=1)
    got = np.asarray(q.dequantize())
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(np.asarray(qjax.dequantize(q)).view(np.uint32), want.view(np.uint32))
    float32_first = ((v.astype(np.float32) - zps[None, :, None].astype(np.float32))
                     * scales.astype(np.float32)[None, :, None]).astype(np.float32)
    assert (float32_first != want).sum() > want.size // 10
