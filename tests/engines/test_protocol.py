"""The engine protocol: every engine implements every method, refuses clearly, and a user's own engine plugs in."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import qjax
from qjax import engines
from qjax._src.kernels.conv import conv_accumulate
from qjax._src.kernels.linear import linear_accumulate

ALL = [engines.Fbgemm(), engines.Qnnpack(), engines.Onednn(), engines.X86(), engines.Reference(),
       engines.HardwareSpec(), engines.get_spec("dyadic8")]


@pytest.mark.parametrize("engine", ALL, ids=lambda e: e.name)
def test_every_engine_implements_the_whole_protocol(engine):
    assert isinstance(engine, engines.Engine)
    missing = [m for m in engines.ENGINE_METHODS if not callable(getattr(engine, m, None))]
    assert missing == []
    assert engines.resolve(engine) is engine
    hash(engine)  # a static argument of jitted functions


@pytest.mark.parametrize("name, cls", [("fbgemm", engines.Fbgemm), ("qnnpack", engines.Qnnpack),
                                       ("onednn", engines.Onednn), ("x86", engines.X86),
                                       ("reference", engines.Reference), ("gemmlowp", engines.HardwareSpec),
                                       ("dyadic16:acc=24", engines.HardwareSpec)])
def test_resolve_names(name, cls):
    assert isinstance(engines.resolve(name), cls)


def test_resolve_errors_name_the_rule():
    with pytest.raises(ValueError, match="engine='tpu' is unknown; registered engines"):
        engines.resolve("tpu")
    with pytest.raises(TypeError, match="lacks the engine methods"):
        engines.resolve(object())


def test_x86_dispatch_is_one_function():
    x86 = engines.X86()
    assert isinstance(engines.layer_engine(x86, np.zeros(4, np.int32), 1), engines.Onednn)
    assert isinstance(engines.layer_engine(x86, np.array([0, 1, 0, 0], np.int32), 1), engines.Fbgemm)
    assert isinstance(engines.layer_engine(x86, np.zeros(4, np.int32), 101), engines.Fbgemm)
    assert isinstance(engines.layer_engine(x86, np.zeros(4, np.int32), 1, (1, 0)), engines.Fbgemm)
    assert engines.layer_engine(engines.Fbgemm(), np.array([3]), 1) == engines.Fbgemm()


def test_refusals_are_one_line_errors():
    x = qjax.quantize(jnp.ones((1, 2, 3, 3)), 0.1, 3, qjax.quint8)
    w = qjax.quantize(jnp.ones((2, 1, 2, 2)), 0.1, 0, qjax.qint8)
    with pytest.raises(engines.EngineRefusal, match="engine 'gemmlowp' has no conv_transpose arithmetic"):
        qjax.conv_transpose(x, w, scale=0.1, zero_point=0, engine="gemmlowp")
    with pytest.raises(engines.EngineRefusal, match="explain"):
        engines.Qnnpack().describe("conv")


@dataclasses.dataclass(frozen=True)
class TruncatingChip(engines.TorchCpuOps):
    """A user's chip: exact int32 accumulation, then ``(acc * M) >> 16`` truncating toward -inf with a 16-bit
    multiplier computed in float32 from the scales; torch's CPU arithmetic for the non-GEMM ops; no transposed conv."""

    name = "truncating_chip"
    torch_engine = None

    def _requant(self, acc, x_scale, w_scale, bias, out_scale, out_zero_point, relu):
        m = jnp.round(jnp.asarray(x_scale, jnp.float32) * jnp.asarray(w_scale, jnp.float32)
                      / jnp.asarray(out_scale, jnp.float32) * 65536.0).astype(jnp.int32)
        if bias is not None:
            acc = acc + jnp.round(bias / (jnp.asarray(x_scale, jnp.float32) * w_scale)).astype(jnp.int32)
        y = jnp.right_shift(acc * m, 16) + out_zero_point
        return jnp.clip(y, out_zero_point if relu else 0, 255)

    def conv(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
             out_zero_point, geometry, relu, key=None, scales64=None):
        acc = conv_accumulate(x, x_zero_point, w, w_zero_point, strides=geometry.strides, padding=geometry.padding,
                              dilation=geometry.dilation, groups=geometry.groups)
        return self._requant(acc, x_scale, w_scale, bias, out_scale, out_zero_point, relu)

    def conv_transpose(self, *args, **kwargs):
        engines.refuse(self, "conv_transpose")

    def linear(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, w_per_channel, bias, out_scale,
               out_zero_point, relu, key=None, scales64=None):
        acc = linear_accumulate(x, x_zero_point, w, w_zero_point)
        return self._requant(acc, x_scale, w_scale, bias, out_scale, out_zero_point, relu)


def test_a_users_engine_runs_the_public_ops_and_models():
    rng = np.random.default_rng(0)
    xq = qjax.QArray(rng.integers(0, 256, (2, 3, 5, 5)).astype(np.uint8), np.float32(0.02), 7, qjax.quint8)
    wq = qjax.QArray(rng.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8), np.float32(0.01), 0, qjax.qint8)
    chip = TruncatingChip()
    y = qjax.conv(xq, wq, None, scale=0.05, zero_point=10, padding=1, engine=chip)
    # the chip's rule, by hand in numpy (int64): exact sum of (x - zx)(w - zw), then (acc * m) >> 16
    x = np.pad(np.asarray(xq.values, np.int64) - 7, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = np.asarray(wq.values, np.int64)
    acc = np.zeros((2, 4, 5, 5), np.int64)
    for i in range(3):
        for j in range(3):
            acc += np.einsum("nchw,oc->nohw", x[:, :, i:i + 5, j:j + 5], w[:, :, i, j])
    m = int(np.round(np.float32(0.02) * np.float32(0.01) / np.float32(0.05) * np.float32(65536.0)))
    want = np.clip(((acc * m) >> 16) + 10, 0, 255)
    np.testing.assert_array_equal(np.asarray(y.values), want)
    # the same engine in a linear layer and behind the non-GEMM ops it inherits
    lin = qjax.linear(qjax.QArray(xq.values.reshape(2, -1)[:, :27], xq.scale, 7, qjax.quint8),
                      qjax.QArray(w.reshape(4, 27).astype(np.int8), wq.scale, 0, qjax.qint8), scale=0.05,
                      zero_point=10, engine=chip)
    assert lin.shape == (2, 4)
    assert chip.relu(y).shape == y.shape
