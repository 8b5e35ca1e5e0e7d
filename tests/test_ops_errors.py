"""Bad arguments to qjax.conv / qjax.linear give clear errors naming the argument and the rule."""

import numpy as np
import pytest

import qjax
from qjax import QuantizationError


def X(shape=(1, 4, 5, 5), zp=3):
    return qjax.QArray(np.zeros(shape, np.uint8), 0.1, zp, qjax.quint8)


def W(shape=(2, 4, 3, 3), zp=0):
    return qjax.QArray(np.zeros(shape, np.int8), 0.1, zp, qjax.qint8)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(scale=0.0, zero_point=0), QuantizationError, "scale must be > 0"),
        (dict(scale=float("nan"), zero_point=0), QuantizationError, "scale must be finite"),
        (dict(scale=-2.0, zero_point=0), QuantizationError, "scale must be > 0"),
        (dict(scale=0.1, zero_point=300), QuantizationError, "zero_point=300 is outside the range of quint8"),
        (dict(scale=0.1, zero_point=0, groups=3), QuantizationError, "groups=3 must divide"),
        (dict(scale=0.1, zero_point=0, stride=0), QuantizationError, "stride must be >= 1"),
        (dict(scale=0.1, zero_point=0, padding=-1), QuantizationError, "padding must be >= 0"),
        (dict(scale=0.1, zero_point=0, padding="SAME"), QuantizationError, "strings like 'SAME'"),
        (dict(scale=0.1, zero_point=0, dilation=(1,)), QuantizationError, "dilation needs 2 values"),
        (dict(scale=0.1, zero_point=0, engine="tpu"), ValueError, "engine='tpu' is unknown"),
        (dict(scale=[0.1, 0.2], zero_point=[0, 0]), QuantizationError, "must be scalars"),
    ],
)
def test_conv_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        qjax.conv(X(), W(), None, **kwargs)


def test_conv_operand_errors():
    with pytest.raises(TypeError, match="xq must be a QArray"):
        qjax.conv(np.zeros((1, 4, 5, 5), np.uint8), W(), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="xq must be quint8"):
        qjax.conv(qjax.QArray(np.zeros((1, 4, 5, 5), np.int8), 0.1, 0, qjax.qint8), W(), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="wq must be qint8"):
        qjax.conv(X(), qjax.QArray(np.zeros((2, 4, 3, 3), np.uint8), 0.1, 0, qjax.quint8), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="wq has 3 input channels per group but xq has 4"):
        qjax.conv(X(), W((2, 3, 3, 3)), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="wq must have rank 4"):
        qjax.conv(X(), W((2, 4, 3)), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="does not fit the padded input"):
        qjax.conv(X((1, 4, 2, 2)), W(), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match=r"bias must have shape \(2,\)"):
        qjax.conv(X(), W(), np.zeros(3, np.float32), scale=0.1, zero_point=0)
    with pytest.raises(TypeError, match="bias must be a float array"):
        qjax.conv(X(), W(), np.zeros(2, np.int32), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="per-channel along axis 1"):
        w = qjax.QArray(np.zeros((2, 4, 3, 3), np.int8), np.ones(4), np.zeros(4, np.int32), qjax.qint8, axis=1)
        qjax.conv(X(), w, scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="xq must be quantized per tensor"):
        xpc = qjax.QArray(np.zeros((1, 4, 5, 5), np.uint8), np.ones(4), np.zeros(4, np.int32), qjax.quint8, axis=1)
        qjax.conv(xpc, W(), scale=0.1, zero_point=0)


def test_int32_overflow_risk_is_rejected():
    # 3x3x4000 taps of up to 255*255: the int32 accumulator could wrap
    with pytest.raises(QuantizationError, match="int32 overflow risk"):
        qjax.conv(X((1, 4000, 3, 3), zp=255), W((1, 4000, 3, 3), zp=-128), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match="int32 overflow risk"):
        qjax.linear(X((1, 70000), zp=0), W((1, 70000)), scale=0.1, zero_point=0)


def test_linear_errors():
    with pytest.raises(QuantizationError, match="xq has 5 features but wq expects in_features=4"):
        qjax.linear(X((3, 5)), W((2, 4)), scale=0.1, zero_point=0)
    with pytest.raises(QuantizationError, match=r"wq must be \(out_features, in_features\)"):
        qjax.linear(X((3, 4)), W((2, 4, 1)), scale=0.1, zero_point=0)


def test_engine_objects():
    with pytest.raises(ValueError, match="isa='sse4'"):
        qjax.Fbgemm(isa="sse4")
    with pytest.raises(TypeError, match="lacks the engine methods"):
        qjax.conv(X(), W(), scale=0.1, zero_point=0, engine=42)
