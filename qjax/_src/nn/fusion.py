"""Conv + BatchNorm folding with torch's exact float32 arithmetic (``torch.nn.utils.fusion.fuse_conv_bn_weights``).

    r  = fl32(1 / fl32(sqrt(fl32(var + eps))))          torch.rsqrt on CPU: sqrt, then a division
    w' = fl32(w * fl32(gamma * r))                     per output channel
    b' = fl32(fl32(fl32(fl32(b - mean) * r) * gamma) + beta)

Each product is kept rounded (:func:`qjax.float32.mul_rn`) so XLA cannot contract ``x*gamma + beta``
into an FMA, and ``1/sqrt`` is a real division (:func:`qjax.float32.div_rn`), not XLA's ``rsqrt``.
Folded weights then quantize to exactly the integers torch's fused modules hold.
"""

from __future__ import annotations

import jax.numpy as jnp

from .. import float32 as f32x

__all__ = ["fuse_conv_bn_weights", "fold_batch_norm"]


def fuse_conv_bn_weights(kernel, bias, mean, var, eps, gamma=None, beta=None, *, out_axis=-1):
    """``(kernel', bias')`` of the conv followed by an eval-mode BatchNorm (``out_axis``: the kernel's output axis)."""
    kernel = jnp.asarray(kernel, jnp.float32)
    mean, var = jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32)
    bias = jnp.zeros_like(mean) if bias is None else jnp.asarray(bias, jnp.float32)
    gamma = jnp.ones_like(mean) if gamma is None else jnp.asarray(gamma, jnp.float32)
    beta = jnp.zeros_like(mean) if beta is None else jnp.asarray(beta, jnp.float32)
    r = f32x.div_rn(1.0, jnp.sqrt(var + jnp.float32(eps)))
    shape = [1] * kernel.ndim
    shape[out_axis] = -1
    w = f32x.mul_rn(kernel, f32x.mul_rn(gamma, r).reshape(shape))
    b = f32x.mul_rn(f32x.mul_rn(bias - mean, r), gamma) + beta
    return w, b


def fold_batch_norm(conv, bn):
    """Fold a Flax ``nnx.BatchNorm`` (its running statistics) into a :class:`~qjax.nn.QConv` in place."""
    from flax import nnx

    from .modules import QConv

    if not isinstance(conv, QConv):
        raise TypeError(f"conv must be a qjax.nn.QConv, got {type(conv).__name__}")
    if not isinstance(bn, nnx.BatchNorm):
        raise TypeError(f"bn must be a flax.nnx.BatchNorm, got {type(bn).__name__}")
    get = lambda v: None if v is None else v.get_value()  # noqa: E731
    w, b = fuse_conv_bn_weights(conv.kernel.get_value(), None if conv.bias is None else conv.bias.get_value(),
                                get(bn.mean), get(bn.var), bn.epsilon, get(bn.scale), get(bn.bias))
    conv.kernel.set_value(w)
    if conv.bias is None:
        conv.bias = nnx.data(nnx.Param(b))
    else:
        conv.bias.set_value(b)
    return conv
