"""qjax.nn add / mul / cat / activations / average pooling: integer mode equals torch's quantized ops, QAT forward
equals the integer forward, a residual NNX model and a Linen one go through the lifecycle, chains export to torch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import qjax
from qjax import nn as qnn
from qjax._src.dtypes import quint8


def _q(rng, shape, scale, zp):
    return qjax.QArray(jnp.asarray(rng.integers(0, 256, shape), jnp.uint8), jnp.float32(scale), jnp.int32(zp),
                       quint8, None)


def _torch_q(torch, q):
    """The same integers as a channels-last torch tensor (what a quantized conv returns)."""
    v = np.asarray(q.values)
    t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1))),
                                                float(q.scale), int(q.zero_point))
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _nhwc(torch, t):
    return np.moveaxis(t.int_repr().numpy(), 1, -1) if t.dim() >= 3 else t.int_repr().numpy()


def _set(mod, scale, zp):
    mod.scale.set_value(jnp.float32(scale))
    mod.zero_point.set_value(jnp.float32(zp))
    return mod


@pytest.mark.torch
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31), threads=st.sampled_from([1, 2]), relu=st.booleans(),
       hw=st.sampled_from([(5, 7), (9, 4), (1, 1), (16, 16)]), c=st.sampled_from([3, 8, 33]))
def test_integer_modules_equal_torch(seed, threads, relu, hw, c):
    import torch
    import torch.ao.nn.quantized as nnq
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    shape = (2, *hw, c)
    a = _q(rng, shape, rng.uniform(0.01, 0.2), rng.integers(0, 256))
    b = _q(rng, shape, rng.uniform(0.01, 0.2), rng.integers(0, 256))
    so, zo = float(np.float32(rng.uniform(0.02, 0.3))), int(rng.integers(0, 256))
    ta, tb = _torch_q(torch, a), _torch_q(torch, b)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        checks = []
        add = _set(qnn.QAdd(relu=relu, threads=threads, mode="integer"), so, zo)
        want = (torch.ops.quantized.add_relu if relu else torch.ops.quantized.add)(ta, tb, so, zo)
        checks.append(("add", add(a, b), want))
        mul = _set(qnn.QMul(relu=relu, threads=threads, mode="integer"), so, zo)
        want = (torch.ops.quantized.mul_relu if relu else torch.ops.quantized.mul)(ta, tb, so, zo)
        checks.append(("mul", mul(a, b), want))
        cat = _set(qnn.QCat(threads=threads, mode="integer"), so, zo)
        checks.append(("cat", cat(a, b), torch.ops.quantized.cat([ta, tb], 1, so, zo)))
        hs = _set(qnn.Hardswish(threads=threads, mode="integer"), so, zo)
        checks.append(("hardswish", hs(a), nnq.Hardswish(so, zo)(ta)))
        checks.append(("relu6", qnn.ReLU6(mode="integer")(a), nnq.ReLU6()(ta)))
        checks.append(("relu", qnn.ReLU(mode="integer")(a), F.relu(ta)))
        if min(hw) >= 3:
            pool = qnn.AvgPool((3, 3), (2, 2), 1, count_include_pad=bool(relu), mode="integer")
            checks.append(("avg_pool", pool(a), F.avg_pool2d(ta, 3, 2, 1, count_include_pad=bool(relu))))
        gap = qnn.GlobalAvgPool(mode="integer")(a)
        checks.append(("global_avg_pool", gap, F.adaptive_avg_pool2d(ta, 1).flatten(1)))
    finally:
        torch.set_num_threads(prev)
    for name, got, want in checks:
        assert float(got.scale) == want.q_scale() and int(got.zero_point) == want.q_zero_point(), name
        mismatches = int((np.asarray(got.values) != _nhwc(torch, want)).sum())
        assert mismatches == 0, f"{name}: {mismatches} mismatches"


class Residual(nnx.Module):
    """conv -> (conv + skip) -> hardswish -> cat with a pooled branch -> global pool -> dense."""

    def __init__(self, engine="fbgemm", *, rngs):
        self.quant = qnn.QuantStub()
        self.conv1 = qnn.QConv(3, 8, (3, 3), padding=1, relu=True, engine=engine, rngs=rngs)
        self.conv2 = qnn.QConv(8, 8, (3, 3), padding=1, engine=engine, rngs=rngs)
        self.add = qnn.QAdd(relu=True, engine=engine)
        self.act = qnn.Hardswish(engine=engine)
        self.mul = qnn.QMul(engine=engine)
        self.pool = qnn.AvgPool((3, 3), (1, 1), 1)
        self.relu6 = qnn.ReLU6()
        self.cat = qnn.QCat(engine=engine)
        self.gap = qnn.GlobalAvgPool()
        self.fc = qnn.QDense(16, 10, engine=engine, rngs=rngs)
        self.dequant = qnn.DeQuantStub()

    def __call__(self, x):
        x = self.quant(x)
        h = self.conv1(x)
        y = self.act(self.add(self.conv2(h), h))
        y = self.mul(y, h)
        z = self.relu6(self.pool(y))
        return self.dequant(self.fc(self.gap(self.cat(y, z))))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 8, 8, 3)).astype(np.float32), jnp.asarray(rng.integers(0, 10, 16))


@pytest.mark.parametrize("engine", ["fbgemm", "gemmlowp"])
def test_residual_model_lifecycle(data, engine):
    x, labels = data
    m = Residual(engine=engine, rngs=nnx.Rngs(0))
    qnn.prepare(m)
    for i in range(0, len(x), 8):
        m(x[i:i + 8])
    qnn.prepare_qat(m)
    assert float(m.add.scale.get_value()) != 1.0  # loaded from its observer
    if engine != "fbgemm":  # training is the same code under every arithmetic: check the forward only
        y_qat = np.asarray(m(x))
        qnn.convert(m)
        np.testing.assert_array_equal(np.asarray(m(x)), y_qat)
        return
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()
    opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, g = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, g)
        return loss, g

    losses = []
    for _ in range(6):
        loss, g = step(m, opt)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert np.isfinite(np.asarray(g.add.scale.get_value())) and float(np.abs(g.add.scale.get_value())) > 0
    y_qat = np.asarray(nnx.jit(lambda m, x: m(x))(m, x))
    qnn.convert(m)
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, x: m(x))(m, x)), y_qat)


@pytest.mark.torch
def test_chain_with_activations_and_pooling_exports_to_torch(data):
    import torch

    x, _ = data
    r = nnx.Rngs(1)
    m = qnn.Sequential(qnn.QuantStub(), qnn.QConv(3, 8, (3, 3), padding=1, rngs=r), qnn.Hardswish(threads=2),
                       qnn.QConv(8, 8, (3, 3), padding=1, rngs=r), qnn.ReLU6(), qnn.AvgPool((2, 2)), qnn.ReLU(),
                       qnn.GlobalAvgPool(threads=2), qnn.QDense(8, 10, rngs=r), qnn.DeQuantStub())
    qnn.prepare(m)
    m(x)
    qnn.convert(m, from_observers=True)
    y = np.asarray(m(x))
    tm = qnn.to_torch(m)
    from qjax._src.interop.torch import torch_engine

    with torch_engine("fbgemm"):
        want = tm(torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))).numpy()
    assert int((y != want).sum()) == 0


def test_linen_residual_add():
    from flax import linen

    class Net(linen.Module):
        mode: str = "float"

        @linen.compact
        def __call__(self, x):
            x = qnn.linen.QuantStub(mode=self.mode)(x)
            h = qnn.linen.QConv(3, 4, (3, 3), padding=1, relu=True, mode=self.mode)(x)
            y = qnn.linen.QConv(4, 4, (3, 3), padding=1, mode=self.mode)(h)
            y = qnn.linen.QAdd(relu=True, mode=self.mode)(y, h)
            y = qnn.linen.GlobalAvgPool(mode=self.mode)(y)
            return qnn.linen.DeQuantStub(mode=self.mode)(y)

    x = np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype(np.float32)
    v = Net("float").init(jax.random.key(0), x)
    _, upd = Net("calibrate").apply(v, x, mutable=["ObserverState"])
    v = {**v, **upd}
    _, upd = Net("load").apply(v, x, mutable=["QParam"])
    v = {**v, **upd}
    y_qat = np.asarray(Net("qat").apply(v, x))
    np.testing.assert_array_equal(np.asarray(Net("integer").apply(v, x)), y_qat)
    g = jax.grad(lambda p: jnp.sum(Net("qat").apply({**v, "params": p}, x) ** 2))(v["params"])
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("est", ["ste", "lsq", "lsq_plus"])
@pytest.mark.parametrize("kind", ["add", "hardswish", "relu6"])
def test_qat_backward_equals_the_surrogates_gradient(kind, est):
    """The elementwise modules' QAT gradient (qjax.ste.exact's custom VJP: the integer op forward) is, bit for bit,
    jax.grad of the surrogate fq(float_op(values); s, z): every input value, scale and zero point and the module's
    own scale / zero point (a passthrough op's output takes its input's).  Both are jitted, as a QAT step is
    (run op by op, the surrogate's LSQ scale sum can differ from a compiled one in the last bit)."""
    rng = np.random.default_rng(7)
    shape = (2, 5, 4, 3)
    qa, qb = _q(rng, shape, 0.04, 110), _q(rng, shape, 0.03, 140)
    va, vb = qjax.dequantize(qa), qjax.dequantize(qb)
    if kind == "add":
        m, float_op = _set(qnn.QAdd(relu=True, estimator=est, mode="qat"), 0.06, 40.0), \
            lambda a, b: jnp.maximum(a + b, 0.0)
    elif kind == "hardswish":
        m, float_op = _set(qnn.Hardswish(estimator=est, mode="qat"), 0.02, 70.0), \
            lambda a: a * jnp.clip(a + 3.0, 0.0, 6.0) / 6.0
    else:
        m, float_op = qnn.ReLU6(estimator=est, mode="qat"), lambda a: jnp.clip(a, 0.0, 6.0)
    n = 2 if kind == "add" else 1
    own = kind != "relu6"
    graphdef, state = nnx.split(m)
    cot = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ins = [(va, jnp.float32(0.04), jnp.float32(110.0), qa.values), (vb, jnp.float32(0.03), jnp.float32(140.0),
                                                                   qb.values)][:n]

    def custom(state, args):
        xs = [qnn.QFloat(v, s, z, q) for (v, s, z), (_, _, _, q) in zip(args, ins)]
        return jnp.sum(nnx.merge(graphdef, state)(*xs).value * cot)

    def surrogate(state, args):
        s, z = (jnp.maximum(state["scale"].get_value(), qjax.observers.EPS), state["zero_point"].get_value()) \
            if own else (args[0][1], args[0][2])
        y = float_op(*[v for v, _, _ in args])
        return jnp.sum(qjax.ste.fake_quantize(y, s, z, "quint8", estimator=est) * cot)

    args = [(v, s, z) for v, s, z, _ in ins]
    g_state, g_args = jax.jit(jax.grad(custom, argnums=(0, 1)))(state, args)
    w_state, w_args = jax.jit(jax.grad(surrogate, argnums=(0, 1)))(state, args)
    for got, want in zip(jax.tree_util.tree_leaves(g_args), jax.tree_util.tree_leaves(w_args)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    if own:
        for name in ("scale", "zero_point"):
            np.testing.assert_array_equal(np.asarray(g_state[name].get_value()), np.asarray(w_state[name].get_value()),
                                          err_msg=name)
