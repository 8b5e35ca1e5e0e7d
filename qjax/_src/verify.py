"""Verify a torch quantized model against its qjax import on many inputs, streamed in batches.

:func:`verify` (and ``qjax verify`` on the command line) loads the model (a TorchScript
file or a Python factory ``module:function``), imports it with :func:`qjax.from_torch`,
runs torch and qjax on every input batch by batch and reports outputs compared,
mismatching outputs, the largest difference in integer steps of the output quantization,
the time each side took, and for a mismatch the first graph node whose integers diverge.

Inputs
  Random normal inputs (``n``, ``input_shape``, ``seed``; sample ``j`` is the same whatever
  the batch size or process count), an array, or a path: a ``.npy`` file or a directory of
  ``.npy`` files (taken in name order, concatenated along the sample axis), each opened with
  ``np.load(mmap_mode="r", allow_pickle=False)``; each batch is copied out and its pages are
  released (``MADV_DONTNEED``), so only the batches in flight are resident — inputs larger than
  memory work.  ``.npz`` files are read whole (zip members cannot be memory-mapped).  Inputs must
  be floating point; they are cast to float32 per batch.

Batches
  Batch ``k`` holds samples ``[k·B, min((k+1)·B, n))``.  Every batch, the last one included, is
  zero-padded to ``B`` (rounded up to a multiple of the local device count) so the jitted qjax
  forward compiles once; it is sharded over the local JAX devices along the batch axis.  By
  default, on accelerators (``overlap="auto"``), the qjax batch is dispatched asynchronously and
  torch's forward runs on the same batch meanwhile (on CPU devices the two would compete for the
  same cores); the next batch is read from disk (or generated) in a background thread.

Resumable reports
  With ``report="run.json"`` the running totals, the batches done and a fingerprint of the run
  (model name and a hash of the imported parameters, engine, batch size, input file names,
  shapes, dtypes, sizes and hashes of each file's first and last sample) are written after every
  batch by a background thread (to a temporary file, then ``os.replace``: a crash never leaves a
  torn report).
  ``resume=True`` skips the batches the report lists as done and refuses, naming the first
  difference, a report written for another model, engine, batch size or inputs.  The totals
  only depend on which batches were compared (sums, maxima, and the divergence of the
  lowest-numbered mismatching batch), so an interrupted and resumed run ends with the numbers
  of an uninterrupted one.

Processes and hosts
  ``coordinator="host:port", num_processes=N, process_id=i`` (or a ``jax.distributed`` the
  caller initialized) splits the batches not yet done strided over the processes (process ``i``
  takes every N-th, starting at its ``i``-th).  The processes run in rounds of one batch each;
  after every round the per-batch results (a few numbers and, on a mismatch, the divergence) are
  exchanged with ``multihost_utils.process_allgather`` (gloo CPU collectives, jax's default on
  CPU), so every process holds the merged totals and process 0 writes the one report.  Process 0
  alone reads a report to resume and broadcasts it.  ``jax.distributed`` must be initialized before
  JAX runs anything in the process: pass ``coordinator=`` to the first JAX-using call, or call
  ``jax.distributed.initialize`` yourself first.  A set-up error on one process (a missing file on
  one host) is exchanged and raised on every process; a process that dies mid-run leaves the
  others to ``jax.distributed``'s timeouts.

Command line::

    qjax verify MODEL [--inputs x.npy | --inputs dir/ | --n N --shape C,H,W --seed S] [--batch-size B]
        [--engine E] [--report run.json [--resume]] [--max-batches K] [--overlap auto|on|off]
        [--coordinator host:port --num-processes N --process-id I] [--json] [--no-progress] [--no-shard]

Exit status 0: every batch compared, 0 mismatches; 1: mismatches; 2: a user error (one line on
stderr naming the flag and the rule); 3: stopped by ``--max-batches`` without a mismatch (resume it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import json
import math
import mmap as mmap_module
import os
import tempfile
import time
import warnings

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .graph import QModel
from .qarray import QArray

__all__ = ["verify", "VerifyReport", "VerifyError", "load_torch_model", "load_inputs", "open_inputs"]

REPORT_FORMAT = "qjax.verify/1"


class VerifyError(ValueError):
    """A user error in :func:`verify`'s arguments: ``arg`` names the argument, the message the rule."""

    def __init__(self, arg: str, rule: str):
        self.arg, self.rule = arg, " ".join(str(rule).split())  # one line
        super().__init__(f"{arg}: {self.rule}")


def _one_line(e: BaseException) -> str:
    """The last non-empty line of an exception's message (TorchScript errors are whole tracebacks)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify` measured.

    Seconds are summed over batches (and processes), accumulated across resumed runs.  With
    ``overlap``, ``qjax_seconds`` is the qjax time *not* hidden behind torch's forward (dispatch
    plus the wait after torch finished); without it, qjax's whole batch time.
    """

    outputs: int  # outputs compared (elements of the model output)
    mismatches: int  # outputs whose bits differ from torch's
    max_abs_step: float  # largest |qjax - torch| in integer steps of the output quantization
    samples: int  # input samples in the whole run (all batches)
    batch_size: int  # samples per batch
    devices: int  # local JAX devices a batch is sharded over
    qjax_seconds: float
    torch_seconds: float  # torch's forward
    first_divergence: dict | None  # the lowest-numbered mismatching batch's first diverging node
    engine: str
    model: str
    batches: int = 0  # batches in the whole run
    batches_done: int = 0  # batches compared so far (this run and the resumed ones)
    processes: int = 1  # processes of the last run
    overlap: bool = False
    load_seconds: float = 0.0  # reading/generating input batches (in the foreground: not hidden by prefetch)
    compare_seconds: float = 0.0  # host transfer, comparison, report writing
    wall_seconds: float = 0.0  # the batch loop's wall time (process 0), import and compile excluded
    compile_seconds: float = 0.0  # import + first compile of this run
    runtime: str = "torch"  # what qjax is compared with ("litert" for .tflite models: torch_seconds is its time)

    @property
    def complete(self) -> bool:
        return self.batches_done == self.batches

    @property
    def qjax_outputs_per_s(self) -> float:
        return self.outputs / self.qjax_seconds if self.qjax_seconds else float("inf")

    @property
    def torch_outputs_per_s(self) -> float:
        return self.outputs / self.torch_seconds if self.torch_seconds else float("inf")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(complete=self.complete, qjax_outputs_per_s=self.qjax_outputs_per_s,
                 torch_outputs_per_s=self.torch_outputs_per_s)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [
            f"model {self.model} (engine {self.engine}): {self.samples} inputs in {self.batches} batches of "
            f"{self.batch_size} on {self.devices} device(s)" + (f" x {self.processes} processes"
                                                                if self.processes > 1 else ""),
            f"{self.mismatches} mismatches of {self.outputs} outputs; max |delta| = {self.max_abs_step:g} integer steps",
            f"qjax: {self.qjax_seconds:.3f} s{' not hidden behind torch' if self.overlap else ''} "
            f"({self.qjax_outputs_per_s:,.0f} outputs/s); {self.runtime} forward: {self.torch_seconds:.3f} s "
            f"({self.torch_outputs_per_s:,.0f} outputs/s); ratio qjax/{self.runtime} "
            f"{self.qjax_seconds / max(self.torch_seconds, 1e-12):.2f}",
            f"verify loop {self.wall_seconds:.3f} s wall ({self.wall_seconds / max(self.torch_seconds, 1e-12):.2f}x "
            f"{self.runtime}'s forward; loading {self.load_seconds:.3f} s, comparing {self.compare_seconds:.3f} s); "
            f"import + compile {self.compile_seconds:.1f} s",
        ]
        if not self.complete:
            how = "(resume from the report)" if self.runtime == "torch" else "(max_batches; rerun without it)"
            lines.append(f"incomplete: {self.batches_done} of {self.batches} batches done {how}")
        if self.first_divergence:
            fd = self.first_divergence
            lines.append(f"first divergence in batch {fd.get('batch')} at node {fd['node']} ({fd['source']}): "
                         f"{fd['mismatches']} of {fd['size']} integers differ, first at index {fd['index']} "
                         f"(qjax {fd['qjax']} vs {self.runtime} {fd['torch']})")
        return "\n".join(lines)


# models -------------------------------------------------------------------------------------

def load_torch_model(spec: str, arithmetic=None):
    """A model file — TorchScript (``torch.jit.save``) or ``torch.export.save`` (``.pt2``), told apart by
    their entries — or a factory ``module:function``.

    A factory returns the converted model or ``(model, example_input)``.  Never unpickles
    arbitrary objects: TorchScript archives hold code and tensors, ``.pt2`` archives are checked to
    need no pickle before ``torch.export.load`` (:func:`qjax.interop.pt2e.load_model_file`), and
    ``torch.load`` is not used.  A ``.pt2`` comes back as its ``ExportedProgram.module()`` without
    torch.export's input-shape guards (torch runs it at any batch size, as qjax does) with its recorded
    example input; ``arithmetic="inductor"`` lowers it with torchao's x86 lowering (the module torch then
    runs is the lowered one, which qjax's import is compared with).
    """
    if ":" in spec and not spec.endswith((".pt", ".pth", ".pt2")):
        mod, fn = spec.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise VerifyError("model", f"cannot import the factory {spec!r} ({_one_line(e)}); give a TorchScript "
                                       "file or module:function") from None
        obj = factory()
        model, example = obj if isinstance(obj, tuple) else (obj, None)
        return _exported_for(model, example, arithmetic)
    if not os.path.isfile(spec):
        raise VerifyError("model", f"{spec!r} is not a file; give a TorchScript file (torch.jit.save), a "
                                   "torch.export.save file (.pt2) or a factory module:function")
    from .interop.pt2e import load_model_file
    from .interop.torch_common import TorchImportError

    try:
        model = load_model_file(spec)
    except (RuntimeError, TorchImportError) as e:  # e.g. a state dict saved with torch.save
        raise VerifyError("model", f"{spec!r} is not a TorchScript archive or a torch.export .pt2 archive qjax loads "
                                   f"({_one_line(e)}); save the converted model with "
                                   "torch.jit.save(torch.jit.script(model)) or torch.export.save, or give a "
                                   "factory") from None
    return _exported_for(model, None, arithmetic)


def _exported_for(model, example, arithmetic):
    """An ``ExportedProgram`` as the GraphModule torch runs (guards dropped), its example input; lowered for
    ``arithmetic="inductor"``.  Other models pass through."""
    import torch

    from .interop.pt2e import example_inputs_of, is_exported, without_guards

    if not is_exported(model):
        if arithmetic is not None:
            raise VerifyError("arithmetic", "applies to torch.export models (.pt2, convert_pt2e) only")
        return model, example
    if isinstance(model, torch.export.ExportedProgram):
        recorded = model.example_inputs
        model = model.module()
        if example is None and recorded and recorded[0]:
            example = recorded[0][0].detach().numpy()
    model = without_guards(model)
    if example is None:
        example = example_inputs_of(model)[0].numpy()
    fixed = int(np.shape(example)[0])
    if arithmetic == "inductor":
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

        with torch.no_grad():
            model = without_guards(lower_pt2e_quantized_to_x86(model, (torch.as_tensor(np.asarray(example)),)))
    elif arithmetic not in (None, "converted"):
        raise VerifyError("arithmetic", f"{arithmetic!r}; use converted or inductor")
    model.qjax_fixed_batch = fixed  # static shapes: verify batches (zero-padded) at this size, torch and qjax alike
    return model, example


def _params_sha256(qmodel: QModel) -> str:
    """A hash of the imported integer parameters (and their tree): the model's identity in a report."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(qmodel.params)
    h.update(str(treedef).encode())
    for leaf in leaves:
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# inputs -------------------------------------------------------------------------------------

class _Inputs:
    """Samples ``[start, stop)`` as a float32 array, without holding the whole input set in memory."""

    n: int
    sample_shape: tuple
    fingerprint: dict

    def batch(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


def _sample_sha256(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


class _ArrayInputs(_Inputs):
    """Arrays (in memory or memory-mapped), concatenated along axis 0."""

    def __init__(self, arrays, names, kind):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [a.shape[0] for a in arrays])
        self.n = int(self.offsets[-1])
        self.sample_shape = tuple(arrays[0].shape[1:])
        # No path or mtime: the same files copied to another host (or directory) resume; a changed
        # file shows in its shape, size or the hashes of its first and last sample.
        self.fingerprint = dict(kind=kind, files=[
            dict(name=nm, shape=list(a.shape), dtype=str(a.dtype), bytes=int(a.nbytes),
                 first_last_sha256=[_sample_sha256(a[0]), _sample_sha256(a[-1])]) if a.shape[0] else
            dict(name=nm, shape=list(a.shape), dtype=str(a.dtype), bytes=0)
            for nm, a in zip(names, arrays)])

    def batch(self, start, stop):
        parts = []
        for a, lo in zip(self.arrays, self.offsets[:-1]):
            hi = lo + a.shape[0]
            if hi > start and lo < stop:
                r0, r1 = max(start - lo, 0), min(stop, hi) - lo
                parts.append(np.array(a[r0:r1], dtype=np.float32))  # a copy, not a view of the mapping
                _release(a, r0, r1)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _release(a, r0: int, r1: int):
    """Unmap rows ``[r0, r1)`` of a memory-mapped array once copied (``MADV_DONTNEED``).

    The pages are clean and file-backed, so the kernel could reclaim them anyway, but until then they
    count in the process's resident set: verifying a 1.6 GB file peaked at 2.1 GB RSS without this.
    """
    mm = getattr(a, "_mmap", None)
    # read-only (MAP_SHARED) mappings only: on a copy-on-write one ("c", MAP_PRIVATE) DONTNEED would
    # drop the private writes; np.load(mmap_mode="r") is the only source of memmaps here today
    if (mm is None or getattr(a, "mode", None) != "r" or not hasattr(mmap_module, "MADV_DONTNEED") or r1 <= r0
            or not a.flags.c_contiguous):
        return
    row = a.strides[0]
    base = a.offset % mmap_module.ALLOCATIONGRANULARITY  # where np.memmap's data starts inside its mapping
    begin, end = base + r0 * row, base + r1 * row
    begin -= begin % mmap_module.PAGESIZE
    try:
        mm.madvise(mmap_module.MADV_DONTNEED, begin, end - begin)
    except (OSError, ValueError):  # pragma: no cover - an advice, never a failure
        pass


class _RandomInputs(_Inputs):
    """Standard normal samples; sample ``j`` comes from block ``j // block`` seeded ``(seed, block)``.

    Blocks (rather than one generator for the run) make any batch computable on its own — a resumed
    run or another process regenerates exactly its batches; ~64k values per block keep the
    generator's set-up cost (~16 µs) negligible for small samples.
    """

    def __init__(self, n, sample_shape, seed):
        self.n, self.sample_shape, self.seed = int(n), tuple(int(s) for s in sample_shape), int(seed)
        self.block = max(1, 65536 // max(1, math.prod(self.sample_shape)))
        self.fingerprint = dict(kind="random normal", n=self.n, shape=list(self.sample_shape), seed=self.seed)

    def batch(self, start, stop):
        b0, b1 = start // self.block, (stop - 1) // self.block + 1
        blocks = [np.random.default_rng((self.seed, b)).standard_normal(
            (min(self.block, self.n - b * self.block),) + self.sample_shape, dtype=np.float32) for b in range(b0, b1)]
        x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        off = start - b0 * self.block
        return x[off:off + stop - start]


def _load_npy(path: str, arg: str):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise VerifyError(arg, f"{path!r} cannot be read as a .npy array without pickle ({_one_line(e)})") from None


def _check_array(a, name: str, arg: str):
    if not np.issubdtype(a.dtype, np.floating):
        raise VerifyError(arg, f"{name} has dtype {a.dtype}; inputs must be floating point (float16/32/64, cast "
                               "to float32)")
    if a.ndim < 2:
        raise VerifyError(arg, f"{name} has shape {tuple(a.shape)}; inputs are (samples, *per-sample shape) with at "
                               "least one per-sample axis")


def open_inputs(inputs, *, arg: str = "inputs") -> _Inputs:
    """An array, a ``.npy``/``.npz`` path or a directory of ``.npy`` files as a batch source."""
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        if os.path.isdir(path):
            names = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
            if not names:
                raise VerifyError(arg, f"directory {path!r} holds no .npy files; give a .npy file or a directory "
                                       "of them")
            arrays = [_load_npy(os.path.join(path, f), arg) for f in names]
            for f, a in zip(names, arrays):
                _check_array(a, f, arg)
                if a.shape[1:] != arrays[0].shape[1:]:
                    raise VerifyError(arg, f"{f} has per-sample shape {tuple(a.shape[1:])} but {names[0]} has "
                                           f"{tuple(arrays[0].shape[1:])}; all files in {path!r} must share it")
            src = _ArrayInputs(arrays, names, "npy directory")
        elif not os.path.exists(path):
            raise VerifyError(arg, f"{path!r} does not exist; give a .npy file, a .npz file or a directory of .npy "
                                   "files")
        elif path.endswith(".npz"):
            try:
                with np.load(path, allow_pickle=False) as z:
                    key = "x" if "x" in z.files else z.files[0]
                    a = z[key]
            except (ValueError, OSError, EOFError, IndexError) as e:
                raise VerifyError(arg, f"{path!r} cannot be read as a .npz of arrays without pickle "
                                       f"({_one_line(e)})") from None
            _check_array(a, os.path.basename(path), arg)
            src = _ArrayInputs([a], [f"{os.path.basename(path)}:{key}"], "npz")
        elif path.endswith(".npy"):
            a = _load_npy(path, arg)
            _check_array(a, os.path.basename(path), arg)
            src = _ArrayInputs([a], [os.path.basename(path)], "npy")
        else:
            raise VerifyError(arg, f"{path!r} is not a .npy or .npz file or a directory of .npy files")
    else:
        a = np.asarray(inputs)
        _check_array(a, f"the array of shape {tuple(a.shape)}", arg)
        src = _ArrayInputs([a], ["array"], "array")
    if src.n == 0:
        raise VerifyError(arg, "no input samples (the sample axis is empty)")
    return src


def load_inputs(path: str):
    """All inputs of a ``.npy``/``.npz`` file or a directory of ``.npy`` files as float32 (for small sets)."""
    src = open_inputs(path)
    return src.batch(0, src.n)


# comparing one batch ------------------------------------------------------------------------

def _output_step(qmodel: QModel):
    """The quantized node feeding a final dequantize (to measure differences in integer steps)."""
    out = qmodel.output
    name = out.name if hasattr(out, "name") else None
    if name is None:
        return None
    node = qmodel.node(name)
    if node.op == "dequantize" and node.args and hasattr(node.args[0], "name"):
        return node.args[0].name
    return None


def _torch_forward(model, x):
    import torch

    m, fixed = len(x), getattr(model, "qjax_fixed_batch", None)
    if fixed and m < fixed:  # a torch.export graph runs at the batch size it was exported with: zero rows added
        x = np.concatenate([x, np.zeros((fixed - m,) + x.shape[1:], x.dtype)])
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x)))[:m]
    return y.int_repr().numpy() if getattr(y, "is_quantized", False) else y.numpy()


def _first_divergence(model, qmodel, x, engine):
    """Run both with every intermediate on one batch; the first node whose integers differ."""
    import torch

    from .interop import torch as fx_import
    from .interop import torchscript as ts_import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.jit.ScriptModule):
            record = ts_import.record(model, (torch.from_numpy(x),), engine=engine,
                                      threads=qmodel.info.get("threads", 1))
        else:
            record = fx_import.record(fx_import.trace(model), (torch.from_numpy(x),))
    _, inter = qmodel.capture(x)
    for node in qmodel.nodes:
        t = record.get(node.name)
        q = inter.get(node.name)
        if isinstance(t, torch.Tensor) and isinstance(q, QArray) and t.is_quantized:
            a, b = np.asarray(q.values), t.int_repr().numpy()
            if a.shape == b.shape and (a != b).any():
                bad = np.argwhere(a != b)
                i = [int(v) for v in bad[0]]
                return dict(node=node.name, source=node.source, mismatches=int(len(bad)), size=int(a.size),
                            index=i, qjax=int(a[tuple(i)]), torch=int(b[tuple(i)]))
    return None


def _compare(got, want, scale):
    """(mismatching outputs, max |Δ| in steps of ``scale`` (or absolute without one), the first bad index)."""
    if got.shape != want.shape:
        raise RuntimeError(f"qjax's output has shape {got.shape}, torch's {want.shape}")
    if got.dtype == np.float32:
        diff = got.view(np.int32) != want.view(np.int32)  # bitwise: NaNs and signed zeros count
    else:
        diff = got != want
    bad = int(np.count_nonzero(diff))
    if not bad:
        return 0, 0.0, None
    delta = np.abs(got.astype(np.float64) - want.astype(np.float64))
    step = float(np.nanmax(delta / scale if scale is not None else delta)) if np.isfinite(delta).any() else math.inf
    return bad, step, [int(v) for v in np.argwhere(diff)[0]]


# processes ----------------------------------------------------------------------------------

class _Group:
    """This process's view of the verifying processes: exchange small JSON records."""

    CAP = 2048  # bytes of one process's record in the common single-collective exchange

    def __init__(self):
        self.count, self.index = jax.process_count(), jax.process_index()
        self.connected = False

    def allgather(self, obj) -> list:
        """Every process's ``obj`` (JSON-serialisable), in process order."""
        if self.count == 1:
            return [obj]
        from jax.experimental import multihost_utils

        data = json.dumps(obj).encode()
        # one collective of fixed-size buffers (a 4-byte length, then the bytes), a second one only if some
        # record is longer; int32/uint8 because without jax_enable_x64 int64 arrays are gathered as int32
        buf = np.zeros(4 + self.CAP, np.uint8)
        buf[:4] = np.frombuffer(np.array([len(data)], "<i4").tobytes(), np.uint8)
        buf[4:4 + min(len(data), self.CAP)] = np.frombuffer(data[:self.CAP], np.uint8)
        with _stdout_to_stderr(not self.connected):  # gloo prints "[Gloo] Rank i is connected" to stdout
            allbuf = np.asarray(multihost_utils.process_allgather(buf))
        self.connected = True
        lens = [int(np.frombuffer(allbuf[p, :4].tobytes(), "<i4")[0]) for p in range(self.count)]
        if max(lens) > self.CAP:
            big = np.zeros(max(lens), np.uint8)
            big[:len(data)] = np.frombuffer(data, np.uint8)
            allbuf = np.asarray(multihost_utils.process_allgather(big))
            return [json.loads(allbuf[p, :lens[p]].tobytes()) for p in range(self.count)]
        return [json.loads(allbuf[p, 4:4 + lens[p]].tobytes()) for p in range(self.count)]

    def broadcast(self, obj):
        """Process 0's ``obj`` on every process."""
        if self.count == 1:
            return obj
        from jax.experimental import multihost_utils

        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.index == 0 else np.zeros(0, np.uint8)
        n = int(np.asarray(multihost_utils.broadcast_one_to_all(np.array([data.size], np.int32))).reshape(-1)[0])
        buf = np.zeros(max(1, n), np.uint8)
        buf[:data.size] = data
        out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
        return json.loads(out[:n].tobytes())


class _stdout_to_stderr:
    """Point file descriptor 1 at stderr for a block: C++ libraries' prints must not mix with ``--json``."""

    def __init__(self, active=True):
        self.active = active

    def __enter__(self):
        if self.active:
            import sys

            sys.stdout.flush()
            self.saved = os.dup(1)
            os.dup2(2, 1)

    def __exit__(self, *exc):
        if self.active:
            import sys

            sys.stdout.flush()
            os.dup2(self.saved, 1)
            os.close(self.saved)


def _init_distributed(coordinator, num_processes, process_id):
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise VerifyError("coordinator", "num_processes/process_id need a coordinator host:port")
        return
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise VerifyError("coordinator", f"{coordinator!r} is not host:port (e.g. 10.0.0.1:1234)")
    if num_processes is None or process_id is None:
        raise VerifyError("num_processes", "a coordinator needs num_processes and process_id too")
    if int(num_processes) < 1:
        raise VerifyError("num_processes", f"{num_processes} is not a positive process count")
    if not 0 <= int(process_id) < int(num_processes):
        raise VerifyError("process_id", f"{process_id} is not in [0, num_processes={num_processes})")
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (int(num_processes), int(process_id)):
            raise VerifyError("process_id", f"jax.distributed is already initialized as process "
                                            f"{jax.process_index()} of {jax.process_count()}")
        return
    try:
        jax.distributed.initialize(str(coordinator), num_processes=int(num_processes), process_id=int(process_id))
    except RuntimeError as e:
        raise VerifyError("coordinator", f"jax.distributed.initialize failed ({_one_line(e)}); it must run before "
                                         "JAX computes anything in this process") from None


# reports ------------------------------------------------------------------------------------

def _ranges(done) -> list:
    """Sorted batch indices as ``[[start, stop), ...]`` (compact for a million batches)."""
    out = []
    for k in sorted(done):
        if out and out[-1][1] == k:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1])
    return out


def _unranges(ranges) -> set:
    return {k for a, b in ranges for k in range(int(a), int(b))}


def _first_difference(old, new, path=""):
    """The first leaf (path, old, new) where two JSON values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            d = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            d = _first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if old == new else (path, old, new)


def _write_json_atomic(path: str, obj):
    """Write then ``os.replace``: readers (and a resume after a crash) see the old or the new report, whole."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_report(path: str, run: dict):
    """The totals of a report to resume (None if there is none); refuses one from another run."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise VerifyError("resume", f"{path!r} is not a readable qjax verify report ({_one_line(e)})") from None
    if not isinstance(old, dict) or old.get("format") != REPORT_FORMAT or not isinstance(old.get("run"), dict):
        raise VerifyError("resume", f"{path!r} is not a {REPORT_FORMAT} report")
    diff = _first_difference(old["run"], run)
    if diff:
        key, a, b = diff
        raise VerifyError("resume", f"{path!r} was written for {key} = {json.dumps(a)}, this run has "
                                    f"{json.dumps(b)}; resume with the same model, engine, batch size and inputs, "
                                    "or start over without resume")
    return old


# the run ------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Totals:
    """Running totals; :meth:`add` is order-independent, so resumed and sharded runs end equal."""

    outputs: int = 0
    mismatches: int = 0
    max_abs_step: float = 0.0
    first_divergence: dict | None = None
    qjax_seconds: float = 0.0
    torch_seconds: float = 0.0
    load_seconds: float = 0.0
    compare_seconds: float = 0.0
    wall_seconds: float = 0.0
    done: set = dataclasses.field(default_factory=set)

    def add(self, rec: dict):
        if rec["batch"] in self.done:
            return
        self.done.add(rec["batch"])
        self.outputs += rec["outputs"]
        self.mismatches += rec["mismatches"]
        self.max_abs_step = max(self.max_abs_step, rec["max_abs_step"])
        fd = rec.get("first_divergence")
        if fd and (self.first_divergence is None or fd["batch"] < self.first_divergence["batch"]):
            self.first_divergence = fd
        for k in ("qjax_seconds", "torch_seconds", "load_seconds", "compare_seconds"):
            setattr(self, k, getattr(self, k) + rec[k])

    @classmethod
    def from_report(cls, old: dict) -> "_Totals":
        t = cls(**{k: old[k] for k in ("outputs", "mismatches", "max_abs_step", "first_divergence", "qjax_seconds",
                                       "torch_seconds", "load_seconds", "compare_seconds", "wall_seconds")})
        t.done = _unranges(old["done_batches"])
        return t


def verify(model, *, n=1000, batch_size=64, seed=0, inputs=None, example_input=None, input_shape=None,
           engine=None, shard=True, progress=False, qmodel=None, report=None, resume=False, max_batches=None,
           overlap="auto", coordinator=None, num_processes=None, process_id=None, arithmetic=None,
           kernels=None) -> VerifyReport:
    """Compare ``model`` (torch) and its qjax import on many inputs; see the module docstring.

    A ``.tflite`` model (a path, ``str`` or ``os.PathLike``, or its bytes) is compared with LiteRT's interpreter
    instead (:func:`_verify_tflite`): ``kernels`` picks the op resolver (default ``"xnnpack"``; with ``qmodel``,
    the kernels it was imported with).

    Args:
      model: a converted torch model, a TorchScript module, or a spec for :func:`load_torch_model`.
      n: number of random input samples (ignored when ``inputs`` is given).
      batch_size: samples per batch.
      seed: seed of the random normal inputs.
      inputs: an array ``(samples, ...)``, a ``.npy``/``.npz`` path or a directory of ``.npy`` files.
      example_input: one batch for the importer (default: the first batch).
      input_shape: per-sample shape for random inputs (default: the example input's).
      engine: torch quantized engine (default: torch's current engine).
      shard: shard each batch over the local JAX devices along the batch axis.
      progress: show a progress bar (rich, on stderr; process 0 only).
      qmodel: an already imported :class:`~qjax.graph.QModel` (skips the import).
      report: path of the JSON report, rewritten after every batch.
      resume: continue from ``report`` (which must exist to skip anything; a missing one starts the run).
      max_batches: stop after this many batches (per process) in this call; the report can be resumed.
      overlap: dispatch the qjax batch asynchronously and run torch's forward meanwhile; ``"auto"``: only
        when the local devices are not CPUs (on a CPU both compete for the same cores, and torch's
        OpenMP threads stall at every barrier for a descheduled thread).
      coordinator, num_processes, process_id: run as one of ``num_processes`` processes with
        ``jax.distributed`` (coordinator ``"host:port"``, the address process 0 listens on).
      arithmetic: torch.export models only: ``"converted"`` (default: against the converted graph) or
        ``"inductor"`` (the x86-lowered graph, torch and qjax both; :func:`load_torch_model`).

    Raises:
      VerifyError: (a ``ValueError``) a user error; ``.arg`` names the argument.
    """
    if _is_tflite(model):
        return _verify_tflite(model, kernels=kernels, n=n, batch_size=batch_size, seed=seed, inputs=inputs,
                              qmodel=qmodel, max_batches=max_batches,
                              torch_only=dict(engine=engine, arithmetic=arithmetic, report=report, resume=resume,
                                              coordinator=coordinator, input_shape=input_shape))
    if kernels is not None:
        raise VerifyError("kernels", "applies to .tflite models (LiteRT's op resolvers) only")
    _init_distributed(coordinator, num_processes, process_id)
    group = _Group()
    import torch

    from .interop.torch import from_torch

    setup_error = None
    try:  # set-up errors are exchanged below: a failing process must not leave the others waiting
        if int(batch_size) < 1:
            raise VerifyError("batch_size", f"{batch_size} is not a positive batch size")
        if max_batches is not None and int(max_batches) < 0:
            raise VerifyError("max_batches", f"{max_batches} is negative")
        if resume and not report:
            raise VerifyError("resume", "needs a report path to resume from")
        if report and os.path.isdir(report):
            raise VerifyError("report", f"{report!r} is a directory; give a .json file path")
        if report and not os.path.isdir(os.path.dirname(os.path.abspath(report))):
            raise VerifyError("report", f"the directory of {report!r} does not exist")
        src = open_inputs(inputs) if inputs is not None else None  # before the model: its errors come first
        name = model if isinstance(model, str) else type(model).__name__
        engine = engine or torch.backends.quantized.engine
        # set before loading: TorchScript files repack their weights for the engine current at load time
        torch.backends.quantized.engine = engine
        if isinstance(model, str):
            model, ex = load_torch_model(model, arithmetic)
        else:
            model, ex = _exported_for(model, None, arithmetic)
        example_input = example_input if example_input is not None else ex
        if src is None:
            if input_shape is None:
                if example_input is None:
                    raise VerifyError("input_shape", "give input_shape, inputs or an example_input to size the "
                                                     "random inputs")
                input_shape = tuple(np.shape(example_input)[1:])
            if int(n) < 1:
                raise VerifyError("n", f"{n} is not a positive number of inputs")
            src = _RandomInputs(n, input_shape, seed)
        n = src.n
        batch_size = min(int(batch_size), n)
        # a torch.export graph's shapes (a flatten's view sizes) hold the batch size it was exported with
        batch_size = getattr(model, "qjax_fixed_batch", None) or batch_size
        num_batches = -(-n // batch_size)
        devices = jax.local_devices() if shard else jax.local_devices()[:1]
        nd = len(devices)
        padded = -(-batch_size // nd) * nd  # every batch padded to this: one compile
        if overlap == "auto":
            overlap = devices[0].platform != "cpu"

        def load(k):
            return src.batch(k * batch_size, min((k + 1) * batch_size, n))

        t_setup = time.perf_counter()
        first = load(0)
        try:  # the input's shape or dtype is wrong for the model: the user's error, said in one line
            _torch_forward(model, first[:1])
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise VerifyError("inputs", f"torch's forward rejects inputs of per-sample shape {src.sample_shape} "
                                        f"({_one_line(e)})") from None
        if qmodel is None:
            ex = example_input if example_input is not None else first
            qmodel = from_torch(model, np.asarray(ex, np.float32), engine=engine)
        # a file's name, not its path: the same model copied to another host or directory resumes
        model_id = os.path.basename(name) if os.path.isfile(name) else name
        run_id = dict(model=model_id, params_sha256=_params_sha256(qmodel), engine=str(engine),
                      batch_size=batch_size, samples=n, inputs=src.fingerprint)
    except Exception as e:
        if group.count == 1:
            raise
        setup_error = e
        run_id = dict(error=str(e.rule if isinstance(e, VerifyError) else _one_line(e)),
                      arg=e.arg if isinstance(e, VerifyError) else None)
    ids = group.allgather(run_id)
    if setup_error is not None:
        raise setup_error
    for p, other in enumerate(ids):
        if "error" in other:
            if other["arg"]:
                raise VerifyError(other["arg"], f"(on process {p}) {other['error']}")
            raise RuntimeError(f"process {p} failed while setting up: {other['error']}")
    for p, other in enumerate(ids):
        diff = _first_difference(ids[0], other)
        if diff:
            raise VerifyError("inputs" if diff[0].startswith(("inputs", "samples")) else "model",
                              f"process {p} has {diff[0]} = {json.dumps(diff[2])}, process 0 "
                              f"{json.dumps(diff[1])}; every process must verify the same model on the same inputs")
    old = None
    if resume and group.index == 0:
        try:
            old = dict(ok=_read_report(report, run_id))
        except VerifyError as e:
            old = dict(error=e.rule)
    old = group.broadcast(old) if resume else None
    if old and "error" in old:
        raise VerifyError("resume", old["error"])
    totals = _Totals.from_report(old["ok"]) if old and old["ok"] else _Totals()

    mesh = Mesh(np.array(devices), ("batch",))
    in_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    step_node = _output_step(qmodel)

    def run(qm, x):  # QModel's module-level jits: compiled once per model structure and shape, across calls
        return qm.capture(x, names=(step_node,)) if step_node else (qm(x), {})

    def put(x):
        m = x.shape[0]
        xp = np.concatenate([x, np.zeros((padded - m,) + x.shape[1:], np.float32)]) if m < padded else x
        return jax.device_put(xp, in_sharding)

    jax.block_until_ready(run(qmodel, put(first)))  # compile outside the timing
    compile_seconds = time.perf_counter() - t_setup

    pending = [k for k in range(num_batches) if k not in totals.done]
    mine = pending[group.index::group.count]
    rounds = -(-len(pending) // group.count)
    if max_batches is not None:
        rounds = min(rounds, int(max_batches))
    writer = report if group.index == 0 else None

    def state():
        rep = VerifyReport(
            outputs=totals.outputs, mismatches=totals.mismatches, max_abs_step=totals.max_abs_step, samples=n,
            batch_size=batch_size, devices=nd, qjax_seconds=totals.qjax_seconds, torch_seconds=totals.torch_seconds,
            first_divergence=totals.first_divergence, engine=str(engine), model=name, batches=num_batches,
            batches_done=len(totals.done), processes=group.count, overlap=bool(overlap),
            load_seconds=totals.load_seconds, compare_seconds=totals.compare_seconds,
            wall_seconds=totals.wall_seconds, compile_seconds=compile_seconds)
        return rep

    # The report is written by a background thread (fsync + rename cost ~10 ms on a loaded disk: 10 % of
    # a small model's batch); one worker keeps the writes in order, and a failed write raises at the next.
    writes = concurrent.futures.ThreadPoolExecutor(1)
    last_write = [None]

    def write(wait=False):
        if writer:
            if last_write[0] is not None:
                last_write[0].result()
            d = state().to_dict()
            d.update(format=REPORT_FORMAT, run=run_id, done_batches=_ranges(totals.done))
            last_write[0] = writes.submit(_write_json_atomic, writer, d)
            if wait:
                last_write[0].result()

    write(wait=True)  # an unwritable report path fails now, not after the first batch
    bar = None
    if progress and group.index == 0:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                       TimeRemainingColumn(), TextColumn("{task.fields[bad]} mismatches"),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("verify", total=num_batches, completed=len(totals.done), bad=totals.mismatches)
        bar.start()
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def load_put(k):
        x = first if k == 0 else load(k)
        return x, put(x)

    def prefetch(r):  # round r's batch, read and put on the devices in the background while round r-1 runs
        return pool.submit(load_put, mine[r]) if r < min(len(mine), rounds) else None

    try:
        nxt = prefetch(0)
        t_loop = time.perf_counter()
        for r in range(rounds):
            rec = None
            if r < len(mine):
                k = mine[r]
                t0 = time.perf_counter()
                x, xs = nxt.result()
                nxt = prefetch(r + 1)
                t1 = time.perf_counter()
                out, inter = run(qmodel, xs)  # dispatched asynchronously
                if not overlap:
                    out = jax.block_until_ready(out)
                t2 = time.perf_counter()
                want = _torch_forward(model, x)
                t3 = time.perf_counter()
                out = jax.block_until_ready(out)
                t4 = time.perf_counter()
                m = x.shape[0]
                got = np.asarray(out.values if isinstance(out, QArray) else out)[:m]
                scale = float(np.asarray(inter[step_node].scale)) if step_node else None
                bad, step, index = _compare(got, want, scale)
                rec = dict(batch=k, outputs=int(want.size), mismatches=bad, max_abs_step=step, first_divergence=None,
                           qjax_seconds=(t2 - t1) + (t4 - t3), torch_seconds=t3 - t2, load_seconds=t1 - t0,
                           compare_seconds=time.perf_counter() - t4)
            t5 = time.perf_counter()
            recs = [other for other in group.allgather(rec) if other]
            # The divergence (a run with every intermediate captured: another compile) only for the lowest
            # mismatching batch below the current first one, by the process that holds it, then shared.
            lowest = totals.first_divergence["batch"] if totals.first_divergence else num_batches
            cand = min((o["batch"] for o in recs if o["mismatches"] and o["batch"] < lowest), default=None)
            if cand is not None:
                fd = None
                if rec and rec["batch"] == cand:
                    fd = _first_divergence(model, qmodel, x, engine) or dict(
                        node="(output)", source="", mismatches=bad, size=int(got.size), index=index, qjax=None,
                        torch=None)
                    fd.update(batch=cand, first_sample=cand * batch_size + (fd["index"][0] if fd["index"] else 0))
                fd = next(f for f in group.allgather(fd) if f)
                for o in recs:
                    if o["batch"] == cand:
                        o["first_divergence"] = fd
            for o in recs:
                totals.add(o)
            write()
            t6 = time.perf_counter()
            if rec:  # the exchange and the report write (counted in the next write)
                totals.compare_seconds += t6 - t5
            totals.wall_seconds += t6 - t_loop
            t_loop = t6
            if bar:
                bar.update(task, completed=len(totals.done), bad=totals.mismatches)
        write(wait=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writes.shutdown(wait=True)
        if bar:
            bar.stop()
    return state()


# .tflite models ---------------------------------------------------------------------------------------

def _is_tflite(model) -> bool:
    from .interop.tflite_check import is_tflite

    return is_tflite(model)


def _verify_tflite(model, *, kernels, n, batch_size, seed, inputs, qmodel, max_batches, torch_only) -> VerifyReport:
    """:func:`qjax.interop.tflite_check.verify_tflite` as a :class:`VerifyReport` (``runtime="litert"``)."""
    from .interop.tflite import TFLiteImportError
    from .interop.tflite_check import TFLiteCheckError, verify_tflite

    for arg, value in torch_only.items():
        if value not in (None, False):
            raise VerifyError(arg, "applies to torch models; a .tflite model takes kernels= (--kernels) and "
                                   "inputs / n / batch_size / seed")
    if isinstance(inputs, (str, os.PathLike)) and not os.path.exists(inputs):
        raise VerifyError("inputs", f"{os.fspath(inputs)!r} does not exist")
    try:
        rep = verify_tflite(model, kernels=kernels, n=n, batch_size=batch_size, seed=seed,
                            inputs=inputs, qmodel=qmodel, max_batches=max_batches)
    except TFLiteCheckError as e:
        raise VerifyError(e.arg, e.rule) from None
    except (TFLiteImportError, FileNotFoundError) as e:
        msg = str(e)
        raise VerifyError("model", msg[len("model: "):] if msg.startswith("model: ") else msg) from None
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<tflite bytes>"
    return VerifyReport(model=name, runtime="litert", **rep)
