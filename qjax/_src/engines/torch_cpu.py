"""The non-GEMM ops of torch 2.13's CPU backend, shared by the fbgemm, x86, onednn and reference engines.

torch routes quantized add/mul/pooling/activations/cat/resize/batch norm through ATen's own kernels
(``aten/src/ATen/native/quantized/cpu/``: ``BinaryOps.cpp``, ``qrelu.cpp``, ``qsigmoid.cpp``,
``Pooling.cpp``, ``AdaptiveAveragePooling.cpp``, ``qconcat.cpp``, ``UpSample*.cpp``, ``qbatch_norm.cpp``,
``ReduceOps.cpp``) whichever ``torch.backends.quantized.engine`` is set, except on qnnpack (see
:class:`~qjax.engines.Qnnpack`).  :class:`TorchCpuOps` is those ops as engine methods; the arithmetic
itself lives in :mod:`qjax.qops`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import float32 as f32x
from ..qops import elementwise as ew
from ..qops.batchnorm import batch_norm
from ..qops.concat import cat
from ..qops.embedding import embedding_bag_sum, embedding_lookup
from ..qops.mean import float_mean_channels_last
from ..qops.normalization import group_norm, instance_norm, layer_norm
from ..qops.paths import CHANNELS_LAST, CONTIGUOUS
from ..qops.pooling import adaptive_avg_pool, avg_pool, max_pool
from ..qops.resize import interpolate
from ..quantize import dequantize, quantize
from .base import refuse

__all__ = ["TorchCpuOps"]


class TorchCpuOps:
    """ATen's quantized CPU kernels for every non-GEMM op (a mixin: engines add conv / linear)."""

    def for_layer(self, w_zero_point, groups, output_padding=()):
        return self

    def describe(self, op, *args, **kwargs):
        refuse(self, f"step-by-step trace of {op} (explain)", "qjax.explain traces fbgemm's requantization")

    # -- quantize / dequantize: torch.quantize_per_tensor / _per_channel (qjax.quantize) ------------
    def quantize(self, x, scale, zero_point, dtype, axis=None, key=None):
        return quantize(jnp.asarray(x, jnp.float32), scale, zero_point, dtype, axis)

    def dequantize(self, q):
        return dequantize(q)

    # -- elementwise ------------------------------------------------------------------------------
    def add(self, a, b, scale, zero_point, *, relu=False, memory_format=CONTIGUOUS, threads=1, input_formats=None,
            in_qparams=None, out_qparams=None, key=None):
        return ew.add(a, b, scale, zero_point, relu=relu, memory_format=memory_format, threads=threads,
                      input_formats=input_formats)

    def mul(self, a, b, scale, zero_point, *, relu=False, memory_format=CONTIGUOUS, threads=1, input_formats=None):
        return ew.mul(a, b, scale, zero_point, relu=relu, memory_format=memory_format, threads=threads,
                      input_formats=input_formats)

    def add_scalar(self, a, c, *, relu=False, memory_format=CONTIGUOUS, threads=1, in_qparams=None):
        return ew.add_scalar(a, c, relu=relu, memory_format=memory_format, threads=threads, in_qparams=in_qparams)

    def mul_scalar(self, a, c, *, relu=False, in_qparams=None):
        return ew.mul_scalar(a, c, relu=relu, in_qparams=in_qparams)

    def cat(self, xs, scale, zero_point, *, dim, relu=False, channels_last=False):
        return cat(xs, scale, zero_point, dim=dim, relu=relu, channels_last=channels_last)

    # -- activations ------------------------------------------------------------------------------
    def relu(self, x, *, memory_format=CONTIGUOUS):
        return ew.relu(x)

    def relu6(self, x, *, memory_format=CONTIGUOUS, input_format=None):
        return ew.relu6(x)

    def hardtanh(self, x, min_val, max_val, *, memory_format=CONTIGUOUS, input_format=None):
        return ew.hardtanh(x, min_val, max_val)

    def hardswish(self, x, scale, zero_point, *, memory_format=CONTIGUOUS, threads=1):
        return ew.hardswish(x, scale, zero_point, memory_format=memory_format, threads=threads)

    def hardsigmoid(self, x, *, memory_format=CONTIGUOUS, threads=1):
        return ew.hardsigmoid(x, memory_format=memory_format, threads=threads)

    def sigmoid(self, x, scale=None, zero_point=None, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None):
        return ew.sigmoid(x, scale, zero_point, memory_format=memory_format, threads=threads, in_qparams=in_qparams)

    def tanh(self, x, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None):
        return ew.tanh(x, memory_format=memory_format, threads=threads, in_qparams=in_qparams)

    def leaky_relu(self, x, negative_slope, scale, zero_point, *, threads=1):
        return ew.leaky_relu(x, negative_slope, scale, zero_point, threads=threads)

    def elu(self, x, scale, zero_point, alpha=1.0, *, memory_format=CONTIGUOUS, threads=1, in_qparams=None):
        return ew.elu(x, scale, zero_point, alpha, memory_format=memory_format, threads=threads,
                      in_qparams=in_qparams)

    # -- pooling, resize, normalisation, reductions -----------------------------------------------
    def max_pool(self, x, kernel_size, stride, padding, dilation, ceil_mode, *, memory_format=CONTIGUOUS):
        return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, memory_format=memory_format)

    def avg_pool(self, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, *,
                 memory_format=CONTIGUOUS):
        return avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                        memory_format=memory_format)

    def adaptive_avg_pool(self, x, output_size, *, memory_format=CONTIGUOUS):
        return adaptive_avg_pool(x, output_size, memory_format=memory_format)

    def interpolate(self, x, size, scale_factor, mode, align_corners, recompute_scale_factor, *,
                    memory_format=CONTIGUOUS):
        return interpolate(x, size, scale_factor, mode, align_corners, recompute_scale_factor,
                           memory_format=memory_format)

    def batch_norm(self, x, weight, bias, mean, var, eps, scale, zero_point, *, relu=False, in_scale=None):
        return batch_norm(x, weight, bias, mean, var, eps, scale, zero_point, relu=relu, in_scale=in_scale)

    def layer_norm(self, x, normalized_shape, weight, bias, eps, scale, zero_point):
        return layer_norm(x, normalized_shape, weight, bias, eps, scale, zero_point)

    def group_norm(self, x, num_groups, weight, bias, eps, scale, zero_point, *, memory_format=CONTIGUOUS,
                   threads=1):
        return group_norm(x, num_groups, weight, bias, eps, scale, zero_point, memory_format=memory_format,
                          threads=threads)

    def instance_norm(self, x, weight, bias, eps, scale, zero_point, *, memory_format=CONTIGUOUS, threads=1):
        return instance_norm(x, weight, bias, eps, scale, zero_point, memory_format=memory_format, threads=threads)

    # -- float-output ops --------------------------------------------------------------------------
    def linear_dynamic(self, x, w, w_scale, w_zero_point, w_per_channel, bias, *, relu=False, reduce_range=True):
        refuse(self, "dynamic-quantization linear (quantized::linear_dynamic)",
               "qjax models fbgemm's and qnnpack's kernels (x86 runs fbgemm's)")

    def embedding_bag(self, values, row_scale, row_bias, indices, offsets, per_sample_weights=None):
        """FBGEMM's ``EmbeddingSpMDM`` (``qembeddingbag.cpp`` calls it on every torch engine)."""
        return embedding_bag_sum(values, row_scale, row_bias, indices, offsets, per_sample_weights)

    def embedding(self, values, row_scale, row_bias, indices):
        return embedding_lookup(values, row_scale, row_bias, indices)

    def mean(self, x, dims, keepdim, *, memory_format=CONTIGUOUS, threads=1):
        """``quantized::mean`` (``ReduceOps.cpp``, ``mean_out_quantized_cpu``): over the trailing dims of a
        contiguous tensor ``rne(fl32(sum / n))`` on the raw values (the integer fast path); over ``(H, W)`` of
        a dense channels-last 4-d tensor torch's dequantize -> float mean -> quantize, with SumKernel.cpp's
        summation order for ``threads`` threads (:mod:`qjax.qops.mean`).  Other layouts or dims run the float
        path with an iteration order qjax does not model, and are refused."""
        dims = tuple(sorted(d % x.ndim for d in dims))
        if memory_format == CHANNELS_LAST and x.ndim == 4 and (x.shape[1] == 1 or x.shape[2] * x.shape[3] == 1):
            memory_format = CONTIGUOUS  # a dense channels-last tensor with C == 1 or H*W == 1 is contiguous too
        if memory_format == CHANNELS_LAST and x.ndim == 4 and dims == (2, 3):
            return float_mean_channels_last(x, keepdim, threads, self)
        if memory_format != CONTIGUOUS or dims != tuple(range(x.ndim - len(dims), x.ndim)):
            refuse(self, f"quantized mean over dims {dims} of a {x.ndim}-d {memory_format} tensor",
                   "torch runs its float dequantize/sum/quantize path there, in an order qjax models only over "
                   "(H, W) of a channels_last 4-d tensor")
        s = jnp.sum(x.values.astype(jnp.int32), axis=dims, keepdims=keepdim)
        n = int(np.prod([x.shape[d] for d in dims]))
        v = jnp.round(f32x.div_rn(s.astype(jnp.float32), np.float32(n))).astype(x.dtype.storage)
        return x.with_values(v)
