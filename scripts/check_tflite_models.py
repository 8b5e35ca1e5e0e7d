"""qjax.from_tflite vs LiteRT's interpreter on whole models, under the three kernel families, over many batches.

The MobileNet-style model (float I/O and int8 I/O), the every-op model and the TRANSPOSE_CONV decoder of
``tests/tflite_models.py``, built with
several seeds, each imported with ``kernels="reference" / "optimized" / "xnnpack"`` and compared batch by batch
(:func:`qjax.interop.tflite_check.verify_tflite`: float inputs uniform over the input QUANTIZE's range with half
the rows exact rounding ties; int8 inputs uniform with rows of extremes).  Prints outputs compared and mismatching
per model and family (and where the first mismatch starts), then every node's integers on ``--inner`` batches
against the interpreter's intermediate tensors (``experimental_preserve_all_tensors``; tensors inside an XNNPACK
partition are not readable: under "xnnpack" only the operators the delegate left to the builtin kernels and the
outputs count).

    .venv/bin/python scripts/check_tflite_models.py [--seeds 3] [--n 2048] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from qjax._src.interop.litert_runtime import KERNELS  # noqa: E402
import numpy as np  # noqa: E402

import qjax  # noqa: E402
from qjax._src.interop.tflite_check import compare_intermediates, sample_inputs, verify_tflite  # noqa: E402
from tflite_models import decoder_style, every_op_model, mobilenet_style  # noqa: E402

# name -> build(seed)
MODELS = {
    "mobilenet_style (float I/O)": lambda s: mobilenet_style(s),
    "mobilenet_style (int8 I/O)": lambda s: mobilenet_style(s, float_io=False),
    "every_op_model": lambda s: every_op_model(s),
    "decoder_style (TRANSPOSE_CONV)": lambda s: decoder_style(s),  # batch 1 (fixed by TRANSPOSE_CONV)
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="model seeds 0..S-1 (default 3)")
    ap.add_argument("--n", type=int, default=2048, help="input samples per model and family (default 2048)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--inner", type=int, default=4, help="batches whose intermediate tensors are compared (4)")
    args = ap.parse_args(argv)
    total_bad = 0
    print(f"{'model':30s} {'seed':>4s} {'kernels':10s} {'outputs':>9s} {'mismatch':>8s} {'inner':>9s} {'mismatch':>8s}"
          "  first divergence")
    for name, build in MODELS.items():
        for seed in range(args.seeds):
            model = build(seed)
            for kernels in KERNELS:
                t0 = time.perf_counter()
                qm = qjax.from_tflite(model, kernels=kernels)  # imported once: verify and the inner check share it
                rep = verify_tflite(model, n=args.n, batch_size=args.batch_size, seed=seed, qmodel=qm)
                fd = rep["first_divergence"]
                where = "" if fd is None else f"{fd['node']} ({fd['mismatches']} of {fd['size']})"
                inner = inner_bad = 0
                for k in range(args.inner):
                    rows = qm.info.get("fixed_batch") or args.batch_size
                    xs = sample_inputs(qm, np.random.default_rng([seed, 10_000 + k]), rows)
                    for _, bad, size, *_ in compare_intermediates(qm, model, xs, kernels):
                        inner, inner_bad = inner + size, inner_bad + bad
                print(f"{name:30s} {seed:4d} {kernels:10s} {rep['outputs']:9d} {rep['mismatches']:8d} {inner:9d} "
                      f"{inner_bad:8d}  {where}  [{time.perf_counter() - t0:.1f} s]", flush=True)
                total_bad += rep["mismatches"] + inner_bad
    print(f"total mismatches: {total_bad}")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
