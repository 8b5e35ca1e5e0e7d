"""``mul_scalar`` -> ``add_scalar`` chains keep torch's double scales (qjax.float64), against torch."""

import numpy as np
import pytest

import qjax
from qjax._src.float64 import from_words
from qjax._src.qops import elementwise as ew

from .. import torch_ref
from .test_elementwise import THREADS  # the shape, dtype, layout and threads of test_scalar_ops' first case

pytestmark = pytest.mark.torch


def double_scale(q):
    """The QArray's scale as the double torch would hold (``scale64``, or the float32 when float32-valued)."""
    return float(from_words(np.asarray(q.scale64))) if q.scale64 is not None else float(q.scale)


def test_scalar_chain_keeps_the_double_scale():
    """torch: ``mul_scalar`` gives the double scale ``c * s``, ``add_scalar`` derives ``c_q = rint(c2 / s)`` and
    its scale in double from it.  qjax keeps the double (``scale64``): the same scales and integers; the
    float32-first chain (the float32 scale as the next op's input) gets the scales wrong."""
    torch = torch_ref._torch()
    rng = np.random.default_rng(0)
    wrong32 = 0
    for _ in range(12):
        s, c, c2 = float(np.float32(rng.uniform(0.001, 0.1))), float(rng.uniform(0.1, 3)), float(rng.uniform(-5, 5))
        z = int(rng.integers(0, 256))
        a = rng.integers(0, 256, (1, 3, 1, 1)).astype(np.uint8)
        tm = torch.ops.quantized.mul_scalar(torch_ref.qtensor(a, s, z), c)
        ta = torch.ops.quantized.add_scalar(tm, c2)
        qm = ew.mul_scalar(qjax.QArray(a, np.float32(s), z, qjax.quint8), c)
        qa = ew.add_scalar(qm, c2, threads=THREADS)
        for q, t in ((qm, tm), (qa, ta)):
            assert double_scale(q) == t.q_scale() and int(q.zero_point) == t.q_zero_point()
            np.testing.assert_array_equal(np.asarray(q.values), t.int_repr().numpy())
        q32 = ew.add_scalar(qm, c2, threads=THREADS, in_qparams=(float(qm.scale), int(qm.zero_point)))
        wrong32 += double_scale(q32) != ta.q_scale()
    assert wrong32 >= 6
