"""Shared test helpers: build qjax operands from a case dict and run qjax / torch on it."""

from __future__ import annotations

import numpy as np

import qjax

from . import torch_ref


# torch's fbgemm runs this machine's ISA; compare against the engine that models it
HOST_FBGEMM = qjax.Fbgemm.host()


def operands(case):
    x = qjax.QArray(case["x"], case["sx"], case["zx"], qjax.quint8)
    if case["per_channel"]:
        w = qjax.QArray(case["w"], np.asarray(case["sw"]), np.asarray(case["zw"]), qjax.qint8, axis=0)
    else:
        w = qjax.QArray(case["w"], case["sw"], case["zw"], qjax.qint8)
    return x, w


def qjax_conv(case, engine=HOST_FBGEMM):
    x, w = operands(case)
    y = qjax.conv(
        x, w, case["bias"], scale=case["sy"], zero_point=case["zy"], stride=case["stride"],
        padding=case["padding"], dilation=case["dilation"], groups=case["groups"], relu=case["relu"],
        engine=engine,
    )
    return np.asarray(y.values)


def torch_conv(case):
    return torch_ref.conv(
        case["x"], case["sx"], case["zx"], case["w"], case["sw"], case["zw"], case["per_channel"], case["bias"],
        case["sy"], case["zy"], case["stride"], case["padding"], case["dilation"], case["groups"], case["relu"],
    )


def qjax_linear(case, engine=HOST_FBGEMM):
    x, w = operands(case)
    y = qjax.linear(x, w, case["bias"], scale=case["sy"], zero_point=case["zy"], relu=case["relu"], engine=engine)
    return np.asarray(y.values)


def torch_linear(case):
    x = case["x"].reshape(-1, case["x"].shape[-1])
    r = torch_ref.linear(
        x, case["sx"], case["zx"], case["w"], case["sw"], case["zw"], case["per_channel"], case["bias"],
        case["sy"], case["zy"], case["relu"],
    )
    return r.reshape(case["x"].shape[:-1] + (case["out_channels"],))


def assert_same(got, want, what=""):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != torch {want.shape}"
    bad = np.flatnonzero(got.astype(np.int64) != want.astype(np.int64))
    if bad.size:
        i = np.unravel_index(bad[0], got.shape)
        raise AssertionError(
            f"{what}: {bad.size} mismatches of {got.size} outputs; first at {tuple(int(j) for j in i)}: "
            f"qjax {got[i]} vs torch {want[i]}"
        )
