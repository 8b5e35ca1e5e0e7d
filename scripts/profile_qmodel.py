"""Where a :class:`qjax._src.graph.QModel` forward spends its time on XLA:CPU, per graph node and per XLA thunk.

    from profile_qmodel import profile_forward, profile_markdown
    prof = profile_forward(qm, x, torch_model=model, torch_input=xt)
    print(profile_markdown("resnet18 x86 b16", prof))

How: a copy of the model whose every node runs its op inside ``jax.named_scope(<node name>)``
(scopes are HLO metadata only, so the compiled program is the plain forward's; its output is
checked bit-equal to ``qm``'s) is compiled with jax's AOT API and called a few times under
``jax.profiler.trace``.  XLA:CPU's thunk runtime records one trace event per executed thunk (a
loop fusion, a YNNPACK/oneDNN conv fusion, a copy, a conditional...) named after its HLO
instruction; each event's self time (minus the thunks nested in it, e.g. a conditional's
branch) is joined with the optimized HLO text: the instruction's opcode, fusion kind, fused
ops, shape and ``op_name`` metadata, whose scope names the graph node.  Time under no node scope
(e.g. the per-node materialising ``cond`` that ``QModel.apply`` adds after each op) is listed as
``(between nodes)``.

With a torch model, torch's own time in the module each node came from is measured with forward
hooks (same input, same number of calls) for a side-by-side column.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import tempfile
import time

import numpy as np

__all__ = ["profile_forward", "profile_markdown", "scoped_model", "parse_hlo", "thunk_self_times"]

_BETWEEN = "(between nodes)"


# ---------------------------------------------------------------------------------------------- the scoped copy


def scoped_model(qm):
    """``qm`` with each node's op wrapped in ``jax.named_scope(node.name)`` (same arithmetic)."""
    import jax

    from qjax._src.graph import OPS, QModel, thaw

    def wrap(fn, scope):
        def op(cfg, params, *args):
            with jax.named_scope(scope):
                return fn(cfg, params, *args)

        return op

    nodes = []
    for n in qm.nodes:
        op_name = f"__profile__/{n.name}/{n.op}"
        OPS[op_name] = wrap(OPS[n.op], n.name)
        nodes.append(dataclasses.replace(n, op=op_name))
    return QModel(qm.inputs, nodes, thaw(qm.output), dict(qm.params), dict(qm.meta))


# ---------------------------------------------------------------------------------------------- HLO text


@dataclasses.dataclass
class HloInstr:
    name: str
    opcode: str
    shape: str
    kind: str  # fusion kind (kLoop, kInput, kOutput, kCustom) or ""
    calls: tuple  # called computations
    op_name: str  # jax's op_name metadata (the name stack)
    operands: tuple = ()  # names of the instructions it reads


_INSTR = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY )?%([^\s(]+) .*\{\s*$")


def parse_hlo(text: str):
    """``({instruction name: HloInstr}, {computation name: [opcodes]})`` from ``compiled.as_text()``."""
    instrs, comps, current = {}, {}, None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        kind = re.search(r"kind=(k\w+)", rest)
        calls = re.findall(r"(?:calls|to_apply|branch_computations|body|condition)=\{?([^,}\s]+(?:, %[^,}\s]+)*)", rest)
        called = tuple(c.strip().lstrip("%") for group in calls for c in group.split(","))
        op_name = re.search(r'op_name="([^"]*)"', rest)
        operands = tuple(re.findall(r"%([^\s,()]+)", rest.split(")")[0]))
        instrs[name] = HloInstr(name, opcode, re.sub(r"\{[0-9,]*\}", "", shape), kind.group(1) if kind else "",
                                called, op_name.group(1) if op_name else "", operands)
        if current is not None:
            comps[current].append(opcode)
    return instrs, comps


_TRIVIAL = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "broadcast", "reshape", "iota"}


def fused_ops(instr: HloInstr, comps, depth: int = 0) -> str:
    """The ops a fusion computes (``convolution, multiply×3, ...``), most frequent first."""
    counts = collections.Counter()
    for c in instr.calls:
        for op in comps.get(c, ()):
            if op not in _TRIVIAL:
                counts[op] += 1
    # conv/dot first: they decide the cost
    key = sorted(counts.items(), key=lambda kv: (kv[0] not in ("convolution", "dot"), -kv[1], kv[0]))
    return ", ".join(op if n == 1 else f"{op}×{n}" for op, n in key[:8]) + (" …" if len(key) > 8 else "")


# ---------------------------------------------------------------------------------------------- the trace


def _load_trace(directory):
    paths = (glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
             or glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True))
    if not paths:
        raise RuntimeError(f"jax.profiler wrote no trace under {directory}")
    with gzip.open(sorted(paths)[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def thunk_self_times(events, names) -> dict:
    """``{name: (total self time µs, count)}`` for complete events named in ``names``.

    Self time: an event's duration minus that of the events nested inside it on the same thread
    (a conditional's thunk contains its branch's thunks).
    """
    by_tid = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_tid[(e.get("pid"), e.get("tid"))].append(e)
    out = collections.defaultdict(lambda: [0.0, 0])
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, child time]

        def close(until):
            while stack and stack[-1][0] <= until:
                end, name, child, dur = stack.pop()
                if name in names:
                    out[name][0] += dur - child
                    out[name][1] += 1
                if stack:
                    stack[-1][2] += dur

        for e in evs:
            close(e["ts"])
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
        close(float("inf"))
    return {k: (v[0], v[1]) for k, v in out.items()}


def _node_of(instr, instrs, node_names, depth=0) -> str:
    """The graph node whose scope is in the instruction's ``op_name``; for an instruction XLA
    created without metadata (e.g. a reduction rewritten as a ``dot``), that of its operands."""
    for part in instr.op_name.split("/"):
        if part in node_names:
            return part
    if not instr.op_name and depth < 4:
        for o in instr.operands:
            if o in instrs:
                node = _node_of(instrs[o], instrs, node_names, depth + 1)
                if node != _BETWEEN:
                    return node
    return _BETWEEN


def _shape_str(value) -> str:
    import jax

    leaves = [v for v in jax.tree_util.tree_leaves(value) if hasattr(v, "shape")]
    if not leaves:
        return ""
    big = max(leaves, key=lambda v: int(np.prod(v.shape)))
    return f"{np.dtype(big.dtype).name}[{','.join(map(str, big.shape))}]"


def _node_shapes(qm, x) -> dict:
    import jax

    try:
        _, env = jax.eval_shape(lambda m, v: m.apply(m.params, v, capture=True), qm, x)
    except Exception:  # noqa: BLE001 — shapes are a nicety; QArray may not accept abstract leaves
        _, env = qm.capture(x)
    return {k: _shape_str(v) for k, v in env.items()}


def _torch_module_times(model, x, calls: int) -> tuple[dict, float]:
    """``({module qualified name: seconds per call}, seconds per forward)`` via forward hooks."""
    import torch

    acc, starts, handles = collections.defaultdict(float), {}, []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):
            def pre(m, inp, name=name):
                starts[name] = time.perf_counter()

            def post(m, inp, out, name=name):
                acc[name] += time.perf_counter() - starts.pop(name)

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)  # warm-up (not counted)
            acc.clear()
            t0 = time.perf_counter()
            for _ in range(calls):
                model(x)
            total = (time.perf_counter() - t0) / calls
    finally:
        for h in handles:
            h.remove()
    return {k: v / calls for k, v in acc.items()}, total


def profile_forward(qm, x, torch_model=None, torch_input=None, calls: int = 3, reference=None) -> dict:
    """Per-node and per-thunk times of ``qm(x)`` (see the module docstring); a JSON-able dict.

    ``reference``: ``qm(x)`` if already computed (else it is, which compiles the plain forward).
    """
    import jax

    scoped = scoped_model(qm)
    fwd = jax.jit(lambda m, v: m(v))
    compiled = fwd.lower(scoped, x).compile()
    plain = np.asarray(fwd(qm, x) if reference is None else reference)
    out = np.asarray(compiled(scoped, x))
    if out.tobytes() != plain.tobytes():
        raise RuntimeError("the named-scope copy of the model computes a different output")
    instrs, comps = parse_hlo(compiled.as_text())
    node_names = {n.name for n in qm.nodes}
    jax.block_until_ready(compiled(scoped, x))
    directory = tempfile.mkdtemp(prefix="qjax_profile_")
    walls = []
    try:
        with jax.profiler.trace(directory):
            for _ in range(calls):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(scoped, x))
                walls.append(time.perf_counter() - t0)
        events = _load_trace(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    selfs = thunk_self_times(events, set(instrs))
    thunks = []
    for name, (us, count) in selfs.items():
        ins = instrs[name]
        thunks.append(dict(name=name, node=_node_of(ins, instrs, node_names), opcode=ins.opcode, kind=ins.kind,
                           fused=fused_ops(ins, comps) if ins.opcode == "fusion" else "", shape=ins.shape,
                           ms=us / 1e3 / calls, count=count // calls))
    thunks.sort(key=lambda t: -t["ms"])
    shapes = _node_shapes(qm, x)
    torch_times, torch_total = ({}, None)
    if torch_model is not None:
        torch_times, torch_total = _torch_module_times(torch_model, torch_input, calls)
    per_node = collections.defaultdict(lambda: [0.0, 0, collections.Counter()])
    for t in thunks:
        p = per_node[t["node"]]
        p[0] += t["ms"]
        p[1] += t["count"]
        p[2][t["opcode"] if t["opcode"] != "fusion" else f"{t['kind'] or 'fusion'}"] += t["ms"]
    nodes = []
    for n in list(qm.nodes) + [None]:
        name = n.name if n is not None else _BETWEEN
        if name not in per_node:
            continue
        ms, count, kinds = per_node[name]
        module = re.search(r"\(([^()]*)\)\s*$", n.source) if n is not None else None
        tmod = torch_times.get(module.group(1)) if module else None
        nodes.append(dict(node=name, op=n.op if n is not None else "", source=n.source if n is not None else "",
                          shape=shapes.get(name, ""), ms=ms, thunks=count,
                          top_thunk_kinds=", ".join(f"{k} {v:.2f}" for k, v in kinds.most_common(3)),
                          torch_ms=None if tmod is None else tmod * 1e3))
    nodes.sort(key=lambda d: -d["ms"])
    by_op = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for d in nodes:
        b = by_op[d["op"] or _BETWEEN]
        b[0] += d["ms"]
        b[1] += 1
        b[2] += d["torch_ms"] or 0.0
    by_opcode = collections.defaultdict(float)
    for t in thunks:
        by_opcode[t["opcode"] if t["opcode"] != "fusion" else f"fusion ({t['kind']})"] += t["ms"]
    return dict(wall_ms=statistics.median(walls) * 1e3, thunk_ms=sum(t["ms"] for t in thunks), calls=calls,
                torch_ms=None if torch_total is None else torch_total * 1e3,
                torch_hooked_ms=sum(torch_times.values()) * 1e3 if torch_times else None,
                nodes=nodes, thunks=thunks,
                by_op={k: dict(ms=v[0], nodes=v[1], torch_ms=v[2]) for k, v in
                       sorted(by_op.items(), key=lambda kv: -kv[1][0])},
                by_opcode=dict(sorted(by_opcode.items(), key=lambda kv: -kv[1])))


# ---------------------------------------------------------------------------------------------- markdown


def profile_markdown(title: str, prof: dict, top: int = 25) -> str:
    total = prof["thunk_ms"] or float("nan")
    tm = prof.get("torch_ms")
    lines = [f"### Profile: {title}", "",
             f"qjax forward {prof['wall_ms']:.1f} ms wall (median of {prof['calls']} traced calls), "
             f"{total:.1f} ms in XLA thunks (self times)"
             + (f"; torch forward {tm:.1f} ms, {prof['torch_hooked_ms']:.1f} ms of it inside leaf modules "
                f"(forward hooks)" if tm is not None else "") + ".", "",
             "By graph op:", "", "| op | nodes | qjax ms | % | torch ms (modules) |", "|---|---|---|---|---|"]
    for op, d in prof["by_op"].items():
        lines.append(f"| {op} | {d['nodes']} | {d['ms']:.2f} | {100 * d['ms'] / total:.1f} | "
                     f"{d['torch_ms']:.2f} |")
    lines += ["", "By XLA opcode / fusion kind:", "", "| thunk kind | ms | % |", "|---|---|---|"]
    for k, ms in prof["by_opcode"].items():
        lines.append(f"| {k} | {ms:.2f} | {100 * ms / total:.1f} |")
    lines += ["", f"Top {top} graph nodes:", "",
              "| node | op | torch source | output | qjax ms | % | thunks | time by thunk kind | torch ms | qjax/torch |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for d in prof["nodes"][:top]:
        t = d["torch_ms"]
        ratio = f"{d['ms'] / t:.1f}×" if t else ""
        # "torch.ao.nn.quantized.modules.conv.Conv2d (layer1.0.conv2)" -> "Conv2d"
        src = d["source"].split(" (")[0].split(".")[-1] if d["source"] else ""
        lines.append(f"| {d['node']} | {d['op']} | {src} | {d['shape']} | {d['ms']:.2f} | {100 * d['ms'] / total:.1f} | "
                     f"{d['thunks']} | {d['top_thunk_kinds']} | {'' if t is None else f'{t:.2f}'} | {ratio} |")
    lines += ["", f"Top {top} XLA thunks:", "", "| thunk | node | opcode | kind | fused ops | shape | ms | % |",
              "|---|---|---|---|---|---|---|---|"]
    for t in prof["thunks"][:top]:
        lines.append(f"| {t['name']} | {t['node']} | {t['opcode']} | {t['kind']} | {t['fused']} | {t['shape']} | "
                     f"{t['ms']:.2f} | {100 * t['ms'] / total:.1f} |")
    return "\n".join(lines)
