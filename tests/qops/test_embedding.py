"""Quantized Embedding / EmbeddingBag (8-bit and 4-bit rowwise) vs torch 2.13: 0 mismatches, bit for bit.

torch's side is the real module path: a float weight observed per row (``per_channel_affine_float_qparams``),
``nnq.EmbeddingBag`` / ``nnq.Embedding`` prepacking it, and the ops the modules call.  qjax's side is the
public ops from the module's unpacked weight (values, scales, zero points).  A wrong fold (mul then add,
per-sample weight applied after the product) is scored on the same data and must miss.
"""

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import qjax
from qjax._src.float32 import fma32_numpy
from qjax._src.qops.embedding import row_params, unpack_4bit

pytestmark = pytest.mark.torch
F32 = np.float32
R, D, N, B = 20, 14, 24, 5  # rows, dim (even, for 4-bit), indices, bags


def _module(rng, bits):
    dt = torch.quint8 if bits == 8 else torch.quint4x2
    m = torch.ao.nn.quantized.EmbeddingBag(R, D, dtype=dt)
    w = torch.from_numpy((rng.standard_normal((R, D)) * np.exp(rng.uniform(-3, 2, size=(R, 1)))).astype(F32))
    obs = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=dt,
                                                         qscheme=torch.per_channel_affine_float_qparams)
    obs(w)
    s, z = obs.calculate_qparams()
    m.set_weight(torch.quantize_per_channel(w, s, z, 0, dt))
    qw = m.weight()
    values = qw.int_repr().numpy()
    values = np.asarray(unpack_4bit(values.reshape(R, -1))) if bits == 4 else values  # int_repr is flat
    return m, values, qw.q_per_channel_scales().numpy(), qw.q_per_channel_zero_points().numpy()


def _bags(rng):
    idx = rng.integers(0, R, N)
    offsets = np.sort(rng.integers(0, N + 1, B))
    offsets[0] = 0
    return idx, offsets


@functools.lru_cache(maxsize=None)
def _bag_fn(bits):
    # always weighted: weights of 1 leave fl32(s * 1) = s and fl32(b * 1) = b, so one compiled graph
    # serves the unweighted bags too (the psw=None path runs in test_embedding_matches_torch_bit_for_bit)
    def f(values, s, z, idx, offs, psw):
        return qjax.embedding_bag(values, idx, offs, scale=s, zero_point=z, bits=bits, per_sample_weights=psw)
    return jax.jit(f)


def _torch_bag(m, bits, idx, offsets, psw):
    op = torch.ops.quantized.embedding_bag_4bit if bits == 4 else torch.ops.quantized.embedding_bag_byte
    return op(m._packed_params._packed_weight, torch.from_numpy(idx), torch.from_numpy(offsets), False, 0, False,
              None if psw is None else torch.from_numpy(psw), None, False).numpy()


@settings(max_examples=3)
@given(seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_bag_matches_torch_bit_for_bit(bits, seed):
    rng = np.random.default_rng(seed)
    m, values, s, z = _module(rng, bits)
    for weighted in (False, True):
        idx, offsets = _bags(rng)
        psw = rng.standard_normal(N).astype(F32) if weighted else None
        want = _torch_bag(m, bits, idx, offsets, psw)
        got = np.asarray(_bag_fn(bits)(values, s, z, idx, offsets, np.ones(N, F32) if psw is None else psw))
        assert got.shape == want.shape
        assert (got.view(np.int32) != want.view(np.int32)).sum() == 0
    # the module itself (offsets, its own forward)
    want = m(torch.from_numpy(idx), torch.from_numpy(offsets)).numpy()
    got = np.asarray(_bag_fn(bits)(values, s, z, idx, offsets, np.ones(N, F32)))
    assert (got.view(np.int32) != want.view(np.int32)).sum() == 0


def test_embedding_bag_wrong_folds_miss_and_modes_are_sums():
    rng = np.random.default_rng(3)
    m, values, s, z = _module(rng, 8)
    idx, offsets = _bags(rng)
    psw = rng.standard_normal(N).astype(F32)
    want = _torch_bag(m, 8, idx, offsets, psw)
    rs, rb = row_params(s, z, 8)
    ends = list(offsets[1:]) + [N]
    mul_add = np.zeros((B, D), F32)
    weight_after = np.zeros((B, D), F32)
    for bag, (lo, hi) in enumerate(zip(offsets, ends)):
        for k in range(lo, hi):
            r, q = idx[k], values[idx[k]].astype(F32)
            sw, bw = F32(rs[r] * psw[k]), F32(rb[r] * psw[k])
            mul_add[bag] = (mul_add[bag] + ((q * sw).astype(F32) + bw).astype(F32)).astype(F32)
            weight_after[bag] = (weight_after[bag] + (fma32_numpy(rs[r], q, rb[r]) * psw[k]).astype(F32)).astype(F32)
    assert (mul_add.view(np.int32) != want.view(np.int32)).sum() > 0
    assert (weight_after.view(np.int32) != want.view(np.int32)).sum() > 0
    # torch's mode argument changes nothing (mean and max are sums): qjax offers "sum" only
    for mode in (1, 2):
        other = torch.ops.quantized.embedding_bag_byte(m._packed_params._packed_weight, torch.from_numpy(idx),
                                                       torch.from_numpy(offsets), False, mode, False, None, None,
                                                       False).numpy()
        assert (other.view(np.int32) == _torch_bag(m, 8, idx, offsets, None).view(np.int32)).all()
    with pytest.raises(qjax.QuantizationError, match="mode='sum' only"):
        qjax.embedding_bag(values, idx, offsets, scale=s, zero_point=z, mode="mean")


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_matches_torch_bit_for_bit(bits):
    rng = np.random.default_rng(bits)
    bag, values, s, z = _module(rng, bits)
    m = torch.ao.nn.quantized.Embedding(R, D, dtype=bag.dtype)
    m.set_weight(bag.weight())
    idx = rng.integers(0, R, (3, 7))
    want = m(torch.from_numpy(idx)).numpy()
    got = np.asarray(qjax.embedding(values, idx, scale=s, zero_point=z, bits=bits))
    assert (got.view(np.int32) != want.view(np.int32)).sum() == 0
    # 2-d indices without offsets: one bag per row; include_last_offset
    want = bag(torch.from_numpy(idx)).numpy()
    got = np.asarray(qjax.embedding_bag(values, idx, scale=s, zero_point=z, bits=bits))
    assert (got.view(np.int32) != want.view(np.int32)).sum() == 0
    flat, offs = idx.reshape(-1), np.array([0, 7, 7, 21])
    want = torch.ops.quantized.embedding_bag_byte(bag._packed_params._packed_weight, torch.from_numpy(flat),
                                                  torch.from_numpy(offs), False, 0, False, None, None,
                                                  True).numpy() if bits == 8 else None
    if want is not None:
        got = np.asarray(qjax.embedding_bag(values, flat, offs, scale=s, zero_point=z, include_last_offset=True))
        assert (got.view(np.int32) != want.view(np.int32)).sum() == 0
