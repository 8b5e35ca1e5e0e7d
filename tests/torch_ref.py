"""Reference results from real torch 2.13 quantized kernels (the test oracle).

Everything takes and returns numpy; torch is imported lazily so that tests that do
not need it can run without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")


def _torch():
    import torch

    return torch


def set_engine(name: str):
    torch = _torch()
    torch.backends.quantized.engine = name


def qtensor(values, scale, zero_point, axis=None):
    """A torch quantized tensor with exactly these integers and qparams."""
    torch = _torch()
    v = torch.from_numpy(np.ascontiguousarray(values))
    if axis is None:
        return torch._make_per_tensor_quantized_tensor(v, float(scale), int(zero_point))
    return torch._make_per_channel_quantized_tensor(
        v,
        torch.tensor(np.asarray(scale, np.float64)),
        torch.tensor(np.asarray(zero_point, np.int64)),
        axis,
    )


def quantize(x, scale, zero_point, dtype_name, axis=None):
    torch = _torch()
    dt = getattr(torch, dtype_name)
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if axis is None:
        q = torch.quantize_per_tensor(t, float(scale), int(zero_point), dt)
    else:
        q = torch.quantize_per_channel(
            t, torch.tensor(np.asarray(scale, np.float64)), torch.tensor(np.asarray(zero_point, np.int64)), axis, dt
        )
    return q.int_repr().numpy()


def dequantize(values, scale, zero_point, axis=None):
    return qtensor(values, scale, zero_point, axis).dequantize().numpy()


def conv(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, stride, padding, dilation, groups, relu):
    """torch.ops.quantized.conv{1,2,3}d[_relu]; x (N,C,*S) uint8, w (O,C/g,*K) int8."""
    torch = _torch()
    nd = x.ndim - 2
    qx = qtensor(x, sx, zx)
    qw = qtensor(w, sw, zw, 0 if per_channel else None)
    b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))
    prepack = getattr(torch.ops.quantized, f"conv{nd}d_prepack")
    packed = prepack(qw, b, list(stride), list(padding), list(dilation), int(groups))
    op = getattr(torch.ops.quantized, f"conv{nd}d_relu" if relu else f"conv{nd}d")
    return op(qx, packed, float(sy), int(zy)).int_repr().numpy()


def linear(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, relu):
    torch = _torch()
    qx = qtensor(x, sx, zx)
    qw = qtensor(w, sw, zw, 0 if per_channel else None)
    b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))
    packed = torch.ops.quantized.linear_prepack(qw, b)
    op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    return op(qx, packed, float(sy), int(zy)).int_repr().numpy()


_WORKER = r"""
import sys, json, numpy as np
sys.path.insert(0, {tests_dir!r})
import torch_ref
torch_ref.set_engine({engine!r})
cases = np.load({path!r}, allow_pickle=False)
meta = json.loads(str(cases["meta"]))
out = {{}}
for i, m in enumerate(meta):
    a = {{k[len(f"{{i}}_"):]: cases[k] for k in cases.files if k.startswith(f"{{i}}_")}}
    bias = a.get("bias")
    if m["op"] == "conv":
        r = torch_ref.conv(a["x"], m["sx"], m["zx"], a["w"], a["sw"] if m["per_channel"] else float(a["sw"]),
                           a["zw"] if m["per_channel"] else int(a["zw"]), m["per_channel"], bias, m["sy"], m["zy"],
                           m["stride"], m["padding"], m["dilation"], m["groups"], m["relu"])
    else:
        r = torch_ref.linear(a["x"], m["sx"], m["zx"], a["w"], a["sw"] if m["per_channel"] else float(a["sw"]),
                             a["zw"] if m["per_channel"] else int(a["zw"]), m["per_channel"], bias, m["sy"], m["zy"],
                             m["relu"])
    out[f"r{{i}}"] = r
np.savez({out_path!r}, **out)
"""


def run_in_subprocess(cases, tmp_path, env_extra, engine="fbgemm"):
    """Run conv/linear cases in a fresh torch process (e.g. FBGEMM_ENABLE_INSTRUCTIONS=AVX2).

    ``cases``: list of dicts with arrays ``x, w, sw, zw, bias(optional)`` and scalars
    ``op, sx, zx, per_channel, sy, zy, relu`` (+ conv geometry).  Returns a list of outputs.
    """
    arrays, meta = {}, []
    for i, c in enumerate(cases):
        for k in ("x", "w", "sw", "zw", "bias"):
            if c.get(k) is not None:
                arrays[f"{i}_{k}"] = np.asarray(c[k])
        meta.append({k: v for k, v in c.items() if k not in ("x", "w", "sw", "zw", "bias")})
    path = str(tmp_path / "cases.npz")
    out_path = str(tmp_path / "out.npz")
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    code = _WORKER.format(tests_dir=os.path.dirname(__file__), engine=engine, path=path, out_path=out_path)
    env = dict(os.environ, **env_extra)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    res = np.load(out_path)
    return [res[f"r{i}"] for i in range(len(cases))]


def conv_transpose(x, sx, zx, w, sw, zw, per_channel, bias, sy, zy, stride, padding, output_padding, dilation, groups):
    """torch.ops.quantized.conv_transpose{1,2,3}d; x (N,C,*S) uint8, w (C, O/g, *K) int8."""
    torch = _torch()
    nd = x.ndim - 2
    qx = qtensor(x, sx, zx)
    qw = qtensor(w, sw, zw, 1 if per_channel else None)
    b = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32))
    prepack = getattr(torch.ops.quantized, f"conv_transpose{nd}d_prepack")
    packed = prepack(qw, b, list(stride), list(padding), list(output_padding), list(dilation), int(groups))
    op = getattr(torch.ops.quantized, f"conv_transpose{nd}d")
    return op(qx, packed, float(sy), int(zy)).int_repr().numpy()
