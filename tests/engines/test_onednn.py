"""The onednn engine's symmetric-weight check works on concrete zero points inside jit."""

import jax
import numpy as np
import pytest

import qjax
from qjax.engines import ConvGeometry


def _conv(zw):
    geom = ConvGeometry(strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1)
    x = np.full((1, 4, 4, 8), 130, np.uint8)
    w = np.ones((1, 1, 8, 4), np.int8)
    return jax.jit(lambda x: qjax.engines.Onednn().conv(x, 0.1, 128, w, np.full(4, 0.01, np.float32), zw, True, None,
                                                        0.05, 7, geom, False))(x)


def test_symmetric_check_inside_jit():
    out = np.asarray(_conv(np.zeros(4, np.int32)))
    # acc = 8 * (130 - 128) = 16; 16 * 0.1 * 0.01 / 0.05 = 0.32, + 7 -> 7
    assert out.shape == (1, 4, 4, 4) and (out == 7).all()
    with pytest.raises(qjax.QuantizationError, match="symmetric"):
        _conv(np.array([0, 1, 0, 0], np.int32))
