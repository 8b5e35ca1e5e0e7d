"""from_torch on torch's float-output quantized modules: quantize_dynamic models (nnqd.Linear), nnq.Embedding /
nnq.EmbeddingBag — bit-exact (float outputs compared as int32 bits) — and the clear refusals (dynamic LSTM)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax._src.interop.torch import TorchImportError

pytestmark = pytest.mark.torch
F32 = np.float32


@pytest.fixture(autouse=True)
def _one_thread():
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = engine


class Head(torch.nn.Module):
    """Dynamic linear, a float ReLU, and a per-row embedding bag beside it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(19, 11)
        self.bag = torch.nn.EmbeddingBag(30, 11, mode="sum")
        self.emb = torch.nn.Embedding(30, 11)

    def forward(self, x, idx, offsets):
        return torch.relu(self.fc(x)) + self.bag(idx, offsets) + self.emb(idx[:3])


def _model(per_channel, seed):
    torch.manual_seed(seed)
    m = Head().eval()
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig if per_channel else \
        torch.ao.quantization.default_dynamic_qconfig
    m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear: qconfig})
    emb_qconfig = torch.ao.quantization.float_qparams_weight_only_qconfig
    m.bag.qconfig = m.emb.qconfig = emb_qconfig
    return torch.ao.quantization.convert(torch.ao.quantization.prepare(m), inplace=False)


def _inputs(rng, ties):
    if ties:  # a range with scale 2**-5 exactly (255 steps) and values on quantization midpoints
        x = (rng.integers(-100, 154, size=(3, 19)) + 0.5) * 2.0**-5
        x.flat[0], x.flat[1] = -100 * 2.0**-5, 155 * 2.0**-5
    else:
        x = rng.standard_normal((3, 19)) * 2
    idx = rng.integers(0, 30, 12)
    offsets = np.sort(rng.integers(0, 13, 3))
    offsets[0] = 0
    return torch.from_numpy(x.astype(F32)), torch.from_numpy(idx), torch.from_numpy(offsets)


@pytest.mark.parametrize("engine,per_channel", [("fbgemm", False), ("qnnpack", True)])
def test_dynamic_and_embedding_model_is_bit_exact(engine, per_channel):
    torch.backends.quantized.engine = engine
    model = _model(per_channel, 0)
    assert isinstance(model.fc, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(model.bag, torch.ao.nn.quantized.EmbeddingBag)
    rng = np.random.default_rng(1)
    qm = qjax.from_torch(model, _inputs(rng, False), engine=engine)
    bad = total = 0
    for i in range(6):
        inputs = _inputs(rng, ties=i % 2 == 1)
        with torch.no_grad():
            want = model(*inputs).numpy()
        got = np.asarray(qm(*(t.numpy() for t in inputs)))
        assert got.shape == want.shape and got.dtype == want.dtype
        bad += int((got.view(np.int32) != want.view(np.int32)).sum())
        total += want.size
    assert bad == 0, f"{bad} of {total} outputs differ"


def test_dynamic_lstm_and_fp16_are_refused_in_one_line():
    lstm = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.LSTM(4, 3)).eval(),
                                                  {torch.nn.LSTM})
    with pytest.raises(TorchImportError, match="dynamic quantized LSTM is not supported: its gates") as e:
        qjax.from_torch(lstm, torch.zeros(2, 1, 4))
    assert "\n" not in str(e.value)
    fp16 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(),
                                                  {torch.nn.Linear}, dtype=torch.float16)
    with pytest.raises(TorchImportError, match="float16 weights"):
        qjax.from_torch(fp16, torch.zeros(2, 4))
