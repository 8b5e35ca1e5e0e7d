"""Golden vectors (tests/golden, made by scripts/make_golden.py from torch 2.13): no torch needed.

They keep qjax's bit-exactness reference where torch's deprecated quantized tensors are
absent; the live-torch tests check the same ops on fresh random cases.
"""

import glob
import json
import os

import numpy as np
import pytest

import qjax
from qjax._src.qops import elementwise as ew
from qjax._src.qops import pooling

FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "golden", "*.npz")))


def run(op, a, d):
    if op == "quantize":
        return qjax.quantize(d["x"], a["scale"], a["zero_point"], a["dtype"]).values
    if op == "quantize_pc":
        return qjax.quantize(d["x"], d["scale"], d["zero_point"], a["dtype"], axis=a["axis"]).values
    eng = qjax.Fbgemm(isa=a["isa"])
    if op in ("conv", "linear"):
        x = qjax.QArray(d["x"], a["x_scale"], a["x_zero_point"], qjax.quint8)
        if a["per_channel"]:
            w = qjax.QArray(d["w"], d["w_scale"], d["w_zero_point"].astype(np.int32), qjax.qint8, axis=0)
        else:
            w = qjax.QArray(d["w"], float(d["w_scale"]), int(d["w_zero_point"]), qjax.qint8)
        if op == "linear":
            return qjax.linear(x, w, d["bias"], scale=a["out_scale"], zero_point=a["out_zero_point"], engine=eng).values
        return qjax.conv(x, w, d["bias"], scale=a["out_scale"], zero_point=a["out_zero_point"], stride=a["stride"],
                         padding=a["padding"], dilation=a["dilation"], groups=a["groups"], engine=eng).values
    x = qjax.QArray(d["a"], a.get("scale", a.get("a_scale")), a.get("zero_point", a.get("a_zero_point")), qjax.quint8)
    mf = a.get("memory_format", "contiguous")
    if op in ("add", "mul"):
        b = qjax.QArray(d["b"], a["b_scale"], a["b_zero_point"], qjax.quint8)
        fn = ew.add if op == "add" else ew.mul
        return fn(x, b, a["out_scale"], a["out_zero_point"], relu=a["relu"], memory_format=mf, threads=a["threads"]).values
    if op == "hardswish":
        return ew.hardswish(x, a["out_scale"], a["out_zero_point"], memory_format=mf, threads=a["threads"]).values
    if op == "sigmoid":
        return ew.sigmoid(x, memory_format=mf, threads=a["threads"]).values
    if op == "avg_pool":
        return pooling.avg_pool(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                                memory_format=mf).values
    if op == "adaptive_avg_pool":
        return pooling.adaptive_avg_pool(x, a["output_size"], memory_format=mf).values
    if op == "max_pool":
        return pooling.max_pool(x, a["kernel"], a["stride"], a["padding"], memory_format=mf).values
    raise AssertionError(f"unknown golden op {op}")


def test_golden_files_exist():
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f)[:-4] for f in FILES])
def test_golden(path):
    d = np.load(path, allow_pickle=False)
    meta = json.loads(str(d["meta"]))
    args = dict(meta["args"], isa=meta["isa"], threads=meta["threads"])
    got = np.asarray(run(meta["op"], args, d))
    np.testing.assert_array_equal(got, d["out"], err_msg=f"{meta['op']} vs torch {meta['torch_version']}")
