"""Quantized pooling vs torch 2.13 (fbgemm engine): 0 mismatches, both kernels (NCHW / NHWC)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax._src.qops import pooling
from qjax._src.qops.paths import CHANNELS_LAST, CONTIGUOUS, suggest_memory_format

from .. import torch_ref
from ..helpers import assert_same

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def _fbgemm():
    torch_ref.set_engine("fbgemm")


def make(rng, shape, dtype, memory_format):
    v = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.storage)
    s = float(np.float32(np.exp(rng.uniform(-5, -1))))
    z = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    t = torch_ref.qtensor(v, s, z)
    if memory_format == CHANNELS_LAST:
        t = t.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return qjax.QArray(v, s, z, dtype), t


def fmt(t):
    """The memory format torch itself infers (a 1x1 tensor stays NCHW-strided even after .contiguous(CL))."""
    return suggest_memory_format(t.shape, t.stride())


@st.composite
def pool_cases(draw):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    c = draw(st.sampled_from([1, 3, 8, 16, 17, 33]))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    sp = tuple(draw(st.integers(kk, kk + 7)) for kk in k)
    mf = draw(st.sampled_from([CONTIGUOUS, CHANNELS_LAST])) if nd > 1 else CONTIGUOUS
    dt = draw(st.sampled_from([qjax.quint8, qjax.qint8]))
    return dict(nd=nd, shape=(draw(st.integers(1, 2)), c) + sp, k=k, s=s, p=p, mf=mf, dt=dt,
                ceil=draw(st.booleans()), cip=draw(st.booleans()), div=draw(st.sampled_from([None, None, 3, 7])),
                dil=tuple(draw(st.integers(1, 2)) for _ in range(nd)), seed=draw(st.integers(0, 2**31)))


@settings(max_examples=25)
@given(pool_cases())
def test_max_and_avg_pool(case):
    rng = np.random.default_rng(case["seed"])
    x, t = make(rng, case["shape"], case["dt"], case["mf"])
    case["mf"] = fmt(t)
    nd = case["nd"]
    dil = case["dil"]
    k, s, p = case["k"], case["s"], case["p"]
    if all(((sp + 2 * pp - d * (kk - 1) - 1) >= 0) for sp, pp, d, kk in zip(case["shape"][2:], p, dil, k)):
        want = getattr(F, f"max_pool{nd}d")(t, k, s, p, dil, ceil_mode=case["ceil"]).int_repr().numpy()
        got = pooling.max_pool(x, k, s, p, dil, case["ceil"], memory_format=case["mf"]).values
        assert_same(got, want, "max_pool")
    if nd == 1:
        want = F.avg_pool1d(t, k, s, p, case["ceil"], case["cip"]).int_repr().numpy()
        got = pooling.avg_pool(x, k, s, p, case["ceil"], case["cip"], None, case["mf"]).values
    else:
        want = getattr(F, f"avg_pool{nd}d")(t, k, s, p, case["ceil"], case["cip"], case["div"]).int_repr().numpy()
        got = pooling.avg_pool(x, k, s, p, case["ceil"], case["cip"], case["div"], case["mf"]).values
    assert_same(got, want, "avg_pool")


@settings(max_examples=25)
@given(
    nd=st.sampled_from([1, 2, 2, 3]),
    c=st.sampled_from([1, 3, 8, 9, 16, 24, 33]),
    sizes=st.lists(st.integers(1, 15), min_size=3, max_size=3),
    outs=st.lists(st.sampled_from([1, 1, 2, 3, 5, 7]), min_size=3, max_size=3),
    mf=st.sampled_from([CONTIGUOUS, CHANNELS_LAST]),
    dt=st.sampled_from([qjax.quint8, qjax.qint8]),
    seed=st.integers(0, 2**31),
)
def test_adaptive_avg_pool(nd, c, sizes, outs, mf, dt, seed):
    rng = np.random.default_rng(seed)
    mf = CONTIGUOUS if nd == 1 else mf
    x, t = make(rng, (2, c) + tuple(sizes[:nd]), dt, mf)
    mf = fmt(t)
    osz = tuple(outs[:nd])
    if nd == 3 and osz == (1, 1, 1) and mf == CHANNELS_LAST and c > 1:
        with pytest.raises(qjax.QuantizationError, match="channels_last_3d"):
            pooling.adaptive_avg_pool(x, osz, mf)
        return
    want = getattr(F, f"adaptive_avg_pool{nd}d")(t, osz).int_repr().numpy()
    assert_same(pooling.adaptive_avg_pool(x, osz, mf).values, want, "adaptive_avg_pool")


def test_global_pool_of_resnet_map_and_the_nchw_1x1_scramble():
    rng = np.random.default_rng(0)
    # ResNet's global 7x7 pooling on a conv output (channels-last strides)
    x, t = make(rng, (2, 64, 7, 7), qjax.quint8, CHANNELS_LAST)
    assert_same(pooling.adaptive_avg_pool(x, (1, 1), CHANNELS_LAST).values,
                F.adaptive_avg_pool2d(t, (1, 1)).int_repr().numpy(), "global pool")
    # (N, C, 1, 1) with NCHW strides counts as channels-last: torch writes NHWC data into NCHW
    x, t = make(rng, (2, 5, 1, 1), qjax.quint8, CONTIGUOUS)
    want = F.adaptive_avg_pool2d(t, (1, 1)).int_repr().numpy()
    assert_same(pooling.adaptive_avg_pool(x, (1, 1), CONTIGUOUS).values, want, "1x1")
    x, t = make(rng, (2, 6, 1, 1), qjax.quint8, CONTIGUOUS)
    want = F.max_pool2d(t, 1, 1, 0, 1, ceil_mode=False).int_repr().numpy()
    assert_same(pooling.max_pool(x, 1, 1, memory_format=CONTIGUOUS).values, want, "max 1x1")
