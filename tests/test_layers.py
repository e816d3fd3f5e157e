"""The layer contract: iss3d.core < data < models < train < infer, imports only downwards, no
file cycles, and a generation path that never loads training code or Lightning.

Every import statement of the package's source files counts, at module level or inside a
function (a lazy import is still a dependency), except those under ``if TYPE_CHECKING:``.
``python -m tests.test_layers`` prints the figures; ``make lint`` and ``make test`` run it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as (pyproject.toml's package-dir).
FOLDERS = {
    "iss3d": "iss3d",
    "configs": "iss3d.configs",
    "data": "iss3d.data",
    "models": "iss3d.models",
    "train": "iss3d.train",
    "infer": "iss3d.infer",
}
#: Layer rank of each sub-package; an import may only go to the same or a lower rank.
LAYERS = {
    "iss3d.core": 0,
    "iss3d.configs": 0,
    "iss3d.data": 1,
    "iss3d.models": 2,
    "iss3d.train": 3,
    "iss3d.infer": 4,
}
#: The infer modules that may import iss3d.train: the command line (``iss3d fit`` among its
#: commands) and the evaluation of training runs that reruns stage-1 validation
#: (``iss3d eval stage1``).
MAY_IMPORT_TRAIN = ("iss3d.infer.cli", "iss3d.infer.stage1_eval")
#: What `iss3d generate` / `iss3d stylize` / `iss3d export` and the Python API import.
GENERATION_PATH = (
    "iss3d",
    "iss3d.infer.generator",
    "iss3d.infer.generate",
    "iss3d.infer.stylize",
    "iss3d.infer.export",
    "iss3d.infer.stage2",
    "iss3d.infer.guidance",
    "iss3d.models.loaders",
)
#: Packages the generation path must not load.
TRAINING_ONLY = ("iss3d.train", "pytorch_lightning", "lightning", "torchmetrics")


def source_modules() -> dict[str, Path]:
    """Module name -> source file, for every .py file of the package."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path) -> list[str]:
    """Every absolute name imported by ``path`` (``from a.b import c`` gives ``a.b.c`` and
    ``a.b``), skipping ``if TYPE_CHECKING:`` blocks."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; use the iss3d. name")
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import mod`` counts ``pkg``, whose
    ``__init__`` runs, and ``pkg.mod``; a module's own packages are left out)."""
    modules = source_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(path):
            if imported in modules:
                targets.add(imported)
        targets.discard(name)
        graph[name] = {t for t in targets if not _contains(t, name)}
    return graph


def _contains(package: str, module: str) -> bool:
    """Whether ``module`` lies inside ``package`` (a package importing from itself is no
    dependency of its modules on it)."""
    return module.startswith(package + ".")


def layer(module: str) -> int | None:
    """The layer rank of ``module``, None for the top-level ``iss3d`` files outside core."""
    for package, rank in LAYERS.items():
        if module == package or module.startswith(package + "."):
            return rank
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a higher layer, and of iss3d.train from infer modules not
    in :data:`MAY_IMPORT_TRAIN`."""
    found = []
    for module, targets in sorted(graph.items()):
        own = layer(module)
        for target in sorted(targets):
            rank = layer(target)
            if own is not None and rank is not None and rank > own:
                found.append(f"{module} -> {target}")
            elif (
                own == LAYERS["iss3d.infer"]
                and rank == LAYERS["iss3d.train"]
                and not module.startswith(MAY_IMPORT_TRAIN)
            ):
                found.append(f"{module} -> {target} (only the CLI may reach into train)")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def generation_path_imports() -> list[str]:
    """The training-only modules in sys.modules after importing the generation path, in a
    fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for m in {GENERATION_PATH!r}: importlib.import_module(m)\n"
        f"print('\\n'.join(m for m in sys.modules if m.split('.')[0] in {TRAINING_ONLY!r}"
        f" or m.startswith('iss3d.train')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.split()


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_no_cycles():
    assert cycles(import_graph()) == []


def test_generation_path_loads_no_training_code():
    assert generation_path_imports() == []


def test_the_checker_sees_violations(tmp_path):
    """The checks can fail: an upward import, a cycle and a lazy import are all found."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import iss3d.data.a\n"
        "if TYPE_CHECKING:\n    from iss3d.train import svr\n"
        "def f():\n    from iss3d.infer.generate import generate\n"
    )
    assert imported_names(source) == [
        "typing",
        "typing.TYPE_CHECKING",
        "iss3d.data.a",
        "iss3d.infer.generate",
        "iss3d.infer.generate.generate",
    ]
    graph = {
        "iss3d.data.a": {"iss3d.models.b"},
        "iss3d.models.b": {"iss3d.models.c"},
        "iss3d.models.c": {"iss3d.models.b"},
        "iss3d.infer.generate": {"iss3d.train.svr"},
        "iss3d.infer.cli": {"iss3d.train.svr"},
    }
    assert upward_imports(graph) == [
        "iss3d.data.a -> iss3d.models.b",
        "iss3d.infer.generate -> iss3d.train.svr (only the CLI may reach into train)",
    ]
    assert cycles(graph) == [["iss3d.models.b", "iss3d.models.c"]]


def main() -> int:
    graph = import_graph()
    upward, loops, loaded = upward_imports(graph), cycles(graph), generation_path_imports()
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports")
    print(f"{len(loops)} cycles" + "".join(f"\n  {' <-> '.join(c)}" for c in loops))
    print(f"{len(upward)} upward imports" + "".join(f"\n  {u}" for u in upward))
    roots = sorted({m if m.startswith("iss3d.") else m.split(".")[0] for m in loaded})
    print(
        f"training modules loaded by the generation path: {len(loaded)}"
        + "".join(f"\n  {m}" for m in roots)
    )
    return 1 if upward or loops or loaded else 0


if __name__ == "__main__":
    raise SystemExit(main())
