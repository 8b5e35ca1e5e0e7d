"""The QModel node ops (qjax._src.graph.ops): they run without any importer, take their arithmetic from the
node's engine only, and refuse what they cannot compute exactly with a graph-level error."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from qjax import quint8
from qjax.engines import EngineRefusal, Fbgemm, Qnnpack, TorchCpuOps
from qjax._src.graph import OPS, GraphError, Node, QModel, Ref, Static, freeze, node_args, refs, substitute, thaw
from qjax._src.qarray import QArray


class Called(Exception):
    """Raised by :class:`Spy`'s methods: the engine method a node op called."""


@dataclasses.dataclass(frozen=True)
class Spy(TorchCpuOps):
    """An engine every method of which reports its name (and computes nothing)."""

    name = "spy"
    torch_engine = None


def _spy_method(method):
    def m(self, *args, **kwargs):
        raise Called(method)

    return m


for _m in ("quantize", "dequantize", "conv", "conv_transpose", "linear", "add", "mul", "add_scalar", "mul_scalar",
           "cat", "relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu", "elu",
           "max_pool", "avg_pool", "adaptive_avg_pool", "interpolate", "batch_norm", "mean"):
    setattr(Spy, _m, _spy_method(_m))


def _q(shape=(1, 2, 4, 4), seed=0):
    v = np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)
    return QArray(v, 0.05, 128, quint8)


_QP = dict(scale=jnp.float32(0.1), zero_point=jnp.int32(3))
_BN = {k: Static(np.ones(2, np.float32)) for k in ("weight", "bias", "mean", "var")}
_CONV = dict(weight=QArray(np.ones((2, 2, 1, 1), np.int8), 0.01, 0, "qint8"), **_QP)
_LAYOUT = dict(layout="contiguous", threads=1)
# (op, static config, params, args, the engine method it must call)
CASES = [
    ("quantize", dict(dtype=quint8), _QP, (np.zeros((1, 2), np.float32),), "quantize"),
    ("dequantize", {}, None, (_q(),), "dequantize"),
    ("conv", dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, relu=False), _CONV, (_q(),), "conv"),
    ("linear", dict(relu=False), dict(_CONV, weight=QArray(np.ones((3, 4), np.int8), 0.01, 0, "qint8")),
     (_q((2, 4)),), "linear"),
    ("batch_norm", dict(_BN, eps=1e-5, scale=0.1, zero_point=3, relu=False, in_scale=0.05), None, (_q(),),
     "batch_norm"),
    ("binary", dict(kind="add", relu=False, input_formats=("contiguous",) * 2, in_qparams=((0.05, 128),) * 2,
                    out_qparams=(0.1, 3), **_LAYOUT), _QP, (_q(), _q(seed=1)), "add"),
    ("binary", dict(kind="mul", relu=False, input_formats=("contiguous",) * 2, in_qparams=((0.05, 128),) * 2,
                    out_qparams=(0.1, 3), **_LAYOUT), _QP, (_q(), _q(seed=1)), "mul"),
    ("scalar", dict(kind="add_scalar", c=1.5, relu=False, in_qparams=((0.05, 128),), **_LAYOUT), None, (_q(),),
     "add_scalar"),
    ("scalar", dict(kind="mul_scalar", c=1.5, relu=False, in_qparams=((0.05, 128),), **_LAYOUT), None, (_q(),),
     "mul_scalar"),
    ("cat", dict(dim=1, relu=False, channels_last=False), None, ([_q(), _q(seed=1)],), "cat"),
    ("pool", dict(kind="max", kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False,
                  layout="contiguous"), None, (_q(),), "max_pool"),
    ("pool", dict(kind="avg", kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, count_include_pad=True,
                  divisor_override=None, layout="contiguous"), None, (_q(),), "avg_pool"),
    ("pool", dict(kind="adaptive", output_size=(1, 1), layout="contiguous"), None, (_q(),), "adaptive_avg_pool"),
    ("interpolate", dict(size=(8, 8), scale_factor=None, mode="nearest", align_corners=None,
                         recompute_scale_factor=None, layout="contiguous"), None, (_q(),), "interpolate"),
    ("mean", dict(dims=(2, 3), keepdim=True, layout="contiguous"), None, (_q(),), "mean"),
] + [
    ("unary", dict(kind=kind, in_qparams=((0.05, 128),), input_format="contiguous", min_val=0.0, max_val=1.0,
                   slope=0.1, scale=0.1, zero_point=3, alpha=1.0, **_LAYOUT), None, (_q(),), kind)
    for kind in ("relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu", "elu")
]


@pytest.mark.parametrize("op, cfg, p, args, method", CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES])
def test_every_arithmetic_op_calls_its_nodes_engine(op, cfg, p, args, method):
    with pytest.raises(Called) as e:
        OPS[op](dict(cfg, engine=Spy(), node="n"), p, *args)
    assert str(e.value) == method


@pytest.mark.parametrize("engine", [Fbgemm(), Qnnpack()], ids=lambda e: e.name)
def test_a_hand_built_model_runs_on_the_engine_it_names(engine):
    """quantize -> add -> dequantize, built without any importer: its integers are the engine's own add."""
    cfg_add = dict(kind="add", relu=False, input_formats=("contiguous",) * 2, in_qparams=((0.05, 128),) * 2,
                   out_qparams=(float(np.float32(0.1)), 3), layout="contiguous", threads=1, engine=engine, node="s")
    nodes = [
        Node("q", "quantize", (Ref("x"),), (("dtype", quint8), ("engine", engine))),
        Node("s", "binary", (Ref("q"), Ref("q")), tuple(sorted(cfg_add.items()))),
    ]
    params = dict(q=dict(scale=jnp.float32(0.05), zero_point=jnp.int32(128)), s=_QP)
    qm = QModel(["x"], nodes, Ref("s"), params)
    x = np.random.default_rng(0).normal(0, 3, size=(1, 2, 4, 4)).astype(np.float32)
    got = qm(x)
    q = engine.quantize(x, params["q"]["scale"], params["q"]["zero_point"], quint8)
    want = engine.add(q, q, _QP["scale"], _QP["zero_point"], in_qparams=cfg_add["in_qparams"],
                      out_qparams=cfg_add["out_qparams"])
    np.testing.assert_array_equal(np.asarray(got.values), np.asarray(want.values))


@pytest.mark.parametrize("op, cfg, args, match", [
    ("unary", dict(kind="sigmoid"), (jnp.zeros(3),), "float sigmoid on a dequantized tensor"),
    ("cat", dict(dim=0, relu=False, channels_last=False), ([_q((2,)), jnp.zeros(2)],), "cat of quantized and float"),
    ("mean", dict(dims=(0,), keepdim=False, layout="contiguous"), (jnp.zeros(3),), "float mean"),
    ("python", dict(kind="add"), (_q((2,)), 1), "python operator add on a quantized tensor"),
    ("unary", dict(kind="gelu"), (_q((2,)),), "unknown unary op gelu"),
])
def test_what_a_node_cannot_compute_exactly_raises_graph_error(op, cfg, args, match):
    with pytest.raises(GraphError, match=match):
        OPS[op](dict(cfg, engine=Fbgemm(), node="n"), None, *args)


def test_the_engine_refuses_a_mean_torch_computes_in_float():
    with pytest.raises(EngineRefusal, match="mean over dims"):
        OPS["mean"](dict(dims=(1,), keepdim=False, layout="contiguous", engine=Fbgemm(), node="n"), None, _q())


def test_arg_helpers_round_trip():
    spec = [Ref("a"), (Ref("b"), 3), {"k": Ref("a")}]
    assert thaw(freeze(spec)) == spec
    assert refs(spec) == {"a", "b"}
    assert substitute(spec, dict(a=1, b=2)) == [1, (2, 3), {"k": 1}]
    assert node_args(Node("n", "shape", freeze((spec,))), dict(a=1, b=2)) == ([1, (2, 3), {"k": 1}],)


def test_importing_the_graph_imports_no_importer_and_no_torch():
    code = ("import sys, qjax._src.graph; assert 'conv' in qjax._src.graph.OPS; "
            "bad = [m for m in sys.modules if m in ('qjax._src.interop.torch', 'qjax._src.interop.torchscript', 'torch')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
