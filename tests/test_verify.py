"""qjax.verify / `qjax verify` / `qjax explain --model`: TorchScript and factory models, sharding, JSON."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax.cli import main
from qjax.verify import verify

from . import models

pytestmark = pytest.mark.torch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_resnet_factory():
    """A factory for `qjax verify tests.test_verify:tiny_resnet_factory`."""
    return models.resnet_tiny(width=8)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    torch.backends.quantized.engine = "fbgemm"
    m, x = models.resnet_tiny(width=8)
    path = tmp_path_factory.mktemp("ts") / "resnet_tiny.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    return str(path), x


def test_verify_torchscript_file(scripted):
    path, x = scripted
    rep = verify(path, n=40, batch_size=16, input_shape=x.shape[1:], engine="fbgemm")
    assert rep.mismatches == 0 and rep.outputs == 40 * 10 and rep.max_abs_step == 0
    assert rep.qjax_outputs_per_s > 0 and "0 mismatches of 400 outputs" in str(rep)


def test_verify_reports_a_divergence():
    # a deliberately wrong import (bias changed) must be caught and located
    torch.backends.quantized.engine = "fbgemm"
    m, x = models.resnet_basic_block()
    qm = qjax.from_torch(m, x)
    bad_params = dict(qm.params)
    conv2 = dict(bad_params["block_conv2"])
    conv2["bias"] = conv2["bias"] + 0.7 * conv2["scale"]
    bad_params["block_conv2"] = conv2
    bad = qjax.QModel.tree_unflatten(qm.tree_flatten()[1], [bad_params[k] for k in sorted(bad_params)])
    rep = verify(m, qmodel=bad, n=4, batch_size=2, input_shape=x.shape[1:], engine="fbgemm")
    assert rep.mismatches > 0
    assert rep.first_divergence["node"] == "block_conv2" and rep.max_abs_step >= 1


def test_cli_verify_json_and_factory(capsys):
    code = main(["verify", "tests.test_verify:tiny_resnet_factory", "--n", "8", "--batch-size", "4",
                 "--engine", "fbgemm", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["mismatches"] == 0 and out["outputs"] == 80 and out["devices"] >= 1


def test_cli_explain_layer(scripted, capsys):
    path, x = scripted
    code = main(["explain", "--model", path, "--layer", "stem.0", "--index", "0,1,2,3",
                 "--shape", ",".join(map(str, x.shape[1:])), "--engine", "fbgemm"])
    out = capsys.readouterr().out
    assert code == 0 and "fbgemm arithmetic" in out and "qjax.conv returns" in out


def test_sharded_verify_on_four_cpu_devices(scripted):
    path, x = scripted
    code = ("import json, sys; from qjax.verify import verify; import jax; "
            f"r = verify({path!r}, n=24, batch_size=8, input_shape={tuple(x.shape[1:])!r}, engine='fbgemm'); "
            "print(json.dumps(dict(dev=len(jax.devices()), rep=r.devices, bad=r.mismatches, n=r.outputs)))")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", TORCH_CPP_LOG_LEVEL="ERROR")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == dict(dev=4, rep=4, bad=0, n=240)
