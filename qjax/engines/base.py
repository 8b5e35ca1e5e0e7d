"""The engine protocol, the static conv geometry, and the name registry."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, runtime_checkable

__all__ = ["ConvGeometry", "ConvTransposeGeometry", "Engine", "register_engine", "resolve_engine"]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Static convolution geometry (channels-last operands).

    ``strides`` and ``dilation`` have one int per spatial dim, ``padding`` one
    ``(lo, hi)`` pair per spatial dim, ``groups`` the feature group count.
    """

    strides: tuple
    padding: tuple
    dilation: tuple
    groups: int


@dataclasses.dataclass(frozen=True)
class ConvTransposeGeometry:
    """Static transposed-convolution geometry (one int per spatial dim; symmetric padding as in torch)."""

    strides: tuple
    padding: tuple
    output_padding: tuple
    dilation: tuple
    groups: int


@runtime_checkable
class Engine(Protocol):
    """What the public ops need from an engine.

    Operands (all channels-last): ``x`` uint8 ``(N, *spatial, C)`` with per-tensor
    ``x_scale``/``x_zero_point``; ``w`` int8 ``(*kernel, C/groups, O)`` (conv) or
    ``(O, K)`` (linear) with ``w_scale``/``w_zero_point`` scalar or ``(O,)`` and
    ``w_per_channel``; ``bias`` float32 ``(O,)`` or None; output ``out_scale`` /
    ``out_zero_point``.  Return the output integers as int32, output channels last.
    """

    name: str

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
             out_scale, out_zero_point, geometry: ConvGeometry, relu: bool): ...

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias,
               out_scale, out_zero_point, relu: bool): ...


_REGISTRY: dict[str, Callable[[], Engine]] = {}


def register_engine(name: str, factory: Callable[[], Engine]) -> None:
    """Make ``engine=name`` resolve to ``factory()``."""
    _REGISTRY[name] = factory


def resolve_engine(engine) -> Engine:
    """An engine instance from a name or an instance; a clear error otherwise."""
    if isinstance(engine, str):
        if engine not in _REGISTRY:
            raise ValueError(f"engine={engine!r} is unknown; registered engines: {sorted(_REGISTRY)}")
        return _REGISTRY[engine]()
    if not (hasattr(engine, "conv") and hasattr(engine, "linear")):
        raise TypeError(f"engine must be a name or an object with conv() and linear() methods, got {engine!r}")
    try:
        hash(engine)
    except TypeError as e:
        raise TypeError(f"engine {engine!r} must be hashable (a frozen dataclass) so jit can cache by it") from e
    return engine
