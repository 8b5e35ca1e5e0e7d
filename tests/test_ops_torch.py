"""qjax.conv / qjax.linear (fbgemm engine) against torch 2.13's fbgemm kernels: 0 mismatches."""

import pytest
from hypothesis import given, settings

from . import torch_ref
from .helpers import assert_same, qjax_conv, qjax_linear, torch_conv, torch_linear
from .strategies import conv_cases, linear_cases

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def _fbgemm():
    torch_ref.set_engine("fbgemm")


@settings(max_examples=60)
@given(case=conv_cases(nds=(2,)))
def test_conv2d_matches_torch(case):
    assert_same(qjax_conv(case), torch_conv(case), f"conv2d {case['kind']}")


@settings(max_examples=30)
@given(case=conv_cases(nds=(1,)))
def test_conv1d_matches_torch(case):
    assert_same(qjax_conv(case), torch_conv(case), f"conv1d {case['kind']}")


@settings(max_examples=30)
@given(case=conv_cases(nds=(3,)))
def test_conv3d_matches_torch(case):
    assert_same(qjax_conv(case), torch_conv(case), f"conv3d {case['kind']}")


@settings(max_examples=40)
@given(case=linear_cases())
def test_linear_matches_torch(case):
    assert_same(qjax_linear(case), torch_linear(case), "linear")
