"""What every benchmark shares: where results go, the machine description, the JSON writer.

A result file ``bench/results/<name>.json`` holds::

    {"name", "quick", "figures": {figure: number}, "targets": {figure: {"target", "direction",
     "ratio", "met"}}, "config": {...}, "notes": [...], "device": {...}, "versions": {...},
     "git": {"commit", "dirty"}, "timestamp"}

``ratio`` is always figure / target; ``direction`` says whether the figure should be at least
(">=") or at most ("<=") the target, and ``met`` whether it is. Quick (smoke-test) runs go to
``bench/results/tmp/`` (ignored by git) so they never overwrite the committed full results.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from iss3d.core.atomic import write_json

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "tmp"


def results_dir(quick: bool) -> Path:
    """Where results of a full (committed) or quick (scratch) run go; created if missing."""
    path = QUICK_RESULTS_DIR if quick else RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": None,
        # 1/5/15-minute load when the result is written: above the bench's own processes it
        # means something else shared the CPU and the timings are pessimistic.
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    import h5py
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": numpy.__version__,
    }


def git_info() -> dict:
    """The checked-out commit and whether the tree has changes; None values when git fails."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def target(value: float, goal: float, direction: str = ">=") -> dict:
    """How ``value`` compares with ``goal``: ratio value / goal and whether it is met."""
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', got {direction!r}")
    met = value >= goal if direction == ">=" else value <= goal
    return {"target": goal, "direction": direction, "ratio": value / goal, "met": bool(met)}


def write_result(
    name: str,
    figures: dict,
    config: dict,
    quick: bool,
    targets: dict | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Write ``<results>/<name>.json`` atomically (temp name, then rename), print a summary.

    Returns the full result dict as written.
    """
    result = {
        "name": name,
        "quick": quick,
        "figures": figures,
        "targets": targets or {},
        "config": config,
        "notes": notes or [],
        "device": device_info(),
        "versions": versions(),
        "git": git_info(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
    }
    path = results_dir(quick) / f"{name}.json"
    write_json(path, result)
    print(summary(result))
    print(f"  -> {path}")
    return result


def command_line() -> str:
    """How this run was started, as ``python -m bench.<module> [args]`` where it applies."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if argv0.suffix == ".py" and argv0.resolve().parent == BENCH_DIR:
        head = ["python", "-m", f"bench.{argv0.stem}"]
    else:
        head = ["python", argv0.name]
    return " ".join([*head, *sys.argv[1:]])


def summary(result: dict) -> str:
    """A few human lines: each figure, with its target where it has one."""
    lines = [f"[{result['name']}]{' (quick)' if result.get('quick') else ''}"]
    for key, value in result["figures"].items():
        line = f"  {key:<40} {format_number(value)}"
        goal = result.get("targets", {}).get(key)
        if goal:
            verdict = "met" if goal["met"] else "NOT met"
            line += (
                f"   (target {goal['direction']} {format_number(goal['target'])}: "
                f"x{goal['ratio']:.2f}, {verdict})"
            )
        lines.append(line)
    return "\n".join(lines)


def format_number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def rate(fn: Callable[[], object], count: int, repeats: int = 3) -> tuple[float, list[float]]:
    """Run ``fn`` (which does ``count`` operations) ``repeats`` times; median ops/s and all."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), rates
