"""Public quantized ops: ``conv`` and ``linear`` = integer kernel + engine requantization.

Shapes (torch layout, the default):

* ``conv``: ``xq`` ``(N, C, *spatial)`` quint8 per-tensor; ``wq`` ``(O, C // groups, *kernel)``
  qint8, per-tensor or per-channel with ``axis=0``; ``bias`` float ``(O,)`` or None;
  result ``(N, O, *out_spatial)`` quint8 per-tensor with the given ``scale``/``zero_point``.
  1-d, 2-d or 3-d follows from the rank of ``xq``.
* ``linear``: ``xq`` ``(..., K)`` quint8; ``wq`` ``(O, K)`` qint8 (per-channel ``axis=0``);
  result ``(..., O)`` quint8.

With ``channels_last=True`` a conv takes ``xq`` as ``(N, *spatial, C)`` and ``wq`` as
``(*kernel, C // groups, O)`` (per-channel ``axis=-1``), the layout Flax uses, and
returns ``(N, *out_spatial, O)`` — no transposes.

Both are pure and jit/vmap compatible; all integer arithmetic is exact int32 (or the
engine's documented saturation) and requantization is bit-exact to the engine.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .checks import QuantizationError, check_scale, check_zero_point, is_concrete
from .buffers import own_buffer
from .dtypes import qint8, quint8
from .engines import ConvGeometry, ConvTransposeGeometry, layer_engine, resolve
from .kernels.conv_transpose import conv_transpose_output_size
from .kernels.conv import output_spatial
from .layout import channels_to_first, channels_to_last, weight_to_last
from .qarray import QArray, as_f32, as_i32, as_words, check_scale64, scale_words
from .qops.embedding import row_params_traced

__all__ = ["conv", "conv_transpose", "linear", "conv_geometry", "check_conv_shapes", "check_accumulator",
           "accumulator_bound", "linear_dynamic", "embedding", "embedding_bag"]


def _tuple(v, n, argname):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(i) for i in v)
    if len(v) != n:
        raise QuantizationError(f"{argname} needs {n} values (one per spatial dim), got {v}")
    return v


def _padding(padding, n):
    if isinstance(padding, str):
        raise QuantizationError("padding must be ints or (lo, hi) pairs; strings like 'SAME' are not supported")
    if isinstance(padding, (int, np.integer)):
        padding = (padding,) * n
    padding = tuple(padding)
    if len(padding) != n:
        raise QuantizationError(f"padding needs {n} entries (one per spatial dim), got {padding}")
    out = []
    for p in padding:
        if isinstance(p, (int, np.integer)):
            out.append((int(p), int(p)))
        else:
            lo, hi = p
            out.append((int(lo), int(hi)))
    if any(lo < 0 or hi < 0 for lo, hi in out):
        raise QuantizationError(f"padding must be >= 0, got {out}")
    return tuple(out)


def conv_geometry(nd, stride=1, padding=0, dilation=1, groups=1) -> ConvGeometry:
    """Normalise conv arguments into a :class:`ConvGeometry` (validated)."""
    strides = _tuple(stride, nd, "stride")
    dil = _tuple(dilation, nd, "dilation")
    if any(s < 1 for s in strides):
        raise QuantizationError(f"stride must be >= 1, got {strides}")
    if any(d < 1 for d in dil):
        raise QuantizationError(f"dilation must be >= 1, got {dil}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise QuantizationError(f"groups must be a positive int, got {groups!r}")
    return ConvGeometry(strides, _padding(padding, nd), dil, int(groups))


def _check_input(xq, argname):
    if not isinstance(xq, QArray):
        raise TypeError(f"{argname} must be a QArray (use qjax.quantize), got {type(xq).__name__}")
    if xq.dtype != quint8:
        raise QuantizationError(f"{argname} must be quint8 (fbgemm/qnnpack activations), got {xq.dtype.name}")
    if xq.axis is not None:
        raise QuantizationError(f"{argname} must be quantized per tensor, got a per-channel QArray (axis={xq.axis})")


def _check_weight(wq, out_axis, argname="wq"):
    if not isinstance(wq, QArray):
        raise TypeError(f"{argname} must be a QArray (use qjax.quantize), got {type(wq).__name__}")
    if wq.dtype != qint8:
        raise QuantizationError(f"{argname} must be qint8, got {wq.dtype.name}")
    if wq.axis is not None and wq.axis != out_axis % wq.ndim:
        raise QuantizationError(
            f"{argname} is per-channel along axis {wq.axis}, but its output-channel axis is {out_axis % wq.ndim}"
        )


def _check_bias(bias, out_ch):
    if bias is None:
        return None
    if not jnp.issubdtype(jnp.result_type(bias), jnp.floating):
        raise TypeError(f"bias must be a float array (torch keeps it in float32), got dtype {jnp.result_type(bias)}")
    if np.shape(bias) != (out_ch,):
        raise QuantizationError(f"bias must have shape ({out_ch},) (one per output channel), got {np.shape(bias)}")
    return as_f32(bias)


def _check_out(scale, zero_point):
    check_scale(scale, "scale")
    if np.ndim(scale) != 0 or np.ndim(zero_point) != 0:
        raise QuantizationError("output scale and zero_point must be scalars (per-tensor output)")
    check_zero_point(zero_point, quint8, "zero_point")


def accumulator_bound(taps, x_zero_point, w_zero_point) -> int:
    """Largest possible ``|sum (x - zx)(w - zw)|`` over ``taps`` products.

    Uses the zero points when they are concrete, else the dtype ranges' worst case.
    """
    if is_concrete(x_zero_point):
        zx = np.asarray(x_zero_point).astype(np.int64)
        mx = int(np.max(np.maximum(np.abs(0 - zx), np.abs(255 - zx))))
    else:
        mx = 255
    if is_concrete(w_zero_point):
        zw = np.asarray(w_zero_point).astype(np.int64)
        mw = int(np.max(np.maximum(np.abs(-128 - zw), np.abs(127 - zw))))
    else:
        mw = 255
    return int(taps) * mx * mw


def check_accumulator(taps, x_zero_point, w_zero_point):
    """Raise where ``taps`` products could wrap torch's int32 accumulator (integer zero points; traced ones
    count as the worst case)."""
    if taps * 255 * 255 < 2**31:  # even the worst case fits: nothing to look at
        return
    bound = accumulator_bound(taps, x_zero_point, w_zero_point)
    if bound >= 2**31:
        raise QuantizationError(
            f"int32 overflow risk: {taps} products per output of up to {bound // taps} each can reach {bound} "
            ">= 2**31 (torch's int32 accumulator would wrap); split the reduction (channels/groups) into "
            "smaller layers"
        )


def check_conv_shapes(channels, spatial, out_channels, group_channels, kernel, geometry: ConvGeometry,
                      x_name="xq", w_name="wq") -> int:
    """Raise unless an input of ``channels`` x ``spatial`` and a weight of ``out_channels`` x ``group_channels``
    x ``kernel`` fit ``geometry``; returns the products per output (``group_channels * prod(kernel)``)."""
    c, o, cg, g = channels, out_channels, group_channels, geometry.groups
    if c % g or o % g:
        raise QuantizationError(f"groups={g} must divide input channels ({c}) and output channels ({o})")
    if cg * g != c:
        raise QuantizationError(f"{w_name} has {cg} input channels per group but {x_name} has {c} channels and "
                                f"groups={g} (needs {c // g})")
    out_sp = output_spatial(spatial, kernel, geometry.strides, geometry.padding, geometry.dilation)
    if any(n < 1 for n in out_sp):
        raise QuantizationError(f"kernel {tuple(kernel)} (dilation {geometry.dilation}) does not fit the padded "
                                f"input {tuple(spatial)}")
    return cg * math.prod(kernel)


def conv(xq, wq, bias=None, *, scale, zero_point, stride=1, padding=0, dilation=1, groups=1, relu=False,
         engine="fbgemm", channels_last=False, key=None, scale64=None) -> QArray:
    """Quantized convolution, bit-exact to the engine (see the module docstring for shapes).

    Args:
      xq: quint8 per-tensor QArray input.
      wq: qint8 QArray weight, per tensor or per output channel.
      bias: float ``(O,)`` or None (torch keeps conv bias in float32).
      scale, zero_point: output quantization parameters.
      stride, dilation: int or one per spatial dim.
      padding: int, one int per spatial dim, or one ``(lo, hi)`` pair per spatial dim.
        Padded positions hold the input zero point (they add 0).
      groups: feature groups (``groups == C`` is depthwise).
      relu: fuse ReLU (torch's ``ConvReLU`` modules).
      engine: ``"fbgemm"``, any registered name, or an engine instance (see :mod:`qjax.engines`).
      channels_last: operands in ``(N, *spatial, C)`` / ``(*kernel, C//groups, O)`` layout.
      key: PRNG key for an engine that rounds stochastically (a hardware spec's ``stochastic``).
      scale64: the output scale as a double's words (:func:`qjax.float64.words`, e.g. a graph parameter,
        traced or not) where ``scale`` is its float32; default: kept from a Python-float / float64 ``scale``.

    Returns:
      quint8 per-tensor QArray with the output ``scale`` and ``zero_point``.
    """
    _check_input(xq, "xq")
    nd = xq.ndim - 2
    if nd not in (1, 2, 3):
        raise QuantizationError(f"xq must be (N, C, *spatial) with 1-3 spatial dims, got shape {xq.shape}")
    _check_weight(wq, -1 if channels_last else 0)
    if wq.ndim != xq.ndim:
        raise QuantizationError(f"wq must have rank {xq.ndim} like xq, got shape {wq.shape}")
    geom = conv_geometry(nd, stride, padding, dilation, groups)
    if channels_last:
        c, sp = xq.shape[-1], xq.shape[1:-1]
        o, cg, kernel = wq.shape[-1], wq.shape[-2], wq.shape[:-2]
    else:
        c, sp = xq.shape[1], xq.shape[2:]
        o, cg, kernel = wq.shape[0], wq.shape[1], wq.shape[2:]
    taps = check_conv_shapes(c, sp, o, cg, kernel, geom)
    b = _check_bias(bias, o)
    _check_out(scale, zero_point)
    check_accumulator(taps, xq.zero_point, wq.zero_point)
    eng = layer_engine(resolve(engine), wq.zero_point, geom.groups)
    s64 = _scales64(xq, wq, scale, scale64)
    values = _conv_values(
        xq.values, xq.scale, xq.zero_point, wq.values, wq.scale, wq.zero_point, b,
        as_f32(scale), as_i32(zero_point), key, s64,
        engine=eng, geometry=geom, relu=bool(relu), per_channel=wq.axis is not None,
        channels_last=bool(channels_last),
    )
    return QArray(values, as_f32(scale), as_i32(zero_point), quint8, None, check=False,
                  scale64=None if s64 is None else s64[2])


@functools.partial(jax.jit, static_argnames=("engine", "geometry", "relu", "per_channel", "channels_last"))
def _conv_values(x, sx, zx, w, sw, zw, bias, sy, zy, key, s64, *, engine, geometry, relu, per_channel,
                 channels_last):
    if not channels_last:
        x = channels_to_last(x)  # (N, C, *S) -> (N, *S, C)
        w = weight_to_last(w)  # (O, I, *K) -> (*K, I, O)
    out = engine.conv(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, geometry, relu, key,
                      **_doubles(s64)).astype(jnp.uint8)
    if not channels_last:
        # a depthwise kernel's tap loop fuses well with the relayout on large maps only
        if w.shape[-2] != 1 or math.prod(out.shape[1:-1]) <= _DEPTHWISE_OWN_BUFFER_MAX_PIXELS:
            # the requantization computed channels-last into its own buffer: fused into the relayout it
            # read the int32 accumulator with a stride of C (1x1 16->96 on 4x112x112: 56 vs 38-41 ms)
            out = own_buffer(out, out)
        out = channels_to_first(out)
    return out


# Depthwise 3x3 convs, batch 16, median of 5 interleaved rounds (1 core): materialising the output
# before the relayout took 384ch@14x14 12.2 -> 8.1 ms, 576@14 27.9 -> 15.6, 960@7 8.2 -> 4.9, but
# 144@28 10.3 -> 12.5, 192@28 14.0 -> 17.0, 144@56 35.9 -> 59.4: only maps of at most 14x14 get it.
_DEPTHWISE_OWN_BUFFER_MAX_PIXELS = 196


def conv_transpose(xq, wq, bias=None, *, scale, zero_point, stride=1, padding=0, output_padding=0, dilation=1,
                   groups=1, engine="fbgemm", scale64=None) -> QArray:
    """Quantized transposed convolution (torch's ``ConvTranspose{1,2,3}d``), torch layout.

    Args:
      xq: quint8 per-tensor ``(N, C_in, *spatial)``.
      wq: qint8 ``(C_in, C_out // groups, *kernel)``, per tensor (or per channel along axis 1
        where the engine supports it).
      bias: float ``(C_out,)`` or None.
      scale, zero_point: output quantization parameters.
      stride, padding, output_padding, dilation: int or one per spatial dim (symmetric padding).
      groups: feature groups.
      engine: ``"fbgemm"`` or an engine instance (``Fbgemm(torch_bugs=False)`` for the correct math
        where torch's fbgemm computes a wrong result).
      scale64: the output scale's double words, as for :func:`conv`.

    Returns:
      quint8 per-tensor QArray ``(N, C_out, *out)``.
    """
    _check_input(xq, "xq")
    nd = xq.ndim - 2
    if nd not in (1, 2, 3):
        raise QuantizationError(f"xq must be (N, C, *spatial) with 1-3 spatial dims, got shape {xq.shape}")
    _check_weight(wq, 1)
    if wq.ndim != xq.ndim:
        raise QuantizationError(f"wq must have rank {xq.ndim} like xq, got shape {wq.shape}")
    strides = _tuple(stride, nd, "stride")
    pads = _tuple(padding, nd, "padding")
    opad = _tuple(output_padding, nd, "output_padding")
    dil = _tuple(dilation, nd, "dilation")
    if any(v < 1 for v in strides + dil) or any(v < 0 for v in pads + opad):
        raise QuantizationError(f"stride/dilation must be >= 1 and padding/output_padding >= 0, got "
                                f"{strides}, {dil}, {pads}, {opad}")
    g = int(groups)
    c = xq.shape[1]
    if g < 1 or c % g or wq.shape[0] != c:
        raise QuantizationError(f"wq must be (C_in={c}, C_out/groups, *kernel) with groups={g} dividing C_in, "
                                f"got shape {wq.shape}")
    out_ch = wq.shape[1] * g
    kernel = wq.shape[2:]
    out_sp = conv_transpose_output_size(xq.shape[2:], kernel, strides, pads, opad, dil)
    if any(o < 1 for o in out_sp):
        raise QuantizationError(f"conv_transpose output size {out_sp} is empty")
    b = _check_bias(bias, out_ch)
    _check_out(scale, zero_point)
    check_accumulator(c // g * math.prod(kernel), xq.zero_point, wq.zero_point)
    eng = layer_engine(resolve(engine), wq.zero_point, g, opad)
    geom = ConvTransposeGeometry(strides, pads, opad, dil, g)
    s64 = _scales64(xq, wq, scale, scale64)
    values = _conv_transpose_values(
        xq.values, xq.scale, xq.zero_point, wq.values, wq.scale, wq.zero_point, b, as_f32(scale), as_i32(zero_point),
        s64, engine=eng, geometry=geom, per_channel=wq.axis is not None)
    return QArray(values, as_f32(scale), as_i32(zero_point), quint8, None, check=False,
                  scale64=None if s64 is None else s64[2])


@functools.partial(jax.jit, static_argnames=("engine", "geometry", "per_channel"))
def _conv_transpose_values(x, sx, zx, w, sw, zw, bias, sy, zy, s64, *, engine, geometry, per_channel):
    out = engine.conv_transpose(channels_to_last(x), sx, zx, w, sw, zw, per_channel, bias, sy, zy, geometry,
                                **_doubles(s64))
    return channels_to_first(out).astype(jnp.uint8)


def linear(xq, wq, bias=None, *, scale, zero_point, relu=False, engine="fbgemm", key=None, scale64=None) -> QArray:
    """Quantized linear layer ``y = x @ w.T + b``, bit-exact to the engine.

    Args:
      xq: quint8 per-tensor QArray ``(..., K)``.
      wq: qint8 QArray ``(O, K)``, per tensor or per output channel (``axis=0``).
      bias: float ``(O,)`` or None.
      scale, zero_point: output quantization parameters.
      relu: fuse ReLU (torch's ``LinearReLU``).
      engine: ``"fbgemm"``, any registered name, or an engine instance.
      key: PRNG key for an engine that rounds stochastically.
      scale64: the output scale's double words, as for :func:`conv`.

    Returns:
      quint8 per-tensor QArray ``(..., O)``.
    """
    _check_input(xq, "xq")
    if xq.ndim < 1:
        raise QuantizationError("xq must have at least one dimension (features last)")
    _check_weight(wq, 0)
    if wq.ndim != 2:
        raise QuantizationError(f"wq must be (out_features, in_features), got shape {wq.shape}")
    o, k = wq.shape
    if xq.shape[-1] != k:
        raise QuantizationError(f"xq has {xq.shape[-1]} features but wq expects in_features={k}")
    b = _check_bias(bias, o)
    _check_out(scale, zero_point)
    check_accumulator(k, xq.zero_point, wq.zero_point)
    eng = resolve(engine)
    s64 = _scales64(xq, wq, scale, scale64)
    values = _linear_values(
        xq.values, xq.scale, xq.zero_point, wq.values, wq.scale, wq.zero_point, b,
        as_f32(scale), as_i32(zero_point), key, s64, engine=eng, relu=bool(relu), per_channel=wq.axis is not None,
    )
    return QArray(values, as_f32(scale), as_i32(zero_point), quint8, None, check=False,
                  scale64=None if s64 is None else s64[2])


@functools.partial(jax.jit, static_argnames=("engine", "relu", "per_channel"))
def _linear_values(x, sx, zx, w, sw, zw, bias, sy, zy, key, s64, *, engine, relu, per_channel):
    return engine.linear(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, relu, key, **_doubles(s64)).astype(jnp.uint8)


def _scales64(xq, wq, scale, scale64=None):
    """``(x, w, out)`` double words of the scales (torch's doubles: a Python-float ``scale=`` is one), or
    None when all three are float32-valued (:mod:`qjax.float64`; engines that need them take ``scales64``)."""
    if scale64 is not None:
        check_scale64(scale64, scale, "scale64")
    s64 = (xq.scale64, wq.scale64, scale_words(scale) if scale64 is None else as_words(scale64))
    return None if all(s is None for s in s64) else s64


def _doubles(s64):
    return {} if s64 is None else {"scales64": s64}


# -- float-output ops: dynamic quantization and quantized embeddings ------------------------------------

def linear_dynamic(x, wq, bias=None, *, relu=False, reduce_range=True, engine="fbgemm"):
    """Dynamically quantized linear layer (``nnqd.Linear``, ``quantized::linear_dynamic``), bit-exact.

    The float input is quantized per call to quint8 with qparams chosen from its own min / max (torch's
    ``ChooseQuantizationParams``, in double; ``reduce_range`` halves the range to 0..127, as
    ``nnqd.Linear`` asks on fbgemm / x86; qnnpack ignores it, as torch does), multiplied by the int8
    weights exactly and returned as float32 by the engine's output rule (:mod:`qjax._src.qops.dynamic`).

    Args:
      x: float ``(..., K)``, not empty.
      wq: qint8 QArray ``(O, K)``, per tensor or per output channel (``axis=0``).
      bias: float ``(O,)`` or None.
      relu: fuse ReLU (``nniqd.LinearReLU``).
      engine: ``"fbgemm"``, ``"x86"`` or ``"qnnpack"`` (others refuse), or an engine instance.

    Returns:
      float32 ``(..., O)``.
    """
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"x must be a float array, got dtype {jnp.result_type(x)}")
    if np.ndim(x) < 1 or np.size(x) == 0:
        raise QuantizationError(f"x must be a non-empty (..., in_features) array, got shape {np.shape(x)}")
    _check_weight(wq, 0)
    if wq.ndim != 2:
        raise QuantizationError(f"wq must be (out_features, in_features), got shape {wq.shape}")
    o, k = wq.shape
    if np.shape(x)[-1] != k:
        raise QuantizationError(f"x has {np.shape(x)[-1]} features but wq expects in_features={k}")
    b = _check_bias(bias, o)
    check_accumulator(k, 0, wq.zero_point)  # the input zero point is chosen per call: |x - zx| <= 255
    eng = resolve(engine)
    return _linear_dynamic_values(jnp.asarray(x, jnp.float32), wq.values, wq.scale, wq.zero_point, b,
                                  engine=eng, relu=bool(relu), reduce_range=bool(reduce_range),
                                  per_channel=wq.axis is not None)


@functools.partial(jax.jit, static_argnames=("engine", "relu", "reduce_range", "per_channel"))
def _linear_dynamic_values(x, w, sw, zw, bias, *, engine, relu, reduce_range, per_channel):
    return engine.linear_dynamic(x, w, sw, zw, per_channel, bias, relu=relu, reduce_range=reduce_range)


def _embedding_rows(weight, scale, zero_point, bits):
    if bits not in (4, 8):
        raise QuantizationError(f"bits={bits!r}; quantized embeddings are 8-bit (quint8) or 4-bit (quint4x2)")
    v = jnp.asarray(weight)
    if v.ndim != 2 or v.dtype != jnp.uint8:
        raise QuantizationError(f"weight must be the uint8 values (num_embeddings, dim), got {v.dtype} {v.shape}")
    r = v.shape[0]
    if np.shape(scale) != (r,) or np.shape(zero_point) != (r,):
        raise QuantizationError(f"scale and zero_point must be one float per row, shape ({r},); got "
                                f"{np.shape(scale)} and {np.shape(zero_point)}")
    if bits == 4 and is_concrete(v) and np.any(np.asarray(v) > 15):
        raise QuantizationError("bits=4 weight values must be in 0..15 (unpacked quint4x2)")
    return v, jnp.asarray(scale, jnp.float32), jnp.asarray(zero_point, jnp.float32)


def _check_indices(indices, rows, name="indices"):
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {jnp.result_type(indices)}")
    if is_concrete(indices) and np.size(indices) and (np.min(indices) < 0 or np.max(indices) >= rows):
        raise QuantizationError(f"{name} must lie in [0, {rows}) (num_embeddings)")


def embedding(weight, indices, *, scale, zero_point, bits=8, engine="fbgemm"):
    """Quantized embedding lookup (``nnq.Embedding``: ``quantized::embedding_byte`` / ``_4bit``), bit-exact.

    Args:
      weight: uint8 values ``(R, D)`` of a rowwise (``per_channel_affine_float_qparams``) weight; for
        ``bits=4`` the unpacked 4-bit values (0..15).
      indices: int array of any shape.
      scale, zero_point: the float qparams, one per row ``(R,)``.
      bits: 8 (quint8) or 4 (quint4x2: torch stores the row scale and bias as float16).
      engine: any torch engine (they all run FBGEMM's kernel).

    Returns:
      float32 ``indices.shape + (D,)``: ``fma(scale, q, bias)`` with ``bias = -fl32(zero_point * scale)``.
    """
    v, s, z = _embedding_rows(weight, scale, zero_point, bits)
    _check_indices(indices, v.shape[0])
    return _embedding_values(v, s, z, jnp.asarray(indices, jnp.int32), engine=resolve(engine), bits=bits)


@functools.partial(jax.jit, static_argnames=("engine", "bits"))
def _embedding_values(v, s, z, idx, *, engine, bits):
    return engine.embedding(v, *row_params_traced(s, z, bits), idx)


@functools.partial(jax.jit, static_argnames=("engine", "bits"))
def _embedding_bag_values(v, s, z, idx, offs, psw, *, engine, bits):
    return engine.embedding_bag(v, *row_params_traced(s, z, bits), idx, offs, psw)


def embedding_bag(weight, indices, offsets=None, *, scale, zero_point, per_sample_weights=None, bits=8,
                  include_last_offset=False, mode="sum", engine="fbgemm"):
    """Quantized embedding bag (``nnq.EmbeddingBag``: ``quantized::embedding_bag_byte`` / ``_4bit``), bit-exact.

    Each bag's rows are folded in index order, ``acc = fma(s, q, acc + b)`` (per-sample weights scale
    ``s`` and ``b`` first), see :mod:`qjax._src.qops.embedding`.

    Args:
      weight, scale, zero_point, bits: as for :func:`embedding`.
      indices: int ``(n,)`` with ``offsets``, or ``(B, L)`` without (each row one bag of ``L``).
      offsets: int ``(B,)`` bag starts (``offsets[0] == 0``, non-decreasing), ``(B + 1,)`` with
        ``include_last_offset`` (the last one ``n``), or None.
      per_sample_weights: float ``indices.shape`` or None.
      mode: ``"sum"`` only: torch 2.13's quantized kernels return the sums for ``"mean"`` and ``"max"``
        too (its ``mode`` argument is not used), which qjax will not call a mean or a max.

    Returns:
      float32 ``(B, D)``.
    """
    if mode != "sum":
        raise QuantizationError(f"mode={mode!r}: torch's quantized embedding_bag kernels compute sums whatever "
                                "the mode says; qjax offers mode='sum' only")
    v, s, z = _embedding_rows(weight, scale, zero_point, bits)
    idx = jnp.asarray(indices)
    _check_indices(idx, v.shape[0])
    if offsets is None:
        if idx.ndim != 2:
            raise QuantizationError(f"indices must be (bags, length) when offsets is None, got shape {idx.shape}")
        bags, length = idx.shape
        offs = jnp.arange(bags, dtype=jnp.int32) * length
        idx = idx.reshape(-1)
    else:
        if idx.ndim != 1 or np.ndim(offsets) != 1:
            raise QuantizationError("indices and offsets must be 1-d when offsets are given")
        _check_indices(offsets, idx.shape[0] + 1, "offsets")
        offs = jnp.asarray(offsets, jnp.int32)
        if include_last_offset:
            if offs.shape[0] < 1:
                raise QuantizationError("include_last_offset needs at least one offset")
            if is_concrete(offsets) and int(np.asarray(offsets)[-1]) != idx.shape[0]:
                raise QuantizationError(f"with include_last_offset the last offset must be the number of indices "
                                        f"{idx.shape[0]}, got {int(np.asarray(offsets)[-1])}")
            offs = offs[:-1]
        if is_concrete(offsets) and np.size(offsets) and (
                np.asarray(offsets)[0] != 0 or np.any(np.diff(np.asarray(offsets)) < 0)):
            raise QuantizationError("offsets must start at 0 and be non-decreasing")
    psw = None
    if per_sample_weights is not None:
        if np.shape(per_sample_weights) != tuple(np.shape(indices)):
            raise QuantizationError(f"per_sample_weights must have the indices' shape {tuple(np.shape(indices))}")
        psw = jnp.asarray(per_sample_weights, jnp.float32).reshape(-1)
    return _embedding_bag_values(v, s, z, idx.astype(jnp.int32), offs, psw, engine=resolve(engine), bits=bits)
