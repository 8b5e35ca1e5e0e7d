"""qjax.interop.pt2e: torch.export / convert_pt2e graphs, ExportedPrograms and .pt2 files.

Arithmetic "converted" against torch's own run of the graph (0 mismatches on random and tie-seeking
inputs, with double scales that are not float32 values), its refusals, the "inductor" dispatch, the
files (never unpickled) and from_torch's example-input errors.
"""

import json
import os
import warnings
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax  # noqa: E402
from qjax.cli import main as cli_main  # noqa: E402
from qjax._src.interop.pt2e import from_pt2e  # noqa: E402
from qjax._src.interop.torch_common import TorchImportError  # noqa: E402

import torch.ao.quantization.fx._decomposed  # noqa: E402,F401  (registers quantized_decomposed)

qd = torch.ops.quantized_decomposed


def _double_scales(n, seed=0):
    """Python-float scales whose double reciprocal rounds to another float32 than the float32 scale's
    (torch's ``1.0 / scale`` is a double division: these tell the two rules apart)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        s = float(rng.uniform(0.002, 0.05))
        if np.float32(1.0 / s) != np.float32(1.0) / np.float32(s) and float(np.float32(s)) != s:
            out.append(s)
    return out


S_IN, S_B, S_OUT = _double_scales(3)


def _ties(scale, lo=-300, hi=300):
    """Inputs ``x`` with ``fl32(x * fl32(1/scale))`` exactly ``k + 1/2``, and their float32 neighbours."""
    inv = np.float32(1.0 / scale)
    k = np.arange(lo, hi)
    x = ((k + 0.5) / inv).astype(np.float32)
    x = x[(x * inv).astype(np.float32) == (k + 0.5).astype(np.float32)]
    return np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, -np.float32(np.inf))])


class Decomposed(torch.nn.Module):
    """The quantized_decomposed ops (per tensor with Python-float scales, per channel, .tensor) around the
    order-independent float ops, as a convert_pt2e graph has them."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("sc", torch.tensor([0.011, 0.02, 0.0131, 0.05], dtype=torch.float32))
        self.register_buffer("zp", torch.tensor([0, 3, -2, 1], dtype=torch.int64))
        self.register_buffer("w", torch.randint(-128, 127, (4, 1, 1), dtype=torch.int8, generator=g))
        self.register_buffer("t_scale", torch.tensor(0.0173, dtype=torch.float32))
        self.register_buffer("t_zp", torch.tensor(-5, dtype=torch.int64))

    def forward(self, x, y):
        a = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, S_IN, 131, 0, 255, torch.uint8), S_IN, 131, 0, 255,
                                     torch.uint8)
        b = qd.dequantize_per_tensor(qd.quantize_per_tensor(y, S_B, 120, 0, 255, torch.uint8), S_B, 120, 0, 255,
                                     torch.uint8)
        c = torch.relu(a + b) - 0.25 * a
        c = torch.nn.functional.max_pool2d(c, 3, 2, 1, ceil_mode=True)
        c = c * qd.dequantize_per_channel(self.w, self.sc, self.zp, 0, -128, 127, torch.int8)
        q = qd.quantize_per_channel(c, self.sc, self.zp, 1, -128, 127, torch.int8)
        d = torch.nn.functional.hardtanh(qd.dequantize_per_channel(q, self.sc, self.zp, 1, -128, 127, torch.int8),
                                         -0.5, 0.7)
        e = qd.dequantize_per_tensor.tensor(qd.quantize_per_tensor.tensor(torch.clamp(c, min=-1.0), self.t_scale,
                                                                          self.t_zp, -128, 127, torch.int8),
                                            self.t_scale, self.t_zp, -128, 127, torch.int8)
        out = torch.flatten(torch.cat([d, e.permute(0, 1, 3, 2)], 1), 1)
        return qd.quantize_per_tensor(out, S_OUT, 3, -128, 127, torch.int8)


SHAPE = (2, 4, 9, 9)


@pytest.fixture(scope="module")
def exported():
    m = Decomposed()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (torch.randn(SHAPE), torch.randn(SHAPE)))
    return m, ep, qjax.from_torch(ep)


def _inputs(seed):
    """Random inputs, and inputs whose products with each quantize's inverse scale are exact ties."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.5, SHAPE).astype(np.float32)
    y = rng.normal(0, 1.0, SHAPE).astype(np.float32)
    tx, ty = _ties(S_IN), _ties(S_B)
    nx, ny = min(x.size, tx.size), min(y.size, ty.size)
    x.reshape(-1)[:nx] = rng.permutation(tx)[:nx]
    y.reshape(-1)[:ny] = rng.permutation(ty)[:ny]
    return [(x, y), (rng.normal(0, 3, SHAPE).astype(np.float32), rng.normal(0, 3, SHAPE).astype(np.float32))]


def test_converted_equals_torch_on_random_and_tie_inputs(exported):
    m, ep, qm = exported
    total = 0
    for seed in range(3):
        for x, y in _inputs(seed):
            want = m(torch.from_numpy(x), torch.from_numpy(y)).numpy()
            got = np.asarray(qm(x, y))
            assert got.dtype == want.dtype == np.int8
            assert int((got != want).sum()) == 0
            total += want.size
    assert total == 6 * 2 * 4 * 5 * 10


def test_tie_inputs_tell_the_quantize_rules_apart():
    """The data of the test above catches the plausible wrong rules: the zero point added before rounding
    (torch.quantize_per_tensor's order) and the float32 scale's reciprocal instead of the double's."""
    x = _ties(S_IN)
    want = qd.quantize_per_tensor(torch.from_numpy(x), S_IN, 131, 0, 255, torch.uint8).numpy()
    inv, inv32 = np.float32(1.0 / S_IN), np.float32(1.0) / np.float32(S_IN)
    got = np.asarray(from_pt2e(_single_quantize_program()).__call__(x))
    assert (got != want).sum() == 0
    zp_first = np.clip(np.round((x * inv).astype(np.float32) + 131), 0, 255)
    float32_inverse = np.clip(np.round((x * inv32).astype(np.float32)) + 131, 0, 255)
    assert (zp_first != want).sum() > 0 and (float32_inverse != want).sum() > 0
    # dequantize multiplies by the scale cast to float32, not in double
    q = torch.arange(256, dtype=torch.uint8)
    d = qd.dequantize_per_tensor(q, S_IN, 131, 0, 255, torch.uint8).numpy()
    in_double = ((q.numpy().astype(np.float64) - 131) * S_IN).astype(np.float32)
    assert (in_double != d).sum() > 0


class _Quantize(torch.nn.Module):
    def forward(self, x):
        return qd.quantize_per_tensor(x, S_IN, 131, 0, 255, torch.uint8)


def _single_quantize_program():
    return torch.export.export(_Quantize(), (torch.zeros(_ties(S_IN).shape),))


# ------------------------------------------------------------------------------------------ convert_pt2e


@pytest.fixture(scope="module")
def converted():
    """A small conv model through torchao's prepare_pt2e / convert_pt2e with X86InductorQuantizer."""
    pytest.importorskip("torchao")
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)

    class Chain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.c2(torch.relu(self.c1(x)))

    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(Chain().eval(), (x,)).module()
        p = prepare_pt2e(gm, xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config()))
        for _ in range(2):
            p(torch.randn(2, 3, 8, 8))
        c = convert_pt2e(p)
    return c, x


def test_converted_refuses_float_conv_naming_node_and_inductor(converted):
    c, _ = converted
    assert c.training  # an exported GraphModule stays in "training mode": no eval() demanded of it
    with pytest.raises(TorchImportError, match=r"node 'conv2d' \(aten\.conv2d\.default\).*arithmetic='inductor'"):
        qjax.from_torch(c)


def test_inductor_dispatch_equals_the_lowered_module(converted):
    pytest.importorskip("qjax._src.interop.pt2e_inductor")
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    c, x = converted
    qm = qjax.from_torch(c, arithmetic="inductor")  # the example input comes from torch.export's shapes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low = lower_pt2e_quantized_to_x86(c, (x,))
        xt = torch.randn(2, 3, 8, 8) * 2
        with torch.no_grad():
            want = low(xt).numpy()
    assert int((np.asarray(qm(xt.numpy())) != want).sum()) == 0


def test_arithmetic_argument_errors(converted):
    c, _ = converted
    with pytest.raises(TorchImportError, match="arithmetic='exact'; use one of"):
        qjax.from_torch(c, arithmetic="exact")
    eager = torch.nn.Sequential(torch.nn.ReLU()).eval()
    with pytest.raises(TorchImportError, match="arithmetic='inductor' applies to torch.export graphs"):
        qjax.from_torch(eager, torch.zeros(1, 3), arithmetic="inductor")


# ------------------------------------------------------------------------------------------ files


def test_pt2_round_trip_and_cli_verify(exported, tmp_path):
    _, ep, qm = exported
    path = str(tmp_path / "model.pt2")
    torch.export.save(ep, path)
    qf = qjax.from_torch(path)
    x, y = _inputs(7)[0]
    assert (np.asarray(qf(x, y)) == np.asarray(qm(x, y))).all()
    single = str(tmp_path / "single.pt2")
    torch.export.save(torch.export.export(_Flat(), (torch.randn(4, 3, 5),)), single)
    assert cli_main(["verify", single, "--n", "8", "--batch-size", "4", "--no-progress"]) == 0


class _Flat(torch.nn.Module):
    def forward(self, x):
        q = qd.quantize_per_tensor(torch.relu(x), S_B, 7, 0, 255, torch.uint8)
        return torch.flatten(qd.dequantize_per_tensor(q, S_B, 7, 0, 255, torch.uint8), 1)


def test_pt2_needing_a_pickle_is_refused(exported, tmp_path):
    _, ep, _ = exported
    good, bad = str(tmp_path / "good.pt2"), str(tmp_path / "bad.pt2")
    torch.export.save(ep, good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("_weights_config.json"):
                cfg = json.loads(data)
                next(iter(cfg["config"].values()))["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(info, data)
    with pytest.raises(TorchImportError, match="stored as a Python pickle.*never unpickles"):
        qjax.from_torch(bad)
    saved = str(tmp_path / "state.pt")
    torch.save({"w": torch.zeros(2)}, saved)
    with pytest.raises(TorchImportError, match="never unpickles torch.save files"):
        qjax.from_torch(saved, torch.zeros(1))


# ------------------------------------------------------------------------------------------ example inputs


@pytest.fixture(scope="module")
def conv1d_model():
    m = torch.nn.Sequential(torch.ao.quantization.QuantStub(), torch.nn.Conv1d(2, 4, 3),
                            torch.ao.quantization.DeQuantStub()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
        p = torch.ao.quantization.prepare(m)
        p(torch.randn(2, 2, 16))
        return torch.ao.quantization.convert(p)


def test_no_example_input_asks_for_one(conv1d_model, tmp_path):
    with pytest.raises(TorchImportError, match=r"^example_input: .*default \(1, 3, 224, 224\).*pass example_input="):
        qjax.from_torch(conv1d_model, engine="fbgemm")
    path = str(tmp_path / "model.pt")
    torch.jit.save(torch.jit.script(conv1d_model), path)
    with pytest.raises(TorchImportError, match="^example_input: "):
        qjax.from_torch(path, engine="fbgemm")


def test_model_path_loads_torchscript(conv1d_model, tmp_path):
    path = str(tmp_path / "model.pt")
    torch.jit.save(torch.jit.script(conv1d_model), path)
    x = torch.randn(3, 2, 16)
    qm = qjax.from_torch(path, x, engine="fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prev = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:
            want = torch.jit.load(path)(x).numpy()
        finally:
            torch.backends.quantized.engine = prev
    assert (np.asarray(qm(x.numpy())) == want).all()
    assert os.path.isfile(path)
