"""Run the benchmarks and index their results.

``python -m bench.run [--only NAME] [--quick]`` runs ``main(quick)`` of every ``bench/bench_*.py``
(or only ``bench_NAME``), each writing ``<results>/<name>.json``, then writes
``<results>/summary.md``: one table over every result file there. Full runs use
``bench/results/`` (committed); ``--quick`` runs small sizes into ``bench/results/tmp/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from bench.common import BENCH_DIR, format_number, results_dir
from iss3d.core.atomic import atomic_output


def bench_names() -> list[str]:
    """Names of the benchmark modules, without the ``bench_`` prefix, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def run(names: list[str], quick: bool) -> list[str]:
    """Run each named benchmark; returns the names that failed."""
    failed = []
    for name in names:
        print(f"== bench_{name}{' (quick)' if quick else ''}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            module.main(quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    return failed


def write_summary(folder: Path) -> Path:
    """``summary.md``: every figure of every result JSON in ``folder``, with its target."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench.run`; one row per figure. ratio = figure / target.",
        "",
        "| bench | figure | value | target | ratio | met |",
        "|---|---|---:|---:|---:|---|",
    ]
    machines = []
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        name = result["name"]
        for key, value in result["figures"].items():
            goal = result.get("targets", {}).get(key)
            cells = [name, f"`{key}`", format_number(value)]
            if goal:
                verdict = "yes" if goal["met"] else "**no**"
                cells += [
                    f"{goal['direction']} {format_number(goal['target'])}",
                    f"{goal['ratio']:.2f}",
                    verdict,
                ]
            else:
                cells += ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        dev, git = result["device"], result["git"]
        commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
        machines.append(
            f"- **{name}**: {result['timestamp']}, {dev['cpu']} ({dev['cpu_count']} cores, "
            f"torch threads {dev['torch_threads']}, CUDA: {dev['cuda_device'] or 'none'}), "
            f"torch {result['versions']['torch']}, h5py {result['versions']['h5py']}, "
            f"commit {commit}; `{result.get('command', '')}`"
        )
    lines += ["", "## Runs", "", *machines, ""]
    path = folder / "summary.md"
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    names = bench_names()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=names, help="run one benchmark")
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke testing")
    args = parser.parse_args(argv)
    failed = run([args.only] if args.only else names, args.quick)
    summary = write_summary(results_dir(args.quick))
    print(f"summary -> {summary}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
