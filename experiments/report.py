"""Render the README tables from ``experiments/results/*.json`` (numbers are never typed by hand).

    .venv/bin/python -m experiments.report          # rewrites the blocks between the markers in README.md
    .venv/bin/python -m experiments.report --print  # prints them instead

Each block sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in ``experiments/README.md``;
``NAME`` is a results file (``results/NAME.json``) rendered by ``experiments.NAME.table``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re

from . import common as C

README = os.path.join(C.HERE, "README.md")
# results file -> module whose table() renders it
NAMES = {"deployment_gap": "deployment_gap", "rounding": "rounding", "rounding_deviation": "rounding", "learned": "learned",
         "learned_same_lr": "learned", "learned_w4_long": "learned", "qwix_compare": "qwix_compare",
         "tflite_qat": "tflite_qat"}


def render(name):
    module = NAMES[name]
    path = os.path.join(C.RESULTS, name + ".json")
    if not os.path.exists(path):
        return f"*(no results yet: run `python -m experiments.{module}`)*"
    with open(path) as f:
        res = json.load(f)
    mod = importlib.import_module(f"experiments.{module}")
    body = mod.deviation_table(res) if name == "rounding_deviation" else mod.table(res)
    return body + f"\n\n<sub>from `results/{name}.json`: {res['seeds']} seeds, {res['qat_steps']} QAT steps, " \
                  f"run wall time {res['wall_s'] / 60:.1f} min</sub>"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true")
    ap.add_argument("--plots", action="store_true", help="also redraw every results/*.png from its JSON")
    a = ap.parse_args(argv)
    if a.plots:
        for n, module in NAMES.items():
            path = os.path.join(C.RESULTS, n + ".json")
            mod = importlib.import_module(f"experiments.{module}")
            if os.path.exists(path) and hasattr(mod, "plot") and n != "rounding_deviation":
                with open(path) as f:
                    mod.plot(json.load(f), os.path.join(C.RESULTS, n + ".png"))
    blocks = {n: render(n) for n in NAMES}
    if a.print:
        for n, b in blocks.items():
            print(f"## {n}\n\n{b}\n")
        return
    with open(README) as f:
        text = f.read()
    for n, b in blocks.items():
        pat = re.compile(rf"(<!-- table:{n} -->\n)(?:.*?\n)?(<!-- /table:{n} -->)", re.S)
        text, k = pat.subn(lambda m: m.group(1) + b + "\n" + m.group(2), text)
        if not k:
            print(f"README has no block for {n}")
    with open(README, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
