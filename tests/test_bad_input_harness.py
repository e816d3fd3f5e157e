"""The bad-input harness (``python -m bench.bad_inputs``) judges what it runs correctly: a
clean one-line error passes, and each broken promise (a traceback, a zero exit, a partial
output, a ``.tmp-`` leftover, a hang, a second line, an error that names nothing) is counted;
its case tables cover every ``iss3d`` command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

from bench import bad_input_cases
from bench.bad_input_kit import Case, execute, per_command, run_cases, tally
from iss3d.infer.cli import build_parser

PY = (sys.executable, "-c")


def python_case(code: str, expect: str = "error", names: tuple[str, ...] = ()) -> Case:
    """A case whose program is ``python -c CODE`` (``{w}`` in CODE: the case's folder)."""
    return Case("python", code[:40], (code,), names=names, expect=expect, program=PY)


def judged(case: Case, tmp_path: Path, timeout: float = 20) -> list[str]:
    return execute(case, tmp_path / "case", tmp_path / "fx", timeout).problems


ONE_LINE_ERROR = "import sys; sys.exit('iss3d: error: {w}/x.h5: no such file')"


def test_a_clean_error_passes_and_must_name_the_file(tmp_path):
    assert judged(python_case(ONE_LINE_ERROR, names=("{w}/x.h5",)), tmp_path) == []
    case = python_case(ONE_LINE_ERROR, names=("--data",))
    assert judged(case, tmp_path / "b") == ["not_naming"]


def test_a_traceback_is_counted(tmp_path):
    problems = judged(python_case("raise ValueError('bad')"), tmp_path)
    assert "traceback" in problems and "not_one_line" in problems


def test_a_good_command_is_no_error_exit_but_a_zero_exit_when_an_error_was_due(tmp_path):
    assert judged(python_case("print('fine')", expect="ok"), tmp_path / "a") == []
    assert judged(python_case("print('fine')"), tmp_path / "b") == ["zero_exit"]
    failed = python_case("import sys; sys.exit(3)", expect="ok")
    assert judged(failed, tmp_path / "c") == ["error_exit"]


def test_outputs_and_temporary_leftovers_are_partial_outputs(tmp_path):
    wrote = "open('out.h5', 'w').write('half'); raise SystemExit('iss3d: error: bad')"
    assert judged(python_case(wrote), tmp_path / "a") == ["partial_output"]
    hidden = "open('.out.h5.tmp-1-ab', 'w'); raise SystemExit('iss3d: error: bad')"
    assert judged(python_case(hidden), tmp_path / "b") == ["partial_output"]


def test_setup_files_are_not_outputs_and_extra_lines_are_counted(tmp_path):
    def setup(w: Path, fx: Path) -> None:
        (w / "given.txt").write_text("input")

    two = "import sys; print('warning: x', file=sys.stderr); sys.exit('iss3d: error: bad')"
    case = Case("python", "two lines", (two,), setup=setup, program=PY)
    assert judged(case, tmp_path) == ["not_one_line"]


def test_a_hang_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, time; "
        f"p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
        "time.sleep(60)"
    )
    outcome = execute(python_case(code), tmp_path / "case", tmp_path, timeout=2)
    assert "hang" in outcome.problems and outcome.seconds < 20
    child = int(pid_file.read_text())
    # SIGKILL is delivered at once but the process table catches up a moment later
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), _state(child)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_run_cases_tallies_real_iss3d_commands(tmp_path):
    """Two real commands in parallel: a bad input that fails cleanly, and ``iss3d --help`` as a
    control; plus a synthetic traceback."""
    cases = [
        Case("data info", "missing", ("data", "info", "{w}/absent.h5"), names=("{w}/absent.h5",)),
        Case("help", "control", ("--help",), expect="ok"),
        python_case("raise ValueError"),
    ]
    outcomes = run_cases(cases, tmp_path / "cases", tmp_path, timeout=60, workers=2)
    assert [o.problems for o in outcomes[:2]] == [[], []], [o.stderr for o in outcomes]
    counts = tally(outcomes)
    assert counts["total_inputs"] == 2 and counts["controls"] == 1
    assert counts["traceback"] == 1 and counts["zero_exit"] == 0 and counts["hang"] == 0
    assert per_command(outcomes)["data info"] == {"inputs": 1, "failing": 0}
    assert not (tmp_path / "cases" / "0000").exists()  # a passing case's folder is removed


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix.strip()]
    return [
        leaf
        for name, sub in subs[0].choices.items()
        for leaf in _leaf_commands(sub, f"{prefix} {name}")
    ]


def test_the_tables_cover_every_command_with_unique_cases():
    cases = bad_input_cases.all_cases()
    assert len({c.id for c in cases}) == len(cases) > 300
    covered = {c.command.split(" --")[0] for c in cases if c.expect == "error"}
    missing = set(_leaf_commands(build_parser())) - covered
    assert not missing, missing
    for case in bad_input_cases.quick_subset(cases):
        assert case in cases


@pytest.mark.parametrize(
    ("table", "n", "key"),
    [({"a": 1, "b": 2, "c": 3}, 2, "x"), ({"a": 1}, 3, "y")],
)
def test_rotate_picks_consecutive_entries(table, n, key):
    picked = bad_input_cases.rotate(table, n, key)
    assert len(picked) == min(n, len(table)) and picked == bad_input_cases.rotate(table, n, key)
    assert all(table[k] == v for k, v in picked.items())
