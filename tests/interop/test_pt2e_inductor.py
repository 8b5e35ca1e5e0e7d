"""qjax.interop.pt2e_inductor: torchao's x86 lowering (onednn pointwise kernels) reproduced to the bit.

Two levels, both against live torch: the ``onednn::q*_pointwise`` kernels called directly (random and
tie-seeking scales, float32 outputs compared bit for bit, integer outputs exactly), and small models
through ``X86InductorQuantizer`` -> ``convert_pt2e`` -> ``lower_pt2e_quantized_to_x86`` compared with
the lowered module itself.  Each kernel test also checks that its data tells the measured rule from
the nearest wrong one (the eager onednn engine's double-inverted scales, a double-precision output
scale).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from qjax._src.engines import ConvGeometry, Inductor  # noqa: E402
from qjax._src.engines.inductor import PostOps  # noqa: E402
from qjax._src.interop.pt2e_inductor import import_lowered  # noqa: E402
from qjax._src.interop.torch_common import TorchImportError  # noqa: E402

F = np.float32
ENGINE = Inductor()


def _inv(v):
    return F(F(1) / F(v))


def _conv_case(rng, C, O, k, N=2, H=6, groups=1):
    w = torch.from_numpy(rng.normal(0, 0.1, (O, C // groups, k, k)).astype(F))
    wsc = (w.abs().amax(dim=(1, 2, 3)) / 127).float()
    wq = torch.clamp(torch.round(w / wsc[:, None, None, None]), -128, 127).to(torch.int8)
    sx = float(F(rng.uniform(0.003, 0.05)))
    while _inv(_inv(sx)) == F(sx):  # a scale the eager engine's double inversion changes
        sx = float(F(rng.uniform(0.003, 0.05)))
    zx = int(rng.integers(0, 256))
    x = torch.from_numpy(rng.integers(0, 256, (N, C, H, H)).astype(np.uint8)).contiguous(
        memory_format=torch.channels_last)
    b = torch.from_numpy(rng.normal(0, 0.5, O).astype(F))
    pad = k // 2
    packed = torch.ops.onednn.qconv_prepack(wq, wsc, sx, zx, [1, 1], [pad, pad], [1, 1], groups, x.shape)
    return dict(x=x, wq=wq, wsc=wsc, sx=sx, zx=zx, b=b, packed=packed, pad=pad, groups=groups, O=O)


def _torch_conv(c, out_scale, out_zp, out_dtype, attr="none", scalars=(), accum=None, accum_scale=1.0,
                accum_zp=0):
    common = (c["x"], c["sx"], c["zx"], c["packed"], c["wsc"], torch.zeros(c["O"], dtype=torch.int64))
    geo = ([1, 1], [c["pad"]] * 2, [1, 1], c["groups"])
    if accum is None:
        y = torch.ops.onednn.qconv_pointwise.default(*common, c["b"], *geo, out_scale, out_zp, out_dtype, attr,
                                                     list(scalars), "")
    else:
        y = torch.ops.onednn.qconv2d_pointwise.binary(*common, accum.clone(), c["b"], *geo, out_scale, out_zp,
                                                      out_dtype, accum_scale, accum_zp, "sum", 1.0, attr,
                                                      list(scalars), "")
    return y.contiguous().numpy()


@functools.partial(jax.jit, static_argnames=("geo", "post"))
def _conv_jit(x, sx, zx, w, ws, b, accum, *, geo, post):
    return ENGINE.pointwise_conv(x, sx, zx, w, ws, b, geo, post, accum=accum)


@functools.partial(jax.jit, static_argnames=("post",))
def _linear_jit(x, sx, zx, w, ws, b, accum=None, *, post):
    return ENGINE.pointwise_linear(x, sx, zx, w, ws, b, post, accum=accum)


def _qjax_conv(c, post, accum=None):
    x = jnp.asarray(c["x"].permute(0, 2, 3, 1).contiguous().numpy())
    w = jnp.asarray(c["wq"].permute(2, 3, 1, 0).contiguous().numpy())
    geo = ConvGeometry((1, 1), ((c["pad"], c["pad"]),) * 2, (1, 1), c["groups"])
    acc_in = None if accum is None else jnp.asarray(accum.permute(0, 2, 3, 1).contiguous().numpy())
    y = _conv_jit(x, F(c["sx"]), c["zx"], w, c["wsc"].numpy(), c["b"].numpy(), acc_in, geo=geo, post=post)
    return np.moveaxis(np.asarray(y), -1, 1)


def _bits(a):
    return np.ascontiguousarray(a, F).view(np.int32)


def _eager_onednn_fp32(c):
    """The nearest wrong rule: the eager onednn engine's ``fl32(1/fl32(1/sx))`` input scale."""
    acc = torch.nn.functional.conv2d(c["x"].double() - c["zx"], c["wq"].double(), padding=c["pad"],
                                     groups=c["groups"]).numpy().astype(F)
    v = F(acc * _inv(_inv(c["sx"])))
    return (v * c["wsc"].numpy()[None, :, None, None]).astype(F) + c["b"].numpy()[None, :, None, None]


def test_pointwise_conv_fp32_output_bit_exact():
    """float32 outputs (scale 1.0 / zero point 0): unary none / relu / hardtanh, depthwise and dense, bit for bit."""
    rng = np.random.default_rng(0)
    total = bad = wrong_rule = 0
    for t in range(4):
        C, O, k, g = [(16, 16, 3, 1), (16, 16, 3, 16)][t % 2]
        c = _conv_case(rng, C, O, k, groups=g)
        attr, scalars = [("none", ()), ("relu", ()), ("none", ()), ("hardtanh", (-0.5, 0.75))][t]
        y = _torch_conv(c, 1.0, 0, torch.float32, attr, [float(s) for s in scalars])
        got = _qjax_conv(c, PostOps(out_dtype="float32", unary=attr, unary_args=scalars))
        total += y.size
        bad += int((_bits(got) != _bits(y)).sum())
        if attr == "none":
            wrong_rule += int((_bits(_eager_onednn_fp32(c)) != _bits(y)).sum())
    assert bad == 0, f"{bad} of {total} float32 outputs differ"
    assert wrong_rule > 0, "the data does not tell fl32(sx) from the eager engine's fl32(1/fl32(1/sx))"


def test_pointwise_conv_u8_output_double_scale_ties():
    """uint8 outputs with double (non-float32) output scales on tie-seeking accumulators: the output
    scale is rounded to float32 before its inversion (``fl32(1/output_scale)`` in double differs)."""
    rng = np.random.default_rng(1)
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    found = []  # parameter sets where the two rules disagree on some accumulator (screened in numpy)
    for _ in range(20):
        m = 10000
        sx = rng.uniform(0.001, 0.1, m).astype(F)
        sw = rng.uniform(0.0005, 0.01, m).astype(F)
        sy = rng.uniform(0.001, 0.1, m)  # doubles, as a Python float scale may be
        wq, zx, zy = rng.integers(-128, 128, m), rng.integers(0, 256, m), rng.integers(0, 256, m)
        b = (rng.normal(size=m) * 0.3).astype(F)
        acc = ((np.arange(256)[None, :] - zx[:, None]) * wq[:, None]).astype(F)
        v = ((acc * sx[:, None]).astype(F) * sw[:, None]).astype(F) + b[:, None]

        def rule(mult):
            return np.round(np.clip(((v * mult[:, None]).astype(F) + zy[:, None].astype(F)).astype(F), 0, 255))

        ours_all, alt_all = rule((F(1) / sy.astype(F)).astype(F)), rule((1.0 / sy).astype(F))
        for i in np.flatnonzero((ours_all != alt_all).any(axis=1)):
            found.append((float(sx[i]), float(sw[i]), float(sy[i]), int(wq[i]), int(zx[i]), int(zy[i]), b[i],
                          alt_all[i]))
        if len(found) >= 6:
            break
    tested = bad = wrong_rule = 0
    for sxi, swi, syi, wqi, zxi, zyi, bi, alt in found[:6]:
        tested += 1
        wt = torch.tensor([[[[wqi]]]], dtype=torch.int8)
        wsc = torch.tensor([swi], dtype=torch.float32)
        c = dict(x=x, wq=wt, wsc=wsc, sx=sxi, zx=zxi, b=torch.tensor([bi]), pad=0, groups=1, O=1,
                 packed=torch.ops.onednn.qconv_prepack(wt, wsc, sxi, zxi, [1, 1], [0, 0], [1, 1], 1, x.shape))
        y = _torch_conv(c, syi, zyi, torch.uint8).ravel()
        got = _qjax_conv(c, PostOps(out_dtype="uint8", output_scale=syi, output_zero_point=zyi)).ravel()
        bad += int((got != y).sum())
        wrong_rule += int((alt != y).sum())
    assert tested >= 6
    assert bad == 0, f"{bad} mismatches over {tested} tie-seeking cases"
    assert wrong_rule > 0


def test_pointwise_conv_sum_post_op():
    """``qconv2d_pointwise.binary`` 'sum': a uint8 accumulator with its scale / zero point (uint8 output,
    relu or none) and a float32 one (float32 output)."""
    rng = np.random.default_rng(2)
    bad = total = 0
    for t in range(4):
        c = _conv_case(rng, 16, 16, 3, N=2, H=6)
        attr = "relu" if t % 2 == 0 else "none"
        if t < 2:
            sa, za = float(F(rng.uniform(0.01, 0.1))), int(rng.integers(0, 256))
            sy, zy = float(F(rng.uniform(0.01, 0.1))), int(rng.integers(0, 256))
            accum = torch.from_numpy(rng.integers(0, 256, (2, 16, 6, 6)).astype(np.uint8)).contiguous(
                memory_format=torch.channels_last)
            y = _torch_conv(c, sy, zy, torch.uint8, attr, accum=accum, accum_scale=sa, accum_zp=za)
            post = PostOps(out_dtype="uint8", output_scale=sy, output_zero_point=zy, unary=attr, binary="sum",
                           accum_scale=sa, accum_zero_point=za)
            got = _qjax_conv(c, post, accum)
            bad += int((got != y).sum())
        else:
            accum = torch.from_numpy(rng.normal(0, 2, (2, 16, 6, 6)).astype(F)).contiguous(
                memory_format=torch.channels_last)
            y = _torch_conv(c, 1.0, 0, torch.float32, attr, accum=accum)
            got = _qjax_conv(c, PostOps(out_dtype="float32", unary=attr, binary="sum"), accum)
            bad += int((_bits(got) != _bits(y)).sum())
        total += y.size
    assert bad == 0, f"{bad} of {total} outputs differ"


def _fma32(a, b, c):
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F)


def test_pointwise_conv_sum_ties():
    """The uint8 'sum' at ties: one FMA ``fl32((accum - zp) * scale + v)`` before relu and the output scale;
    the unfused form (a ResNet-50 bottleneck met it) must differ on the same data."""
    rng = np.random.default_rng(6)
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    m = 24000  # parameter sets screened in numpy for those where the FMA and the unfused rule disagree
    sx, sw = rng.uniform(0.001, 0.05, m).astype(F), rng.uniform(0.0005, 0.01, m).astype(F)
    sy, sa = rng.uniform(0.005, 0.05, m).astype(F), rng.uniform(0.005, 0.05, m).astype(F)
    wq, zx, zy, za = (rng.integers(-128, 128, m), rng.integers(0, 256, m), rng.integers(0, 100, m),
                      rng.integers(0, 256, m))
    b = (rng.normal(size=m) * 0.3).astype(F)
    A = rng.integers(0, 256, (m, 256)).astype(F)
    acc = ((np.arange(256)[None, :] - zx[:, None]) * wq[:, None]).astype(F)
    v = ((acc * sx[:, None]).astype(F) * sw[:, None]).astype(F) + b[:, None]
    t = (A - za[:, None].astype(F)).astype(F)
    mult = (F(1) / sy).astype(F)[:, None]

    def out(w):
        return np.round(np.clip(((w * mult).astype(F) + zy[:, None].astype(F)).astype(F), 0, 255))

    ours = out(np.maximum(_fma32(t, sa[:, None], v), F(0)))
    alt = out(np.maximum((v + (t * sa[:, None]).astype(F)).astype(F), F(0)))
    rows = np.flatnonzero((ours != alt).any(axis=1))[:6]
    assert len(rows) >= 2
    bad = wrong_rule = 0
    for i in rows:
        wt, wsc = torch.tensor([[[[int(wq[i])]]]], dtype=torch.int8), torch.tensor([sw[i]], dtype=torch.float32)
        c = dict(x=x, wq=wt, wsc=wsc, sx=float(sx[i]), zx=int(zx[i]), b=torch.tensor([b[i]]), pad=0, groups=1, O=1,
                 packed=torch.ops.onednn.qconv_prepack(wt, wsc, float(sx[i]), int(zx[i]), [1, 1], [0, 0], [1, 1], 1,
                                                       x.shape))
        accum = torch.from_numpy(A[i].astype(np.uint8).reshape(1, 1, 16, 16)).contiguous(
            memory_format=torch.channels_last)
        y = _torch_conv(c, float(sy[i]), int(zy[i]), torch.uint8, "relu", accum=accum, accum_scale=float(sa[i]),
                        accum_zp=int(za[i])).ravel()
        post = PostOps(out_dtype="uint8", output_scale=float(sy[i]), output_zero_point=int(zy[i]), unary="relu",
                       binary="sum", accum_scale=float(sa[i]), accum_zero_point=int(za[i]))
        bad += int((_qjax_conv(c, post, accum).ravel() != y).sum())
        wrong_rule += int((alt[i] != y).sum())
    assert bad == 0, f"{bad} mismatches over {len(rows)} tie-seeking cases"
    assert wrong_rule > 0


def test_pointwise_linear_binary():
    """``qlinear_pointwise.binary``: 'sum' with a uint8 operand (its scale / zero point) into uint8, with a
    float32 one into float32; 'add' adds the operand as it is (a uint8 one's scale / zero point unused)."""
    rng = np.random.default_rng(4)
    K, O, N = 32, 16, 8
    wq = torch.from_numpy(rng.integers(-127, 128, (O, K)).astype(np.int8))
    wsc = torch.from_numpy(rng.uniform(0.0005, 0.003, O).astype(F))
    b = torch.from_numpy(rng.normal(0, 0.5, O).astype(F))
    sx, zx = float(F(0.0123)), 77
    x = torch.from_numpy(rng.integers(0, 256, (N, K)).astype(np.uint8))
    packed = torch.ops.onednn.qlinear_prepack(wq, x.shape)
    bad = 0
    for binary, u8_other, u8_out, attr in [("sum", True, True, "relu"), ("sum", False, False, "none"),
                                           ("add", True, True, "none"), ("add", False, True, "relu")]:
        if u8_other:
            other, osc, ozp = torch.from_numpy(rng.integers(0, 256, (N, O)).astype(np.uint8)), 0.05, 100
        else:
            other, osc, ozp = torch.from_numpy(rng.normal(0, 2, (N, O)).astype(F)), 1.0, 0
        sy, zy = (0.05, 90) if u8_out else (1.0, 0)
        out_dtype = torch.uint8 if u8_out else torch.float32
        y = torch.ops.onednn.qlinear_pointwise.binary(x, sx, zx, packed, wsc, torch.zeros(O, dtype=torch.int64),
                                                      other.clone(), b, sy, zy, out_dtype, osc, ozp, binary, 1.0, attr,
                                                      [], "").numpy()
        scale, zp = (osc, ozp) if binary == "sum" else (1.0, 0)  # what the importer stores for 'add'
        post = PostOps(out_dtype="uint8" if u8_out else "float32", output_scale=sy, output_zero_point=zy, unary=attr,
                       binary="sum", accum_scale=scale, accum_zero_point=zp)
        got = np.asarray(_linear_jit(jnp.asarray(x.numpy()), F(sx), zx, jnp.asarray(wq.numpy()), wsc.numpy(),
                                     b.numpy(), jnp.asarray(other.numpy()), post=post))
        bad += int((got != y).sum()) if u8_out else int((_bits(got) != _bits(y)).sum())
    assert bad == 0


def test_pointwise_linear_outputs():
    """``qlinear_pointwise``: float32 outputs bit for bit (the eager engine's rule differs) and uint8 outputs."""
    rng = np.random.default_rng(3)
    bad = wrong_rule = 0
    for t in range(4):
        K, O, N = 48, 32, 8
        wq = torch.from_numpy(rng.integers(-127, 128, (O, K)).astype(np.int8))
        wsc = torch.from_numpy(rng.uniform(0.0005, 0.003, O).astype(F))
        b = torch.from_numpy(rng.normal(0, 0.5, O).astype(F))
        sx, zx = float(F(rng.uniform(0.003, 0.05))), int(rng.integers(0, 256))
        x = torch.from_numpy(rng.integers(0, 256, (N, K)).astype(np.uint8))
        packed = torch.ops.onednn.qlinear_prepack(wq, x.shape)
        attr = "relu" if t % 2 else "none"
        fp32 = t < 2
        sy, zy = (1.0, 0) if fp32 else (float(F(rng.uniform(0.05, 0.2))), int(rng.integers(0, 256)))
        y = torch.ops.onednn.qlinear_pointwise.default(x, sx, zx, packed, wsc, torch.zeros(O, dtype=torch.int64), b,
                                                       sy, zy, torch.float32 if fp32 else torch.uint8, attr, [],
                                                       "").numpy()
        post = PostOps(out_dtype="float32" if fp32 else "uint8", output_scale=sy, output_zero_point=zy, unary=attr)
        got = np.asarray(_linear_jit(jnp.asarray(x.numpy()), F(sx), zx, jnp.asarray(wq.numpy()), wsc.numpy(),
                                     b.numpy(), post=post))
        if fp32:
            bad += int((_bits(got) != _bits(y)).sum())
            acc = ((x.double() - zx) @ wq.double().t()).numpy().astype(F)
            alt = (F(acc * _inv(_inv(sx))) * np.array([_inv(_inv(s)) for s in wsc.numpy()], F)).astype(F) + b.numpy()
            wrong_rule += int((_bits(alt) != _bits(y)).sum())
        else:
            bad += int((got != y).sum())
    assert bad == 0
    assert wrong_rule > 0


# -- models through X86InductorQuantizer -> convert_pt2e -> lower_pt2e_quantized_to_x86 -------------------------


def _lowered(model, x, calib):
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(model.eval(), (x,)).module()
        q = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        p = prepare_pt2e(gm, q)
        with torch.no_grad():
            for xc in calib:
                p(xc)
        c = convert_pt2e(p)
        with torch.no_grad():
            return lower_pt2e_quantized_to_x86(c, (x,))


def _input_scale(low):
    for n in low.graph.nodes:
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target):
            return float(n.args[1]), int(n.args[2])
    raise AssertionError("no input quantize")


def _inputs(low, shape, rng, n_random=3):
    """Random inputs, and tie-seeking ones: every value on a rounding tie of the input quantize
    (``(k + 1/2) * scale``) or on a grid point."""
    s, z = _input_scale(low)
    xs = [rng.normal(0, 1.5, shape).astype(F) for _ in range(n_random)]
    k = rng.integers(-z, 256 - z, shape)
    xs.append(((k + 0.5) * s).astype(F))
    xs.append((k * s).astype(F))
    return xs


def _check(low, shape, seed, counts):
    qm = import_lowered(low, (torch.zeros(shape),))
    rng = np.random.default_rng(seed)
    bad = total = 0
    for x in _inputs(low, shape, rng):
        with torch.no_grad():
            y = low(torch.from_numpy(x)).contiguous().numpy()
        got = np.asarray(qm(jnp.asarray(x)))
        total += y.size
        bad += int((_bits(got) != _bits(y)).sum()) if y.dtype == F else int((got != y).sum())
    targets = [str(n.target) for n in low.graph.nodes if n.op == "call_function"]
    for op, n in counts.items():
        assert sum(t == op for t in targets) >= n, f"the lowered graph has no {op} (test data would not cover it)"
    assert bad == 0, f"{bad} of {total} outputs differ"


class _Net(torch.nn.Module):
    """Every pattern the lowering emits for CNNs: a stem conv-bn-relu and max pooling; a ResNet basic
    block (functional relus; a uint8 'sum' into the block input); a conv + add + relu whose operand is
    the conv's own input (a float32 'sum'); MobileNet's relu6 / hardtanh (float32 outputs, ATen clamps),
    a depthwise conv and a residual add without relu; MobileNetV3's hardswish and squeeze-excitation
    (float32 mean, hardsigmoid, mul); global average pooling (a float32 mean of a
    channels-last tensor); a linear head with residuals (qlinear 'sum' with a float32 operand, 'add'),
    uint8 and float32 outputs."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem, self.stem_bn = conv(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.a1, self.a2 = conv(16, 16, 3, padding=1), conv(16, 16, 3, padding=1)
        self.bn1, self.bn2 = torch.nn.BatchNorm2d(16), torch.nn.BatchNorm2d(16)
        self.c = conv(16, 16, 3, padding=1)
        self.expand, self.dw, self.project = conv(16, 32, 1), conv(32, 32, 3, padding=1, groups=32), conv(32, 16, 1)
        self.expand2, self.se, self.project2 = conv(16, 24, 1), conv(24, 24, 1), conv(24, 16, 1)
        self.fc, self.fc2, self.fc3 = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 5)
        for bn in (self.stem_bn, self.bn1, self.bn2):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.stem_bn(self.stem(x))), 3, 1, 1)
        h = torch.relu(self.bn1(self.a1(y)))
        y = torch.relu(self.bn2(self.a2(h)) + y)
        y = torch.relu(self.c(y) + y)
        h = torch.nn.functional.hardtanh(self.expand(y), 0.0, 6.0)
        h = torch.nn.functional.relu6(self.dw(h))
        y = self.project(h) + y
        h = torch.nn.functional.hardswish(self.expand2(y))
        se = torch.nn.functional.hardsigmoid(self.se(torch.mean(h, (2, 3), keepdim=True)))
        y = self.project2(h * se)
        y = torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        z = torch.relu(self.fc(y) + y)
        return self.fc3(self.fc2(z) + z)


def test_lowered_model_bit_exact():
    """The lowered module against qjax on random and tie-seeking inputs: 0 mismatches, bit for bit."""
    torch.manual_seed(0)
    shape = (2, 3, 8, 8)
    calib = [torch.randn(shape) for _ in range(3)]
    counts = {"onednn.qconv2d_pointwise.binary": 3, "onednn.qconv_pointwise.default": 4,
              "onednn.qlinear_pointwise.binary": 2, "onednn.qlinear_pointwise.default": 1,
              "aten.max_pool2d_with_indices.default": 1, "aten.hardtanh.default": 2, "aten.mean.dim": 2,
              "aten.hardswish.default": 1, "aten.hardsigmoid.default": 1, "aten.mul.Tensor": 1}
    _check(_lowered(_Net(), calib[0], calib), shape, seed=5, counts=counts)


def test_refuses_ops_it_does_not_reproduce():
    """A float op qjax does not reproduce (gelu's erf here) is refused at import, naming the op."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.nn.functional.gelu(self.c(x))

    x = torch.randn(1, 3, 6, 6)
    low = _lowered(M(), x, [x])
    assert any("gelu" in str(n.target) for n in low.graph.nodes)
    with pytest.raises(TorchImportError, match="gelu"):
        import_lowered(low, (x,))


def test_one_sided_clamp():
    """``clamp(x, min=0)`` exports as ``clamp.default(x, 0.0)``: no upper bound (it clipped at 1.0 once)."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.clamp(self.c(x), min=-0.25)

    torch.manual_seed(1)
    shape = (1, 3, 6, 6)
    calib = [torch.randn(shape) * 2 for _ in range(2)]
    low = _lowered(M(), calib[0], calib)
    assert any(str(n.target) == "aten.clamp.default" for n in low.graph.nodes)
    _check(low, shape, seed=2, counts={"aten.clamp.default": 1})
