"""qjax.verify / `qjax verify` / `qjax explain --model`: TorchScript and factory models, sharding, JSON; streamed
.npy inputs, resumable reports, one-line user errors, two processes with jax.distributed."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qjax
from qjax.cli import main
from qjax._src.verify import VerifyError, _RandomInputs, open_inputs, verify

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
    code = ("import json, sys; from qjax._src.verify import verify; import jax; "
            f"r = verify({path!r}, n=24, batch_size=8, input_shape={tuple(x.shape[1:])!r}, engine='fbgemm'); "
            "print(json.dumps(dict(dev=len(jax.devices()), rep=r.devices, bad=r.mismatches, n=r.outputs)))")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", TORCH_CPP_LOG_LEVEL="ERROR")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=300)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == dict(dev=4, rep=4, bad=0, n=240)


# ------------------------------------------------------------------------------------------------
# streaming inputs, resumable reports, user errors, jax.distributed (issue 13)

SAME = ("outputs", "mismatches", "max_abs_step", "first_divergence", "samples", "batches", "batches_done")


def linear_net():
    """Quant -> Linear(32, 6) -> DeQuant: the fastest model to compile; the same in every process (seeded)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return models._quantize(models.Wrap(torch.nn.Linear(32, 6)), torch.zeros(2, 32), False, 0, "fbgemm")


def linear_factory():
    """A factory for `qjax verify tests.test_verify:linear_factory`."""
    return linear_net()


def wrong_import(m, x, shift=0.02):
    """The import with the linear layer's bias moved a fraction of a step: a few outputs round differently."""
    qm = qjax.from_torch(m, x, engine="fbgemm")
    p = dict(qm.params)
    fc = dict(p["block"])
    fc["bias"] = fc["bias"] + shift * fc["scale"]
    p["block"] = fc
    return qm.with_params(p)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.backends.quantized.engine = "fbgemm"
    m, x = linear_net()
    d = tmp_path_factory.mktemp("inputs")
    xs = np.random.default_rng(17).standard_normal((50,) + tuple(x.shape[1:])).astype(np.float32)
    np.save(d / "all.npy", xs)
    parts = d / "parts"
    parts.mkdir()
    for name, lo, hi in (("a.npy", 0, 5), ("b.npy", 5, 30), ("c.npy", 30, 50)):  # boundaries inside batches
        np.save(parts / name, xs[lo:hi])
    return m, x, xs, str(d / "all.npy"), str(parts), wrong_import(m, x)


def test_npy_directory_is_memory_mapped_and_equals_the_array(small):
    m, x, xs, path, parts, bad = small
    src = open_inputs(parts)
    assert src.n == 50 and all(isinstance(a, np.memmap) for a in src.arrays)
    assert (src.batch(3, 33) == xs[3:33]).all() and (src.batch(6, 20) == xs[6:20]).all()
    assert not np.shares_memory(src.batch(6, 20), src.arrays[1])  # copied out, its pages released
    # overlap=True (torch's forward while the qjax batch runs; off by default on CPU) must not change a number
    reps = [verify(m, qmodel=bad, inputs=i, batch_size=8, engine="fbgemm", overlap=ov)
            for i, ov in ((xs, False), (path, True), (parts, False))]
    assert reps[0].mismatches > 0 and reps[0].batches == 7
    for r in reps[1:]:
        assert {k: getattr(r, k) for k in SAME} == {k: getattr(reps[0], k) for k in SAME}


def _mapped_rss_kib(path):
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", fields[0]):
                inside = line.rstrip().endswith(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_batches_release_their_pages(tmp_path):
    # madvise errors are swallowed (an advice, never a failure): only the resident set shows it worked
    path = str(tmp_path / "big.npy")
    np.save(path, np.ones((2048, 1024), np.float32))  # 8 MiB, 2048 pages
    src = open_inputs(path)
    np.array(src.arrays[0][:64])  # read without release: resident
    assert _mapped_rss_kib(path) >= 64 * 4
    x = src.batch(0, 2048)
    assert x.shape == (2048, 1024) and x.sum() == 2048 * 1024
    assert _mapped_rss_kib(path) <= 64  # all but a partial page at either end released (8 MiB without it)


def test_random_inputs_do_not_depend_on_the_batching():
    src = _RandomInputs(1000, (3, 8, 8), seed=5)
    assert src.block > 1 and (src.batch(300, 700) == src.batch(0, 1000)[300:700]).all()


def test_interrupted_and_resumed_report_equals_the_full_run(small, tmp_path):
    m, x, xs, path, parts, bad = small
    full = verify(m, qmodel=bad, inputs=parts, batch_size=8, engine="fbgemm")
    assert full.mismatches > 0 and full.first_divergence["batch"] == 3 and full.complete  # batches 3 and 4 differ
    report = str(tmp_path / "run.json")
    calls = []
    hook = m.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        part = verify(m, qmodel=bad, inputs=parts, batch_size=8, engine="fbgemm", report=report, max_batches=2)
        assert not part.complete and part.batches_done == 2
        saved = json.load(open(report))
        assert saved["done_batches"] == [[0, 2]] and saved["batches_done"] == 2 and not saved["complete"]
        calls.clear()
        part = verify(m, qmodel=bad, inputs=parts, batch_size=8, engine="fbgemm", report=report, resume=True,
                      max_batches=3, progress=True)
        assert part.batches_done == 5 and calls[-3:] == [8, 8, 8]  # batches 2-4 only (after the shape check)
        done = verify(m, qmodel=bad, inputs=parts, batch_size=8, engine="fbgemm", report=report, resume=True)
    finally:
        hook.remove()
    assert {k: getattr(done, k) for k in SAME} == {k: getattr(full, k) for k in SAME}
    saved = json.load(open(report))
    assert saved["complete"] and saved["mismatches"] == full.mismatches and saved["done_batches"] == [[0, 7]]
    assert saved["first_divergence"] == json.loads(json.dumps(full.first_divergence))
    assert os.listdir(tmp_path) == ["run.json"]  # no temporary files left behind


def test_resume_refuses_another_run(small, tmp_path):
    m, x, xs, path, parts, bad = small
    report = str(tmp_path / "run.json")
    verify(m, qmodel=bad, inputs=path, batch_size=8, engine="fbgemm", report=report, max_batches=1)
    np.save(tmp_path / "all.npy", xs[::-1].copy())  # same name, shape, dtype and size; other content
    with pytest.raises(VerifyError, match=r"inputs\.files\[0\]\.first_last_sha256"):
        verify(m, qmodel=bad, inputs=str(tmp_path / "all.npy"), batch_size=8, engine="fbgemm", report=report,
               resume=True)
    with pytest.raises(VerifyError, match=r"batch_size = 8, this run has 4"):
        verify(m, qmodel=bad, inputs=path, batch_size=4, engine="fbgemm", report=report, resume=True)
    with pytest.raises(VerifyError, match=r"params_sha256"):
        verify(m, inputs=path, batch_size=8, engine="fbgemm", report=report, resume=True)


def _cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_report_resume_and_exit_codes(small, tmp_path, capsys):
    m, x, xs, path, parts, bad = small
    report = str(tmp_path / "r.json")
    base = ["verify", "tests.test_verify:linear_factory", "--inputs", parts, "--batch-size", "8", "--engine", "fbgemm",
            "--report", report]
    code, out, err = _cli(base + ["--max-batches", "1", "--resume"], capsys)  # no report yet: starts the run
    assert code == 3 and "incomplete: 1 of 7 batches" in out
    code, out, err = _cli(base + ["--resume", "--json"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["complete"] and rep["outputs"] == 50 * 6 and rep["mismatches"] == 0
    assert json.load(open(report))["done_batches"] == [[0, 7]]


@pytest.mark.parametrize("case", ["missing", "empty_dir", "int_dtype", "pickled", "wrong_shape", "resume_other",
                                  "no_report", "bad_coordinator", "not_torchscript", "no_factory"])
def test_cli_user_errors_are_one_line(case, small, tmp_path, capsys):
    m, x, xs, path, parts, bad = small
    args, flag, rule, model = ["--inputs", path], "--inputs", "", "tests.test_verify:linear_factory"
    if case == "missing":
        args, rule = ["--inputs", str(tmp_path / "nope.npy")], "does not exist"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args, rule = ["--inputs", str(tmp_path / "empty")], "holds no .npy files"
    elif case == "int_dtype":
        np.save(tmp_path / "i.npy", xs.astype(np.int32))
        args, rule = ["--inputs", str(tmp_path / "i.npy")], "must be floating point"
    elif case == "pickled":
        np.save(tmp_path / "o.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
        args, rule = ["--inputs", str(tmp_path / "o.npy")], "without pickle"
    elif case == "wrong_shape":
        np.save(tmp_path / "s.npy", xs[:, :3])
        args, rule = ["--inputs", str(tmp_path / "s.npy")], "torch's forward rejects inputs of per-sample shape (3,)"
    elif case == "resume_other":
        report = tmp_path / "r.json"
        report.write_text(json.dumps(dict(format="qjax.verify/1", run=dict(model="other"))))
        args, flag, rule = ["--inputs", path, "--report", str(report), "--resume"], "--resume", "was written for model"
    elif case == "no_report":
        args, flag, rule = ["--inputs", path, "--resume"], "--resume", "needs a report path"
    elif case == "bad_coordinator":
        args, flag, rule = ["--inputs", path, "--coordinator", "localhost"], "--coordinator", "is not host:port"
    elif case == "not_torchscript":
        (tmp_path / "m.pt").write_bytes(b"not a zip archive")
        model, flag, rule = str(tmp_path / "m.pt"), "MODEL", "is not a TorchScript archive"
    elif case == "no_factory":
        model, flag, rule = "tests.test_verify:no_such_factory", "MODEL", "cannot import the factory"
    code, out, err = _cli(["verify", model, "--engine", "fbgemm"] + args, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"qjax verify: {flag}: ") and rule in err, err


DIST = """
import json, sys
import jax, torch
# before the wrong import below runs JAX (verify(coordinator=...) initializes it itself when nothing ran yet)
jax.distributed.initialize(sys.argv[3], num_processes=2, process_id=int(sys.argv[4]))
from qjax._src.verify import verify
from tests.test_verify import linear_net, wrong_import
torch.backends.quantized.engine = "fbgemm"
m, x = linear_net()
rep = verify(m, qmodel=wrong_import(m, x), inputs=sys.argv[1], batch_size=8, engine="fbgemm", report=sys.argv[2],
             coordinator=sys.argv[3], num_processes=2, process_id=int(sys.argv[4]))
print("REPORT " + rep.to_json().replace(chr(10), " "))
"""


def _run_together(argvs, env, out_dir, timeout=300):
    """Run the commands at once; (returncode, stdout, stderr) of each.

    Output goes to files (a pipe nobody reads fills up and blocks its writer inside a collective).
    The first process to fail, or the deadline, ends them all: the survivors would otherwise wait
    on jax.distributed's own timeouts (minutes) for a peer that is gone.
    """
    procs, files = [], []
    try:
        for i, argv in enumerate(argvs):
            out, err = open(out_dir / f"p{i}.out", "w+"), open(out_dir / f"p{i}.err", "w+")
            files += [out, err]
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err, text=True))
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]  # every one polled (any() would stop at the first running)
            if None not in codes or any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results = []
    for i, p in enumerate(procs):
        out, err = files[2 * i], files[2 * i + 1]
        out.seek(0), err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
    for f in files:
        f.close()
    return results


def test_two_processes_with_jax_distributed_merge_one_report(small, tmp_path):
    import socket

    m, x, xs, path, parts, bad = small
    single = verify(m, qmodel=bad, inputs=parts, batch_size=8, engine="fbgemm")
    with socket.socket() as s:  # a free port for the coordinator (the kernel's pick: xdist workers differ)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TORCH_CPP_LOG_LEVEL="ERROR", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    report = str(tmp_path / "merged.json")
    outs = _run_together([[sys.executable, "-c", DIST, parts, report, f"127.0.0.1:{port}", str(i)] for i in (0, 1)],
                         env, tmp_path)
    for i, (code, out, err) in enumerate(outs):
        assert code == 0, f"process {i} exited {code}: {err[-3000:]}"
    reps = [json.loads(next(ln for ln in out.splitlines() if ln.startswith("REPORT "))[7:]) for _, out, _ in outs]
    want = json.loads(json.dumps({k: getattr(single, k) for k in SAME}))
    saved = json.load(open(report))
    assert saved["processes"] == 2 and saved["done_batches"] == [[0, 7]]
    for r in reps + [saved]:  # both processes hold the merged totals; process 0 wrote them
        assert {k: r[k] for k in SAME} == want
