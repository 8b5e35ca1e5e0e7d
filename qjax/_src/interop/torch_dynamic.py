"""torch's float-output quantized modules as QModel nodes: dynamic linear, quantized embeddings.

``quantize_dynamic`` models (``torch.ao.nn.quantized.dynamic``) take and return float tensors;
``nnq.Embedding`` / ``nnq.EmbeddingBag`` take indices and return float.  :func:`module_node` translates
one such module into ``(op, static config, params)`` for the FX importer (:mod:`qjax.interop.torch`),
or returns None for any other module; modules qjax does not reproduce raise a one-line
:class:`TorchImportError`.  Nothing here computes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .torch_common import TorchImportError, qarray_from_torch

__all__ = ["module_node"]


def _torch():
    import torch

    return torch


def _embedding_params(m, src):
    torch = _torch()
    w = m.weight()
    if w.qscheme() != torch.per_channel_affine_float_qparams:
        raise TorchImportError(f"{src}: embedding weights must be per_channel_affine_float_qparams, got {w.qscheme()}")
    bits = 4 if w.dtype == torch.quint4x2 else 8
    values = w.int_repr().numpy().reshape(w.shape[0], -1)
    if bits == 4:  # quint4x2 storage: two values a byte, the low nibble first
        values = np.stack([values & 15, values >> 4], axis=-1).reshape(w.shape[0], -1)
    params = dict(values=jnp.asarray(values, jnp.uint8),
                  scale=jnp.asarray(w.q_per_channel_scales().numpy().astype(np.float32)),
                  zero_point=jnp.asarray(w.q_per_channel_zero_points().numpy().astype(np.float32)))
    return bits, params


def module_node(m, src: str, engine):
    """``(op, static, params)`` of a dynamic-linear / quantized-embedding module, else None."""
    torch = _torch()
    nnqd = torch.ao.nn.quantized.dynamic
    nnq = torch.ao.nn.quantized
    if isinstance(m, nnqd.Linear):
        if m._packed_params.dtype != torch.qint8:
            raise TorchImportError(f"{src}: dynamic linear with {m._packed_params.dtype} weights "
                                   "(linear_dynamic_fp16: fbgemm's fp16 GEMM and its float accumulation order) is "
                                   "not supported; quantize_dynamic with dtype=torch.qint8")
        relu = isinstance(m, torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU)
        params = dict(weight=qarray_from_torch(m.weight()))
        if m.bias() is not None:
            params["bias"] = jnp.asarray(m.bias().detach().numpy(), jnp.float32)
        # nnqd.Linear.forward: reduce_range=True from module version 4 on, the op's default (False) before;
        # nniqd.LinearReLU.forward always passes reduce_range=True
        reduce_range = relu or not (m.version is None or m.version < 4)
        return "linear_dynamic", dict(relu=relu, reduce_range=reduce_range, engine=engine), params
    if isinstance(m, (nnqd.LSTM, nnqd.GRU, nnqd.LSTMCell, nnqd.GRUCell, nnqd.RNNCell)):
        raise TorchImportError(f"{src}: dynamic quantized {type(m).__name__} is not supported: its gates run "
                               "ATen's vectorized float sigmoid / tanh (Sleef polynomials), which qjax does not "
                               "reproduce bit for bit (its linear parts are qjax.linear_dynamic)")
    if isinstance(m, (nnqd.Conv1d, nnqd.Conv2d, nnqd.Conv3d, nnqd.ConvTranspose1d, nnqd.ConvTranspose2d,
                      nnqd.ConvTranspose3d)):
        raise TorchImportError(f"{src}: dynamic quantized convolutions are not supported")
    if isinstance(m, nnq.EmbeddingBag):
        if m.pruned_weights:
            raise TorchImportError(f"{src}: pruned embedding weights (compressed_indices_mapping) are not supported")
        if m.mode != "sum":
            # nnq.EmbeddingBag.forward passes mode 0 whatever m.mode says, and the kernels sum anyway
            raise TorchImportError(f"{src}: mode={m.mode!r}: torch's quantized EmbeddingBag computes sums whatever "
                                   "the mode (its forward passes mode 0); qjax imports mode='sum' only")
        bits, params = _embedding_params(m, src)
        return "embedding_bag", dict(bits=bits, include_last_offset=bool(m.include_last_offset), engine=engine), params
    if isinstance(m, nnq.Embedding):
        bits, params = _embedding_params(m, src)
        return "embedding", dict(bits=bits, engine=engine), params
    return None
