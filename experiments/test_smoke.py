"""Smoke test of the experiments' plumbing (< 30 s): torch eager fbgemm PTQ of a tiny digits CNN, imported by
qjax, gives the same output integers and predictions (0 mismatches), and ActClamp is exact in integer mode."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")


def test_ptq_import_exact():
    from experiments import common as C

    xtr, ytr, xte, yte = C.load_data("digits")
    tm = C.train_float("digits", 0, xtr[:256], ytr[:256], epochs=1)
    tq = C.torch_ptq(tm, xtr[:128])
    _, _, cmp = C.import_and_compare(tq, xte[:64])
    assert cmp["outputs"] == 640
    assert {k: v for k, v in cmp.items() if "mismatch" in k} == dict.fromkeys(
        ["from_torch_int_mismatch", "from_torch_float_mismatch", "from_torch_pred_mismatch", "qnn_int_mismatch",
         "qnn_pred_mismatch"], 0)
