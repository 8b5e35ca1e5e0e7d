"""qjax.hardware on imported torch models: derivation, integer-only runs vs an independent reference, report, export, CLI."""

import json

import jax
import numpy as np
import pytest

from qjax import hardware as hw
from qjax.cli import main
from qjax._src.interop.torch import from_torch
from tests.hardware.test_integer_ops import py_requant

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def block():
    from tests.models import resnet_basic_block

    model, x = resnet_basic_block()
    xs = np.random.default_rng(0).standard_normal((6,) + tuple(x.shape[1:])).astype(np.float32)
    return from_torch(model, x), xs


def _conv_acc_reference(xq, w, geometry):
    """sum (x - zx)(w - zw) by torch's float64 convolution (exact: |sum| < 2**53)."""
    import torch

    x = torch.from_numpy(np.asarray(xq.values).astype(np.float64) - int(xq.zero_point))
    wz = np.asarray(w.zero_point).reshape(-1, *([1] * (w.ndim - 1)))
    wt = torch.from_numpy(np.asarray(w.values).astype(np.float64) - wz)
    return torch.nn.functional.conv2d(x, wt, stride=geometry["stride"], padding=geometry["padding"],
                                      dilation=geometry["dilation"], groups=geometry["groups"]).numpy()


@pytest.mark.parametrize("spec", ["gemmlowp", "dyadic8", "gemmlowp:acc=16,overflow=wrap,out=0..127",
                                  "tflite_single:rounding=half_even,bits=12"])
def test_hardware_conv_layers_equal_independent_reference(block, spec):
    """Each integer-only conv of the converted model = torch float64 conv sum + Python-integer requant."""
    qm, xs = block
    h = hw.convert(qm, xs, spec)
    s = hw.get_spec(spec)
    _, env = h.capture(xs)
    checked = 0
    for node in h.nodes:
        if node.op != "hw_conv":
            continue
        p, cfg = h.params[node.name], node.config()
        xq = env[node.args[0].name]
        acc = _conv_acc_reference(xq, p["weight"], cfg).astype(np.int64)
        got = np.asarray(env[node.name].values)
        bq = np.zeros(acc.shape[1], np.int64) if p["bias_q"] is None else np.asarray(p["bias_q"])
        m0, sh, zy = np.asarray(p["m0"]), np.asarray(p["shift"]), int(p["zero_point"])
        # all channels, a strided subset of positions (Python integers are slow)
        for idx in list(np.ndindex(acc.shape))[::37]:
            c = idx[1]
            want = py_requant(int(acc[idx]), int(bq[c]), int(m0[c]), int(sh[c]), zy, s, cfg["relu"])
            assert got[idx] == want, (node.name, idx)
            checked += 1
    assert checked > 500


def test_convert_keeps_selected_layers_and_runs_jitted(block):
    qm, xs = block
    h = hw.convert(qm, xs, "gemmlowp", layers={"block_conv1": None})
    ops = {n.name: n.op for n in h.nodes}
    assert ops["block_conv1"] == "conv" and ops["block_conv2"] == "hw_conv"
    table = dict((n, a) for n, _, a in hw.layer_table(h))
    assert table["block_conv1"] == "imported" and table["block_conv2"] == "gemmlowp"
    h2 = hw.convert(qm, xs, "gemmlowp", layers=lambda node: "dyadic8" if node.op == "conv" else None)
    assert {a for n, op, a in hw.layer_table(h2) if op == "hw_conv"} == {"dyadic8"}
    y1 = np.asarray(h(xs))
    y2 = np.asarray(jax.jit(lambda m, x: m.apply(m.params, x))(h, xs))
    assert (y1 == y2).all()


def test_deviation_report_counts(block):
    qm, xs = block
    h = hw.convert(qm, xs, "dyadic8")
    rep = hw.deviation(qm, h, xs, batch_size=4)
    names = [n.name for n in h.nodes if n.op in hw.HARDWARE_OPS]
    assert [r.node for r in rep.layers] == names
    # recount the end-to-end column independently
    _, ref_env = qm.capture(xs)
    _, hw_env = h.capture(xs)
    for r in rep.layers:
        d = np.abs(np.asarray(ref_env[r.node].values, np.int64) - np.asarray(hw_env[r.node].values, np.int64))
        assert (r.outputs, r.e2e_differ, r.e2e_max_abs) == (d.size, np.count_nonzero(d), d.max())
    # the first hardware conv sees identical inputs in both runs: isolated == end to end
    first = next(r for r in rep.layers if r.op == "conv")
    assert (first.isolated_differ, first.isolated_max_abs) == (first.e2e_differ, first.e2e_max_abs)
    assert "isolated" in str(rep)


def test_deviation_with_labels():
    from qjax.examples.resnet import model as resnet

    model, x = resnet(size=32)
    qm = from_torch(model, x)
    xs = np.random.default_rng(1).standard_normal((8,) + tuple(x.shape[1:])).astype(np.float32)
    labels = np.arange(8) % 10
    rep = hw.deviation(qm, hw.convert(qm, xs[:2], "gemmlowp"), xs, labels=labels)
    ref = np.asarray(qm(xs)).argmax(-1)
    assert rep.accuracy_reference == np.mean(ref == labels) and rep.top1_agreement is not None
    assert "accuracy" in str(rep)


def test_export_round_trip(block, tmp_path):
    qm, xs = block
    h = hw.convert(qm, xs, "tflite_single")
    doc = hw.export(h, str(tmp_path))
    assert json.loads((tmp_path / "layers.json").read_text()) == json.loads(json.dumps(doc))
    loaded, params = hw.load_params(str(tmp_path)), hw.layer_params(h)
    assert loaded.keys() == params.keys()
    for node, d in params.items():
        assert loaded[node].keys() == d.keys()
        for k, v in d.items():
            np.testing.assert_array_equal(loaded[node][k], v)
    conv = next(e for e in doc["layers"] if e["op"] == "hw_conv")
    assert conv["spec"]["multiplier"] == "single" and "effective_multiplier" in conv


def test_stochastic_rounding_is_keyed(block):
    qm, xs = block
    spec = hw.get_spec("tflite_single").replace(requant_rounding="stochastic", name="sr")
    with pytest.raises(ValueError, match="key"):
        hw.convert(qm, xs, spec)
    h = hw.convert(qm, xs, spec, key=jax.random.PRNGKey(0))
    a, b = np.asarray(h(xs)), np.asarray(h(xs))
    c = np.asarray(hw.with_key(h, jax.random.PRNGKey(1))(xs))
    assert (a == b).all() and (a != c).any()


def test_cli_prints_the_table(capsys, tmp_path):
    rc = main(["hardware", "tests.models:resnet_basic_block", "--spec", "gemmlowp:bits=16", "--n", "4",
               "--batch-size", "4", "--export", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "isolated" in out and "block_conv1" in out
    assert (tmp_path / "params.npz").exists()
