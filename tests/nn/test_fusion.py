"""Conv+BN folding equals torch's fuse_conv_bn_weights to the bit (so the quantized weights match too)."""

import jax
import numpy as np
import pytest
from flax import nnx

from qjax import nn as qnn

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("has_bias", [False, True])
def test_fuse_conv_bn_weights_equals_torch(seed, has_bias):
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    rng = np.random.default_rng(seed)
    o = 37
    w = rng.standard_normal((o, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if has_bias else None
    mean = (rng.standard_normal(o) * 3).astype(np.float32)
    var = (rng.uniform(1e-6, 10, o) ** 2).astype(np.float32)
    gamma, beta = rng.standard_normal(o).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    eps = [1e-5, 1e-3, 0.1][seed % 3]
    tw, tb = fuse_conv_bn_weights(torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                                  torch.from_numpy(mean), torch.from_numpy(var), eps, torch.from_numpy(gamma),
                                  torch.from_numpy(beta))
    kw, kb = jax.jit(lambda *a: qnn.fuse_conv_bn_weights(*a, out_axis=0), static_argnums=4)(
        w, b, mean, var, eps, gamma, beta)
    np.testing.assert_array_equal(np.asarray(kw), tw.detach().numpy())
    np.testing.assert_array_equal(np.asarray(kb), tb.detach().numpy())


def test_fold_batch_norm_into_qconv():
    r = nnx.Rngs(0)
    conv = qnn.QConv(3, 4, (3, 3), padding=1, use_bias=False, rngs=r)
    bn = nnx.BatchNorm(4, rngs=r)
    bn.mean.set_value(np.arange(4, dtype=np.float32) * 0.1)
    bn.var.set_value(np.arange(1, 5, dtype=np.float32))
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    bn.eval()
    ref = np.asarray(bn(conv(x)))
    qnn.fold_batch_norm(conv, bn)
    np.testing.assert_allclose(np.asarray(conv(x)), ref, rtol=1e-5, atol=1e-5)  # float model, float sums
    with pytest.raises(TypeError, match="BatchNorm"):
        qnn.fold_batch_norm(conv, conv)
