"""Benchmark: a QAT train step (qjax.nn, STE with learnable scales) vs the same Flax model's float step.

    python scripts/bench_qat.py [--model cnn|resnet18] [--repeat 11] [--batch 32] [--size 32] [--threads 1 --pin 1]

``--model cnn`` (default) is a small CNN of ``qjax.nn`` modules (QuantStub, three QConv+ReLU,
Flatten, QDense, DeQuantStub; NHWC 32x32x3 input, 10 classes).  ``--model resnet18`` is a
ResNet-18-sized one (7x7/2 stem QConv+ReLU, 3x3/2 MaxPool, BasicBlocks [2, 2, 2, 2] of
64-128-256-512 channels, each two 3x3 QConvs, a 1x1/2 QConv downsample where the shape changes and
a QAdd with fused ReLU, GlobalAvgPool, QDense; BatchNorm folded away, as in a converted model);
use a small ``--size`` (64) and ``--batch`` (8) on a small machine.  The float step is that model in ``float`` mode;
the QAT step is a second copy after ``prepare`` → calibration → ``prepare_qat`` (forward = the
fbgemm integer path bit for bit, LSQ gradients for weights, bias, scales and zero points).  Both
steps are ``nnx.jit``-ted Adam updates, timed interleaved (median time, median per-round ratio,
ratio of the fastest rounds), and each one's compile time is reported.  Qwix QAT is timed too
when ``qwix`` is installed (it is skipped, and the script says so, otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_common import interleaved, machine_line, setup_threads  # noqa: E402

warnings.filterwarnings("ignore")


def build(rngs):
    from qjax import nn as qnn

    return qnn.Sequential(
        qnn.QuantStub(),
        qnn.QConv(3, 32, (3, 3), padding=1, relu=True, rngs=rngs),
        qnn.QConv(32, 64, (3, 3), strides=2, padding=1, relu=True, rngs=rngs),
        qnn.QConv(64, 64, (3, 3), strides=2, padding=1, relu=True, rngs=rngs),
        qnn.Flatten(),
        qnn.QDense(64 * 8 * 8, 10, rngs=rngs),
        qnn.DeQuantStub())


def _resnet_classes():
    from flax import nnx

    from qjax import nn as qnn

    class Block(nnx.Module):
        def __init__(self, cin, cout, stride, rngs):
            self.conv1 = qnn.QConv(cin, cout, (3, 3), strides=stride, padding=1, relu=True, rngs=rngs)
            self.conv2 = qnn.QConv(cout, cout, (3, 3), padding=1, rngs=rngs)
            self.down = (qnn.QConv(cin, cout, (1, 1), strides=stride, rngs=rngs)
                         if stride != 1 or cin != cout else None)
            self.add = qnn.QAdd(relu=True)

        def __call__(self, x):
            y = self.conv2(self.conv1(x))
            return self.add(y, x if self.down is None else self.down(x))

    class ResNet18(nnx.Module):
        def __init__(self, rngs, classes=10):
            self.quant = qnn.QuantStub()
            self.stem = qnn.QConv(3, 64, (7, 7), strides=2, padding=3, relu=True, rngs=rngs)
            self.pool = qnn.MaxPool((3, 3), strides=(2, 2), padding=1)
            blocks, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [Block(cin, cout, stride, rngs), Block(cout, cout, 1, rngs)]
                cin = cout
            self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
            self.gap = qnn.GlobalAvgPool()
            self.fc = qnn.QDense(512, classes, rngs=rngs)
            self.dequant = qnn.DeQuantStub()

        def __call__(self, x):
            x = self.pool(self.stem(self.quant(x)))
            for b in self.blocks:
                x = b(x)
            return self.dequant(self.fc(self.gap(x)))

    class FlaxBlock(nnx.Module):
        def __init__(self, cin, cout, stride, rngs):
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, rngs=rngs)
            self.down = (nnx.Conv(cin, cout, (1, 1), strides=stride, padding=0, rngs=rngs)
                         if stride != 1 or cin != cout else None)

        def __call__(self, x):
            import jax

            y = self.conv2(jax.nn.relu(self.conv1(x)))
            return jax.nn.relu(y + (x if self.down is None else self.down(x)))

    class FlaxResNet18(nnx.Module):
        """The same network as plain Flax NNX layers (for Qwix)."""

        def __init__(self, rngs, classes=10):
            self.stem = nnx.Conv(3, 64, (7, 7), strides=2, padding=3, rngs=rngs)
            blocks, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [FlaxBlock(cin, cout, stride, rngs), FlaxBlock(cout, cout, 1, rngs)]
                cin = cout
            self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
            self.fc = nnx.Linear(512, classes, rngs=rngs)

        def __call__(self, x):
            import jax

            x = jax.nn.relu(self.stem(x))
            x = jax.lax.reduce_window(x, -jax.numpy.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                      ((0, 0), (1, 1), (1, 1), (0, 0)))
            for b in self.blocks:
                x = b(x)
            return self.fc(x.mean(axis=(1, 2)))

    return ResNet18, FlaxResNet18


def build_resnet18(rngs):
    return _resnet_classes()[0](rngs)


def build_flax_float(rngs):
    """The same CNN as plain Flax NNX layers (for Qwix, which quantizes nnx.Conv / nnx.Linear)."""
    import jax
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(3, 32, (3, 3), padding=1, rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), strides=2, padding=1, rngs=rngs)
            self.c3 = nnx.Conv(64, 64, (3, 3), strides=2, padding=1, rngs=rngs)
            self.fc = nnx.Linear(64 * 8 * 8, 10, rngs=rngs)

        def __call__(self, x):
            x = jax.nn.relu(self.c1(x))
            x = jax.nn.relu(self.c2(x))
            x = jax.nn.relu(self.c3(x))
            return self.fc(x.reshape(x.shape[0], -1))

    return CNN(rngs)


def qwix_model(x, model="cnn"):
    """Qwix QAT (``QtProvider``, int8 weights and activations) of the plain Flax version of the model."""
    import qwix
    from flax import nnx

    rule = qwix.QtRule(module_path=".*", weight_qtype="int8", act_qtype="int8")
    flax_model = build_flax_float(nnx.Rngs(0)) if model == "cnn" else _resnet_classes()[1](nnx.Rngs(0))
    return qwix.quantize_model(flax_model, qwix.QtProvider([rule]), x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("cnn", "resnet18"), default="cnn")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--batch", type=int, default=None, help="default 32 (cnn), 8 (resnet18)")
    ap.add_argument("--size", type=int, default=None, help="input height = width; default 32 (cnn), 64 (resnet18)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pin", type=int, default=0, help="run on the first N CPUs only (0: all)")
    args = ap.parse_args(argv)
    if args.model == "cnn" and args.size not in (None, 32):
        ap.error("--size: the CNN's dense layer expects 32x32 inputs")
    args.batch = args.batch or (32 if args.model == "cnn" else 8)
    args.size = args.size or (32 if args.model == "cnn" else 64)
    setup_threads(args.threads, args.pin)
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from qjax import nn as qnn

    print(machine_line(args.threads) + f", median of {args.repeat} interleaved rounds; model {args.model}, "
          f"input {args.batch}x{args.size}x{args.size}x3")
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, size=args.batch))

    make = build if args.model == "cnn" else build_resnet18
    float_model = make(nnx.Rngs(0))
    qat_model = make(nnx.Rngs(0))
    qnn.prepare(qat_model)
    for i in range(4):
        qat_model(jnp.asarray(rng.normal(size=shape).astype(np.float32)))
    qnn.prepare_qat(qat_model)

    def make_step(model):
        opt = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt, x, y):
            def loss_fn(m):
                return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return loss

        t0 = time.perf_counter()
        jax.block_until_ready(step(model, opt, x, y))
        compile_s = time.perf_counter() - t0
        return (lambda: jax.block_until_ready(step(model, opt, x, y))), compile_s

    run_float, c_float = make_step(float_model)
    run_qat, c_qat = make_step(qat_model)
    fns = {"float": run_float, "qat": run_qat}
    qwix_note = None
    try:
        import qwix  # noqa: F401
    except ImportError:
        qwix_note = "Qwix QAT: skipped (qwix is not installed)"
    if qwix_note is None:
        try:
            run_qwix, c_qwix = make_step(qwix_model(x, args.model))
            fns["qwix"] = run_qwix
        except Exception as e:  # an API change in qwix must not hide the qjax numbers
            qwix_note = f"Qwix QAT: failed to build ({type(e).__name__}: {e})"
    res = interleaved(fns, args.repeat, "float")
    (tf, _, mf), (tq, rq, mq) = res["float"], res["qat"]
    print(f"{'train step, batch ' + str(args.batch):28s} float {tf * 1e3:8.2f} ms  QAT {tq * 1e3:8.2f} ms  "
          f"ratio {rq:5.2f}  min-time ratio {mq / mf:5.2f}")
    if "qwix" in res:
        tw, rw, mw = res["qwix"]
        print(f"{'Qwix QAT step (QtProvider int8)':28s} {tw * 1e3:8.2f} ms  ratio to float {rw:5.2f}; qjax QAT / Qwix "
              f"QAT {tq / tw:5.2f} (medians), {mq / mw:5.2f} (fastest rounds)")
    print(f"{'first call (trace+compile)':28s} float {c_float:6.1f} s  QAT {c_qat:6.1f} s"
          + (f"  Qwix {c_qwix:6.1f} s" if "qwix" in res else ""))
    if qwix_note:
        print(qwix_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
