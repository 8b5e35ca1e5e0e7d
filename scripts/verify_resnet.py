"""Save a ResNet-style quantized model as TorchScript and run `qjax verify` on it (>= 10^6 outputs).

    python scripts/verify_resnet.py [--n 1024] [--batch-size 64]

Prints the verify report: outputs compared, mismatches, max |delta| in integer steps,
qjax throughput next to torch's forward time on the same inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    from qjax.verify import verify
    from tests.models import resnet_tiny_1000

    torch.backends.quantized.engine = "fbgemm"
    model, x = resnet_tiny_1000()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "resnet_tiny_1000.pt")
        torch.jit.save(torch.jit.script(model), path)
        rep = verify(path, n=args.n, batch_size=args.batch_size, seed=args.seed, input_shape=tuple(x.shape[1:]),
                     engine="fbgemm", progress=False)
    print(rep)
    return 0 if rep.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
