"""The package as users install it: a wheel of the one ``iss3d`` namespace, installed into a
fresh environment, run from a folder that holds its own ``data/`` and ``models/`` packages.

The wheel is built once per test session without network (``--no-build-isolation``: the test
environment's setuptools) and installed without dependencies into a new virtual environment
whose only other packages are the test environment's (a ``.pth`` line: the pinned versions of
constraints.txt, nothing downloaded).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import iss3d

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red chair"
#: Imported to find where the test environment's packages are installed.
DEPENDENCIES = ("numpy", "torch", "open_clip", "trimesh", "yaml", "PIL", "h5py", "skimage")
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    run([*pip, "--wheel-dir", str(out), str(ROOT)], cwd=out)
    (path,) = out.glob("iss3d-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed; returns its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    # the folders the test environment's dependencies live in (not the checkout)
    deps = {str(Path(importlib.import_module(m).__file__).parents[1]) for m in DEPENDENCIES}
    (site / "test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q"]
    run([*pip, "--no-index", str(wheel)], cwd=env_dir)
    return env_dir / "bin"


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> Path:
    """A folder with its own ``data`` and ``models`` packages, as ML projects have."""
    folder = tmp_path_factory.mktemp("user_project")
    for name in ("data", "models"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('the user {name}')\n")
    (folder / "models" / "clip.py").write_text("ClipModel = None\n")
    return folder


def offline_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}


def test_the_wheel_holds_one_namespace_with_configs_and_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"iss3d"}
    assert "iss3d/configs/generate/tiny.yaml" in names
    assert "iss3d/models/pretrained/stage1.ckpt" in names
    assert "iss3d/__main__.py" in names
    assert f"iss3d-{iss3d.__version__}.dist-info/METADATA" in names


def test_installed_wheel_generates_like_the_checkout(installed, user_project, tmp_path):
    env = offline_env()
    where = run(
        [str(installed / "python"), "-c", "import iss3d; print(iss3d.__file__)"],
        cwd=user_project,
        env=env,
    ).stdout
    assert str(installed.parent) in where, "the wheel's iss3d, not the checkout's"
    help_text = run([str(installed / "python"), "-m", "iss3d", "--help"], cwd=user_project, env=env)
    assert "generate" in help_text.stdout
    args = ["generate", PROMPT, "--seed", "0", "--no-progress"]
    run([str(installed / "iss3d"), *args, "--out", "wheel_out"], cwd=user_project, env=env)
    checkout = [sys.executable, "-m", "iss3d", *args, "--out", str(tmp_path / "checkout_out")]
    run(checkout, cwd=ROOT, env=env)
    reports = [
        json.loads((folder / "report.json").read_text())["results"][0]
        for folder in (user_project / "wheel_out", tmp_path / "checkout_out")
    ]
    for key in ("clip_score_before", "clip_score_after"):
        assert reports[0][key] == reports[1][key], key
