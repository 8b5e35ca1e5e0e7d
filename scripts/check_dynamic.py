"""Sweep: qjax's dynamic linear and quantized embedding bags vs live torch 2.13, mismatch counts (bit for bit).

    python scripts/check_dynamic.py [--cases 256] [--isa avx512_vnni|avx2]

``--isa avx2`` compares against torch run with ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (set it in the
environment: fbgemm reads it at start), where the u8 x s8 GEMM saturates int16 pairs (reduce_range=False
inputs reach it).  Prints one line per configuration: outputs compared, mismatches.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import jax
import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from qjax._src.engines import Fbgemm, Qnnpack  # noqa: E402
from tests.qops import test_dynamic as td  # noqa: E402  (the tests' case generators and torch calls)
from tests.qops import test_embedding as te  # noqa: E402

warnings.simplefilter("ignore")
torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=256)
    ap.add_argument("--isa", default="avx512_vnni")
    ap.add_argument("--embedding-only", action="store_true")
    a = ap.parse_args()
    for bits in (8, 4):
        bad = total = 0
        for seed in range(a.cases // 8):
            rng = np.random.default_rng(seed)
            m, values, s, z = te._module(rng, bits)
            idx, offsets = te._bags(rng)
            psw = rng.standard_normal(te.N).astype(np.float32) if seed % 2 else None
            want = te._torch_bag(m, bits, idx, offsets, psw)
            got = np.asarray(te._bag_fn(bits)(values, s, z, idx, offsets,
                                              np.ones(te.N, np.float32) if psw is None else psw))
            bad += int((got.view(np.int32) != want.view(np.int32)).sum())
            total += want.size
        print(f"embedding_bag {bits}-bit: {bad} of {total} outputs differ", flush=True)
    if a.embedding_only:
        return
    engines = {"fbgemm": Fbgemm(isa=a.isa), "x86": None, "qnnpack": Qnnpack()}
    for m, k, o in [(1, 8, 8), (4, 37, 13), (7, 130, 33)]:
        cases = td._cases(m * 1000 + k, a.cases, m, k, o)
        for engine in ("fbgemm", "x86", "qnnpack"):
            eng = engines[engine] or Fbgemm(isa=a.isa)
            for use_bias in (True, False):
                f = jax.jit(jax.vmap(lambda x, w, ws, wz, b, rr: eng.linear_dynamic(
                    x, w, ws, wz, False, b if use_bias else None, reduce_range=rr)))
                xs, w, ws, wz, b, pc, rr = (np.stack(v) for v in zip(*cases))
                got = np.asarray(f(xs, w, ws, wz, b, rr))
                want = np.stack([td._torch_dynamic(engine, *c, use_bias) for c in cases])
                bad = int((got.view(np.int32) != want.view(np.int32)).sum())
                print(f"linear_dynamic {engine:8s} isa={a.isa} M,K,O={m},{k},{o} bias={use_bias}: "
                      f"{bad} of {want.size} outputs differ", flush=True)


if __name__ == "__main__":
    main()
