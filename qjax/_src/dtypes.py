"""Quantized integer dtypes: storage dtype and representable range.

``quint8`` (0..255, stored as uint8), ``qint8`` (-128..127, int8) and ``qint32``
(int32) mirror torch's ``torch.quint8 / torch.qint8 / torch.qint32``.  Observers'
``reduce_range`` narrows the range a *calibration* picks; the quantize and
requantize kernels always clamp to the full dtype range, as torch's do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["QDType", "quint8", "qint8", "qint32", "as_qdtype"]


@dataclasses.dataclass(frozen=True)
class QDType:
    """A quantized dtype: ``name``, numpy ``storage`` dtype, inclusive ``qmin``/``qmax``."""

    name: str
    storage: np.dtype
    qmin: int
    qmax: int

    def __repr__(self) -> str:  # short, like torch's repr
        return self.name

    @property
    def bits(self) -> int:
        return np.dtype(self.storage).itemsize * 8


quint8 = QDType("quint8", np.dtype(np.uint8), 0, 255)
qint8 = QDType("qint8", np.dtype(np.int8), -128, 127)
qint32 = QDType("qint32", np.dtype(np.int32), -(2**31), 2**31 - 1)

_BY_NAME = {
    "quint8": quint8,
    "uint8": quint8,
    "qint8": qint8,
    "int8": qint8,
    "qint32": qint32,
    "int32": qint32,
}


def as_qdtype(dtype, argname: str = "dtype") -> QDType:
    """Resolve ``dtype`` (a :class:`QDType`, a name, a numpy/JAX dtype or a torch dtype) to a QDType."""
    if isinstance(dtype, QDType):
        return dtype
    name = None
    if isinstance(dtype, str):
        name = dtype[len("torch."):] if dtype.startswith("torch.") else dtype
    else:
        text = str(dtype)  # torch.quint8 -> "torch.quint8", without importing torch
        if text.startswith("torch."):
            name = text[len("torch.") :]
        else:
            try:
                name = np.dtype(dtype).name
            except TypeError:
                name = None
    if name not in _BY_NAME:
        raise TypeError(
            f"{argname}={dtype!r} is not a quantized dtype; use one of 'quint8', 'qint8', 'qint32' "
            "(or uint8/int8/int32, or the torch dtype)"
        )
    return _BY_NAME[name]
