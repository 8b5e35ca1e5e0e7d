"""`qjax verify` on a ResNet: its time next to torch's forward alone, and where verify's time goes.

    python scripts/verify_resnet.py [--n 1024] [--batch-size 64]                 # ResNetTiny, 1000 classes
    python scripts/verify_resnet.py --resnet18 --n 1024 --threads 1 --pin 1      # ResNet-18-sized, 224x224

Writes ``--n`` random inputs to a ``.npy`` file, saves the model as TorchScript (ResNetTiny) or keeps
the eager model (``--resnet18``: BasicBlock [2, 2, 2, 2], widths 64-512, 1000 classes, from
``scripts/bench_model.py``), then times, on the same batches:

1. torch's forward alone (inputs already in memory), before and after 2.;
2. ``qjax.verify`` streaming the ``.npy`` file (memory-mapped) with a report written after every
   batch — its loop's wall time split into torch's forward, qjax's batch, input loading and the
   comparison + report writing.

The ratio verify / torch-forward is what a user pays for the check; (wall - torch - qjax) is the
overhead of verify itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def _torch_alone(model, path, batch_size):
    """Seconds of torch's forward over the file's batches (loaded into memory first, not timed)."""
    import numpy as np
    import torch

    x = np.load(path, mmap_mode="r", allow_pickle=False)
    batches = [torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    t = 0.0
    with torch.no_grad():
        for b in batches:
            t0 = time.perf_counter()
            model(b)
            t += time.perf_counter() - t0
    return t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resnet18", action="store_true", help="the ResNet-18-sized model at 224x224")
    ap.add_argument("--size", type=int, default=224, help="input size of --resnet18")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--pin", type=int, default=0, help="run on the first N CPUs only (0: all)")
    ap.add_argument("--overlap", choices=("auto", "on", "off"), default="auto")
    args = ap.parse_args(argv)
    from bench_common import machine_line, setup_threads

    setup_threads(args.threads, args.pin)
    import numpy as np
    import torch

    from qjax._src.verify import verify

    torch.backends.quantized.engine = "fbgemm"
    print(machine_line(args.threads), flush=True)
    with tempfile.TemporaryDirectory() as d:
        if args.resnet18:
            from bench_model import resnet18_quantized

            model, x = resnet18_quantized(size=args.size)
            spec = model
        else:
            from tests.models import resnet_tiny_1000

            model, x = resnet_tiny_1000()
            spec = os.path.join(d, "resnet_tiny_1000.pt")
            torch.jit.save(torch.jit.script(model), spec)
            model = torch.jit.load(spec)
        inputs = os.path.join(d, "inputs.npy")
        rng = np.random.default_rng(args.seed)
        out = np.lib.format.open_memmap(inputs, mode="w+", dtype=np.float32, shape=(args.n,) + tuple(x.shape[1:]))
        for i in range(0, args.n, 64):
            out[i:i + 64] = rng.standard_normal((min(64, args.n - i),) + tuple(x.shape[1:]), dtype=np.float32)
        out.flush()
        del out
        t_before = _torch_alone(model, inputs, args.batch_size)
        t0 = time.perf_counter()
        rep = verify(spec, inputs=inputs, batch_size=args.batch_size, engine="fbgemm",
                     report=os.path.join(d, "report.json"),
                     overlap={"auto": "auto", "on": True, "off": False}[args.overlap])
        t_call = time.perf_counter() - t0
        t_after = _torch_alone(model, inputs, args.batch_size)
    load = os.getloadavg()[0]
    t_alone = (t_before + t_after) / 2
    print(rep)
    other = rep.wall_seconds - rep.torch_seconds - rep.qjax_seconds
    print(f"torch forward alone: {t_before:.2f} s before, {t_after:.2f} s after verify (mean {t_alone:.2f} s)")
    print(f"verify loop {rep.wall_seconds:.2f} s = {rep.wall_seconds / t_alone:.2f}x torch's forward alone: "
          f"torch inside verify {rep.torch_seconds:.2f} s, qjax {rep.qjax_seconds:.2f} s, loading "
          f"{rep.load_seconds:.3f} s, comparing + report {rep.compare_seconds:.3f} s, everything else "
          f"{other - rep.load_seconds - rep.compare_seconds:.3f} s; overhead (wall - torch - qjax) "
          f"{100 * other / rep.wall_seconds:.1f} % of the loop")
    print(f"whole verify call {t_call:.1f} s (import + compile {rep.compile_seconds:.1f} s); load average {load:.2f} "
          "at the end")
    return 0 if rep.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
