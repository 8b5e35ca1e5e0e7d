"""The ``qjax`` command line: ``qjax explain ...``."""

from __future__ import annotations

import argparse
import sys
import warnings

__all__ = ["main"]


def _quiet_torch():
    # torch 2.13 warns on every quantized tensor it creates (pytorch#184982); the CLI's output is the trace
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


def _explain(args) -> int:
    _quiet_torch()
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
    print("qjax explain: give --example seed (models and layers arrive with `qjax verify`)", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="qjax", description="bit-exact quantized integer arithmetic in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="trace one output integer of a quantized conv/linear step by step")
    p.add_argument("--example", choices=["seed"], help="a built-in example: 'seed' is the PyTorch forum model")
    p.add_argument("--seed", type=int, default=0, help="calibration seed of the example (default 0)")
    p.add_argument("--input-value", type=int, default=24, help="trace the output of this input integer (default 24)")
    p.set_defaults(func=_explain)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
