"""qnnpack-engine elementwise and pooling kernels vs torch 2.13 run with engine='qnnpack'."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax._src.qops import qnnpack as qq

from .. import torch_ref
from ..helpers import assert_same

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _qnnpack():
    torch_ref.set_engine("qnnpack")
    yield
    torch_ref.set_engine("fbgemm")


def make(rng, shape, cl=False, scale=None):
    v = rng.integers(0, 256, size=shape).astype(np.uint8)
    s = scale or float(np.float32(np.exp(rng.uniform(-5, -1))))
    z = int(rng.integers(0, 256))
    t = torch_ref.qtensor(v, s, z)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return qjax.QArray(v, s, z, qjax.quint8), t


@settings(max_examples=40)
@given(shape=st.sampled_from([(7,), (3, 65), (2, 8, 5, 5), (1, 16, 9, 9)]), seed=st.integers(0, 2**31),
       relu=st.booleans(), ties=st.booleans())
def test_add(shape, seed, relu, ties):
    rng = np.random.default_rng(seed)
    a, ta = make(rng, shape, scale=2.0**-5 if ties else None)
    b, tb = make(rng, shape, scale=2.0**-5 if ties else None)
    so, zo = (2.0**-4 if ties else float(np.float32(float(a.scale) * rng.uniform(0.6, 2)))), int(rng.integers(0, 256))
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    assert_same(qq.add(a, b, so, zo, relu=relu).values, op(ta, tb, so, zo).int_repr().numpy(), "qnnpack add")


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31), cl=st.booleans())
def test_lut_activations_and_clamps(seed, cl):
    rng = np.random.default_rng(seed)
    a, t = make(rng, (2, 5, 6, 7), cl=cl)
    so, zo = float(np.float32(float(a.scale) * 0.7)), int(rng.integers(0, 256))
    assert_same(qq.hardswish(a, so, zo).values, torch.ops.quantized.hardswish(t, so, zo).int_repr().numpy(), "hardswish")
    assert_same(qq.hardsigmoid(a).values, F.hardsigmoid(t).int_repr().numpy(), "hardsigmoid")
    assert_same(qq.sigmoid(a).values, torch.sigmoid(t).int_repr().numpy(), "sigmoid")
    assert_same(qq.tanh(a).values, torch.tanh(t).int_repr().numpy(), "tanh")
    if cl:  # torch's qnnpack clamp on a channels-last input writes NHWC-ordered results into NCHW order
        assert_same(qq.clamp_channels_last(a, 0.0, 6.0).values, F.relu6(t).int_repr().numpy(), "relu6 CL")


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31), k=st.integers(2, 4), s=st.integers(1, 3), p=st.integers(0, 1),
       cip=st.booleans(), h=st.integers(4, 11))
def test_avg_pool(seed, k, s, p, cip, h):
    rng = np.random.default_rng(seed)
    a, t = make(rng, (2, 3, h, h + 1))
    p = min(p, k // 2)
    want = F.avg_pool2d(t, k, s, p, False, cip).int_repr().numpy()
    assert_same(qq.avg_pool2d(a, k, s, p).values, want, "qnnpack avg_pool2d")
