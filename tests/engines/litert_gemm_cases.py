"""Single-op int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED LiteRT models and random / tie-seeking cases.

Shared by ``tests/engines/test_litert_gemm.py`` and ``scripts/check_litert_gemm.py``.  A case is a dict of
numpy parameters; :func:`build_model` writes its flatbuffer (TFLite layouts: CONV_2D filters OHWI,
DEPTHWISE ``(1, KH, KW, C*M)``, FULLY_CONNECTED ``(O, K)``), :func:`qjax_output` runs it through
``LiteRT(kernels)``, :func:`interpreter_outputs` through ``ai-edge-litert`` with each op resolver.
"""

from __future__ import annotations

import numpy as np

from ..tflite_models import TFLiteBuilder, schema

import qjax
from qjax._src.engines.base import ConvGeometry
from qjax._src.engines.litert import LiteRT
from qjax._src.interop import litert_runtime
from qjax._src.qops.tflite_common import ACTIVATIONS, explicit_padding, output_size
from qjax._src.rounding import round_offline

OPS = ("conv", "dw", "fc")
CODES = {"conv": "CONV_2D", "dw": "DEPTHWISE_CONV_2D", "fc": "FULLY_CONNECTED"}


def _out_shape(case):
    if case["op"] == "fc":
        return (case["x"].shape[0], case["w"].shape[0])
    n, h, w, _ = case["x"].shape
    kh, kw = case["kernel"]
    oh = output_size(case["padding"], h, kh, case["stride"][0], case["dilation"][0])
    ow = output_size(case["padding"], w, kw, case["stride"][1], case["dilation"][1])
    return (n, oh, ow, case["w"].shape[-1 if case["op"] == "dw" else 0])


def build_model(case) -> bytes:
    """The flatbuffer of one op with int8 input ``x`` (the model input), constant weights and bias."""
    op, w, sw = case["op"], case["w"], case["sw"]
    b = TFLiteBuilder()
    xi = b.tensor(case["x"].shape, np.int8, scale=case["sx"], zero_point=case["zx"])
    axis = 3 if op == "dw" else 0
    wi = b.tensor(w.shape, np.int8, scale=sw, zero_point=0, axis=axis, data=w)
    bias_scale = (np.float32(case["sx"]) * np.asarray(sw, np.float32)).astype(np.float32)
    bi = b.tensor(case["bias"].shape, np.int32, scale=bias_scale, zero_point=0, data=case["bias"])
    yi = b.tensor(_out_shape(case), np.int8, scale=case["sy"], zero_point=case["zy"])
    act = getattr(schema.ActivationFunctionType, case["activation"])
    pad = getattr(schema.Padding, case.get("padding", "VALID"))
    if op == "conv":
        o = schema.Conv2DOptionsT()
        o.padding, o.fusedActivationFunction = pad, act
        o.strideH, o.strideW = case["stride"]
        o.dilationHFactor, o.dilationWFactor = case["dilation"]
        version = 3
    elif op == "dw":
        o = schema.DepthwiseConv2DOptionsT()
        o.padding, o.fusedActivationFunction = pad, act
        o.strideH, o.strideW = case["stride"]
        o.dilationHFactor, o.dilationWFactor = case["dilation"]
        o.depthMultiplier = w.shape[-1] // case["x"].shape[-1]
        version = 3
    else:
        o = schema.FullyConnectedOptionsT()
        o.fusedActivationFunction = act
        version = 4
    b.op(CODES[op], [xi, wi, bi], [yi], o, version=version)
    return b.build([xi], [yi])


def qjax_output(case, kernels: str) -> np.ndarray:
    """``LiteRT(kernels)``'s output for the case (HWIO weights, explicit TFLite padding)."""
    eng = LiteRT(kernels)
    op, w = case["op"], case["w"]
    sw = np.asarray(case["sw"], np.float32)
    per_channel = sw.size > 1
    x = qjax.QArray(case["x"], np.float32(case["sx"]), np.int32(case["zx"]), qjax.qint8)
    bias = np.asarray(case["bias"], np.int32)
    if op == "fc":
        wq = qjax.QArray(w, sw if per_channel else sw.reshape(()), np.zeros(sw.shape, np.int32).reshape(sw.shape)
                         if per_channel else np.int32(0), qjax.qint8, axis=0 if per_channel else None)
        y = eng.tfl_fully_connected(x, wq, bias, np.float32(case["sy"]), np.int32(case["zy"]), case["activation"])
        return np.asarray(y.values)
    hwio = w.transpose(1, 2, 3, 0) if op == "conv" else w.transpose(1, 2, 0, 3)
    wq = qjax.QArray(hwio, sw if per_channel else sw.reshape(()),
                     np.zeros(sw.shape, np.int32) if per_channel else np.int32(0), qjax.qint8,
                     axis=3 if per_channel else None)
    c = case["x"].shape[-1]
    groups = c if op == "dw" else c // w.shape[-1]
    pads = explicit_padding(case["padding"], case["x"].shape[1:3], case["kernel"], case["stride"], case["dilation"])
    geom = ConvGeometry(tuple(case["stride"]), pads, tuple(case["dilation"]), groups)
    fn = eng.tfl_depthwise_conv if op == "dw" else eng.tfl_conv
    y = fn(x, wq, bias, np.float32(case["sy"]), np.int32(case["zy"]), geom, case["activation"])
    return np.asarray(y.values)


def interpreter_outputs(case, model=None) -> dict:
    """``{kernels: output}`` from the interpreter, and ``"xnnpack_delegated"``: whether XNNPACK took the op."""
    model = build_model(case) if model is None else model
    out = {k: litert_runtime.run(model, [case["x"]], k)[0] for k in litert_runtime.KERNELS}
    out["xnnpack_delegated"] = 0 in litert_runtime.delegated_ops(model)
    return out


# -- case generators ------------------------------------------------------------------------------------------

def _log_uniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size)).astype(np.float32)


def make_case(rng, op, *, shape=None, ties: bool = False, activation=None, per_channel=None,
              clamp_ties: bool = False, zero_points=None) -> dict:
    """A random case; ``shape`` fixes the geometry (a dict of the keys below), ``ties`` picks power-of-two
    scales whose effective scale ``2**-k`` or ``3 * 2**-k`` makes many accumulators exact ties;
    ``clamp_ties`` makes the fused activation's float bound an exact tie in output units (RELU6 with
    ``sy = 4``: ``6 / sy = 1.5``; RELU_N1_TO_1 with ``sy = 2``: ``±1 / sy = ±0.5``), where the builtin
    kernels round half away and XNNPACK to even; ``zero_points`` ``(zx, zy)`` fixes them (e.g. extreme ones
    with ``ties``, whose default ones are small)."""
    g = dict(shape or {})
    if op == "fc":
        g.setdefault("n", int(rng.integers(1, 5)))
        g.setdefault("k", int(rng.integers(1, 48)))
        g.setdefault("o", int(rng.integers(1, 24)))
        o = g["o"]
    else:
        g.setdefault("n", int(rng.integers(1, 3)))
        g.setdefault("hw", (int(rng.integers(1, 9)), int(rng.integers(1, 9))))
        g.setdefault("kernel", (int(rng.integers(1, 4)), int(rng.integers(1, 4))))
        g.setdefault("stride", (int(rng.integers(1, 3)), int(rng.integers(1, 3))))
        g.setdefault("dilation", (int(rng.integers(1, 3)), int(rng.integers(1, 3))))
        g.setdefault("padding", str(rng.choice(["SAME", "VALID"])))
        if g["padding"] == "VALID":  # the window must fit
            g["hw"] = tuple(max(h, (k - 1) * d + 1) for h, k, d in zip(g["hw"], g["kernel"], g["dilation"]))
        if op == "dw":
            g.setdefault("c", int(rng.integers(1, 20)))
            g.setdefault("m", int(rng.choice([1, 1, 2, 3])))
            o = g["c"] * g["m"]
        else:
            g.setdefault("c", int(rng.integers(1, 12)))
            g.setdefault("o", int(rng.integers(1, 12)))
            g.setdefault("groups", 1)
            g["c"], g["o"] = (-(-g[d] // g["groups"]) * g["groups"] for d in ("c", "o"))  # multiples of groups
            o = g["o"]
    per_channel = bool(rng.integers(0, 2)) if per_channel is None else per_channel
    nsw = o if per_channel else 1
    if ties:
        k = int(rng.integers(2, 7))
        sx = np.float32(2.0 ** -int(rng.integers(4, 9)))
        b = rng.integers(4, 9, nsw)
        sw = ((rng.integers(0, 2, nsw) * 2 + 1) * 2.0 ** -b).astype(np.float32)  # 1 or 3 times 2**-b
        sy = np.float32(sx * 2.0 ** (k - int(b.min())))  # eff_c = (1 or 3) * 2**(b_min - b_c - k) <= 0.75
        amp_x, amp_w, amp_b = 6, 4, 40
    else:
        sx = _log_uniform(rng, 0.002, 0.1)
        sw = _log_uniform(rng, 0.0005, 0.05, nsw)
        sy = np.float32(sx * np.median(sw) * float(_log_uniform(rng, 2, 2000)))
        amp_x, amp_w, amp_b = 128, 128, 3000
    if clamp_ties:
        ties = True
        activation = str(rng.choice(["RELU6", "RELU_N1_TO_1"]))
        sx = np.float32(2.0**-3)
        sw = ((rng.integers(0, 2, nsw) * 2 + 1) * 2.0 ** -rng.integers(3, 5, nsw)).astype(np.float32)
        sy = np.float32(4.0 if activation == "RELU6" else 2.0)
    zx = int(rng.integers(-128, 128)) if not ties else int(rng.integers(-4, 5))
    zy = int(rng.integers(-128, 128)) if not ties else int(rng.integers(-20, 21))
    if zero_points is not None:
        zx, zy = (int(v) for v in zero_points)
    act = activation or str(rng.choice(ACTIVATIONS))
    if op == "fc":
        x = rng.integers(max(-128, zx - amp_x), min(128, zx + amp_x), (g["n"], g["k"]))
        w = rng.integers(-min(127, amp_w), min(127, amp_w) + 1, (o, g["k"]))
        case = dict(op=op, x=x.astype(np.int8), w=w.astype(np.int8))
    else:
        x = rng.integers(max(-128, zx - amp_x), min(128, zx + amp_x), (g["n"], *g["hw"], g["c"]))
        kh, kw = g["kernel"]
        if op == "dw":
            w = rng.integers(-min(127, amp_w), min(127, amp_w) + 1, (1, kh, kw, o))
        else:
            w = rng.integers(-min(127, amp_w), min(127, amp_w) + 1, (o, kh, kw, g["c"] // g["groups"]))
        case = dict(op=op, x=x.astype(np.int8), w=w.astype(np.int8), kernel=(kh, kw), stride=g["stride"],
                    dilation=g["dilation"], padding=g["padding"])
    case.update(sx=np.float32(sx), sw=np.asarray(sw, np.float32).reshape(-1), sy=np.float32(sy), zx=zx, zy=zy,
                bias=rng.integers(-amp_b, amp_b + 1, o).astype(np.int32), activation=act)
    return case


def fc_rounding_case(a: int = 63) -> dict:
    """FULLY_CONNECTED with ``sx = 1``, ``sw_c = (2k+1) * 2**-12`` (``k < a``), ``sy = a * 2**-11`` and ``acc = ±a``
    (odd ``a``): the exact ``acc * sw_c / sy`` is the tie ``±(k + 1/2)``, but the double ``M_c = RN64((2k+1) / 2a)``
    is not exact, so ``double(acc) * M_c`` lands a hair off the tie — or, rounded to double, back on it."""
    ks = np.arange(a)
    x = np.array([[a], [-a]], np.int8)
    return dict(op="fc", x=x, w=np.ones((len(ks), 1), np.int8), sx=np.float32(1.0),
                sw=((2 * ks + 1) * 2.0**-12).astype(np.float32), sy=np.float32(a * 2.0**-11), zx=0, zy=0,
                bias=np.zeros(len(ks), np.int32), activation="NONE")


def accumulators(case) -> np.ndarray:
    """``sum (x - zx) * w + bias`` in numpy int64 (``(N, OH, OW, O)`` or ``(N, O)``), independent of qjax."""
    x = case["x"].astype(np.int64) - case["zx"]
    w = case["w"].astype(np.int64)
    if case["op"] == "fc":
        return x @ w.T + case["bias"]
    if case["op"] == "tconv":  # scatter x[i, j] * w[:, ky, kx] to (i*s + ky, j*s + kx), crop pad_top / pad_left
        n, h, wd, _ = x.shape
        (sh, sw), (o, kh, kw, _) = case["stride"], w.shape
        (pt, _), (pl, _) = explicit_padding(case["padding"], case["out"][1:3], (kh, kw), case["stride"])
        full = np.zeros((n, (h - 1) * sh + kh + case["out"][1], (wd - 1) * sw + kw + case["out"][2], o), np.int64)
        for ky in range(kh):
            for kx in range(kw):
                full[:, ky:ky + sh * (h - 1) + 1:sh, kx:kx + sw * (wd - 1) + 1:sw] += x @ w[:, ky, kx, :].T
        return full[:, pt:pt + case["out"][1], pl:pl + case["out"][2]] + case["bias"]
    n, h, wd, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = case["kernel"], case["stride"], case["dilation"]
    (pt, pb), (pl, pr) = explicit_padding(case["padding"], (h, wd), (kh, kw), (sh, sw), (dh, dw))
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # zero = the zero point's contribution
    oh, ow = _out_shape(case)[1:3]
    if case["op"] == "dw":
        m = w.shape[-1] // c
        xp = np.repeat(xp, m, axis=-1)  # output channel c*M + j reads input channel c
    acc = np.zeros(_out_shape(case), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw, :]
            if case["op"] == "dw":
                acc += patch * w[0, i, j, :]
            else:
                groups = c // w.shape[-1]
                cg, og = c // groups, w.shape[0] // groups
                for g in range(groups):
                    acc[..., g * og:(g + 1) * og] += patch[..., g * cg:(g + 1) * cg] @ w[g * og:(g + 1) * og, i, j, :].T
    return acc + case["bias"]


# -- numpy (int64 / float32) references of the candidate rules, independent of qjax ----------------------------

def np_gemmlowp(acc, m0, shift):
    """MultiplyByQuantizedMultiplier: SRDHM (nudge, truncating division) then RoundingDivideByPOT (half away)."""
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = (np.asarray(acc, np.int64) << left).astype(np.int32).astype(np.int64)  # the int32 left shift wraps
    ab = x * np.asarray(m0, np.int64)
    s = ab + np.where(ab >= 0, 2**30, 1 - 2**30)
    v = np.where(s >= 0, s >> 31, -((-s) >> 31))
    mask = (np.int64(1) << right) - 1
    return (v >> right) + ((v & mask) > (mask >> 1) + (v < 0))


def np_half_up(acc, m0, shift):
    """Both roundings half up: ``floor((a*b + 2**30) / 2**31)`` then ``floor((v + 2**(e-1)) / 2**e)``."""
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = (np.asarray(acc, np.int64) << left).astype(np.int32).astype(np.int64)
    v = (x * np.asarray(m0, np.int64) + 2**30) >> 31
    return np.where(right > 0, (v + ((np.int64(1) << right) >> 1)) >> right, v)


def np_single_half_up(acc, m0, shift):
    """TFLITE_SINGLE_ROUNDING / ruy's newest kernels: ``(acc * M0 + 2**(30 - shift)) >> (31 - shift)``."""
    t = 31 - np.asarray(shift, np.int64)
    return (np.asarray(acc, np.int64) * np.asarray(m0, np.int64) + (np.int64(1) << (t - 1))) >> t


def np_xnnpack(acc, scale):
    return np.rint(np.asarray(acc, np.int64).astype(np.float32) * np.asarray(scale, np.float32)).astype(np.int64)


_ACT = {"NONE": (None, None), "RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


def np_clamp_bounds(activation, sy, zy, xnnpack: bool):
    """The builtin kernels' bounds ``zy + round_half_away(f / sy)``, or XNNPACK's ``lrintf(f / sy + zy)``."""
    out = []
    for f, default in zip(_ACT[activation], (-128, 127)):
        if f is None:
            out.append(default)
            continue
        q = np.float32(f) / np.float32(sy)
        v = np.rint(np.float32(q + np.float32(zy))) if xnnpack else zy + round_offline(np.float64(q), "half_away")
        out.append(int(np.clip(v, -128, 127)))
    return tuple(out)


def np_output(case, requant, *params, xnnpack_clamp: bool = False):
    """The case's output under a candidate requantization ``requant(acc, *params)`` and clamp."""
    lo, hi = np_clamp_bounds(case["activation"], case["sy"], case["zy"], xnnpack_clamp)
    return np.clip(requant(accumulators(case), *params) + case["zy"], lo, hi)


# -- TRANSPOSE_CONV ---------------------------------------------------------------------------------------------

def make_tconv_case(rng, *, ties: bool = False, per_channel=None, shape=None) -> dict:
    """A random TRANSPOSE_CONV case: ``w`` OHWI, output ``(N, OH, OW, O)`` with ``OH = H*s`` (SAME) or
    ``(H-1)*s + k`` (VALID), or the given ``shape`` dict."""
    g = dict(shape or {})
    g.setdefault("n", int(rng.integers(1, 3)))
    g.setdefault("hw", (int(rng.integers(1, 7)), int(rng.integers(1, 7))))
    g.setdefault("kernel", (int(rng.integers(1, 5)), int(rng.integers(1, 5))))
    g.setdefault("stride", (int(rng.integers(1, 4)), int(rng.integers(1, 4))))
    g.setdefault("padding", str(rng.choice(["SAME", "VALID"])))
    g.setdefault("c", int(rng.integers(1, 10)))
    g.setdefault("o", int(rng.integers(1, 20)))
    case = make_case(rng, "conv", ties=ties, per_channel=per_channel,
                     shape=dict(n=g["n"], hw=g["hw"], kernel=g["kernel"], stride=(1, 1), dilation=(1, 1),
                                padding="VALID", c=g["c"], o=g["o"]))
    case.update(op="tconv", stride=g["stride"], padding=g["padding"], x=case["x"][:, :g["hw"][0], :g["hw"][1]])
    case["out"] = (g["n"],) + tuple(h * s if g["padding"] == "SAME" else (h - 1) * s + k
                                    for h, s, k in zip(g["hw"], g["stride"], g["kernel"])) + (g["o"],)
    return case


def build_tconv_model(case) -> bytes:
    b = TFLiteBuilder()
    shp = b.tensor((4,), np.int32, data=np.asarray(case["out"], np.int32))
    wi = b.tensor(case["w"].shape, np.int8, scale=case["sw"], zero_point=0, axis=0, data=case["w"])
    xi = b.tensor(case["x"].shape, np.int8, scale=case["sx"], zero_point=case["zx"])
    bias_scale = (np.float32(case["sx"]) * np.asarray(case["sw"], np.float32)).astype(np.float32)
    bi = b.tensor(case["bias"].shape, np.int32, scale=bias_scale, zero_point=0, data=case["bias"])
    yi = b.tensor(case["out"], np.int8, scale=case["sy"], zero_point=case["zy"])
    o = schema.TransposeConvOptionsT()
    o.padding = getattr(schema.Padding, case["padding"])
    o.strideH, o.strideW = case["stride"]
    o.fusedActivationFunction = getattr(schema.ActivationFunctionType, case["activation"])
    b.op("TRANSPOSE_CONV", [shp, wi, xi, bi], [yi], o, version=4)
    return b.build([xi], [yi])


def qjax_tconv_output(case, kernels: str) -> np.ndarray:
    sw = np.asarray(case["sw"], np.float32)
    per_channel = sw.size > 1
    x = qjax.QArray(case["x"], np.float32(case["sx"]), np.int32(case["zx"]), qjax.qint8)
    wq = qjax.QArray(case["w"].transpose(1, 2, 3, 0), sw if per_channel else sw.reshape(()),
                     np.zeros(sw.shape, np.int32) if per_channel else np.int32(0), qjax.qint8,
                     axis=3 if per_channel else None)
    y = LiteRT(kernels).tfl_transpose_conv(x, wq, np.asarray(case["bias"], np.int32), np.float32(case["sy"]),
                                           np.int32(case["zy"]), case["out"], case["stride"], case["padding"],
                                           case["activation"])
    return np.asarray(y.values)
