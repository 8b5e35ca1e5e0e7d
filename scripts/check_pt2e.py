"""torchvision resnet18 (ReLU modules made functional) and mobilenet_v2 through pt2e with X86InductorQuantizer,
imported with arithmetic "inductor" (torchao's ``lower_pt2e_quantized_to_x86``) and compared with the lowered
module itself on random and tie-seeking inputs.  Prints mismatch counts (float32 outputs compared bit for bit).

    python scripts/check_pt2e.py [--size 224] [--batches 2] [--models resnet18,mobilenet_v2]

Other torchvision models (float ``torchvision.models``) work too: ``--models mobilenet_v3_small,googlenet,
shufflenet_v2_x0_5`` (resnet-style models get their ReLU modules made functional).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def functional_relus(model, torch):
    """``model`` traced by torch.fx with each ``nn.ReLU`` call a fresh ``torch.relu`` node: X86InductorQuantizer
    rejects one ReLU module used twice (torchvision's BasicBlock / Bottleneck)."""
    g = torch.fx.symbolic_trace(model)
    for n in list(g.graph.nodes):
        if n.op == "call_module" and isinstance(g.get_submodule(n.target), torch.nn.ReLU):
            with g.graph.inserting_after(n):
                new = g.graph.call_function(torch.relu, n.args)
            n.replace_all_uses_with(new)
            g.graph.erase_node(n)
    g.graph.lint()
    g.recompile()
    return g


def lowered(model, shape, calib, torch):
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    x = torch.randn(shape)
    gm = torch.export.export(model, (x,)).module()
    p = prepare_pt2e(gm, xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config()))
    with torch.no_grad():
        for _ in range(calib):
            p(torch.randn(shape))
        c = convert_pt2e(p)
        return lower_pt2e_quantized_to_x86(c, (x,)), x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import jax.numpy as jnp
    import torch

    from tests.torchvision_models import import_torchvision
    from qjax._src.interop.pt2e_inductor import import_lowered

    tv = import_torchvision()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    shape = (args.batch, 3, args.size, args.size)
    for name in args.models.split(","):
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        m = getattr(tv.models, name)(weights=None, **kwargs).eval()
        for mod in m.modules():  # randomized BN statistics (weights=None leaves mean 0 / var 1)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
        if name.startswith("resnet"):
            m = functional_relus(m, torch)
        low, x0 = lowered(m, shape, 3, torch)
        qm = import_lowered(low, (x0,), threads=1)
        q0 = next(n for n in low.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target))
        s, z = float(q0.args[1]), int(q0.args[2])
        inputs = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(args.batches)]
        k = rng.integers(-z, 256 - z, shape)
        inputs += [((k + 0.5) * s).astype(np.float32), (k * s).astype(np.float32)]  # input-quantize ties, grid
        bad = total = 0
        for x in inputs:
            with torch.no_grad():
                y = low(torch.from_numpy(x)).contiguous().numpy()
            got = np.asarray(qm(jnp.asarray(x)))
            total += y.size
            bad += int((np.ascontiguousarray(got).view(np.int32) != y.view(np.int32)).sum())
        print(f"{name} {args.size}x{args.size} (inductor-lowered, X86InductorQuantizer): {bad} mismatches of {total} "
              f"float32 outputs over {len(inputs)} batches ({len(qm.nodes)} nodes)", flush=True)


if __name__ == "__main__":
    main()
