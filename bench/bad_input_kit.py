"""The machinery of the bad-input harness (``python -m bench.bad_inputs``): a :class:`Case` (one
command line that should fail cleanly, or a control that should succeed), running it in a
folder of its own with a timeout, and the verdict on what it did.

What a bad input must get (the project's promise): one line on stderr (``iss3d: error: ...``)
naming the flag or file at fault, a non-zero exit, no Python traceback, nothing new in the
output location (no ``*.tmp-*`` leftovers either), and no hang. A case's verdict lists the
broken promises; the first five are the harness's figures, the rest diagnostics:

``traceback``       stderr holds "Traceback"
``zero_exit``       exit status 0 (the bad input was accepted)
``partial_output``  new files or folders in the case's folder, or ``.tmp-`` leftovers
``hang``            still running at the timeout (its process group is killed)
``crash``           killed by a signal (a segfault, the kernel's OOM killer)
``not_one_line``    stderr is not exactly one non-empty line starting ``iss3d: error: ``
``not_naming``      the error does not mention the flag or file at fault (``Case.names``)
``long_line``       the error line is longer than :data:`LONG_LINE` characters
``stray_process``   the command exited but left processes of its group running

A control (``expect="ok"``) fails with ``error_exit`` when its exit status is not 0 (and with a
traceback or a hang like any case): controls prove that the fixtures the bad cases vary are
valid, so each bad case fails because of its one bad part.

Every case runs in its own folder (its working directory; ``{w}`` in an argument), with the
shared read-only fixtures at ``{fx}``; everything a case may write goes under ``{w}``, so
cases run in parallel without seeing each other's outputs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

#: The four figures of the harness, then the diagnostics (see the module docstring).
FIGURES = ("traceback", "zero_exit", "partial_output", "hang")
DIAGNOSTICS = ("crash", "not_one_line", "not_naming", "long_line", "stray_process")
#: An error line longer than this is not a clear line (a 10,000-character prompt echoed back).
LONG_LINE = 400
#: Address-space limit of every case (bytes, set with ``prlimit``): an absurd size that is
#: accepted fails with a MemoryError instead of pushing the machine into the OOM killer.
MEMORY_LIMIT = 10 * 2**30
#: The user that read-only folders are tested as (root writes into a chmod 555 folder), and
#: how many processes it may have (a flag that would start thousands of processes).
NOBODY = 65534
NOBODY_PROCESSES = 32
ERROR_PREFIX = "iss3d: error: "
DEFAULT_PROGRAM = (sys.executable, "-m", "iss3d")

Setup = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Case:
    """One command line to try.

    ``argv`` follows the program (``iss3d`` unless ``program`` is given); in each argument
    ``{w}`` becomes the case's folder and ``{fx}`` the fixtures folder (bytes arguments are
    passed unchanged: non-UTF-8 input). ``names``: the error line must contain at least one of
    them (after the same substitution; empty: not checked). ``setup(w, fx)`` prepares the
    case's folder before it runs; what it creates is not counted as output. ``user="nobody"``
    runs the command as an unprivileged user (read-only folders; at most
    :data:`NOBODY_PROCESSES` processes), in a folder it may write to.
    """

    command: str
    kind: str
    argv: tuple[str | bytes, ...]
    names: tuple[str, ...] = ()
    expect: str = "error"
    setup: Setup | None = None
    user: str = "root"
    program: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        return f"{self.command} | {self.kind}"


@dataclass
class Outcome:
    """What one case did, and the promises it broke (``problems``)."""

    case: Case
    argv: list[str]
    returncode: int | None
    stderr: str
    seconds: float
    new_paths: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def report(self, tail: int = 600) -> dict:
        """The JSON form listed among the failures."""
        return {
            "id": self.case.id,
            "command": self.case.command,
            "kind": self.case.kind,
            "argv": self.argv,
            "returncode": self.returncode,
            "problems": self.problems,
            "stderr_tail": self.stderr[-tail:],
            "new_paths": self.new_paths[:20],
            "seconds": round(self.seconds, 2),
        }


def fill(arg: str | bytes, w: Path, fx: Path) -> str | bytes:
    """``arg`` with ``{w}`` and ``{fx}`` replaced (bytes unchanged)."""
    if isinstance(arg, bytes):
        return arg
    return arg.replace("{w}", str(w)).replace("{fx}", str(fx))


def shown(arg: str | bytes) -> str:
    """An argument as the report shows it (bytes as escaped text)."""
    return arg.decode("utf-8", "backslashreplace") if isinstance(arg, bytes) else arg


def snapshot(folder: Path, skip: Iterable[str] = ("home",)) -> set[str]:
    """Every path under ``folder`` (files and folders, relative, symlinks not followed)."""
    found: set[str] = set()
    skip = set(skip)
    for top, dirs, files in os.walk(folder):
        rel = Path(top).relative_to(folder)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in dirs + files:
            found.add(str(rel / name))
    return found


def command_for(case: Case, w: Path, fx: Path) -> list[str | bytes]:
    """The full command line of ``case`` run in ``w``."""
    program = list(case.program or DEFAULT_PROGRAM)
    argv = [fill(a, w, fx) for a in case.argv]
    limits = [f"--as={MEMORY_LIMIT}"]
    if case.user == "nobody":
        program = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *program]
        limits.append(f"--nproc={NOBODY_PROCESSES}")
    if shutil.which("prlimit"):
        program = ["prlimit", *limits, "--", *program]
    return [*program, *argv]


def _environment(w: Path, case: Case) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    if case.user == "nobody":
        home = w / "home"
        home.mkdir(exist_ok=True)
        home.chmod(0o777)
        env["HOME"] = str(home)
    return env


#: Process groups of the cases running now (killed when the harness is interrupted).
_RUNNING: set[int] = set()
_RUNNING_LOCK = threading.Lock()


def kill_running() -> None:
    """SIGKILL the process group of every case still running."""
    with _RUNNING_LOCK:
        groups = list(_RUNNING)
    for pid in groups:
        _kill_group(pid)


def _kill_group(pid: int) -> bool:
    """SIGKILL the process group ``pid``; True if anything was left in it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:  # a group of another user that has just been reaped
        return False
    return True


def execute(case: Case, w: Path, fx: Path, timeout: float) -> Outcome:
    """Run ``case`` in folder ``w`` (created, then prepared by ``case.setup``) and judge it."""
    w.mkdir(parents=True, exist_ok=True)
    if case.user == "nobody":
        w.chmod(0o777)
    if case.setup is not None:
        case.setup(w, fx)
    before = snapshot(w)
    cmd = command_for(case, w, fx)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=w,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(w, case),
        start_new_session=True,
    )
    with _RUNNING_LOCK:
        _RUNNING.add(proc.pid)
    hung = False
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        _kill_group(proc.pid)
        _, err = proc.communicate()
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc.pid)
    stray = not hung and _kill_group(proc.pid)
    seconds = time.monotonic() - start
    new = sorted(snapshot(w) - before)
    outcome = Outcome(
        case=case,
        argv=[shown(a) for a in cmd],
        returncode=None if hung else proc.returncode,
        stderr=err.decode("utf-8", "backslashreplace"),
        seconds=seconds,
        new_paths=new,
    )
    leftovers = [p for p in snapshot(w) if ".tmp-" in Path(p).name]
    outcome.problems = judge(case, outcome, w, fx, hung, stray, leftovers)
    return outcome


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr``."""
    return [line for line in stderr.splitlines() if line.strip()]


def judge(
    case: Case,
    outcome: Outcome,
    w: Path,
    fx: Path,
    hung: bool,
    stray: bool,
    leftovers: list[str],
) -> list[str]:
    """The promises ``outcome`` broke (names from :data:`FIGURES` and :data:`DIAGNOSTICS`,
    or ``error_exit`` for a control that failed)."""
    problems: list[str] = []
    if hung:
        problems.append("hang")
    if "Traceback" in outcome.stderr:
        problems.append("traceback")
    if stray:
        problems.append("stray_process")
    if case.expect == "ok":
        if not hung and outcome.returncode != 0:
            problems.append("error_exit")
        return problems
    if leftovers or outcome.new_paths:
        problems.append("partial_output")
    if hung:
        return problems
    code = outcome.returncode
    if code == 0:
        problems.append("zero_exit")
        return problems
    if code is not None and code < 0:
        problems.append("crash")
    problems += message_problems(case, outcome.stderr, w, fx)
    return problems


def message_problems(case: Case, stderr: str, w: Path, fx: Path) -> list[str]:
    """``not_one_line`` / ``not_naming`` / ``long_line`` of a failed command's stderr."""
    problems = []
    lines = error_lines(stderr)
    if len(lines) != 1 or not lines[0].startswith(ERROR_PREFIX):
        problems.append("not_one_line")
    names = [n for n in (fill(n, w, fx) for n in case.names) if isinstance(n, str)]
    if names and not any(n in stderr for n in names):
        problems.append("not_naming")
    if any(len(line) > LONG_LINE for line in lines):
        problems.append("long_line")
    return problems


def run_cases(
    cases: list[Case],
    root: Path,
    fx: Path,
    timeout: float,
    workers: int = 2,
    progress: Callable[[int, Outcome], None] | None = None,
    keep: bool = False,
) -> list[Outcome]:
    """Run every case (``workers`` at a time) in ``root/<index>``; returns the outcomes in case
    order. A passing case's folder is removed unless ``keep``."""

    def one(index: int) -> Outcome:
        w = root / f"{index:04d}"
        outcome = execute(cases[index], w, fx, timeout)
        if not outcome.problems and not keep:
            shutil.rmtree(w, ignore_errors=True)
        if progress is not None:
            progress(index, outcome)
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(one, index) for index in range(len(cases))]
        return [future.result() for future in futures]
    except BaseException:  # Ctrl-C / SIGTERM: no new cases, and none left running
        pool.shutdown(wait=False, cancel_futures=True)
        kill_running()
        raise
    finally:
        pool.shutdown(wait=True)


def tally(outcomes: list[Outcome]) -> dict[str, int]:
    """How many outcomes broke each promise (controls excluded), and the controls' count."""
    bad = [o for o in outcomes if o.case.expect == "error"]
    controls = [o for o in outcomes if o.case.expect == "ok"]
    counts = {"total_inputs": len(bad)}
    for name in (*FIGURES, *DIAGNOSTICS):
        counts[name] = sum(name in o.problems for o in bad)
    counts["failing_inputs"] = sum(bool(o.problems) for o in bad)
    counts["controls"] = len(controls)
    counts["control_failures"] = sum(bool(o.problems) for o in controls)
    return counts


def per_command(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """command -> {"inputs": bad inputs tried, "failing": how many broke a promise}."""
    table: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.case.expect != "error":
            continue
        row = table.setdefault(o.case.command, {"inputs": 0, "failing": 0})
        row["inputs"] += 1
        row["failing"] += bool(o.problems)
    return dict(sorted(table.items()))
