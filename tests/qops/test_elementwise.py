"""qjax.qops elementwise ops vs torch 2.13 (fbgemm engine): 0 mismatches.

Tie-heavy cases use power-of-two scales, where the vector lambda (round, then add the
zero point) and the scalar lambda (add, then round) really differ; sizes straddle the
64-element blocks and the 32768-element threading grain; layouts are contiguous and
channels-last.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax._src.qops import elementwise as ew
from qjax._src.qops.paths import CHANNELS_LAST, CONTIGUOUS

from .. import torch_ref
from ..helpers import assert_same

pytestmark = pytest.mark.torch

SHAPES = [(1, 3, 1, 1), (1, 1, 7, 9), (2, 5, 6, 7), (1, 64, 1, 1), (1, 3, 8, 8), (2, 17, 33, 31), (1, 8, 64, 80)]
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True, scope="module")
def _fbgemm():
    torch_ref.set_engine("fbgemm")


def make(rng, shape, dtype, memory_format, ties):
    qmin, qmax = dtype.qmin, dtype.qmax
    v = rng.integers(qmin, qmax + 1, size=shape).astype(dtype.storage)
    # float32 scales, as observers produce them (qjax keeps scales in float32)
    s = 2.0 ** int(rng.integers(-8, -2)) if ties else float(np.float32(np.exp(rng.uniform(-5, -1))))
    z = int(rng.integers(qmin, qmax + 1))
    t = torch_ref.qtensor(v, s, z)
    if memory_format == CHANNELS_LAST:
        t = t.contiguous(memory_format=torch.channels_last)
    return qjax.QArray(v, s, z, dtype), t


def out_qparams(rng, dtype, ties, base):
    s = base * (0.5 if ties else float(np.exp(rng.uniform(-0.7, 0.7))))
    return s, int(rng.integers(dtype.qmin, dtype.qmax + 1))


CASES = [(shape, dt, mf, ties) for shape in SHAPES for dt in (qjax.quint8, qjax.qint8)
         for mf in (CONTIGUOUS, CHANNELS_LAST) for ties in (False, True)]


def ids(c):
    return f"{'x'.join(map(str, c[0]))}-{c[1].name}-{c[2]}-{'ties' if c[3] else 'rand'}"


@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_add_and_mul(case):
    shape, dt, mf, ties = case
    rng = np.random.default_rng(hash(ids(case)) % 2**32)
    a, ta = make(rng, shape, dt, mf, ties)
    b, tb = make(rng, shape, dt, mf, ties)
    so, zo = out_qparams(rng, dt, ties, float(a.scale))
    for relu in (False, True):
        want = getattr(torch.ops.quantized, "add_relu" if relu else "add")(ta, tb, so, zo).int_repr().numpy()
        got = ew.add(a, b, so, zo, relu=relu, memory_format=mf, threads=THREADS).values
        assert_same(got, want, f"add relu={relu}")
        so_m = so * float(b.scale) * (4 if ties else 10)
        want = torch.ops.quantized.mul(ta, tb, so_m, zo).int_repr().numpy()
        got = ew.mul(a, b, so_m, zo, relu=False, memory_format=mf, threads=THREADS).values
        assert_same(got, want, "mul")


@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_activations(case):
    shape, dt, mf, ties = case
    rng = np.random.default_rng(1 + hash(ids(case)) % 2**32)
    a, ta = make(rng, shape, dt, mf, ties)
    so, zo = out_qparams(rng, dt, ties, float(a.scale))
    checks = {
        "hardswish": (torch.ops.quantized.hardswish(ta, so, zo), ew.hardswish(a, so, zo, memory_format=mf, threads=THREADS)),
        "hardsigmoid": (torch.nn.functional.hardsigmoid(ta), ew.hardsigmoid(a, memory_format=mf, threads=THREADS)),
        "sigmoid": (torch.sigmoid(ta), ew.sigmoid(a, memory_format=mf, threads=THREADS)),
        "sigmoid_q": (torch.ops.quantized.sigmoid(ta, so, zo), ew.sigmoid(a, so, zo, memory_format=mf, threads=THREADS)),
        "tanh": (torch.tanh(ta), ew.tanh(a, memory_format=mf, threads=THREADS)),
        "elu": (torch.ops.quantized.elu(ta, so, zo, 0.7), ew.elu(a, so, zo, 0.7, memory_format=mf, threads=THREADS)),
        "leaky_relu": (torch.ops.quantized.leaky_relu(ta, 0.1, False, so, zo), ew.leaky_relu(a, 0.1, so, zo, threads=THREADS)),
        "relu": (torch.relu(ta), ew.relu(a)),
        "relu6": (torch.ops.quantized.relu6(ta), ew.relu6(a)),
        "hardtanh": (torch.nn.functional.hardtanh(ta, -0.3, 0.45), ew.hardtanh(a, -0.3, 0.45)),
    }
    for name, (t, q) in checks.items():
        assert_same(q.values, t.int_repr().numpy(), name)
        assert np.float32(t.q_scale()) == np.float32(q.scale) and t.q_zero_point() == int(q.zero_point), name


@pytest.mark.parametrize("case", CASES[::3], ids=[ids(c) for c in CASES[::3]])
def test_scalar_ops(case):
    shape, dt, mf, ties = case
    rng = np.random.default_rng(2 + hash(ids(case)) % 2**32)
    a, ta = make(rng, shape, dt, mf, ties)
    for c in (0.0, 0.37, -1.3, 2.0 * float(a.scale) * 70, -1e3 * float(a.scale)):
        for relu in (False, True):
            t = getattr(torch.ops.quantized, "add_scalar_relu" if relu else "add_scalar")(ta, c)
            q = ew.add_scalar(a, c, relu=relu, memory_format=mf, threads=THREADS)
            assert_same(q.values, t.int_repr().numpy(), f"add_scalar {c}")
            assert np.float32(t.q_scale()) == np.float32(q.scale) and t.q_zero_point() == int(q.zero_point)
        t = torch.ops.quantized.mul_scalar(ta, c)
        q = ew.mul_scalar(a, c)
        assert_same(q.values, t.int_repr().numpy(), f"mul_scalar {c}")
        assert np.float32(t.q_scale()) == np.float32(q.scale) and t.q_zero_point() == int(q.zero_point)
