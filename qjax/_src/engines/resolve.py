"""Turning what a user wrote (a name, a spec string, an engine) into an engine: once, at the boundary.

:func:`resolve` is called where an arithmetic enters qjax — a public op's entry, a module's
construction or mode change, an import — and :func:`layer_engine` where one layer's weights are
concrete (torch's ``x86`` dispatches per layer at prepack time).  Past that point callers hold an
engine and only call its methods.
"""

from __future__ import annotations

from typing import Callable

from ..checks import is_concrete
from .base import ENGINE_METHODS, Engine

__all__ = ["register_engine", "registered_engines", "resolve", "layer_engine"]

_REGISTRY: dict[str, Callable[[str], Engine]] = {}


def register_engine(name: str, factory: Callable[[str], Engine]) -> None:
    """Make ``engine=name`` (or ``"name:options"``) resolve to ``factory(text)``, ``text`` what the user wrote."""
    _REGISTRY[name] = factory


def registered_engines() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def resolve(engine) -> Engine:
    """The engine for ``engine``: a registered name (``"fbgemm"``, ``"x86"``, ``"gemmlowp"``,
    ``"gemmlowp:bits=16"``, ...) or an engine instance (checked: every protocol method, hashable)."""
    if isinstance(engine, str):
        name = engine.partition(":")[0]
        if name not in _REGISTRY:
            raise ValueError(f"engine={engine!r} is unknown; registered engines: {list(registered_engines())}")
        return _REGISTRY[name](engine)
    missing = [m for m in ENGINE_METHODS if not callable(getattr(engine, m, None))]
    if missing:
        raise TypeError(f"engine {engine!r} lacks the engine methods {missing}; implement qjax.engines.Engine "
                        "(qjax.engines.TorchCpuOps provides torch's non-GEMM ops; refuse the rest with "
                        "qjax.engines.refuse)")
    try:
        hash(engine)
    except TypeError as e:
        raise TypeError(f"engine {engine!r} must be hashable (a frozen dataclass) so jit can cache by it") from e
    return engine


def layer_engine(engine: Engine, w_zero_point, groups: int, output_padding=()) -> Engine:
    """The engine one conv layer runs on, where its weight zero points are concrete (else ``engine``:
    an engine that dispatches raises when it meets traced zero points)."""
    if is_concrete(w_zero_point):
        return engine.for_layer(w_zero_point, int(groups), tuple(output_padding))
    return engine
