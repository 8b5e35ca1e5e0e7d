"""Explain one output integer of a quantized conv/linear, step by step.

:func:`explain` recomputes a single output element of :func:`qjax.conv` /
:func:`qjax.linear` with the engine's exact arithmetic (the same :mod:`qjax.float32`
primitives the kernels use) and lays it next to the usual hand formula —
``bias_q = round(b / (sx*sw))``, ``y = (acc + bias_q) * sx*sw/sy`` with the 4-digit
scales torch prints — saying at which step the two part and why.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .engines import layer_engine, resolve
from .ops import conv, conv_geometry, linear
from .qarray import QArray

__all__ = ["explain", "Explanation", "printed_scale"]


def printed_scale(s: float) -> float:
    """The scale as torch prints it (``tensor([0.0078])``): 4 decimals, or 4 significant digits if tiny."""
    s = float(s)
    return float(f"{s:.4f}") if s >= 1e-3 else float(f"{s:.3e}")


@dataclasses.dataclass
class Explanation:
    """The steps behind one output integer (all numbers are the exact values used)."""

    op: str
    index: tuple
    engine: str
    x_taps: np.ndarray
    w_taps: np.ndarray
    x_scale: float
    x_zero_point: int
    w_scale: float
    w_zero_point: int
    per_channel: bool
    bias: float | None
    out_scale: float
    out_zero_point: int
    relu: bool
    acc: int
    acc_exact: int
    atw: float
    multiplier: float
    bias_term: float | None
    xf: float
    y: float
    rounded: int
    output: int
    qjax_output: int
    hand: dict
    torch_output: int | None = None

    def __str__(self) -> str:
        return render(self)


def _f(v) -> str:
    return f"{float(v):.9g}"


def render(e: Explanation) -> str:
    L = []
    where = ", ".join(str(i) for i in e.index)
    L.append(f"qjax explain: {e.op}, engine {e.engine}, output element [{where}]")
    L.append("")
    taps = e.x_taps.size
    show = min(taps, 12)
    xs = " ".join(str(int(v)) for v in e.x_taps[:show]) + (" ..." if taps > show else "")
    ws = " ".join(str(int(v)) for v in e.w_taps[:show]) + (" ..." if taps > show else "")
    L.append(f"inputs  x (quint8, scale sx={_f(e.x_scale)}, zero point zx={e.x_zero_point}), {taps} taps: {xs}")
    L.append(
        f"weights w (qint8, {'per-channel' if e.per_channel else 'per-tensor'} scale sw={_f(e.w_scale)}, "
        f"zero point zw={e.w_zero_point}): {ws}"
    )
    L.append(f"bias b = {_f(e.bias) if e.bias is not None else 'none'} (float32, as torch stores it)")
    L.append(f"output scale sy={_f(e.out_scale)}, zero point zy={e.out_zero_point}{', fused ReLU' if e.relu else ''}")
    L.append("")
    L.append("fbgemm arithmetic (bit-exact):")
    L.append(f"  1. accumulator      acc = sum (x - zx)(w - zw) = {e.acc}   (int32)")
    if e.acc != e.acc_exact:
        L.append(
            f"     (the exact sum is {e.acc_exact}; fbgemm's vpmaddubsw saturates u8*s8 pair sums to int16)"
        )
    L.append(f"  2. atw = fl32(sx * sw) = {_f(e.atw)}     multiplier M = fl32(atw / sy) = {_f(e.multiplier)}")
    if e.bias is None:
        L.append(f"  3. no bias:         xf = fl32(acc) = {_f(e.xf)}")
    elif e.per_channel:
        L.append(f"  3. bias fold:       b / atw = {_f(e.bias_term)} (float division, NOT rounded to an integer)")
        L.append(f"                      xf = fl32(acc + b/atw) = {_f(e.xf)}")
    else:
        L.append(f"  3. bias fold:       xf = fma(b, fl32(1/atw), acc) = {_f(e.xf)}  (one rounding; b/atw = {_f(e.bias_term)} unrounded)")
    L.append(f"  4. scale:           y = fl32(xf * M) = {_f(e.y)}")
    L.append(f"  5. round half to even: {e.rounded};  + zy = {e.rounded + e.out_zero_point};  clamp to [0, 255]"
             f"{' and ReLU' if e.relu else ''} -> {e.output}")
    L.append(f"  qjax.{e.op} returns {e.qjax_output}" + (f"; torch returns {e.torch_output}" if e.torch_output is not None else ""))
    h = e.hand
    L.append("")
    L.append("the usual hand formula (printed 4-digit scales, bias rounded to int32):")
    ps = {k: (f"{h[k]:.4f}" if h[k] >= 1e-3 else f"{h[k]:.3e}") for k in ("sx", "sw", "sy")}
    L.append(f"  sx~{ps['sx']}, sw~{ps['sw']}, sy~{ps['sy']}:  bias_q = round(b / (sx*sw)) = {h['bias_q']}")
    L.append(f"  y = (acc + bias_q) * sx*sw/sy + zy = {h['y']:.6f} -> {h['output']}")
    L.append("")
    if h["output"] == e.output:
        L.append(f"both give {e.output}; the formulas differ only at rounding ties and in the scales' last digits.")
    else:
        L.append(f"they differ ({h['output']} vs {e.output}); what moves y from {e.y:.6f} to {h['y']:.6f}:")
        for name, (y_alt, q_alt) in h["steps"].items():
            L.append(f"  - {name}: y = {y_alt:.6f} -> {q_alt}")
        L.append(f"  main cause: {h['cause']}")
    return "\n".join(L)


def _conv_taps(x, w, index, geom, channels_first=True):
    n, o = index[0], index[1]
    sp = index[2:]
    g = geom.groups
    og = w.shape[0] // g
    grp = o // og
    cg = w.shape[1]
    kernel = w.shape[2:]
    xs, ws = [], []
    for c in range(cg):
        for tap in itertools.product(*[range(k) for k in kernel]):
            pos = []
            inside = True
            for d, (t, s, (lo, _), dl) in enumerate(zip(tap, geom.strides, geom.padding, geom.dilation)):
                p = sp[d] * s - lo + t * dl
                inside &= 0 <= p < x.shape[2 + d]
                pos.append(p)
            xs.append(x[(n, grp * cg + c) + tuple(pos)] if inside else None)
            ws.append(w[(o, c) + tuple(tap)])
    return xs, np.array(ws, np.int64)


def explain(xq: QArray, wq: QArray, bias=None, *, scale, zero_point, index, op="conv", stride=1, padding=0,
            dilation=1, groups=1, relu=False, engine="fbgemm", torch_output=None) -> Explanation:
    """Trace output element ``index`` of ``qjax.conv`` (or ``qjax.linear`` with ``op="linear"``).

    Arguments are those of :func:`qjax.conv` / :func:`qjax.linear` (torch layout);
    ``index`` is ``(n, o, *spatial)`` for conv and ``(*batch, o)`` for linear.
    ``torch_output`` (optional) is shown next to qjax's result.
    Returns an :class:`Explanation`; ``print()`` it for the step-by-step trace.
    """
    eng = resolve(engine)
    index = tuple(int(i) for i in index)
    x = np.asarray(xq.values).astype(np.int64)
    w = np.asarray(wq.values).astype(np.int64)
    zx = int(np.asarray(xq.zero_point))
    if op == "conv":
        nd = xq.ndim - 2
        geom = conv_geometry(nd, stride, padding, dilation, groups)
        eng = layer_engine(eng, wq.zero_point, geom.groups)
        out = conv(xq, wq, bias, scale=scale, zero_point=zero_point, stride=stride, padding=padding,
                   dilation=dilation, groups=groups, relu=relu, engine=eng)
        o = index[1]
        xs, wt = _conv_taps(x, w, index, geom)
        xt = np.array([zx if v is None else v for v in xs], np.int64)
        shape = dict(in_channels=xq.shape[1], out_channels=wq.shape[0], kernel=wq.shape[2:], geometry=geom)
    elif op == "linear":
        out = linear(xq, wq, bias, scale=scale, zero_point=zero_point, relu=relu, engine=eng)
        o = index[-1]
        xt = x[index[:-1]]
        wt = w[o]
        shape = {}
    else:
        raise ValueError(f"op={op!r}; use 'conv' or 'linear'")
    qjax_out = int(np.asarray(out.values)[index])

    per_channel = wq.axis is not None
    sw = float(np.asarray(wq.scale)[o]) if per_channel else float(np.asarray(wq.scale))
    zw = int(np.asarray(wq.zero_point)[o]) if per_channel else int(np.asarray(wq.zero_point))
    sx = float(np.asarray(xq.scale))
    b = None if bias is None else np.float32(np.asarray(bias)[o])
    # the engine's arithmetic on this one element, with the same primitives its kernels use
    steps = eng.describe(op, xt, wt, sx, zx, sw, zw, per_channel, b, float(scale), int(zero_point), bool(relu), **shape)
    zy = int(zero_point)
    hand = _hand_formula(steps["acc"], sx, sw, float(scale), zy, None if b is None else float(b), relu, steps["y"],
                         steps["output"])
    return Explanation(
        op=op, index=index, engine=eng.name, x_taps=xt, w_taps=wt, x_scale=sx, x_zero_point=zx, w_scale=sw,
        w_zero_point=zw, per_channel=per_channel, bias=None if b is None else float(b),
        out_scale=float(np.float32(scale)), out_zero_point=zy, relu=bool(relu), qjax_output=qjax_out, hand=hand,
        torch_output=torch_output, **steps,
    )


def _hand_formula(acc, sx, sw, sy, zy, b, relu, y_exact, q_exact):
    def formula(sx_, sw_, sy_, int_bias):
        if b is None:
            bias_part = 0.0
        else:
            bias_part = round(b / (sx_ * sw_)) if int_bias else b / (sx_ * sw_)
        yy = (acc + bias_part) * sx_ * sw_ / sy_
        qq = min(max(round(yy) + zy, 0), 255)
        return yy, max(qq, zy) if relu else qq

    psx, psw, psy = printed_scale(sx), printed_scale(sw), printed_scale(sy)
    y_hand, q_hand = formula(psx, psw, psy, True)
    steps = {
        "exact scales, bias rounded to int32": formula(sx, sw, sy, True),
        "printed scales, bias kept in float": formula(psx, psw, psy, False),
    }
    q_scales = steps["exact scales, bias rounded to int32"][1]
    q_bias = steps["printed scales, bias kept in float"][1]
    if q_scales == q_exact and q_bias != q_exact:
        cause = "the printed 4-digit scales (torch prints scales rounded; the kernel uses their float32 values)"
    elif q_bias == q_exact and q_scales != q_exact:
        cause = "rounding the bias to int32 (fbgemm folds the float bias unrounded)"
    else:
        cause = "both the printed scales and the int32 bias rounding"
    return dict(sx=psx, sw=psw, sy=psy, bias_q=None if b is None else round(b / (psx * psw)), y=y_hand,
                output=q_hand, steps=steps, cause=cause, y_exact=y_exact)
