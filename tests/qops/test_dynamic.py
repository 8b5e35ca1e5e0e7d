"""Dynamic quantization (``quantized::linear_dynamic``, ``nnqd.Linear``) vs torch 2.13: 0 mismatches.

The qparams are compared with ``torch._choose_qparams_per_tensor`` (the same
``ChooseQuantizationParams`` call), the float outputs bit for bit (``view(int32)``).  The data seek
ties: ranges with ``max == -min`` (zero point exactly ``n/2`` before the double roundings), neighbouring
floats, power-of-two steps; activations put exactly on quantization midpoints (power-of-two scales).
Each test also scores a plausible wrong rule on the same data and requires it to miss.
"""

import functools

import jax
from jax import lax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from qjax._src.float32 import fma32_numpy
from qjax._src.qops import dynamic as dyn

from .. import torch_ref

pytestmark = pytest.mark.torch
F32 = np.float32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # torch's dynamic linear on 2 threads costs ~20 ms a call on a busy machine (0.02 ms on one); its
    # arithmetic does not depend on the thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ranges(rng, count):
    """``(min, max)`` pairs that sit on the double roundings' edges."""
    out = []
    for t in range(count):
        a = F32(np.exp(rng.uniform(-12, 8)))
        kind = t % 8
        if kind == 0:
            b = a
        elif kind == 1:
            b = F32(a * rng.integers(1, 255) / rng.integers(1, 255))
        elif kind == 2:
            b = F32(0)
        elif kind == 3:
            a, b = F32(0), a
        elif kind == 4:
            b = np.nextafter(a, F32(np.inf))
        elif kind == 5:
            b = F32(a * np.exp(rng.uniform(-40, 40)))
        elif kind == 6:
            a = F32(rng.integers(0, 256) * 2.0 ** rng.integers(-20, 5))
            b = F32(rng.integers(0, 256) * 2.0 ** rng.integers(-20, 5))
        else:
            b = F32(np.exp(rng.uniform(-12, 8)))
        out.append((-b, a))
    out += [(0, 0), (-1e-30, 1e-30), (-3e-3, 1e-3), (-0.0, 5e-6), (-1e-6, 0), (-1, 1), (-127, 128)]
    return np.array(out, F32)


def _tie_inputs(rng, m, k, rr, exact):
    """Inputs on quantization midpoints: ``exact`` with a power-of-two scale (``x * inv`` is the tie itself),
    else ``fl32((j + 1/2) * s)`` for the scale the range gives (``x * inv`` a hair off the tie, which
    fused and unfused quantization round differently)."""
    n = 127 if rr else 255
    z = int(rng.integers(0, n + 1))
    step = 2.0 ** int(rng.integers(-9, 3)) if exact else float(np.exp(rng.uniform(-6, 1)))
    lo, hi = F32(-z * step), F32((n - z) * step)
    s, zp = dyn.choose_qparams_numpy(lo, hi, reduce_range=rr)
    x = ((rng.integers(-zp, n - zp, size=(m, k)) + 0.5) * np.float64(s)).astype(F32)
    flat = x.reshape(-1)
    flat[0], flat[1] = lo, hi
    return x


def _cases(seed, count, m, k, o):
    rng = np.random.default_rng(seed)
    cases = []
    for t in range(count):
        rr = bool(t % 2)
        if t % 4:
            x = _tie_inputs(rng, m, k, rr, exact=t % 4 == 1)
        else:
            x = (rng.standard_normal((m, k)) * np.exp(rng.uniform(-4, 3)) + rng.uniform(-1, 1)).astype(F32)
        w = rng.integers(-128, 128, size=(o, k)).astype(np.int8)
        per_channel = t % 8 >= 4
        if per_channel:
            ws = np.exp(rng.uniform(-7, -2, size=o)).astype(F32)
            wz = np.zeros(o, np.int32)
        else:
            ws = np.full(o, F32(np.exp(rng.uniform(-7, -2))), F32)
            wz = np.full(o, int(rng.integers(-3, 4)) if t % 5 == 0 else 0, np.int32)
        bias = (rng.standard_normal(o) * np.exp(rng.uniform(-3, 2))).astype(F32)
        cases.append((x, w, ws, wz, bias, per_channel, rr))
    return cases


def _torch_dynamic(engine, x, w, ws, wz, bias, per_channel, rr, use_bias):
    torch_ref.set_engine(engine)
    if per_channel:
        wq = torch._make_per_channel_quantized_tensor(torch.from_numpy(w), torch.from_numpy(ws.astype(np.float64)),
                                                      torch.from_numpy(wz.astype(np.int64)), 0)
    else:
        wq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(w), float(ws[0]), int(wz[0]))
    packed = torch.ops.quantized.linear_prepack(wq, torch.from_numpy(bias) if use_bias else None)
    return torch.ops.quantized.linear_dynamic(torch.from_numpy(x), packed, rr).numpy()


RULES = ("fbgemm", "fbgemm_no_bias", "qnnpack", "qnnpack_no_bias")


@functools.lru_cache(maxsize=None)
def _qjax_batched():
    """One compiled graph for every case: the qparams, and the four output rules of the same accumulator
    (fbgemm / qnnpack, with and without bias), picked per case by ``rule``."""

    def one(x, w, ws, wz, bias, rr, rule):
        s, z = dyn.input_qparams(x, reduce_range=rr)
        outs = [dyn.linear_quantized_input(x, s, z, w, ws, wz, None if "no_bias" in r else bias, relu=False,
                                           saturation=None,
                                           float_output=dyn.float_output_qnnpack if r.startswith("qnnpack")
                                           else dyn.float_output_fbgemm)
                for r in RULES]
        return s, z, lax.select_n(rule, *outs)

    return jax.jit(jax.vmap(one))


def _qjax(cases, rule):
    xs, w, ws, wz, b, pc, rr = (np.stack(v) for v in zip(*cases))
    return (np.asarray(v) for v in _qjax_batched()(xs, w, ws, wz, b, rr, np.full(len(cases), RULES.index(rule))))


M, K, O = 3, 37, 13  # O = 8 + 5: fbgemm's vector columns and its tail
BATCH = 64  # cases per call: one shape, one compilation


def test_choose_qparams_matches_torch_bit_for_bit():
    rng = np.random.default_rng(15)
    r = _ranges(rng, BATCH - 7)
    rr = np.arange(len(r)) % 2 == 1
    # inputs whose min and max are the range (the other entries 0, inside it)
    cases = []
    for (lo, hi), f in zip(r, rr):
        x = np.zeros((M, K), F32)
        x[0, 0], x[1, 3] = lo, hi
        cases.append((x, np.zeros((O, K), np.int8), np.ones(O, F32), np.zeros(O, np.int32), np.zeros(O, F32),
                      False, bool(f)))
    s, z, _ = _qjax(cases, "fbgemm")
    want = [torch._choose_qparams_per_tensor(torch.from_numpy(c[0]), c[6]) for c in cases]
    ws = np.array([w[0] for w in want], np.float64).astype(F32)
    wz = np.array([w[1] for w in want])
    assert (s.view(np.int32) != ws.view(np.int32)).sum() == 0
    assert (z != wz).sum() == 0
    # the numpy twin agrees, and the same rule in float32 (no double) misses on this data
    twin = [dyn.choose_qparams_numpy(lo, hi, reduce_range=bool(f)) for (lo, hi), f in zip(r, rr)]
    assert [(F32(t[0]).view(np.int32), t[1]) for t in twin] == list(zip(ws.view(np.int32), wz))
    n = np.where(rr, F32(127), F32(255))
    s32 = ((np.maximum(r[:, 1], 0) - np.minimum(r[:, 0], 0)).astype(F32) / n).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        z32 = np.rint((-np.minimum(r[:, 0], 0) / np.maximum(s32, F32(6.1e-5))).astype(F32))
    assert ((s32.view(np.int32) != ws.view(np.int32)) | (z32 != wz)).sum() > 0


@settings(max_examples=2)
@given(seed=st.integers(0, 2**31 - 1))
def test_linear_dynamic_matches_torch_bit_for_bit(seed):
    """fbgemm and x86 (whose linear layers are fbgemm's) and qnnpack (which ignores reduce_range: torch
    warns "qnnpack incorrectly ignores reduce_range"), with and without bias, against torch."""
    cases = _cases(seed, BATCH, M, K, O)
    for engine, rule in [("fbgemm", "fbgemm"), ("x86", "fbgemm_no_bias"), ("qnnpack", "qnnpack"),
                         ("qnnpack", "qnnpack_no_bias")]:
        run = [c[:6] + (c[6] and engine != "qnnpack",) for c in cases]
        _, _, out = _qjax(run, rule)
        want = np.stack([_torch_dynamic(engine, *c, "no_bias" not in rule) for c in cases])
        assert (out.view(np.int32) != want.view(np.int32)).sum() == 0, (engine, rule)


def test_linear_dynamic_wrong_rules_miss():
    """The same kind of data scored with plausible wrong rules: each engine's output rule swapped for the
    other's, and unfused input quantization."""
    cases = _cases(7, BATCH, M, K, O)
    want = np.stack([_torch_dynamic("fbgemm", *c, True) for c in cases])
    for rule, wrong in [("fbgemm", False), ("qnnpack", True)]:
        _, _, out = _qjax(cases, rule)
        assert ((out.view(np.int32) != want.view(np.int32)).sum() > 0) == wrong
    bad = 0
    for (x, w, ws, wz, b, pc, rr), y in zip(cases, want):
        s, z = dyn.choose_qparams_numpy(x.min(), x.max(), reduce_range=rr)
        xq = np.clip(np.rint((x * (F32(1) / s)).astype(F32) + F32(z)), 0, 255).astype(np.uint8)
        acc = (xq.astype(np.int64) - z) @ (w.astype(np.int64) - wz[:, None]).T
        yy = fma32_numpy(acc.astype(F32), (s * ws).astype(F32), b)
        bad += int((yy.view(np.int32) != y.view(np.int32)).sum())
    assert bad > 0


def test_public_op_errors_name_the_argument():
    import qjax

    wq = qjax.quantize(np.ones((3, 4), F32), 0.1, 0, qjax.qint8)
    with pytest.raises(qjax.QuantizationError, match="x must be a non-empty"):
        qjax.linear_dynamic(np.zeros((0, 4), F32), wq)
    with pytest.raises(qjax.QuantizationError, match="in_features=4"):
        qjax.linear_dynamic(np.zeros((2, 5), F32), wq)
    with pytest.raises(TypeError, match="x must be a float array"):
        qjax.linear_dynamic(np.zeros((2, 4), np.int32), wq)
    with pytest.raises(qjax.engines.EngineRefusal, match="onednn"):
        qjax.linear_dynamic(np.zeros((2, 4), F32), wq, engine="onednn")
