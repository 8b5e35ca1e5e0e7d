"""What the torch importers share: torch tensors as QArrays, memory formats, the engine and settings of an import.

Both importers (:mod:`qjax.interop.torch` for ``torch.fx``, :mod:`qjax.interop.torchscript`) build
on this module and on nothing of each other's.  Torch is imported lazily, only when called.
"""

from __future__ import annotations

import contextlib
import warnings

import jax.numpy as jnp
import numpy as np

from ..dtypes import as_qdtype
from ..engines import host_engine, resolve
from ..float64 import words_if_not_f32
from ..graph import GraphError
from ..qarray import QArray
from ..qops.paths import CHANNELS_LAST, CONTIGUOUS, STRIDED, suggest_memory_format

__all__ = ["TorchImportError", "qarray_from_torch", "memory_format_of", "tensor_qparams", "torch_engine",
           "torch_engine_of", "import_engine", "import_settings", "ENGINE_OPS", "check_mean"]

#: the QModel ops that compute quantized arithmetic: importers store the engine on each of their nodes
ENGINE_OPS = frozenset({"quantize", "dequantize", "conv", "conv_transpose", "linear", "batch_norm", "binary", "scalar",
                        "unary", "pool", "interpolate", "cat", "mean", "norm"})


class TorchImportError(GraphError):
    """A torch model contains something qjax cannot import exactly."""


def _torch():
    import torch

    return torch


def qarray_from_torch(t) -> QArray:
    """A torch quantized tensor as a :class:`QArray`: ``scale`` float32 (as most kernels use it), and torch's
    double ``q_scale()`` / ``q_per_channel_scales()`` kept as ``scale64`` where not float32-valued."""
    torch = _torch()
    if not t.is_quantized:
        raise TorchImportError(f"expected a quantized tensor, got dtype {t.dtype}")
    dt = as_qdtype(t.dtype)
    values = t.int_repr().detach().cpu().numpy()
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return QArray(values, float(t.q_scale()), int(t.q_zero_point()), dt)
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        scales = t.q_per_channel_scales().double().numpy()
        zps = t.q_per_channel_zero_points().numpy().astype(np.int32)
        return QArray(values, scales, zps, dt, axis=int(t.q_per_channel_axis()))
    raise TorchImportError(f"unsupported qscheme {t.qscheme()}")


def memory_format_of(t) -> str:
    """``contiguous`` / ``channels_last`` as torch's ``suggest_memory_format`` sees the tensor, else ``strided``."""
    fmt = suggest_memory_format(t.shape, t.stride())
    torch = _torch()
    if fmt == CHANNELS_LAST:
        return CHANNELS_LAST
    if t.is_contiguous():
        return CONTIGUOUS
    if t.dim() in (4, 5) and t.is_contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d):
        return CHANNELS_LAST
    return STRIDED


def check_mean(engine, t, dims, keepdim, layout, threads, node):
    """Raise :class:`TorchImportError` now for a quantized mean of the recorded tensor ``t`` that ``engine``
    refuses: the refusal depends on the dtype, shape, layout and dims alone, so tracing shapes suffices."""
    import jax

    from ..checks import QuantizationError

    if not getattr(t, "is_quantized", False):
        return
    x = qarray_from_torch(t)
    try:
        jax.eval_shape(lambda v: engine.mean(x.with_values(v), dims,
                                             keepdim, memory_format=layout, threads=threads).values, x.values)
    except QuantizationError as e:
        raise TorchImportError(f"graph node {node!r}: {e}") from None


def scale_params(scale, zero_point) -> dict:
    """A node's quantization parameters from torch's (double) ``scale`` and ``zero_point``: float32 ``scale``
    (what every kernel casts to), int32 ``zero_point``, and ``scale64`` (the double's words) when the scale is
    not float32-valued — torch's onednn paths invert the double itself (see :mod:`qjax.float64`)."""
    p = dict(scale=jnp.float32(scale), zero_point=jnp.int32(zero_point))
    words = words_if_not_f32(float(scale))
    if words is not None:
        p["scale64"] = jnp.asarray(words)
    return p


def tensor_qparams(t):
    """``(float32 scale as a float, zero point)`` of a per-tensor quantized torch tensor, else None."""
    torch = _torch()
    if isinstance(t, torch.Tensor) and t.is_quantized:
        return float(np.float32(t.q_scale())), int(t.q_zero_point())
    return None


def torch_engine_of(model=None) -> str:
    """torch's current ``torch.backends.quantized.engine``."""
    return _torch().backends.quantized.engine


@contextlib.contextmanager
def torch_engine(name: str):
    """Run torch with ``torch.backends.quantized.engine = name`` (restored afterwards), warnings silenced."""
    torch = _torch()
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.backends.quantized.engine = name
            yield
        finally:
            torch.backends.quantized.engine = previous


def import_engine(engine):
    """The engine an import runs on: a torch engine's name -> the engine reproducing it on this host
    (:func:`qjax.engines.host_engine`: this CPU's ISA), an engine instance as given (checked by
    :func:`qjax.engines.resolve`).  It must reproduce a torch engine (``torch_engine``), which the
    importer runs torch with to record what the kernels depend on."""
    try:
        qengine = host_engine(engine) if isinstance(engine, str) else resolve(engine)
    except ValueError as e:
        raise TorchImportError(str(e)) from None
    if qengine.torch_engine is None:
        raise TorchImportError(f"engine {qengine.name!r} reproduces no torch engine; import with the torch engine "
                               "the model was converted for, then qjax.hardware.convert for integer-only arithmetic")
    return qengine


def import_settings(engine, threads, example_input):
    """``(torch engine name, qjax engine, threads, example tensors)`` for an import (defaults: torch's current ones)."""
    torch = _torch()
    qengine = import_engine(engine or torch.backends.quantized.engine)
    threads = int(threads if threads is not None else torch.get_num_threads())
    if example_input is None:
        example_input = torch.zeros(1, 3, 224, 224)
    examples = example_input if isinstance(example_input, tuple) else (example_input,)
    examples = tuple(torch.as_tensor(np.asarray(e)) if not isinstance(e, torch.Tensor) else e for e in examples)
    return qengine.torch_engine, qengine, threads, examples
