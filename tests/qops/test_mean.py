"""Quantized mean over (H, W) vs torch 2.13: the float path (fbgemm / x86) and QNNPACK's global average pool."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax._src.engines import Fbgemm, Qnnpack, X86
from qjax._src.qops import mean as qmean
from qjax._src.qops.paths import CHANNELS_LAST, CONTIGUOUS

from .. import torch_ref
from ..helpers import assert_same

pytestmark = pytest.mark.torch

# (N, C, H, W), torch threads, engine: every channel group of SumKernel's vectorized_outer_sum (C=45: 32
# multi_row_sum channels, 8 row_sum, 5 scalar row_sum; C=6: scalar_outer_sum), multi_row_sum levels (H*W=49:
# 3 chunks and a tail; 15x20=300: a level-1 carry), ties (H*W even), one-thread sums below GRAIN_SIZE and a
# 16-thread split whose last slice has 5 channels (C=37, 1024 positions)
FLOAT_CASES = [((2, 45, 7, 7), 1, "fbgemm"), ((2, 6, 15, 20), 1, "x86"), ((3, 64, 2, 2), 1, "x86"),
               ((1, 37, 32, 32), 16, "fbgemm")]
_sum = jax.jit(qmean.channels_last_spatial_sum, static_argnums=1)


def _make(rng, shape, dtype=qjax.quint8):
    v = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.storage)
    s = float(np.float32(np.exp(rng.uniform(-5, 0))))
    z = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    return qjax.QArray(v, s, z, dtype), torch_ref.qtensor(v, s, z)


def _sequential_sum(xf):
    """A plausible wrong order: each channel's positions added one by one."""
    n, c, h, w = xf.shape
    rows = xf.reshape(n, c, h * w)
    acc = np.zeros((n, c), np.float32)
    for i in range(h * w):
        acc = (acc + rows[:, :, i]).astype(np.float32)
    return acc


@pytest.mark.parametrize("shape,threads,engine", FLOAT_CASES)
def test_channels_last_mean_is_torchs_float_path(shape, threads, engine):
    rng = np.random.default_rng(sum(shape) + threads)
    engine = {"fbgemm": Fbgemm(), "x86": X86()}[engine]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch_ref.set_engine(engine.torch_engine)
        x, t = _make(rng, shape, qjax.quint8 if engine.name == "fbgemm" else qjax.qint8)
        t = t.contiguous(memory_format=torch.channels_last)
        for keepdim in (False, True):
            want = t.mean([2, 3], keepdim=keepdim).int_repr().numpy()
            got = engine.mean(x, (2, 3), keepdim, memory_format=CHANNELS_LAST, threads=threads).values
            assert_same(got, want, f"mean {engine.name} {shape} keepdim={keepdim}")
        # the float sums themselves are torch's, bit for bit, while a sequential order is not (the data decide)
        xf = t.dequantize().contiguous(memory_format=torch.channels_last)
        want_sum = xf.sum([2, 3]).numpy()
        got_sum = np.asarray(_sum(xf.numpy(), threads))
        assert (got_sum.view(np.int32) == want_sum.view(np.int32)).all()
        if shape[2] * shape[3] > 16:  # up to 16 positions multi_row_sum is a sequential sum
            assert (_sequential_sum(xf.numpy()).view(np.int32) != want_sum.view(np.int32)).any()
        if threads > 1:  # and the thread split matters here
            assert (np.asarray(_sum(xf.numpy(), 1)).view(np.int32) != want_sum.view(np.int32)).any()
    finally:
        torch.set_num_threads(old)
        torch_ref.set_engine("fbgemm")


def test_the_thread_split_moves_the_summation_order():
    # C=37 on 16 threads: the last slice [32, 37) is a scalar_outer_sum, unlike the one-thread row_sum
    assert qmean.sum_groups(37, 1, 1) == [(0, 32, "multi"), (32, 37, "row")]
    assert qmean.sum_groups(37, 16, 1)[-2:] == [(32, 36, "multi"), (36, 37, "row")]
    assert qmean.sum_groups(37, 16, 64) == qmean.sum_groups(37, 1, 1)  # N > C: torch splits the batch instead


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (2, 64, 6, 6), (1, 5, 3, 9)])
def test_qnnpack_mean_is_qnnpacks_global_average_pool(shape):
    rng = np.random.default_rng(sum(shape))
    torch_ref.set_engine("qnnpack")
    try:
        for memory_format in (CONTIGUOUS, CHANNELS_LAST):
            x, t = _make(rng, shape)
            if memory_format == CHANNELS_LAST:
                t = t.contiguous(memory_format=torch.channels_last)
            for keepdim in (False, True):
                want = t.mean([2, 3], keepdim=keepdim).int_repr().numpy()
                got = Qnnpack().mean(x, (2, 3), keepdim, memory_format=memory_format).values
                assert_same(got, want, f"qnnpack mean {shape} {memory_format}")
            # dim written [-2, -1] is not qnnpack_mean's [2, 3]: ATen's integer fast path (contiguous input)
            if memory_format == CONTIGUOUS:
                want = t.mean([-2, -1]).int_repr().numpy()
                assert_same(Qnnpack().mean(x, (-2, -1), False, memory_format=CONTIGUOUS).values, want, "[-2, -1]")
                if shape == (2, 64, 6, 6):  # ties of sum/36 (1 in 36): the two rules differ there, the data tell
                    fast = Fbgemm().mean(x, (2, 3), False, memory_format=CONTIGUOUS).values
                    assert (np.asarray(fast) != t.mean([2, 3]).int_repr().numpy()).any()
    finally:
        torch_ref.set_engine("fbgemm")


def test_a_mean_no_engine_models_is_refused():
    x, _ = _make(np.random.default_rng(0), (1, 4, 3, 3))
    for engine in (Fbgemm(), X86(), Qnnpack()):
        with pytest.raises(qjax.QuantizationError, match=f"engine '{engine.name}'.*mean over dims \\(1,\\)"):
            engine.mean(x, (1,), False, memory_format=CONTIGUOUS)
