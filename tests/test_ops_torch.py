"""qjax.conv / qjax.linear (fbgemm engine) against torch 2.13's fbgemm kernels: 0 mismatches."""

import numpy as np
import pytest
from hypothesis import given, settings

from . import torch_ref
from .helpers import assert_same, qjax_conv, qjax_linear, torch_conv, torch_linear
from .strategies import _qparams, conv_cases, linear_cases

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def _fbgemm():
    torch_ref.set_engine("fbgemm")


@settings(max_examples=25)
@given(case=conv_cases(nds=(2,)))
def test_conv2d_matches_torch(case):
    assert_same(qjax_conv(case), torch_conv(case), f"conv2d {case['kind']}")


@settings(max_examples=20)
@given(case=conv_cases(nds=(1,)))
def test_conv1d_matches_torch(case):
    assert_same(qjax_conv(case), torch_conv(case), f"conv1d {case['kind']}")


@settings(max_examples=20)
@given(case=conv_cases(nds=(3,)))
def test_conv3d_matches_torch(case):
    assert_same(qjax_conv(case), torch_conv(case), f"conv3d {case['kind']}")


@settings(max_examples=25)
@given(case=linear_cases())
def test_linear_matches_torch(case):
    assert_same(qjax_linear(case), torch_linear(case), "linear")


def test_3d_depthwise_row_offset_saturation_matches_torch():
    # >= 129 taps (3x7x7) with per-channel weights carrying zero points: fbgemm's saturating
    # int16 row-offset sum shows
    rng = np.random.default_rng(0)
    g = 8
    case = dict(kind="depthwise_fast", nd=3, groups=g, in_channels=g, out_channels=g, kernel=(3, 7, 7),
                stride=(1, 1, 1), padding=(1, 3, 3), dilation=(1, 1, 1), x_shape=(1, g, 4, 8, 8),
                w_shape=(g, 1, 3, 7, 7))
    case = _qparams(rng, case, per_channel=True, wzp=True, full_range=True, has_bias=True, relu=False)
    case["x"] = rng.integers(200, 256, size=case["x_shape"]).astype(np.uint8)
    assert_same(qjax_conv(case), torch_conv(case), "3x7x7 depthwise")
