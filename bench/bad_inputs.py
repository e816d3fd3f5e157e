"""Bad inputs to every ``iss3d`` command: does each get one clear line, a non-zero exit, no
traceback, no half-written output and no hang?

``python -m bench.bad_inputs [--quick] [--workers N] [--timeout S] [--only TEXT] [--keep]``

The cases are generated from tables, not typed one by one (:mod:`bench.bad_input_cases`):
each command is a template with valid values in its slots, and each input class replaces one
slot or adds one flag or override: missing / empty / folder / FIFO / device / random files,
truncated and schema-damaged HDF5, corrupt and hostile checkpoints (pickles with a code
payload), images of the wrong size, mode or content, broken YAML configs, absurd numbers in
flags and overrides, outputs that cannot be written, bad prompts, broken import layouts,
non-finite numbers in data files. Controls (the templates as they are) must succeed, so each
bad case fails for its one bad part. Fixtures are built once per run in a temporary folder
(:mod:`bench.bad_input_fixtures`); the runner and verdicts are :mod:`bench.bad_input_kit`.

Writes ``bench/results/bad_inputs.json`` (``--quick``: ``bench/results/tmp/``): the number of
inputs, per-command counts, the figures (tracebacks, zero exits, partial outputs, hangs), the
diagnostics (errors not one line, errors not naming the flag or file, ...) and every failing
case with its argv and stderr tail.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import bad_input_cases as cases_lib
from bench import bad_input_fixtures as fixtures
from bench.bad_input_kit import (
    DIAGNOSTICS,
    FIGURES,
    Case,
    Outcome,
    per_command,
    run_cases,
    snapshot,
    tally,
)
from bench.common import command_line, device_info, git_info, results_dir, versions
from iss3d.core.atomic import write_json

NAME = "bad_inputs"


def build_fixtures(fx: Path) -> None:
    """Everything the cases read (:func:`bench.bad_input_fixtures.build`, and the prompt files
    of :mod:`bench.bad_input_cases`)."""
    fixtures.build(fx, cases_lib.YAML_STAGES)
    cases_lib.build_text_files(fx)


def progress_line(total: int, start: float):
    """A callback printing one line per finished case."""
    done = [0]

    def report(index: int, outcome: Outcome) -> None:
        done[0] += 1
        verdict = ",".join(outcome.problems) or "ok"
        elapsed = time.monotonic() - start
        print(
            f"[{done[0]:4d}/{total} {elapsed:6.0f}s] {outcome.seconds:5.1f}s "
            f"{outcome.case.id}: {verdict}",
            flush=True,
        )

    return report


def check_fixtures(fx: Path, before: set[str]) -> list[str]:
    """Problems with the shared fixtures after the run: a payload executed, files left."""
    problems = []
    if (fx / fixtures.MARKER).exists():
        problems.append(f"a payload was executed: {fx / fixtures.MARKER} exists")
    changed = sorted(snapshot(fx) - before)
    if changed:
        problems.append(f"new files among the shared fixtures: {changed[:10]}")
    return problems


def summarise(
    outcomes: list[Outcome],
    fixture_problems: list[str],
    seconds: float,
    quick: bool,
    args: argparse.Namespace,
) -> dict:
    """The result JSON."""
    counts = tally(outcomes)
    counts["payloads_executed"] = int(any("payload" in p for p in fixture_problems))
    failing = [o.report() for o in outcomes if o.problems and o.case.expect == "error"]
    controls_failing = [o.report() for o in outcomes if o.problems and o.case.expect == "ok"]
    figure_keys = ("total_inputs", *FIGURES, *DIAGNOSTICS)
    return {
        "name": NAME,
        "quick": quick,
        "figures": {
            k: counts[k]
            for k in (
                *figure_keys,
                "failing_inputs",
                "controls",
                "control_failures",
                "payloads_executed",
            )
        },
        "targets": {},
        "total_inputs": counts["total_inputs"],
        "per_command": per_command(outcomes),
        "per_family": _per_family(outcomes),
        "failures": failing,
        "control_failures": controls_failing,
        "fixture_problems": fixture_problems,
        "runtime_s": round(seconds, 1),
        "config": {"timeout_s": args.timeout, "workers": args.workers, "only": args.only},
        "notes": [
            "figures: traceback = stderr holds 'Traceback'; zero_exit = a bad input exited 0; "
            "partial_output = new files in the case folder or *.tmp-* leftovers; hang = "
            "killed at the timeout. Diagnostics: not_one_line, not_naming, long_line, crash, "
            "stray_process (bench/bad_input_kit.py)."
        ],
        "device": device_info(),
        "versions": versions(),
        "git": git_info(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
    }


def _per_family(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.case.expect != "error":
            continue
        row = table.setdefault(o.case.kind.split(":")[0], {"inputs": 0, "failing": 0})
        row["inputs"] += 1
        row["failing"] += bool(o.problems)
    return dict(sorted(table.items()))


def print_summary(result: dict) -> None:
    figures = result["figures"]
    print(
        f"\n{NAME}: {figures['total_inputs']} bad inputs, {figures['controls']} controls, "
        f"{result['runtime_s']} s"
    )
    for key, value in figures.items():
        print(f"  {key:>18}: {value}")
    for failure in result["failures"] + result["control_failures"]:
        tail = failure["stderr_tail"].strip().splitlines()[-1:] or [""]
        print(f"  FAIL {failure['id']}: {','.join(failure['problems'])}: {tail[0][:160]}")
    for problem in result["fixture_problems"]:
        print(f"  FIXTURES: {problem}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bad_inputs", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="a representative subset (~3 min)")
    p.add_argument("--workers", type=int, default=2, help="cases at a time (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case (default 60)")
    p.add_argument("--only", default=None, help="only cases whose id contains this text")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p.parse_args(argv)


def select(args: argparse.Namespace) -> list[Case]:
    """The cases to run: all of them, the quick subset, or those ``--only`` names."""
    cases = cases_lib.all_cases()
    if args.quick:
        cases = cases_lib.quick_subset(cases)
    if args.only:
        cases = [c for c in cases if args.only in c.id]
    return cases


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> dict:
    """Run the cases (see the module docstring); returns the result written."""
    signal.signal(signal.SIGTERM, _terminated)  # unwind: kill the cases, remove the folder
    args = parse_args(argv)
    cases = select(args)
    if args.list:
        for case in cases:
            print(case.id)
        print(f"{len(cases)} cases")
        return {}
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="iss3d-bad-inputs-"))
    root.chmod(0o755)
    try:
        print(f"building fixtures in {root / 'fx'} ...", flush=True)
        build_fixtures(root / "fx")
        before = snapshot(root / "fx")
        print(f"fixtures ready ({time.monotonic() - start:.0f} s); {len(cases)} cases", flush=True)
        outcomes = run_cases(
            cases,
            root / "cases",
            root / "fx",
            args.timeout,
            args.workers,
            progress_line(len(cases), start),
            keep=args.keep,
        )
        problems = check_fixtures(root / "fx", before)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    result = summarise(outcomes, problems, time.monotonic() - start, args.quick, args)
    path = results_dir(args.quick) / f"{NAME}.json"
    write_json(path, result)
    print_summary(result)
    print(f"  -> {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
