"""The ``qjax`` command line: ``qjax explain``, ``qjax verify``, ``qjax hardware``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# torch 2.13 prints a C++ deprecation warning for every quantized tensor it creates (pytorch#184982)
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

__all__ = ["main"]


def _quiet_torch():
    # torch 2.13 warns on every quantized tensor it creates (pytorch#184982); the CLI's output is the trace
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


def _parse_index(text):
    return tuple(int(v) for v in text.replace(" ", "").split(","))


def _model_input(args, qmodel_example=None):
    import numpy as np

    from ._src.verify import load_inputs

    if args.inputs:
        return load_inputs(args.inputs)[: max(1, args.batch_size)]
    if args.shape:
        shape = (max(1, args.batch_size),) + _parse_index(args.shape)
        return np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    if qmodel_example is not None:
        return np.asarray(qmodel_example, np.float32)
    raise SystemExit("qjax: give --shape C,H,W (per-sample input shape) or --inputs FILE")


def _explain_layer(args) -> int:
    import numpy as np

    from ._src.explain import explain
    from ._src.interop.torch import from_torch
    from ._src.verify import load_torch_model

    model, example = load_torch_model(args.model)
    x = _model_input(args, example)
    qm = from_torch(model, x, engine=args.engine)
    try:
        node = qm.node(args.layer)
    except KeyError as e:
        print(f"qjax explain: {e.args[0]}", file=sys.stderr)
        return 2
    if node.op not in ("conv", "linear"):
        print(f"qjax explain: node {args.layer!r} is a {node.op} ({node.source}); explain traces conv and linear "
              "layers", file=sys.stderr)
        return 2
    src = node.args[0].name
    _, inter = qm.capture(x, names=(src,))
    xq = inter[src]
    cfg, p = node.config(), qm.params[node.name]
    kw = dict(scale=float(np.asarray(p["scale"])), zero_point=int(np.asarray(p["zero_point"])),
              index=_parse_index(args.index), relu=cfg["relu"], engine=cfg["engine"])
    if node.op == "conv":
        kw.update(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"])
    e = explain(xq, p["weight"], p.get("bias"), op=node.op, **kw)
    print(f"model {args.model}, layer {node.name} ({node.source})")
    print(e)
    return 0


def _explain_tflite(args) -> int:
    """``qjax explain --model m.tflite --layer NODE --index n,h,w,c``: a CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED output integer step by step, on a random input of the model's dtypes (or --inputs)."""
    import numpy as np

    from ._src.interop.tflite import TFLiteImportError, from_tflite
    from ._src.interop.tflite_check import TFLiteCheckError, explain_tflite, load_tflite_inputs, sample_inputs

    try:
        index = _parse_index(args.index)
    except ValueError:
        print(f"qjax explain: --index: {args.index!r} is not a comma-separated list of integers", file=sys.stderr)
        return 2
    try:
        qm = from_tflite(args.model, kernels=args.kernels or "xnnpack")
    except (TFLiteImportError, FileNotFoundError, TypeError) as err:  # their messages start "model: "
        msg = str(err)
        print(f"qjax explain: --model: {msg[len('model: '):] if msg.startswith('model: ') else msg}", file=sys.stderr)
        return 2
    batch = qm.info.get("fixed_batch") or max(1, args.batch_size)  # a pinned batch: the one LiteRT takes
    try:
        if args.inputs:
            xs = [a[:batch] for a in load_tflite_inputs(args.inputs, qm.info["input_specs"])]
        else:
            xs = sample_inputs(qm, np.random.default_rng(args.seed), batch)
        e = explain_tflite(qm, args.layer, xs, index)
    except TFLiteCheckError as err:
        flag = {"layer": "--layer", "index": "--index", "inputs": "--inputs", "model": "--model"}.get(err.arg, err.arg)
        print(f"qjax explain: {flag}: {err.rule}", file=sys.stderr)
        return 2
    print(f"model {args.model}")
    print(e)
    return 0


def _explain(args) -> int:
    _quiet_torch()
    if args.model:
        if not (args.layer and args.index):
            print("qjax explain --model needs --layer NAME and --index n,c,h,w (n,h,w,c for a .tflite conv; row,o "
                  "for a linear / FULLY_CONNECTED)", file=sys.stderr)
            return 2
        from ._src.interop.tflite_check import is_tflite

        if is_tflite(args.model):
            return _explain_tflite(args)
        if args.kernels:
            print("qjax explain: --kernels applies to .tflite models only", file=sys.stderr)
            return 2
        return _explain_layer(args)
    if args.example == "seed":
        try:
            from .examples import seed
        except ImportError as e:  # pragma: no cover
            print(f"qjax explain --example seed needs torch: pip install 'qjax[torch]' ({e})", file=sys.stderr)
            return 2
        e, mism, total = seed.run(seed=args.seed, input_value=args.input_value)
        print("The PyTorch forum thread 'The result of quantized conv2d is different from the result I calculate'")
        print(f"rebuilt: 1x1 conv, weight {seed.THREAD_WEIGHT}, bias {seed.THREAD_BIAS}, HistogramObserver "
              f"(reduce_range) activations, per-channel symmetric weights, fbgemm (calibration seed {args.seed}).")
        print(f"whole layer: qjax vs torch, {mism} mismatches of {total} outputs")
        print()
        print(e)
        return 0 if mism == 0 and e.qjax_output == e.torch_output else 1
    print("qjax explain: give --example seed, or --model MODEL --layer NAME --index n,c,h,w", file=sys.stderr)
    return 2


# verify's keyword arguments -> the command line's flags, for one-line user errors
_VERIFY_FLAGS = dict(model="MODEL", inputs="--inputs", n="--n", input_shape="--shape", batch_size="--batch-size",
                     report="--report", resume="--resume", max_batches="--max-batches", coordinator="--coordinator",
                     num_processes="--num-processes", process_id="--process-id", arithmetic="--arithmetic",
                     kernels="--kernels", engine="--engine", seed="--seed")


def _verify(args) -> int:
    _quiet_torch()
    from ._src.verify import VerifyError, verify

    try:
        shape = _parse_index(args.shape) if args.shape else None
    except ValueError:
        print(f"qjax verify: --shape: {args.shape!r} is not a comma-separated list of integers, e.g. 3,224,224",
              file=sys.stderr)
        return 2
    progress = not args.json and not args.no_progress and sys.stderr.isatty()
    try:
        report = verify(args.model, n=args.n, batch_size=args.batch_size, seed=args.seed, inputs=args.inputs,
                        input_shape=shape, engine=args.engine, shard=not args.no_shard, progress=progress,
                        report=args.report, resume=args.resume, max_batches=args.max_batches,
                        overlap={"auto": "auto", "on": True, "off": False}[args.overlap], coordinator=args.coordinator,
                        num_processes=args.num_processes, process_id=args.process_id, arithmetic=args.arithmetic,
                        kernels=args.kernels)
    except VerifyError as e:
        print(f"qjax verify: {_VERIFY_FLAGS.get(e.arg, e.arg)}: {e.rule}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() == 0:
        print(report.to_json() if args.json else report)
    if report.mismatches:
        return 1
    return 0 if report.complete else 3


def _hardware(args) -> int:
    _quiet_torch()
    import json

    import numpy as np

    from . import hardware

    if args.example == "seed":
        from .examples import seed

        rows, total = seed.hardware_rows(seed=args.seed)
        print("The forum thread's 1x1 conv (input integer 24; torch says 30, the hand formula 31) under each spec;")
        print(f"'differ' counts the layer's {total} outputs that differ from fbgemm.")
        print(f"{'spec':16s} {'output':>6s} {'differ':>6s}  arithmetic")
        for name, out, differ, desc in rows:
            print(f"{name:16s} {out:6d} {differ:6d}  {desc}")
        return 0
    if not args.model:
        raise SystemExit("qjax hardware: give MODEL (TorchScript file or module:function) or --example seed")
    from ._src.interop.torch import from_torch
    from ._src.verify import load_inputs, load_torch_model

    model, example = load_torch_model(args.model)
    if args.inputs:
        x = load_inputs(args.inputs)
    else:
        if args.shape:
            shape = _parse_index(args.shape)
        elif example is not None:
            shape = tuple(np.shape(example)[1:])
        else:
            raise SystemExit("qjax hardware: give --shape C,H,W or --inputs FILE")
        x = np.random.default_rng(args.seed).standard_normal((args.n,) + shape).astype(np.float32)
    labels = np.load(args.labels, allow_pickle=False) if args.labels else None
    qm = from_torch(model, x[: min(len(x), args.batch_size)], engine=args.engine)
    spec = hardware.get_spec(args.spec)
    hw = hardware.convert(qm, x[: min(len(x), args.batch_size)], spec)
    report = hardware.deviation(qm, hw, x, labels=labels, batch_size=args.batch_size)
    if args.export:
        hardware.export(hw, args.export)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(spec.describe())
        print(report)
        if args.export:
            print(f"integer parameters written to {args.export}/layers.json and params.npz")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's errors in one line (``qjax verify: --kernels: invalid choice ...``), without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv=None) -> int:
    parser = _Parser(prog="qjax", description="bit-exact quantized integer arithmetic in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="trace one output integer of a quantized conv/linear step by step")
    p.add_argument("--example", choices=["seed"], help="a built-in example: 'seed' is the PyTorch forum model")
    p.add_argument("--seed", type=int, default=0, help="calibration seed of the example (default 0)")
    p.add_argument("--input-value", type=int, default=24, help="trace the output of this input integer (default 24)")
    p.add_argument("--model", help="a TorchScript file, a .tflite model or a factory module:function returning the "
                                   "converted model")
    p.add_argument("--layer", help="graph node name of a conv/linear layer (see QModel.summary())")
    p.add_argument("--index", help="output element, e.g. 0,3,5,7 (n,c,h,w; n,h,w,c for .tflite models) or 2,1 for "
                                   "linear / FULLY_CONNECTED")
    p.add_argument("--shape", help="per-sample input shape for a random input, e.g. 3,224,224")
    p.add_argument("--inputs", help=".npy/.npz file of inputs")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--engine", default=None, help="torch quantized engine (default: torch's current one)")
    p.add_argument("--kernels", choices=("reference", "optimized", "xnnpack"), default=None,
                   help=".tflite models: LiteRT's kernel family (op resolver; default xnnpack, the interpreter's)")
    p.set_defaults(func=_explain)

    v = sub.add_parser("verify", help="compare a quantized model (torch, torch.export or LiteRT .tflite) with its qjax import on many inputs")
    v.add_argument("model", help="a TorchScript file (torch.jit.save), a torch.export.save file (.pt2), a LiteRT "
                                 "model (.tflite) or a factory module:function")
    v.add_argument("--arithmetic", choices=("converted", "inductor"), default=None,
                   help="torch.export models: the converted graph as torch runs it (default) or the x86 inductor "
                        "lowering (torchao's lower_pt2e_quantized_to_x86; both sides run the lowered graph)")
    v.add_argument("--n", type=int, default=256, help="number of random inputs (default 256)")
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--inputs", help=".npy file (memory-mapped), directory of .npy files or .npz of inputs "
                                    "(overrides --n)")
    v.add_argument("--shape", help="per-sample input shape, e.g. 3,224,224 (default: the factory's example)")
    v.add_argument("--engine", default=None)
    v.add_argument("--kernels", choices=("reference", "optimized", "xnnpack"), default=None,
                   help=".tflite models: LiteRT's kernel family to compare with (op resolver; default xnnpack, the "
                        "interpreter's default)")
    v.add_argument("--no-shard", action="store_true", help="do not shard batches over the local JAX devices")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--report", help="JSON report rewritten after every batch (atomically); resumable")
    v.add_argument("--resume", action="store_true", help="continue from --report, skipping the batches it lists "
                                                         "as done (a missing report starts the run)")
    v.add_argument("--max-batches", type=int, help="stop after this many batches (per process); exit code 3")
    v.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                   help="run torch's forward while the qjax batch computes (auto: on accelerators only)")
    v.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown on a terminal only)")
    v.add_argument("--coordinator", help="host:port of process 0 for jax.distributed (multi-process/multi-host)")
    v.add_argument("--num-processes", type=int, help="number of verifying processes (with --coordinator)")
    v.add_argument("--process-id", type=int, help="this process's index in [0, --num-processes)")
    v.set_defaults(func=_verify)

    h = sub.add_parser("hardware", help="run a model under integer-only hardware arithmetic; per-layer deviation table")
    h.add_argument("model", nargs="?", help="a TorchScript file or a factory module:function "
                                            "(e.g. qjax.examples.resnet:model)")
    h.add_argument("--example", choices=["seed"], help="the forum thread's layer under every preset spec")
    h.add_argument("--spec", default="gemmlowp",
                   help="preset (gemmlowp, tflite_single, dyadic16, dyadic8, fbgemm_fixed, int24acc) with optional "
                        "options, e.g. 'gemmlowp:bits=16,acc=24,overflow=saturate'")
    h.add_argument("--n", type=int, default=64, help="number of random inputs (default 64)")
    h.add_argument("--batch-size", type=int, default=32)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--shape", help="per-sample input shape, e.g. 3,64,64 (default: the factory's example)")
    h.add_argument("--inputs", help=".npy/.npz file of inputs (overrides --n)")
    h.add_argument("--labels", help=".npy file of integer labels, one per input: adds end-task accuracy")
    h.add_argument("--engine", default=None)
    h.add_argument("--export", help="directory to write layers.json + params.npz (the derived integer parameters)")
    h.add_argument("--json", action="store_true", help="print the report as JSON")
    h.set_defaults(func=_hardware)
    args = parser.parse_args(argv)
    from ._src.checks import QuantizationError

    try:
        return args.func(args)
    except (QuantizationError, FileNotFoundError, ValueError, TypeError) as e:  # a model fed inputs it rejects
        if isinstance(getattr(e, "arg", None), str) and isinstance(getattr(e, "rule", None), str):  # VerifyError
            flags = dict(_VERIFY_FLAGS, model="--model") if args.command == "explain" else _VERIFY_FLAGS
            print(f"qjax {args.command}: {flags.get(e.arg, e.arg)}: {e.rule}", file=sys.stderr)
        else:
            print(f"qjax {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
