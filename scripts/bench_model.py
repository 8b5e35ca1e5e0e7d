"""Benchmark: a whole ResNet-style model imported with ``from_torch`` — qjax forward vs torch fbgemm.

    python scripts/bench_model.py [--repeat 11] [--threads 2] [--batch 32] [--resnet18] [--skip-verify]

1. ``qjax.examples.resnet.model()`` (stem, max-pool, two basic blocks, a bottleneck, global pool,
   fc), converted by torch for fbgemm and imported with ``qjax.from_torch``: the jitted qjax forward
   ``qm(x)`` and torch's forward on the same float batch, interleaved call by call (median time,
   median per-round ratio, ratio of the fastest rounds).  Outputs are checked equal first.
2. ``qjax.verify`` on the same model (``--verify-n`` inputs, batches of 64): outputs/s and the time
   qjax's side takes relative to torch's own forward time inside verify.
3. ``--resnet18``: a ResNet-18-sized model (BasicBlock [2, 2, 2, 2], widths 64-512, 1000 classes,
   224x224): the time to import it and to compile its integer forward, then, each in a fresh
   subprocess, the peak RSS of ``verify`` on one batch of ``--r18-batch`` (default 64) next to the
   peak RSS of torch's forward alone on that batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_common import interleaved, machine_line, peak_rss_mib, setup_threads  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def resnet18_quantized(seed=0, size=224):
    """A ResNet-18-shaped model from ``qjax.examples.resnet``'s blocks, fused and converted (fbgemm)."""
    import torch
    import torch.nn as nn

    from qjax.examples.resnet import BasicBlock, conv_bn_relu, quantize_model
    from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

    class ResNet18(nn.Module):
        def __init__(self, classes=1000):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.stem = conv_bn_relu(3, 64, 7, 2)
            self.pool = nn.MaxPool2d(3, 2, 1)
            blocks, cin = [], 64
            for i, w in enumerate((64, 128, 256, 512)):
                blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
                cin = w
            self.blocks = nn.Sequential(*blocks)
            self.avg = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = self.blocks(self.pool(self.stem(self.quant(x))))
            return self.dequant(self.fc(torch.flatten(self.avg(x), 1)))

        def fuse(self):
            fuse_modules(self.stem, [["0", "1", "2"]], inplace=True)
            for b in self.blocks:
                b.fuse()

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ResNet18()
    return quantize_model(net, torch.zeros(2, 3, size, size), True, seed, "fbgemm", calib_batches=2)


def _rss_child(args):
    """Subprocess body for the memory measurement: prints one JSON line."""
    import torch

    setup_threads(args.threads, args.pin)
    torch.backends.quantized.engine = "fbgemm"
    model, _ = resnet18_quantized(size=args.r18_size)
    x = torch.randn(args.r18_batch, 3, args.r18_size, args.r18_size, generator=torch.Generator().manual_seed(1))
    base = peak_rss_mib()
    if args.rss_child == "torch":
        with torch.no_grad():
            model(x)
        out = dict(side="torch", base_mib=base, peak_mib=peak_rss_mib())
    else:
        from qjax._src.verify import verify

        rep = verify(model, inputs=x.numpy(), batch_size=args.r18_batch, engine="fbgemm")
        out = dict(side="verify", base_mib=base, peak_mib=peak_rss_mib(), mismatches=rep.mismatches,
                   outputs=rep.outputs, qjax_s=rep.qjax_seconds, torch_s=rep.torch_seconds)
    print(json.dumps(out))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pin", type=int, default=0, help="run on the first N CPUs only (0: all)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--verify-n", type=int, default=512)
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--resnet18", action="store_true", help="also the ResNet-18-sized compile/memory measurements")
    ap.add_argument("--r18-batch", type=int, default=64)
    ap.add_argument("--r18-size", type=int, default=224)
    ap.add_argument("--rss-child", choices=("torch", "verify"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        return _rss_child(args)

    setup_threads(args.threads, args.pin)
    import jax
    import torch

    import qjax
    from qjax.examples.resnet import model as resnet_model

    torch.backends.quantized.engine = "fbgemm"
    print(machine_line(args.threads) + f", median of {args.repeat} interleaved rounds")
    model, ex = resnet_model()
    x = torch.randn((args.batch,) + tuple(ex.shape[1:]), generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    qm = qjax.from_torch(model, ex)
    xj = jax.device_put(xn)
    with torch.no_grad():
        want = model(x).numpy()
    got = np.asarray(qm(xj))
    assert (got.view(np.int32) == want.view(np.int32)).all(), "qjax forward != torch"

    def run_torch():
        with torch.no_grad():
            return model(x)

    res = interleaved({"torch": run_torch, "qjax": lambda: jax.block_until_ready(qm(xj))}, args.repeat, "torch")
    (tt, _, mt), (tq, rq, mq) = res["torch"], res["qjax"]
    print(f"{'ResNetTiny forward, batch ' + str(args.batch):40s} torch {tt * 1e3:8.2f} ms  qjax {tq * 1e3:8.2f} ms  "
          f"ratio {rq:5.2f}  min-time ratio {mq / mt:5.2f}", flush=True)

    if not args.skip_verify:
        from qjax._src.verify import verify

        rep = verify(model, n=args.verify_n, batch_size=64, example_input=ex.numpy(), engine="fbgemm", qmodel=qm)
        print(f"{'qjax verify ResNetTiny, ' + str(args.verify_n) + ' inputs':40s} {rep.mismatches} mismatches of "
              f"{rep.outputs}; qjax {rep.qjax_outputs_per_s:,.0f} outputs/s, torch forward "
              f"{rep.torch_outputs_per_s:,.0f} outputs/s; qjax/torch time {rep.qjax_seconds / rep.torch_seconds:.2f}",
              flush=True)

    if args.resnet18:
        t0 = time.perf_counter()
        m18, ex18 = resnet18_quantized(size=args.r18_size)
        t_conv = time.perf_counter() - t0
        t0 = time.perf_counter()
        q18 = qjax.from_torch(m18, ex18)
        t_imp = time.perf_counter() - t0
        xb = jax.ShapeDtypeStruct((args.r18_batch, 3, args.r18_size, args.r18_size), np.float32)
        t0 = time.perf_counter()
        lowered = jax.jit(lambda m, x: m(x)).lower(q18, xb)
        t_low = time.perf_counter() - t0
        t0 = time.perf_counter()
        lowered.compile()
        t_comp = time.perf_counter() - t0
        print(f"{'ResNet-18-sized import + compile':40s} torch convert {t_conv:.1f} s, from_torch {t_imp:.1f} s, "
              f"trace+lower {t_low:.1f} s, XLA compile {t_comp:.1f} s (batch {args.r18_batch}, "
              f"{args.r18_size}x{args.r18_size})", flush=True)
        rss = {}
        for side in ("torch", "verify"):
            cmd = [sys.executable, __file__, "--rss-child", side, "--threads", str(args.threads), "--pin", str(args.pin),
                   "--r18-batch", str(args.r18_batch), "--r18-size", str(args.r18_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rss[side] = json.loads(out)
        t, v = rss["torch"], rss["verify"]
        print(f"{'ResNet-18-sized peak RSS, batch ' + str(args.r18_batch):40s} torch forward {t['peak_mib']:.0f} MiB, "
              f"qjax verify {v['peak_mib']:.0f} MiB (each in a fresh process that built and calibrated the model "
              f"first: {t['base_mib']:.0f} / {v['base_mib']:.0f} MiB); ratio {v['peak_mib'] / t['peak_mib']:.2f}",
              flush=True)
        print(f"{'ResNet-18-sized verify, batch ' + str(args.r18_batch):40s} {v['mismatches']} mismatches of "
              f"{v['outputs']}; qjax {v['qjax_s']:.2f} s vs torch forward {v['torch_s']:.2f} s "
              f"(ratio {v['qjax_s'] / v['torch_s']:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
