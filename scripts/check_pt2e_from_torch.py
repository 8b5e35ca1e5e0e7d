"""torchvision resnet18 (functional relus) and mobilenet_v2 through pt2e (X86InductorQuantizer), as a user
hands them to qjax: ``qjax.from_torch(converted)`` (arithmetic "converted": what it refuses, in one line),
``qjax.from_torch(converted, arithmetic="inductor")`` against the lowered module, and the converted module
re-exported to a ``.pt2`` file checked by ``qjax verify model.pt2 --arithmetic inductor``.  Prints mismatch
counts (float32 outputs compared bit for bit).

    python scripts/check_pt2e_from_torch.py [--size 64] [--models resnet18,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))


def converted_model(name, shape, torch, tv):
    from check_pt2e import functional_relus
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    m = getattr(tv.models, name)(weights=None).eval()
    for mod in m.modules():  # randomized BN statistics (weights=None leaves mean 0 / var 1)
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
    if name.startswith("resnet"):
        m = functional_relus(m, torch)
    x = torch.randn(shape)
    gm = torch.export.export(m, (x,)).module()
    p = prepare_pt2e(gm, xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config()))
    with torch.no_grad():
        for _ in range(3):
            p(torch.randn(shape))
        return convert_pt2e(p), x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    import qjax
    from qjax.cli import main as cli
    from tests.torchvision_models import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    shape = (args.batch, 3, args.size, args.size)
    for name in args.models.split(","):
        c, x0 = converted_model(name, shape, torch, tv)
        try:
            qjax.from_torch(c)
            print(f"{name}: arithmetic 'converted' imported (unexpected: its float convs are not reproduced)")
        except qjax.QuantizationError as e:
            print(f"{name}: arithmetic 'converted' refuses: {e}")
        qm = qjax.from_torch(c, x0, arithmetic="inductor")
        with torch.no_grad():
            low = lower_pt2e_quantized_to_x86(c, (x0,))
        bad = total = 0
        for _ in range(2):
            x = rng.normal(0, 1, shape).astype(np.float32)
            with torch.no_grad():
                y = low(torch.from_numpy(x)).contiguous().numpy()
            got = np.asarray(qm(x))
            bad += int((np.ascontiguousarray(got).view(np.int32) != y.view(np.int32)).sum())
            total += y.size
        print(f"{name} {args.size}x{args.size}: from_torch(arithmetic='inductor') vs the lowered module: {bad} "
              f"mismatches of {total} float32 outputs", flush=True)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, f"{name}.pt2")
            torch.export.save(torch.export.export(c, (x0,)), path)
            rc = cli(["verify", path, "--arithmetic", "inductor", "--n", "4", "--batch-size", str(args.batch),
                      "--no-progress"])
            print(f"{name}: qjax verify {name}.pt2 --arithmetic inductor exit code {rc}", flush=True)


if __name__ == "__main__":
    main()
