"""Strict JSON: every non-finite number becomes null (never NaN / Infinity, which most JSON
readers refuse), numpy scalars and arrays become plain numbers, through nested containers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from iss3d.core.atomic import json_ready, json_text, write_json, write_json_report
from tests.fixtures.nonfinite import strict_json

NAN, INF = float("nan"), float("inf")

NESTED = {
    "nan": NAN,
    "scores": [0.5, -INF, INF, np.float32("nan"), np.float64(INF), np.float32(0.25)],
    "pair": (NAN, 1),
    "deep": {"a": [{"b": (np.array([1.0, np.nan, -np.inf]), np.int64(3), np.bool_(True))}]},
    "text": "a rouge chaise, é",
    "none": None,
}
EXPECTED = {
    "nan": None,
    "scores": [0.5, None, None, None, None, 0.25],
    "pair": [None, 1],
    "deep": {"a": [{"b": [[1.0, None, None], 3, True]}]},
    "text": "a rouge chaise, é",
    "none": None,
}


def test_json_ready_nulls_non_finite_numbers_at_any_depth():
    ready = json_ready(NESTED)
    assert ready == EXPECTED
    assert type(ready["deep"]["a"][0]["b"][1]) is int
    assert type(ready["scores"][5]) is float
    assert strict_json(json_text(NESTED, indent=2)) == EXPECTED
    assert json_ready(NAN) is None and json_ready(np.float32(2.0)) == 2.0


def test_write_json_and_the_eval_report_are_strict(tmp_path, capsys):
    write_json(tmp_path / "a.json", NESTED)
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert strict_json(text) == EXPECTED and text.endswith("}\n") and "é" in text
    write_json_report(tmp_path / "b.json", {"iou": np.float32("nan"), "n": 2})
    assert strict_json((tmp_path / "b.json").read_text()) == {"iou": None, "n": 2}
    assert capsys.readouterr().out == f"wrote {tmp_path / 'b.json'}\n"


def test_strict_json_refuses_what_json_loads_lets_through():
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match="not strict JSON"):
            strict_json(f'{{"x": [{constant}]}}')


def test_an_existing_fifo_or_device_is_not_replaced(tmp_path):
    """``--out`` naming an existing FIFO: the FIFO was silently replaced by a regular file
    (for a device such as /dev/stdout, by root, the device node itself)."""
    from iss3d.core.atomic import atomic_output
    from iss3d.core.errors import UserError

    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    with pytest.raises(UserError, match=r"pipe\.json: exists and is not a regular file"):
        write_json(pipe, {"a": 1})
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]
    regular = tmp_path / "r.json"
    regular.write_text("old")
    with atomic_output(regular) as tmp:
        tmp.write_text("new")
    assert regular.read_text() == "new"  # a regular file is replaced, as before


@pytest.mark.parametrize("folder", ["/proc", "/sys"])
def test_a_folder_that_refuses_files_fails_before_the_work(folder):
    """/proc and /sys pass an access() check as root but refuse new files: the output check
    must find out before a command's work (`eval stage1 --out /sys/x.json` evaluated first)."""
    from iss3d.core.atomic import check_output_path
    from iss3d.core.errors import UserError

    if not os.path.isdir(folder):
        pytest.skip(f"no {folder} here")
    with pytest.raises(UserError, match=rf"{folder}.*(cannot write here|not writable)"):
        check_output_path(f"{folder}/iss3d-test.json")
