"""Integer accumulators vs an independent int64 numpy reference (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax._src.kernels.conv import conv_accumulate
from qjax._src.kernels.linear import linear_accumulate

from .reference import conv_acc, wrap32

_conv_accumulate = jax.jit(conv_accumulate, static_argnames=("strides", "padding", "dilation", "groups", "saturation"))
_linear_accumulate = jax.jit(linear_accumulate, static_argnames=("saturation",))


@st.composite
def acc_cases(draw, depthwise=False):
    nd = draw(st.sampled_from([1, 2, 3]))
    if depthwise:
        g = c = draw(st.integers(1, 8))
        o = c * draw(st.integers(1, 2))
    else:
        g = draw(st.integers(1, 3))
        c, o = g * draw(st.integers(1, 5)), g * draw(st.integers(1, 4))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))  # per side
    spatial = tuple(
        draw(st.integers(max(d * (k - 1) + 1 - lo - hi, 1), max(d * (k - 1) + 1 - lo - hi, 1) + 6))
        for k, d, (lo, hi) in zip(kernel, dilation, padding)
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 256, size=(draw(st.integers(1, 2)), c) + spatial).astype(np.uint8)
    w = rng.integers(-128, 128, size=(o, c // g) + kernel).astype(np.int8)
    zx = int(rng.integers(0, 256))
    zw = rng.integers(-128, 128, size=o) if draw(st.booleans()) else int(rng.integers(-128, 128))
    return x, zx, w, zw, stride, padding, dilation, g


def run(x, zx, w, zw, stride, padding, dilation, g, saturation):
    nd = x.ndim - 2
    xl = jnp.moveaxis(jnp.asarray(x), 1, -1)
    wl = jnp.transpose(jnp.asarray(w), tuple(range(2, 2 + nd)) + (1, 0))
    acc = _conv_accumulate(xl, zx, wl, jnp.asarray(zw), strides=tuple(stride), padding=tuple(padding),
                           dilation=tuple(dilation), groups=g, saturation=saturation)
    return np.moveaxis(np.asarray(acc), -1, 1)


@settings(max_examples=25)
@given(acc_cases())
def test_exact_accumulator(case):
    got = run(*case, None)
    x, zx, w, zw, stride, padding, dilation, g = case
    np.testing.assert_array_equal(got, wrap32(conv_acc(x, zx, w, zw, stride, padding, dilation, g)))


@settings(max_examples=25)
@given(acc_cases(depthwise=True))
def test_depthwise_pair_saturation(case):
    x, zx, w, zw, stride, padding, dilation, g = case
    want = conv_acc(x, zx, w, zw, stride, padding, dilation, g, "depthwise_pairs")
    np.testing.assert_array_equal(run(*case, "depthwise_pairs"), want)
    np.testing.assert_array_equal(run(*case, None), conv_acc(x, zx, w, zw, stride, padding, dilation, g))


@settings(max_examples=25)
@given(acc_cases())
def test_gemm_pair_saturation(case):
    x, zx, w, zw, stride, padding, dilation, g = case
    want = conv_acc(x, zx, w, zw, stride, padding, dilation, g, "gemm_pairs")
    np.testing.assert_array_equal(run(*case, "gemm_pairs"), wrap32(want))


def test_saturation_actually_happens():
    # all-255 activations times -128 weights: every pair sum is -65280, saturating to -32768
    x = np.full((1, 16, 5, 5), 255, np.uint8)
    w = np.full((16, 1, 3, 3), -128, np.int8)
    exact = run(x, 0, w, 0, (1, 1), ((1, 1), (1, 1)), (1, 1), 16, None)
    sat = run(x, 0, w, 0, (1, 1), ((1, 1), (1, 1)), (1, 1), 16, "depthwise_pairs")
    assert exact[0, 0, 2, 2] == 9 * 255 * -128
    assert sat[0, 0, 2, 2] == 4 * -32768 + 255 * -128


@settings(max_examples=25)
@given(k=st.integers(1, 200), o=st.integers(1, 20), seed=st.integers(0, 2**32 - 1), sat=st.booleans())
def test_linear_accumulator(k, o, seed, sat):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(3, 4, k)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(o, k)).astype(np.int8)
    zx, zw = int(rng.integers(0, 256)), rng.integers(-128, 128, size=o)
    got = np.asarray(_linear_accumulate(jnp.asarray(x), zx, jnp.asarray(w), jnp.asarray(zw),
                                       saturation="gemm_pairs" if sat else None))
    # a linear layer is a 1x1 conv over the flattened batch
    x4 = x.reshape(-1, k)[:, :, None]
    want = conv_acc(x4, zx, w[:, :, None], zw, (1,), ((0, 0),), (1,), 1, "gemm_pairs" if sat else None)
    np.testing.assert_array_equal(got, wrap32(want[:, :, 0]).reshape(3, 4, o))


def test_channels_last_equals_torch_layout():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 6, 7, 9)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(4, 3, 3, 2)).astype(np.int8)
    bias = rng.normal(size=4).astype(np.float32)
    kw = dict(scale=0.05, zero_point=7, stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    a = qjax.conv(qjax.QArray(x, 0.02, 9, qjax.quint8), qjax.QArray(w, 0.01, 0, qjax.qint8), bias, **kw)
    b = qjax.conv(
        qjax.QArray(np.moveaxis(x, 1, -1), 0.02, 9, qjax.quint8),
        qjax.QArray(np.transpose(w, (2, 3, 1, 0)), 0.01, 0, qjax.qint8), bias, channels_last=True, **kw,
    )
    np.testing.assert_array_equal(np.moveaxis(np.asarray(b.values), -1, 1), np.asarray(a.values))


def test_unknown_saturation_mode():
    x = jnp.zeros((1, 4, 4, 2), jnp.uint8)
    w = jnp.zeros((1, 1, 2, 2), jnp.int8)
    with pytest.raises(ValueError, match="saturation='bogus'"):
        conv_accumulate(x, 0, w, 0, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1,
                        saturation="bogus")
    with pytest.raises(ValueError, match="needs a depthwise"):
        conv_accumulate(x, 0, w, 0, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1,
                        saturation="depthwise_pairs")


def test_depthwise_row_offset_saturates():
    # 3x7x7 = 147 taps of 255: the int16 row-offset sum saturates; visible with a weight zero point
    x = np.full((1, 8, 3, 7, 7), 255, np.uint8)
    w = np.ones((8, 1, 3, 7, 7), np.int8)
    case = (x, 0, w, 5, (1, 1, 1), ((0, 0),) * 3, (1, 1, 1), 8)
    got = run(*case, "depthwise_pairs")
    np.testing.assert_array_equal(got, conv_acc(*case, saturation="depthwise_pairs"))
    assert got[0, 0, 0, 0, 0] == 147 * 255 - 5 * 32767 - 0  # raw - zw * min(row, 32767)


@st.composite
def stem_cases(draw, space_to_depth=False):
    """Few input channels, many outputs, a large kernel: the im2col + int8 GEMM path of ``int8_conv``
    (``space_to_depth``: stride 2, no dilation, <= 4 channels — the stride-1 block convolution)."""
    c, o = draw(st.integers(1, 4 if space_to_depth else 8)), draw(st.integers(32, 40))
    kernel = (draw(st.integers(2, 7)), draw(st.integers(5, 7)))
    stride = (2, 2) if space_to_depth else tuple(draw(st.integers(1, 3)) for _ in range(2))
    dilation = (1, 1) if space_to_depth else tuple(draw(st.integers(1, 2)) for _ in range(2))
    padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    spatial = tuple(max(d * (k - 1) + 1 - lo - hi, 1) + draw(st.integers(0, 9))
                    for k, d, (lo, hi) in zip(kernel, dilation, padding))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 256, size=(draw(st.integers(1, 2)), c) + spatial).astype(np.uint8)
    w = rng.integers(-128, 128, size=(o, c) + kernel).astype(np.int8)
    zx = int(rng.integers(0, 256))
    kind = draw(st.sampled_from(["per_channel", "scalar", "zero"]))  # zw != 0 runs the window-sum correction
    zw = {"per_channel": rng.integers(-128, 128, size=o), "scalar": int(rng.integers(-128, 128)), "zero": 0}[kind]
    return x, zx, w, zw, stride, padding, dilation, 1


@settings(max_examples=16)
@given(stem_cases())
def test_exact_accumulator_im2col_stem(case):
    got = run(*case, None)
    x, zx, w, zw, stride, padding, dilation, g = case
    np.testing.assert_array_equal(got, wrap32(conv_acc(x, zx, w, zw, stride, padding, dilation, g)))


@settings(max_examples=10)
@given(stem_cases(space_to_depth=True))
def test_exact_accumulator_space_to_depth_stem(case):
    got = run(*case, None)
    x, zx, w, zw, stride, padding, dilation, g = case
    np.testing.assert_array_equal(got, wrap32(conv_acc(x, zx, w, zw, stride, padding, dilation, g)))
