"""Every torchvision quantizable model x engine imported with ``qjax.from_torch``: mismatch counts vs torch.

    python scripts/check_torchvision.py [--models resnet18,shufflenet_v2_x0_5] [--engines fbgemm,x86,qnnpack]
        [--size 64] [--batch 2] [--torchscript] [--threads 1]

For each model and engine: the model built offline and converted for the engine
(``tests/torchvision_models.py``: weights=None, randomized batch norm, a few calibration batches, the model's
own ``fuse_model`` + eager prepare/convert), imported with ``qjax.from_torch`` (torch.fx; with
``--torchscript`` also the ``torch.jit.trace`` of it), run on a random batch, and compared with the torch
model's own output bit for bit.  Prints one line per model/engine/importer and exits 1 if anything mismatched
or failed.  The suite (``tests/interop/test_torchvision.py``) runs a subset that fits its time budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.torchvision_models import ENGINES, QUANTIZABLE, build_quantized, import_torchvision  # noqa: E402

MIN_SIZE = {"inception_v3": 75}  # inception's stem needs >= 75x75


def check(name, engine, size, batch, torchscript, seed=0):
    import torch

    import qjax

    t0 = time.perf_counter()
    model = build_quantized(name, engine, size, seed=seed)
    build_s = time.perf_counter() - t0
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with torch.no_grad():
            want = model(x).numpy()
        importers = [("fx", model)]
        if torchscript:
            with torch.no_grad():
                importers.append(("torchscript", torch.jit.trace(model, x)))
        rows = []
        for how, m in importers:
            t0 = time.perf_counter()
            try:
                qm = qjax.from_torch(m, x, engine=engine)
                got = np.asarray(qm(x.numpy()))
                bad = int((got.view(np.uint32) != want.view(np.uint32)).sum()) if got.shape == want.shape else -1
                status = f"{bad} mismatches of {want.size}"
            except Exception as e:  # noqa: BLE001 - report and go on
                bad, status = -1, f"FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            rows.append((how, bad, status, time.perf_counter() - t0))
    finally:
        torch.backends.quantized.engine = previous
    return build_s, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(QUANTIZABLE))
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--size", type=int, default=64, help="input side (at least 75 for inception_v3)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--torchscript", action="store_true", help="also import torch.jit.trace of each model")
    p.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (qjax is told the same)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import_torchvision()
    failed = 0
    for name in args.models.split(","):
        size = max(args.size, MIN_SIZE.get(name, 0))
        for engine in args.engines.split(","):
            build_s, rows = check(name, engine, size, args.batch, args.torchscript)
            for how, bad, status, s in rows:
                failed += bad != 0
                print(f"{name:20s} {engine:8s} {how:11s} {size}x{size} b{args.batch}: {status} "
                      f"(build {build_s:.1f} s, import+run {s:.1f} s)", flush=True)
    print("all 0 mismatches" if not failed else f"{failed} configurations mismatched or failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
