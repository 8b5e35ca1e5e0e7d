"""`qjax verify model.tflite` / `qjax explain --model model.tflite` (qjax.interop.tflite_check): counts vs LiteRT's
interpreter, a wrong import caught and located, one output integer traced, one-line user errors."""

import json
import re

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import qjax  # noqa: E402
from qjax.cli import main  # noqa: E402
from qjax._src.interop.tflite_check import sample_inputs  # noqa: E402
from qjax._src.verify import VerifyError, verify  # noqa: E402

from ..tflite_models import CalibratedBuilder, _calibration  # noqa: E402


def _model():
    """float in -> QUANTIZE -> CONV 3x3/2 RELU6 -> 1x1 CONV -> FULLY_CONNECTED -> DEQUANTIZE, plus the 1x1
    conv's int8 tensor as a second output."""
    m = CalibratedBuilder(3, _calibration(3, (9, 9, 4)))
    x = m.input()
    h = m.conv(m.quantize(x), 8, 3, stride=2, act="RELU6")
    h2 = m.conv(h, 6, 1)
    y = m.fully_connected(h2, 5)
    return m.build([x], [m.dequantize(y), h2])


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = tmp_path_factory.mktemp("tfl") / "small.tflite"
    p.write_bytes(_model())
    return str(p)


def test_verify_tflite_counts_every_output(path):
    rep = verify(path, n=20, batch_size=8, kernels="reference")
    assert rep.mismatches == 0 and rep.outputs == 20 * (5 + 5 * 5 * 6) and rep.batches == 3
    assert rep.engine == "litert:reference" and "litert forward" in str(rep) and rep.complete


def test_verify_tflite_locates_a_wrong_import(path):
    data = open(path, "rb").read()
    qm = qjax.from_tflite(data, kernels="reference")
    params = dict(qm.params)
    params["conv_2d_2"] = dict(params["conv_2d_2"], bias=params["conv_2d_2"]["bias"] + 40)
    rep = verify(data, qmodel=qm.with_params(params), n=8, batch_size=8, kernels="reference")
    assert rep.mismatches > 0 and rep.max_abs_step >= 1
    fd = rep.first_divergence
    assert fd["node"] == "conv_2d_2" and fd["batch"] == 0 and fd["qjax"] != fd["torch"]


def test_cli_verify_json(path, capsys):
    code = main(["verify", path, "--n", "16", "--batch-size", "8", "--kernels", "reference", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["mismatches"] == 0 and out["runtime"] == "litert" and out["samples"] == 16


def test_cli_verify_npz_inputs(path, tmp_path, capsys):
    qm = qjax.from_tflite(path, kernels="reference")
    (x,) = sample_inputs(qm, np.random.default_rng(0), 8)
    np.savez(tmp_path / "x.npz", x.astype(np.float64))  # float inputs are cast to the model's float32
    code = main(["verify", path, "--inputs", str(tmp_path / "x.npz"), "--batch-size", "8", "--kernels", "reference"])
    assert code == 0 and "0 mismatches of 1240 outputs" in capsys.readouterr().out


def test_cli_explain_traces_the_integer_litert_computes(path, capsys):
    code = main(["explain", "--model", path, "--layer", "conv_2d_2", "--index", "0,2,3,4", "--kernels", "reference"])
    out = capsys.readouterr().out
    assert code == 0 and "CONV_2D node conv_2d_2" in out and "gemmlowp double rounding" in out
    m = re.search(r"qjax returns (-?\d+); LiteRT's interpreter returns (-?\d+)", out)
    assert m and m.group(1) == m.group(2)
    fams = re.findall(r"^  (reference|optimized|xnnpack) +\w+ +-> (-?\d+)$", out, re.M)
    assert [f for f, _ in fams] == ["reference", "optimized", "xnnpack"]


@pytest.mark.parametrize("argv, flag", [
    (["explain", "--model", "{path}", "--layer", "quantize_0", "--index", "0,1,1,1"], "--layer"),
    (["explain", "--model", "{path}", "--layer", "conv_2d_2", "--index", "0,1"], "--index"),
    (["explain", "--model", "{path}", "--layer", "conv_2d_2", "--index", "a,b"], "--index"),
    (["verify", "{path}", "--engine", "fbgemm"], "--engine"),
    (["verify", "{path}", "--inputs", "{bad}"], "--inputs"),
    (["verify", "{junk}"], "MODEL"),
    (["verify", "{path}", "--inputs", "{junk}"], "--inputs: "),  # not an .npy: no advice to unpickle it
    (["explain", "--model", "{none_pt}", "--layer", "a", "--index", "0,0,0,0"], "--model: "),
])
def test_cli_user_errors_are_one_line(argv, flag, path, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 9, 9, 4), np.int8))  # the model takes float32
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    code = main([a.format(path=path, bad=bad, junk=junk, none_pt=tmp_path / "none.pt") for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and flag in err and "Traceback" not in err, err
    assert "Error:" not in err and "allow_pickle" not in err, err


def test_kernels_is_refused_for_torch_models():
    with pytest.raises(VerifyError, match="applies to .tflite models"):
        verify("tests.test_verify:tiny_resnet_factory", kernels="reference")


def test_verify_runs_a_fixed_batch_model_at_its_batch():
    # a TRANSPOSE_CONV's constant output_shape pins the batch (LiteRT refuses another): verified one sample a batch
    m = CalibratedBuilder(6, _calibration(6, (3, 3, 4)))
    x = m.input(np.int8)
    data = m.build([x], [m.transpose_conv(x, 3, 3, stride=2)])
    assert qjax.from_tflite(data, kernels="reference").info["fixed_batch"] == 1
    rep = verify(data, n=3, batch_size=8, kernels="reference")
    assert rep.batch_size == 1 and rep.batches == 3 and rep.mismatches == 0 and rep.outputs == 3 * 6 * 6 * 3


def _conv_model(bias=True):
    """int8 (1,5,5,4) -> CONV_2D 3x3 SAME -> (1,5,5,6); without a bias LiteRT's int8 CONV_2D refuses to prepare."""
    from ..tflite_models import TFLiteBuilder, schema

    rng = np.random.default_rng(8)
    b = TFLiteBuilder()
    x = b.tensor((1, 5, 5, 4), np.int8, scale=0.05, zero_point=3)
    w = b.tensor((6, 3, 3, 4), np.int8, scale=0.01, zero_point=0, data=rng.integers(-127, 128, (6, 3, 3, 4)))
    bias = b.tensor((6,), np.int32, scale=0.0005, zero_point=0, data=rng.integers(-99, 99, 6)) if bias else -1
    y = b.tensor((1, 5, 5, 6), np.int8, scale=0.1, zero_point=0)
    o = schema.Conv2DOptionsT()
    o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = schema.Padding.SAME, 1, 1, 1, 1
    b.op("CONV_2D", [x, w, bias], [y], o, version=3)
    return b.build([x], [y])


def test_interpreter_errors_are_one_line_naming_the_model():
    # the written model LiteRT cannot prepare (no CONV_2D bias), checked against a QModel that runs
    qm = qjax.from_tflite(_conv_model(), kernels="reference")
    with pytest.raises(VerifyError, match="LiteRT's interpreter .reference kernels. refuses it") as e:
        verify(_conv_model(bias=False), qmodel=qm, n=2)
    assert e.value.arg == "model" and "\n" not in str(e.value) and "CONV_2D" in str(e.value)


def test_cli_a_model_litert_refuses_is_one_line(tmp_path, capsys):
    nobias = tmp_path / "nobias.tflite"
    nobias.write_bytes(_conv_model(bias=False))
    for argv, flag in ((["verify", str(nobias), "--kernels", "reference"], "MODEL: "),
                       (["explain", "--model", str(nobias), "--layer", "conv_2d_0", "--index", "0,1,1,1"], "--model: "),
                       (["explain", "--model", str(tmp_path / "none.tflite"), "--layer", "a", "--index", "0,0"],
                        "--model: ")):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and flag in err and "Error:" not in err, err


@pytest.mark.parametrize("argv", [["verify", "m.tflite", "--kernels", "bogus"],
                                  ["explain", "--model", "m.tflite", "--layer", "a", "--index", "0", "--kernels", "x"]])
def test_cli_argument_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--kernels" in err and "invalid choice" in err, err


def _uint8_model():
    """float in -> QUANTIZE uint8 (zero point 128) -> QUANTIZE int8."""
    from ..tflite_models import TFLiteBuilder

    b = TFLiteBuilder()
    x = b.tensor((1, 4, 4, 3), np.float32)
    u = b.tensor((1, 4, 4, 3), np.uint8, scale=0.05, zero_point=128)
    q = b.tensor((1, 4, 4, 3), np.int8, scale=0.05, zero_point=0)
    b.op("QUANTIZE", [x], [u])
    b.op("QUANTIZE", [u], [q])
    return b.build([x], [q])


def test_uint8_input_quantize_is_sampled_over_its_range():
    # the samples cover both sides of uint8's range (with 10 % saturation), not int8's
    data = _uint8_model()
    (xs,) = sample_inputs(qjax.from_tflite(data, kernels="reference"), np.random.default_rng(0), 8)
    lo, hi = (0 - 128) * 0.05, (255 - 128) * 0.05
    assert xs.min() < lo and xs.max() > hi and (xs < 0).mean() > 0.3 and (xs > 0).mean() > 0.3
    assert verify(data, n=8, kernels="reference").mismatches == 0


def test_verify_takes_any_pathlike(tmp_path):
    p = tmp_path / "u8.tflite"
    p.write_bytes(_uint8_model())
    rep = verify(p, n=4, batch_size=4, kernels="reference")
    assert rep.engine == "litert:reference" and rep.model == str(p) and rep.mismatches == 0


def test_verify_qmodel_takes_its_own_kernels():
    data = _uint8_model()
    qm = qjax.from_tflite(data, kernels="reference")
    assert verify(data, qmodel=qm, n=4, batch_size=4).engine == "litert:reference"
    with pytest.raises(VerifyError, match="imported with kernels='reference'") as e:
        verify(data, qmodel=qm, n=4, kernels="xnnpack")
    assert e.value.arg == "kernels"
    rep = verify(data, qmodel=qm, n=8, batch_size=4, max_batches=1)  # no report to resume from (torch models only)
    assert not rep.complete and "rerun without it" in str(rep) and "resume" not in str(rep)


def test_verify_a_fixed_batch_model_pads_the_last_batch_for_both():
    # RESHAPE into the constant (2, 12) pins the batch at 2: 3 samples = a full batch and a padded one
    from ..tflite_models import TFLiteBuilder

    b = TFLiteBuilder()
    x = b.tensor((2, 2, 2, 3), np.int8, scale=0.05, zero_point=3)
    r = b.tensor((2, 12), np.int8, scale=0.05, zero_point=3)
    b.op("RESHAPE", [x, b.tensor((2,), np.int32, data=np.array([2, 12], np.int32))], [r])
    data = b.build([x], [r])
    assert qjax.from_tflite(data, kernels="reference").info["fixed_batch"] == 2
    for kw in (dict(n=3), dict(inputs=np.arange(3 * 12, dtype=np.int8).reshape(3, 2, 2, 3))):
        rep = verify(data, batch_size=8, kernels="reference", **kw)
        assert rep.batch_size == 2 and rep.batches == 2 and rep.samples == 3, kw
        assert rep.outputs == 3 * 12 and rep.mismatches == 0, kw
