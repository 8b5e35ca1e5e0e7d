"""torchvision 0.28.0 on torch+cpu, and its quantizable models converted offline: one home for tests and scripts.

Tests import it as ``tests.torchvision_models`` (or ``torchvision_models`` from ``tests/``), scripts after
putting the repository root on ``sys.path`` (``scripts/bench_torchvision.py``, ``scripts/check_torchvision.py``).

Importing torchvision.  The torchvision 0.28.0 wheel on the package index is a CUDA build: its C extension
(``torchvision._C``) fails to load against torch's CPU build, so none of the ``torchvision::*`` operators get
registered.  Most of torchvision copes with that (``_meta_registrations.register_meta`` is skipped when
``extension._has_ops()`` is false), but ``torchvision/_meta_registrations.py`` calls
``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) unconditionally at import time, which
raises ``RuntimeError: operator torchvision::nms does not exist``.  Defining the two schemas (``nms``'s as
torchvision's ``csrc/ops/nms.cpp`` declares it; ``qnms`` with the same arguments, those of its fake kernel
``meta_qnms``) before the import lets ``import torchvision`` succeed; the models (``torchvision.models`` and
``torchvision.models.quantization``) are pure Python and need no C op.  Calling ``nms`` itself still fails
(no kernel) — nothing here uses it.  torchvision's own dependencies (numpy, pillow) must be installed: the
``test`` and ``bench`` extras bring them (``import torchvision`` fails on ``from PIL import Image`` after an
install with ``--no-deps`` that lacks pillow).

    from tests.torchvision_models import import_torchvision, build_quantized
    torchvision = import_torchvision()

Building a model (:func:`build_quantized`): ``torchvision.models.quantization.<name>(weights=None,
quantize=False)`` (no download), random batch-norm affine parameters with running statistics measured on
random input, the model's own ``fuse_model()``, eager ``prepare`` with the engine's default qconfig, a few
random calibration batches, ``convert``.
"""

from __future__ import annotations

import warnings

__all__ = ["import_torchvision", "build_quantized", "QUANTIZABLE", "ENGINES"]

#: every quantizable model torchvision 0.28 offers a builder for, the smallest of each family first
QUANTIZABLE = ("resnet18", "resnet50", "resnext101_32x8d", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x0_5",
               "shufflenet_v2_x1_0", "googlenet", "inception_v3")
ENGINES = ("fbgemm", "x86", "qnnpack")

# Operators whose fake (meta) kernels torchvision registers unconditionally at import.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keep the torch.library.Library alive: dropping it unregisters the schemas


def _define_missing_schemas():
    global _LIBRARY
    import torch

    missing = {n: s for n, s in _SCHEMAS.items() if not _op_exists(f"torchvision::{n}")}
    if not missing:
        return
    if _LIBRARY is None:
        # "FRAGMENT": a library extended in several places (torchvision's own C++ would be "DEF").
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing.values():
        _LIBRARY.define(schema)


def _op_exists(qualname: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
        return True
    except RuntimeError:
        return False


def import_torchvision():
    """``torchvision``, importable on torch+cpu; raises ImportError with the reason otherwise."""
    import torch

    try:
        import torchvision  # noqa: F401  (a CPU build, or already imported)

        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    # The failed import left half-initialised torchvision modules in sys.modules: drop them.
    import sys

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _define_missing_schemas()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchvision
    del torch
    return torchvision


def _randomize_batchnorm(model, gen, shape):
    """Random BN affine parameters, then running statistics measured on one random batch in training mode
    (momentum None: the batch's own statistics), so each BN normalizes what it sees, as a trained one does."""
    import torch
    import torch.nn as nn

    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
            m.reset_running_stats()
            m.momentum = None
        model.train()
        model(torch.randn(shape, generator=gen))
    model.eval()


def build_quantized(name: str, engine: str, size: int, *, seed: int = 0, calib_batches: int = 2, calib_batch: int = 2):
    """``torchvision.models.quantization.<name>`` converted for ``engine`` (eager mode) in eval mode, built
    offline (module docstring); ``size`` is the calibration images' side (inception_v3 needs >= 75)."""
    import torch
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    import_torchvision()
    import torchvision.models.quantization as tvq

    kwargs = dict(weights=None, quantize=False)
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # no auxiliary heads (unused in eval mode)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(tvq, name)(**kwargs)
    shape = (calib_batch, 3, size, size)
    _randomize_batchnorm(model, gen, shape)
    model.fuse_model()
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        model.qconfig = get_default_qconfig(engine)
        prepare(model, inplace=True)
        with torch.no_grad():
            for _ in range(calib_batches):
                model(torch.randn(shape, generator=gen))
        convert(model, inplace=True)
    finally:
        torch.backends.quantized.engine = previous
    return model.eval()
