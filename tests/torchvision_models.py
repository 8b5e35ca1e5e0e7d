"""Import torchvision 0.28.0 (the ``bench`` extra) against torch+cpu.

The torchvision 0.28.0 wheel on the package index is a CUDA build: its C extension
(``torchvision._C``) fails to load against torch's CPU build, so none of the
``torchvision::*`` operators get registered.  Most of torchvision copes with that
(``_meta_registrations.register_meta`` is skipped when ``extension._has_ops()`` is
false), but ``torchvision/_meta_registrations.py`` calls
``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) unconditionally at import
time, which raises ``RuntimeError: operator torchvision::nms does not exist``.  Defining the
two schemas (``nms``'s as torchvision's ``csrc/ops/nms.cpp`` declares it; ``qnms`` with the same
arguments, those of its fake kernel ``meta_qnms``) before the import lets ``import torchvision`` succeed; the models (``torchvision.models`` and
``torchvision.models.quantization``) are pure Python and need no C op.  Calling ``nms`` itself
still fails (no kernel) — nothing here uses it.  torchvision's own dependency pillow must be
installed (``pip install -e '.[bench]'`` brings it; an install of torchvision with ``--no-deps``
does not, and ``import torchvision`` then fails on ``from PIL import Image``).

    from _torchvision import import_torchvision
    torchvision = import_torchvision()
"""

from __future__ import annotations

import warnings

__all__ = ["import_torchvision"]

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
