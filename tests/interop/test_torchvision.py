"""torchvision's quantizable models, converted offline for fbgemm / x86 / qnnpack and imported with from_torch:
0 mismatches against the torch model's own output.

Each (model, engine) is built once (``tests/torchvision_models.py``: weights=None, randomized batch norm, the
model's own ``fuse_model`` + eager prepare/convert with the engine's qconfig, two calibration batches) and
imported through torch.fx; the forward is one jitted function.  The full 9 x 3 matrix (both importers) costs
many minutes of XLA compilation (resnext101 / inception_v3 / googlenet / mobilenet_v3 ~45-75 CPU-seconds
each; resnet18 / shufflenet ~15-25), so the suite runs ``SUITE`` (one model per engine: shufflenet for its
mean on fbgemm and qnnpack, resnet18 for x86's per-layer convs) and the whole
matrix runs with ``QJAX_TORCHVISION_FULL=1`` (FX and TorchScript) or ``python scripts/check_torchvision.py
--torchscript`` (mismatch counts per model / engine / importer).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ..torchvision_models import ENGINES, QUANTIZABLE, build_quantized, import_torchvision

pytestmark = pytest.mark.torch

#: (model, engine, input side): shufflenet at 64x64 ends in a 2x2 map, so its mean([2, 3]) runs torch's
#: dequantize / float mean / quantize path (fbgemm, x86) or QNNPACK's global average pool (qnnpack)
SUITE = [("shufflenet_v2_x0_5", "fbgemm", 64), ("resnet18", "x86", 32), ("shufflenet_v2_x0_5", "qnnpack", 64)]
FULL = os.environ.get("QJAX_TORCHVISION_FULL") == "1"
_SIZE = {"inception_v3": 75, "shufflenet_v2_x0_5": 64, "shufflenet_v2_x1_0": 64}
MATRIX = [(m, e, _SIZE.get(m, 32)) for m in QUANTIZABLE for e in ENGINES]
CONFIGS = MATRIX if FULL else SUITE


@pytest.fixture(scope="module")
def torchvision():
    try:
        return import_torchvision()
    except ImportError as e:  # the test extra brings torchvision and pillow
        pytest.skip(f"torchvision not importable: {e}")


def _run(model, engine, x, torchscript=False):
    import jax

    import qjax

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with torch.no_grad():
            want = model(x).numpy()
            source = torch.jit.trace(model, x) if torchscript else model
        qm = qjax.from_torch(source, x, engine=engine)
    finally:
        torch.backends.quantized.engine = previous
    got = np.asarray(jax.jit(lambda m, v: m(v))(qm, x.numpy()))
    assert got.shape == want.shape
    return int((got.view(np.uint32) != want.view(np.uint32)).sum()), want.size


@pytest.mark.parametrize("name,engine,size", CONFIGS, ids=[f"{m}-{e}" for m, e, _ in CONFIGS])
def test_torchvision_model_imports_bit_exact(torchvision, name, engine, size):
    torch.manual_seed(0)
    model = build_quantized(name, engine, size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    for torchscript in ((False, True) if FULL else (False,)):
        bad, n = _run(model, engine, x, torchscript)
        assert bad == 0, f"{name} on {engine} ({'torchscript' if torchscript else 'fx'}): {bad} of {n} outputs differ"


def test_the_matrix_covers_every_quantizable_model_on_every_engine():
    assert {m for m, _, _ in MATRIX} == set(QUANTIZABLE) and {e for _, e, _ in SUITE} == set(ENGINES)
