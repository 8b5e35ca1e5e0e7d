"""Verify a torch quantized model against its qjax import on many inputs, in jitted batches.

:func:`verify` (and ``qjax verify`` on the command line) loads the model (a TorchScript
file or a Python factory ``module:function``), imports it with
:func:`qjax.from_torch`, runs torch and qjax on ``n`` inputs (random with a seed, or
from a ``.npy``/``.npz`` file) batch by batch — qjax jitted and sharded over all JAX
devices along the batch axis — and reports outputs compared, mismatching outputs, the
largest difference in integer steps of the output quantization, throughput, and for a
mismatch the first graph node whose integers diverge.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
import warnings

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .graph import QModel
from .qarray import QArray

__all__ = ["verify", "VerifyReport", "load_torch_model", "load_inputs"]


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify` measured."""

    outputs: int
    mismatches: int
    max_abs_step: float
    samples: int
    batch_size: int
    devices: int
    qjax_seconds: float
    torch_seconds: float
    first_divergence: dict | None
    engine: str
    model: str

    @property
    def qjax_outputs_per_s(self) -> float:
        return self.outputs / self.qjax_seconds if self.qjax_seconds else float("inf")

    @property
    def torch_outputs_per_s(self) -> float:
        return self.outputs / self.torch_seconds if self.torch_seconds else float("inf")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["qjax_outputs_per_s"] = self.qjax_outputs_per_s
        d["torch_outputs_per_s"] = self.torch_outputs_per_s
        return json.dumps(d, indent=2)

    def __str__(self) -> str:
        lines = [
            f"model {self.model} (engine {self.engine}): {self.samples} inputs in batches of {self.batch_size} "
            f"on {self.devices} device(s)",
            f"{self.mismatches} mismatches of {self.outputs} outputs; max |delta| = {self.max_abs_step:g} integer steps",
            f"qjax: {self.qjax_seconds:.3f} s ({self.qjax_outputs_per_s:,.0f} outputs/s); "
            f"torch forward: {self.torch_seconds:.3f} s ({self.torch_outputs_per_s:,.0f} outputs/s); "
            f"ratio qjax/torch {self.qjax_seconds / max(self.torch_seconds, 1e-12):.2f}",
        ]
        if self.first_divergence:
            fd = self.first_divergence
            lines.append(f"first divergence at node {fd['node']} ({fd['source']}): {fd['mismatches']} of "
                         f"{fd['size']} integers differ, first at index {fd['index']} "
                         f"(qjax {fd['qjax']} vs torch {fd['torch']})")
        return "\n".join(lines)


def load_torch_model(spec: str):
    """A TorchScript file (``.pt``/``.pth``, loaded with ``torch.jit.load``) or a factory ``module:function``.

    A factory returns the converted model or ``(model, example_input)``.  Never unpickles
    arbitrary objects: TorchScript archives hold code and tensors, and ``torch.load`` is
    not used.
    """
    if ":" in spec and not spec.endswith((".pt", ".pth")):
        mod, fn = spec.split(":", 1)
        obj = getattr(importlib.import_module(mod), fn)()
        return obj if isinstance(obj, tuple) else (obj, None)
    from .interop.torchscript import load

    return load(spec), None


def load_inputs(path: str):
    """Inputs from ``.npy`` (one array) or ``.npz`` (its first array, or ``x``), float32."""
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        key = "x" if "x" in data.files else data.files[0]
        data = data[key]
    return np.asarray(data, np.float32)


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

    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x)))
    return y.int_repr().numpy() if getattr(y, "is_quantized", False) else y.numpy()


def _first_divergence(model, qmodel, x, engine):
    """Run both with every intermediate on one batch; the first node whose integers differ."""
    import torch

    from .interop.torch import _record, trace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.jit.ScriptModule):
            from .interop.torchscript import _TSConverter

            from .interop.torch import engine_for_torch

            conv = _TSConverter(engine_for_torch(engine), qmodel.info.get("threads", 1))
            frozen = torch.jit.freeze(model.eval())
            with torch.no_grad():
                conv.convert(frozen.graph, (torch.from_numpy(x),))
            record = {nm: conv.torch_values[uid] for uid, nm in conv.names.items() if uid in conv.torch_values}
        else:
            record = _record(trace(model), (torch.from_numpy(x),))
    _, inter = qmodel.capture(x)
    for node in qmodel.nodes:
        t = record.get(node.name)
        q = inter.get(node.name)
        if isinstance(t, torch.Tensor) and isinstance(q, QArray) and t.is_quantized:
            a, b = np.asarray(q.values), t.int_repr().numpy()
            if a.shape == b.shape and (a != b).any():
                bad = np.argwhere(a != b)
                i = tuple(int(v) for v in bad[0])
                return dict(node=node.name, source=node.source, mismatches=int(len(bad)), size=int(a.size),
                            index=i, qjax=int(a[i]), torch=int(b[i]))
    return None


def verify(model, *, n=1000, batch_size=64, seed=0, inputs=None, example_input=None, input_shape=None,
           engine=None, shard=True, progress=False, qmodel=None) -> VerifyReport:
    """Compare ``model`` (torch) and its qjax import on ``n`` inputs; see the module docstring.

    Args:
      model: a converted torch model, a TorchScript module, or a spec for :func:`load_torch_model`.
      n: number of input samples (ignored when ``inputs`` is given).
      batch_size: samples per batch (rounded up to a multiple of the device count when sharding).
      seed: seed of the random normal inputs.
      inputs: an array of inputs ``(samples, ...)`` or a ``.npy``/``.npz`` path.
      example_input: one batch for the importer (default: the first batch).
      input_shape: per-sample shape for random inputs (default: the example input's).
      engine: torch quantized engine (default: torch's current engine).
      shard: shard each batch over ``jax.devices()`` along the batch axis.
      progress: show a progress bar (rich).
      qmodel: an already imported :class:`~qjax.graph.QModel` (skips the import).
    """
    import torch

    from .interop.torch import from_torch

    name = model if isinstance(model, str) else type(model).__name__
    engine = engine or torch.backends.quantized.engine
    # set before loading: TorchScript files repack their weights for the engine current at load time
    torch.backends.quantized.engine = engine
    if isinstance(model, str):
        model, ex = load_torch_model(model)
        example_input = example_input if example_input is not None else ex
    if isinstance(inputs, str):
        inputs = load_inputs(inputs)
    if inputs is not None:
        inputs = np.asarray(inputs, np.float32)
        n = inputs.shape[0]
        sample_shape = inputs.shape[1:]
    else:
        if input_shape is None:
            if example_input is None:
                raise ValueError("give input_shape, inputs or an example_input to size the random inputs")
            input_shape = tuple(np.shape(example_input)[1:])
        sample_shape = tuple(input_shape)
    devices = jax.devices() if shard else jax.devices()[:1]
    nd = len(devices)
    batch_size = int(math.ceil(batch_size / nd) * nd)
    rng = np.random.default_rng(seed)

    def batch(i):
        m = min(batch_size, n - i)
        if inputs is not None:
            return inputs[i:i + m]
        return rng.standard_normal((m,) + sample_shape).astype(np.float32)

    first = batch(0)
    if qmodel is None:
        ex = example_input if example_input is not None else first
        qmodel = from_torch(model, np.asarray(ex, np.float32), engine=engine)
    mesh = Mesh(np.array(devices), ("batch",))
    in_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    step_node = _output_step(qmodel)
    names = (step_node,) if step_node else ()
    run = jax.jit(lambda m, x: m.apply(m.params, x, capture=names))

    total = mism = 0
    max_step = 0.0
    t_q = t_t = 0.0
    first_div = None
    starts = list(range(0, n, batch_size))
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("verifying", total=n)
    try:
        for k, i in enumerate(starts):
            x = first if k == 0 else batch(i)
            m = x.shape[0]
            pad = (-m) % nd
            xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)]) if pad else x
            xs = jax.device_put(xp, in_sharding)
            if k == 0:  # compile outside the timing
                jax.block_until_ready(run(qmodel, xs))
            t0 = time.perf_counter()
            out, inter = run(qmodel, xs)
            out = jax.block_until_ready(out)
            t_q += time.perf_counter() - t0
            t0 = time.perf_counter()
            want = _torch_forward(model, x)
            t_t += time.perf_counter() - t0
            got = np.asarray(out.values if isinstance(out, QArray) else out)[:m]
            if got.dtype == np.float32:
                diff = got.view(np.int32) != want.view(np.int32)
            else:
                diff = got != want
            bad = int(diff.sum())
            if bad:
                if step_node:
                    q = inter[step_node]
                    scale = float(np.asarray(q.scale))
                    steps = np.abs(got.astype(np.float64) - want.astype(np.float64)) / scale
                    max_step = max(max_step, float(np.nanmax(steps)))
                else:
                    max_step = max(max_step, float(np.nanmax(np.abs(got.astype(np.float64) - want))))
                if first_div is None:
                    first_div = _first_divergence(model, qmodel, x, engine) or dict(
                        node="(output)", source="", mismatches=bad, size=int(got.size),
                        index=tuple(int(v) for v in np.argwhere(diff)[0]), qjax=None, torch=None)
            mism += bad
            total += int(want.size)
            if bar:
                bar.update(task, advance=m)
    finally:
        if bar:
            bar.stop()
    return VerifyReport(outputs=total, mismatches=mism, max_abs_step=max_step, samples=n, batch_size=batch_size,
                        devices=nd, qjax_seconds=t_q, torch_seconds=t_t, first_divergence=first_div,
                        engine=engine, model=name)

