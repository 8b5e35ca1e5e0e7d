"""Shared pieces of the QAT experiments: data, float models (torch), torch PTQ, the qjax import and QAT loops.

Everything is offline: scikit-learn's digits ship with scikit-learn and mnist1d is *generated* by the
``mnist1d`` package's own generator (``mnist1d.data.make_dataset``; its ``get_dataset`` would download a
pickle, which is never called here).
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import qjax
from qjax import nn as qnn
from qjax._src.nn.modules import QConv, QDense, QFloat, QuantStub
from qjax._src.qarray import QArray

warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DATASETS = ("digits", "mnist1d")


# -- data ---------------------------------------------------------------------------------------------------

def load_data(name: str):
    """(x_train, y_train, x_test, y_test), torch layout (N, C, *S) float32, fixed split (independent of the seed)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), in [0, 1]
        y = d.target.astype(np.int32)
        perm = np.random.default_rng(1234).permutation(len(y))
        x, y = x[perm], y[perm]
        n_test = 360
        return x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()  # 5000 samples, 4000 train / 1000 test, seed 42 (the paper's defaults)
        d = make_dataset(args)  # generated here, never downloaded
        xtr, xte = (np.asarray(d[k], np.float32)[:, None] for k in ("x", "x_test"))
        return xtr, np.asarray(d["y"], np.int32), xte, np.asarray(d["y_test"], np.int32)
    raise ValueError(name)


def channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


# -- float models (torch eager, ready for eager-mode quantization) --------------------------------------------

def torch_model(name: str, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.body = body
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.body(self.quant(x)))

    if name == "digits":  # (1, 8, 8) -> 16x8x8 -> 32x4x4 -> 10
        body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                             nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    else:  # mnist1d (1, 40) -> 32x20 -> 32x10 -> 32x5 -> 64 -> 10
        body = nn.Sequential(nn.Conv1d(1, 32, 5, stride=2, padding=2), nn.ReLU(),
                             nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(32 * 5, 64), nn.ReLU(), nn.Linear(64, 10))
    return Net(body)


FLOAT_EPOCHS = {"digits": 40, "mnist1d": 60}


def train_float(name, seed, xtr, ytr, epochs=None, batch=64, lr=3e-3):
    import torch

    torch.set_num_threads(1)
    model = torch_model(name, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs or FLOAT_EPOCHS[name])
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr).long()
    model.train()
    for _ in range(epochs or FLOAT_EPOCHS[name]):
        perm = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt), batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def torch_logits(model, x):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# -- torch eager fbgemm PTQ --------------------------------------------------------------------------------

def torch_ptq(float_model, xcal, qconfig="fbgemm"):
    """torch.ao eager PTQ: fuse conv/linear+ReLU, prepare with the fbgemm default qconfig
    (HistogramObserver reduce_range activations, per-channel symmetric weights), calibrate, convert."""
    import copy

    import torch
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = "fbgemm"
    m = copy.deepcopy(float_model).eval()
    body = m.body
    pairs = [[str(i), str(i + 1)] for i in range(len(body) - 1)
             if isinstance(body[i], (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))
             and isinstance(body[i + 1], torch.nn.ReLU)]
    tq.fuse_modules(body, pairs, inplace=True)
    m.qconfig = tq.get_default_qconfig(qconfig)
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        m(torch.from_numpy(xcal))
    tq.convert(m, inplace=True)
    return m.eval()


def torch_int_outputs(qmodel, x):
    """The quantized output integers of a converted torch model (its DeQuantStub bypassed) and its float output."""
    import torch

    with torch.no_grad():
        yq = qmodel.body(qmodel.quant(torch.from_numpy(x)))
    return yq.int_repr().numpy().astype(np.int32), yq.dequantize().numpy()


def import_and_compare(tm, xte):
    """qjax.from_torch + qnn.from_qmodel of the torch PTQ model; mismatching predictions and output integers."""
    qm = qjax.from_torch(tm, xte[:2], engine="fbgemm")
    ints_t, y_t = torch_int_outputs(tm, xte)
    y_q = np.asarray(jax.jit(qm)(xte))
    net = qnn.from_qmodel(qm, xte[:2], engine=qjax.Fbgemm.host())
    y_n = np.asarray(net(channels_last(xte)))
    last = [l for l in net.layers if isinstance(l, (QConv, QDense))][-1]
    s, z = float(last._s()), int(last._zp())

    def ints(y):  # a dequantized output is (q - z) * s with one float32 rounding: recover q exactly
        return np.rint(y / np.float32(s)).astype(np.int64) + z

    ints_q, ints_n = ints(y_q), ints(y_n)
    assert (ints(y_t) == ints_t).all(), "integer recovery from dequantized outputs is not exact"
    p_t = y_t.argmax(-1)
    cmp = dict(outputs=int(ints_t.size), examples=int(len(xte)),
               from_torch_int_mismatch=int((ints_q != ints_t).sum()),
               from_torch_float_mismatch=int((y_q != y_t).sum()),
               from_torch_pred_mismatch=int((y_q.argmax(-1) != p_t).sum()),
               qnn_int_mismatch=int((ints_n != ints_t).sum()),
               qnn_pred_mismatch=int((y_n.argmax(-1) != p_t).sum()))
    return qm, net, cmp


# -- qjax.nn models ----------------------------------------------------------------------------------------

def qnn_from_torch_float(tmodel, x_nchw, engine="fbgemm", estimator="lsq", act_observer=None,
                         weight_observer=None, rngs_seed=0):
    """A qjax.nn Sequential (float mode, channels-last input) with the float torch model's weights, ReLUs fused
    into the preceding conv/dense, and the first dense layer's rows permuted from torch's (C, *S) flatten order
    to the Flax model's (*S, C)."""
    import torch

    with torch.no_grad():
        h = torch.from_numpy(x_nchw[:1])
        for m in tmodel.body:
            if isinstance(m, torch.nn.Flatten):
                break
            h = m(h)
    conv_out_shape = tuple(h.shape[1:])

    r = nnx.Rngs(rngs_seed)
    layers = [QuantStub(observer=act_observer, estimator=estimator)]
    mods = list(tmodel.body)
    flat_shape = None
    for i, m in enumerate(mods):
        relu = i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.ReLU)
        kw = dict(relu=relu, engine=engine, estimator=estimator, observer=act_observer,
                  weight_observer=weight_observer, rngs=r)
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            w = m.weight.detach().numpy()
            nd = w.ndim - 2
            q = QConv(m.in_channels, m.out_channels, m.kernel_size, strides=m.stride, padding=m.padding, **kw)
            q.kernel.set_value(jnp.asarray(np.transpose(w, tuple(range(2, 2 + nd)) + (1, 0))))
            q.bias.set_value(jnp.asarray(m.bias.detach().numpy()))
            layers.append(q)
        elif isinstance(m, torch.nn.Linear):
            k = m.weight.detach().numpy().T
            if flat_shape is not None:  # torch flattens (C, *S); the Flax model flattens (*S, C)
                idx = np.arange(k.shape[0]).reshape(flat_shape)
                k = k[np.moveaxis(idx, 0, -1).reshape(-1)]
            flat_shape = None
            q = QDense(m.in_features, m.out_features, **kw)
            q.kernel.set_value(jnp.asarray(k))
            q.bias.set_value(jnp.asarray(m.bias.detach().numpy()))
            layers.append(q)
        elif isinstance(m, torch.nn.Flatten):
            flat_shape = conv_out_shape
            layers.append(qnn.Flatten())
        elif isinstance(m, torch.nn.ReLU):
            continue
        else:
            raise TypeError(m)
    layers.append(qnn.DeQuantStub())
    return qnn.Sequential(*layers)


def weighted(net):
    return [l for l in net.layers if isinstance(l, (QConv, QDense))]


def set_arithmetic(net, engine, quantize_rounding=None):
    """Switch every conv/dense layer to ``engine`` (a torch engine or a hardware spec) and the input quantization
    to the spec's rounding (``None``: torch's rule)."""
    for l in net.layers:
        if isinstance(l, (QConv, QDense)):
            l.engine = engine
        elif isinstance(l, QuantStub):
            l.rounding = quantize_rounding
    return net


def calibrate(net, xcal_cl, batch=256):
    qnn.prepare(net)
    for i in range(0, len(xcal_cl), batch):
        net(jnp.asarray(xcal_cl[i:i + batch]))
    return net


# -- low-bit helpers (4/6-bit values in int8/uint8 containers) -----------------------------------------------

class ActClamp(nnx.Module):
    """Clamp activations to the integer range ``[lo, hi]`` (e.g. 0..15 for 4-bit activations in uint8 containers).

    qjax.nn layers clamp their outputs to the container's 0..255; with a low-bit observer the scale is chosen for
    ``[0, 2**b - 1]`` but nothing enforces that range.  This module does: integer mode clamps the QArray's
    integers; QAT mode clamps the dequantized value to ``[(lo - z) s, (hi - z) s]`` — the same floats the integer
    path dequantizes to — so QAT still sees exactly the deployed values (gradient: zero outside, and to the
    scale through the bounds, like LSQ's out-of-range term but without its gradient-scale factor)."""

    def __init__(self, lo, hi, mode="float"):
        self.lo, self.hi, self.mode = int(lo), int(hi), mode

    def __call__(self, x):
        if isinstance(x, QArray):
            v = jnp.clip(x.values.astype(jnp.int32), self.lo, self.hi).astype(x.values.dtype)
            return QArray(v, x.scale, x.zero_point, x.dtype, x.axis, check=False)
        if isinstance(x, QFloat):
            z = jnp.clip(jnp.round(x.zero_point), 0, 255)
            lo, hi = (jnp.float32(self.lo) - z) * x.scale, (jnp.float32(self.hi) - z) * x.scale
            return QFloat(jnp.clip(x.value, lo, hi), x.scale, x.zero_point)
        return x


def insert_act_clamps(net, bits):
    """An :class:`ActClamp` after the input stub and every conv/dense layer except the last (logits stay 8-bit)."""
    if bits >= 8:
        return net
    hi = 2**bits - 1
    w = weighted(net)
    out = []
    for l in net.layers:
        out.append(l)
        if isinstance(l, QuantStub) or (isinstance(l, (QConv, QDense)) and l is not w[-1]):
            out.append(ActClamp(0, hi))
    return qnn.Sequential(*out)


def project_weights(net, bits):
    """Clip every float weight into ``[qmin s, qmax s]`` of its channel so it quantizes into the ``bits`` range
    (symmetric, zero point 0) inside the int8 container (a projection after each optimizer step)."""
    if bits >= 8:
        return
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for l in weighted(net):
        s = l._ws()
        z = jnp.clip(jnp.round(l.w_zero_point.get_value()), -128, 127)  # LSQ+ may move it off 0
        l.kernel.set_value(jnp.clip(l.kernel.get_value(), (qmin - z) * s, (qmax - z) * s))


def weight_ints_in_range(net, bits):
    """Do all deployed int8 weights, minus their zero point, lie in the ``bits`` range?"""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    ok = True
    for l in weighted(net):
        wq = l.quantized_weight()
        v = np.asarray(wq.values, np.int32) - np.asarray(wq.zero_point, np.int32)
        ok &= bool(((v >= qmin) & (v <= qmax)).all())
    return ok


def low_bit_observers(bits):
    """Activation (quint8 container, [0, 2**b-1]) and weight (per-channel symmetric qint8 container,
    [-(2**(b-1)), 2**(b-1)-1]) observers for the qjax.nn layers."""
    if bits == 8:
        return qnn.default_activation_observer(), qnn.default_weight_observer()
    act = ("min_max", (("dtype", "quint8"), ("quant_min", 0), ("quant_max", 2**bits - 1)))
    wt = ("per_channel_min_max", (("ch_axis", -1), ("dtype", "qint8"), ("qscheme", "per_channel_symmetric"),
                                  ("quant_min", -(2 ** (bits - 1))), ("quant_max", 2 ** (bits - 1) - 1)))
    return act, wt


# -- QAT ---------------------------------------------------------------------------------------------------

@nnx.jit
def _forward(m, xb):  # module level: nnx.jit caches the compilation per model structure (graphdef)
    return m(xb)


@nnx.jit(static_argnames=("wrt",))
def _train_step(m, o, xb, yb, wrt):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

    loss, g = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(m)
    o.update(m, g)
    return loss


@nnx.jit
def _train_step2(m, ow, oq, xb, yb):
    """Weights and qparams with separate optimizers (a smaller learning rate for scales / zero points)."""
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

    loss, g = nnx.value_and_grad(loss_fn)(m)
    gq, gw = g.split(qnn.QParam, ...)
    ow.update(m, gw)
    oq.update(m, gq)
    return loss


def accuracy(net, x_cl, y, batch=512):
    """Integer-mode (or current-mode) top-1 accuracy and predictions."""
    preds = []
    for i in range(0, len(x_cl), batch):
        preds.append(np.asarray(_forward(net, jnp.asarray(x_cl[i:i + batch]))).argmax(-1))
    p = np.concatenate(preds)
    return float((p == y).mean()), p


_SCHEDULES = {}


def _schedule(lr, steps):
    # one optax transformation per (lr, steps): the optimizer's graphdef (hence nnx.jit's cache key) stays the same
    if (lr, steps) not in _SCHEDULES:
        _SCHEDULES[(lr, steps)] = optax.adam(optax.cosine_decay_schedule(lr, steps))
    return _SCHEDULES[(lr, steps)]


def qat(net, xtr_cl, ytr, steps, seed, lr=3e-4, batch=128, bits=8, after_step=None, train_qparams=True,
        qparam_lr=None):
    """QAT with the qjax.nn modules in ``qat`` mode (forward = deployed integers); Adam on weights (and the
    scales / zero points unless ``train_qparams=False``: fixed observer qparams).

    ``qparam_lr``: a separate Adam learning rate for the scales / zero points (Adam's steps are ~lr in absolute
    size whatever the gradient, so the weights' rate moves 0.01-sized scales far too fast).

    Returns the list of losses and the mean step time (s) after compilation."""
    wrt = nnx.Param if train_qparams else nnx.All(nnx.Param, nnx.Not(qnn.QParam))
    two = train_qparams and qparam_lr is not None
    if two:
        opt = nnx.Optimizer(net, _schedule(lr, steps), wrt=nnx.All(nnx.Param, nnx.Not(qnn.QParam)))
        opt_q = nnx.Optimizer(net, _schedule(qparam_lr, steps), wrt=qnn.QParam)
    else:
        opt = nnx.Optimizer(net, _schedule(lr, steps), wrt=wrt)

    rng = np.random.default_rng(seed)
    losses, t0 = [], None
    for i in range(steps):
        idx = rng.integers(0, len(ytr), batch)
        if two:
            loss = _train_step2(net, opt, opt_q, jnp.asarray(xtr_cl[idx]), jnp.asarray(ytr[idx]))
        else:
            loss = _train_step(net, opt, jnp.asarray(xtr_cl[idx]), jnp.asarray(ytr[idx]), wrt)
        if bits < 8:
            project_weights(net, bits)
        if after_step is not None:
            after_step(net)
        if i == 0:
            loss.block_until_ready()
            t0 = time.perf_counter()
        losses.append(loss)
    losses = [float(l) for l in losses]
    dt = (time.perf_counter() - t0) / max(steps - 1, 1)
    return losses, dt


# -- results -----------------------------------------------------------------------------------------------

def mean_std(v):
    v = np.asarray(v, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(v, pct=True):
    m, s = mean_std(v)
    k = 100.0 if pct else 1.0
    return f"{k * m:.2f} ± {k * s:.2f}"


def environment():
    import torch

    return dict(jax=jax.__version__, torch=torch.__version__, qjax=qjax.__version__ if hasattr(qjax, "__version__")
                else "0.1.0", python=platform.python_version(), cpu_count=os.cpu_count(),
                machine=platform.machine())


def save_json(name, payload):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
    return path


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# -- stochastic requantization in qjax.nn: a fresh key per call ----------------------------------------------
#
# A hardware spec with requant_rounding="stochastic" needs a PRNG key per call.  qjax.nn's QConv / QDense take
# ``key=`` (the first runs of these experiments predate that and overrode __call__ with the same library calls);
# these subclasses draw a fresh key per call from a counter variable (nnx state, so it advances inside nnx.jit).

def _next_key(layer):
    c = layer.key_count.get_value()
    layer.key_count.set_value(c + 1)
    return jax.random.fold_in(jax.random.key(layer.key_seed), c)


class KeyedQConv(QConv):  # single inheritance: make_keyed swaps __class__, which needs the same layout
    def __call__(self, x):
        return super().__call__(x, key=_next_key(self))


class KeyedQDense(QDense):
    def __call__(self, x):
        return super().__call__(x, key=_next_key(self))


def make_keyed(net, seed):
    """Turn the QConv/QDense layers of ``net`` into their keyed subclasses (in place; same state)."""
    for i, l in enumerate(weighted(net)):
        l.__class__ = KeyedQConv if isinstance(l, QConv) else KeyedQDense
        l.key_seed = int(seed) * 1000 + i
        l.key_count = nnx.Variable(jnp.uint32(0))
    return net
