"""The package's structure, read from its source (an AST walk; nothing is imported).

* no import cycles between qjax's modules (imports inside functions count too);
* a lower layer never imports an upper one (the layers of ``docs/architecture.md``);
* no module imports another module's ``_private`` names;
* nothing outside ``qjax/_src/engines/`` asks what kind of engine it holds — the engine is the one
  place where an arithmetic is chosen.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "qjax"

# docs/architecture.md's layers, bottom up: a module may import its own layer and the ones below
LAYERS = [
    ("numerics", ["dtypes", "float32", "float64", "int64", "buffers", "checks", "rounding", "affine", "qarray", "quantize",
                  "layout"]),
    ("kernels", ["kernels", "requant"]),
    ("qops", ["qops"]),
    ("engines", ["engines"]),
    ("ops", ["ops", "graph", "observers", "histogram"]),
    ("tools", ["ste", "hardware", "interop", "explain"]),
    ("models", ["nn", "verify"]),
    ("apps", ["__init__"]),  # qjax/_src/__init__.py
    ("public", ["__public__"]),  # qjax/__init__.py, the modules beside qjax/_src (curated re-exports), the
    # qjax command (cli.py) and the example models (examples/): users of the public surface
]
LAYER_OF = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}

ENGINE_CLASSES = {"Engine", "TorchCpuOps", "Fbgemm", "Qnnpack", "Onednn", "X86", "Reference", "HardwareSpec"}
ENGINE_NAMES = {"fbgemm", "qnnpack", "onednn", "x86", "reference"}
ENGINE_METHOD_PROBES = {"dispatch", "for_layer", "conv", "linear", "conv_transpose"}


def _modules():
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


MODULES = _modules()


def _resolve_from(module, is_pkg, node: ast.ImportFrom):
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module):
    """``[(imported module, [names], lineno)]`` of every qjax import in ``module`` (anywhere in the file)."""
    path, is_pkg = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "qjax"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, is_pkg, node)
            if target.split(".")[0] != "qjax":
                continue
            names = [a.name for a in node.names]
            # `from pkg import submodule` imports the submodule
            subs = [n for n in names if f"{target}.{n}" in MODULES]
            for n in subs:
                out.append((f"{target}.{n}", [], node.lineno))
            rest = [n for n in names if n not in subs]
            if rest:
                out.append((target, rest, node.lineno))
    return out


def _edges():
    edges = {}
    for m in MODULES:
        edges[m] = {t for t, _, _ in _imports(m) if t in MODULES and t != m}
    return edges


def _top(module):
    """The layer key of a module: ``qjax._src.<top>...``'s ``<top>``; the public modules outside ``_src``."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "_src":
        return parts[2] if len(parts) > 2 else "__init__"
    return "__public__"


def test_no_import_cycles():
    edges = _edges()
    # a package's __init__ that only re-exports its own submodules is its face, not a room of its own:
    # `engines/fbgemm.py -> engines/base.py` plus `engines/__init__ -> engines/fbgemm` is no cycle
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert sccs == [], f"import cycles: {sccs}"


def test_lower_layers_never_import_upper_ones():
    bad = []
    for m in MODULES:
        here = LAYER_OF[_top(m)]
        for target, _, line in _imports(m):
            if target in MODULES and target != "qjax" and LAYER_OF[_top(target)] > here:
                bad.append(f"{MODULES[m][0].relative_to(ROOT.parent)}:{line} ({LAYERS[here][0]}) imports {target} "
                           f"({LAYERS[LAYER_OF[_top(target)]][0]})")
    assert bad == [], "\n".join(bad)


def test_no_imports_of_private_names():
    bad = []
    for m in MODULES:
        for target, names, line in _imports(m):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{MODULES[m][0].relative_to(ROOT.parent)}:{line} imports {private} from {target}")
    assert bad == [], "\n".join(bad)


def _engine_kind_checks(tree):
    """Places that branch on what kind of engine a value is."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                names = {k.attr if isinstance(k, ast.Attribute) else getattr(k, "id", None) for k in kinds}
                if names & ENGINE_CLASSES:
                    found.append((node.lineno, f"isinstance(..., {sorted(names & ENGINE_CLASSES)})"))
            if node.func.id == "hasattr" and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                if node.args[1].value in ENGINE_METHOD_PROBES:
                    found.append((node.lineno, f"hasattr(..., {node.args[1].value!r})"))
        if isinstance(node, ast.Compare):
            sides = [node.left] + list(node.comparators)
            consts = {s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)}
            if consts & ENGINE_NAMES and any(_names_engine(s) for s in sides):
                found.append((node.lineno, f"comparison with engine name {sorted(consts & ENGINE_NAMES)}"))
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in ENGINE_NAMES:
            found.append((node.lineno, f"[{node.slice.value!r}] flag"))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in ENGINE_NAMES):
            found.append((node.lineno, f".get({node.args[0].value!r}) flag"))
    return found


def _names_engine(node):
    """``x.name`` / ``getattr(x, "name", ...)`` / ``x.torch_engine`` on something called an engine."""
    if isinstance(node, ast.Attribute) and node.attr in ("name", "torch_engine"):
        return "eng" in ast.unparse(node.value).lower()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
        return "eng" in ast.unparse(node.args[0]).lower()
    return False


def test_nothing_outside_engines_branches_on_engine_kinds():
    bad = []
    for m, (path, _) in MODULES.items():
        if m.startswith("qjax._src.engines") or m == "qjax.engines":
            continue
        for line, what in _engine_kind_checks(ast.parse(path.read_text())):
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {what}")
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("isinstance(e, HardwareSpec)", 1), ("isinstance(e, (engines.Qnnpack, int))", 1), ("hasattr(e, 'dispatch')", 1),
    ("getattr(self.engine, 'name', '') == 'qnnpack'", 1), ("static['qnnpack'] = True", 1),
    ("cfg.get('qnnpack')", 1), ("eng.name == 'x86'", 1), ("isinstance(x, QArray)", 0), ("kind == 'add'", 0),
])
def test_the_engine_kind_walk_finds_what_it_looks_for(source, expected):
    assert len(_engine_kind_checks(ast.parse(source))) == expected
