"""LiteRT's own interpreter (``ai-edge-litert``) as the oracle and as the source of recorded facts.

The three CPU kernel families a LiteRT user gets, by op resolver:

* ``"reference"`` — ``OpResolverType.BUILTIN_REF`` (``reference_ops`` / ``reference_integer_ops``, the
  golden model vendors use);
* ``"optimized"`` — ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (the builtin ``optimized_ops``,
  no delegate);
* ``"xnnpack"`` — ``OpResolverType.AUTO`` (the builtin kernels with the default XNNPACK delegate, which
  takes the ops it supports and leaves the rest to the builtin kernels: a mixed model).

:func:`delegated_ops` reads which operators the XNNPACK delegate took (the importer records it per node).
Needs the optional extra ``qjax[tflite]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KERNELS", "interpreter", "invoked", "run", "delegated_ops", "require_litert"]

#: the kernel families, in the order the docs list them
KERNELS = ("reference", "optimized", "xnnpack")


def require_litert():
    """The ``ai_edge_litert`` package, or a one-line ImportError saying how to get it."""
    try:
        import ai_edge_litert.interpreter as litert_interpreter
    except ImportError:  # pragma: no cover - the extra is part of the test extra
        raise ImportError("reading and running .tflite models needs ai-edge-litert: pip install 'qjax[tflite]'") \
            from None
    return litert_interpreter


def _resolver(kernels: str):
    r = require_litert().OpResolverType
    table = {"reference": r.BUILTIN_REF, "optimized": r.BUILTIN_WITHOUT_DEFAULT_DELEGATES, "xnnpack": r.AUTO}
    if kernels not in table:
        raise ValueError(f"kernels={kernels!r}; use one of {KERNELS}")
    return table[kernels]


def interpreter(model: bytes, kernels: str = "xnnpack", num_threads: int = 1):
    """An allocated LiteRT ``Interpreter`` for the flatbuffer ``model`` with the ``kernels`` family."""
    it = require_litert().Interpreter(model_content=bytes(model), experimental_op_resolver_type=_resolver(kernels),
                                      num_threads=int(num_threads))
    it.allocate_tensors()
    return it


def invoked(model: bytes, inputs, kernels: str = "xnnpack", num_threads: int = 1, *,
            preserve_all_tensors: bool = False):
    """An interpreter for ``model`` (``kernels`` family) invoked on ``inputs`` (one array per model input).

    A batch different from the model's is set with ``resize_tensor_input`` first.  ``preserve_all_tensors``
    keeps every intermediate tensor readable with ``get_tensor`` (``experimental_preserve_all_tensors``; the
    tensors inside an XNNPACK partition are still not written back).  The interpreter's own errors (a model it
    cannot prepare, a batch a fixed shape refuses) are its ``RuntimeError`` / ``ValueError``."""
    import warnings

    kw = dict(model_content=bytes(model), experimental_op_resolver_type=_resolver(kernels),
              num_threads=int(num_threads))
    with warnings.catch_warnings():  # "intended for debugging purposes only": what it is used for
        warnings.simplefilter("ignore", UserWarning)
        it = require_litert().Interpreter(experimental_preserve_all_tensors=bool(preserve_all_tensors), **kw)
    details = it.get_input_details()
    if len(inputs) != len(details):
        raise ValueError(f"the model takes {len(details)} inputs, got {len(inputs)}")
    for d, x in zip(details, inputs):
        if tuple(np.shape(x)) != tuple(d["shape"]):
            it.resize_tensor_input(d["index"], list(np.shape(x)))
    it.allocate_tensors()
    for d, x in zip(details, inputs):
        it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
    it.invoke()
    return it


def run(model: bytes, inputs, kernels: str = "xnnpack", num_threads: int = 1) -> list:
    """The model's outputs (numpy arrays, in output order) on ``inputs`` (one array per model input)
    (:func:`invoked`)."""
    it = invoked(model, inputs, kernels, num_threads)
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def delegated_ops(model: bytes) -> frozenset:
    """Indices (in subgraph 0's operator order) of the operators the default XNNPACK delegate runs.

    The interpreter lists the model's operators followed by one ``DELEGATE`` node per partition; a
    partition's operators are those that produce its output tensors, back to its input tensors.
    """
    ops = interpreter(model, "xnnpack")._get_ops_details()
    producer = {}
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    for op in originals:
        for t in op["outputs"]:
            producer[int(t)] = int(op["index"])
    inside = set()
    for d in ops:
        if d["op_name"] != "DELEGATE":
            continue
        boundary = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        while todo:
            t = todo.pop()
            if t in boundary or t not in producer or producer[t] in inside:
                continue
            n = producer[t]
            inside.add(n)
            todo.extend(int(u) for u in ops[n]["inputs"] if u >= 0)
    return frozenset(inside)
