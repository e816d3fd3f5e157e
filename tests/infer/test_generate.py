"""``iss3d generate``: outputs and report (strict JSON), reproducibility, diverse samples, bad
inputs (one line, exit 2, nothing written), warnings (non-finite stage-2 steps among them), and
Ctrl-C leaving no half-written files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml
from PIL import Image

import iss3d.infer.generate as generate_module
import iss3d.infer.session as session
from iss3d.infer.cli import main
from iss3d.infer.generator import GenerateConfig, load_generate_config
from iss3d.models.clip import build_open_clip, clip_config, export_checkpoint
from tests.fixtures.cli import error_line
from tests.fixtures.nonfinite import poison_renders, strict_json
from tests.fixtures.stage1_ckpt import build_stage1_checkpoint

CLIP = "clip/tiny-64"

# CPU-test size: a few milliseconds per step with the tiny fixture models.
FAST = [
    "stage2.steps=2",
    "stage2.views=2",
    "stage2.resolution=16",
    "stage2.march.n_steps=12",
    "stage2.march.n_secant=2",
    "stage2.cameras.distance=[1.8,1.8]",
    "export.mesh_resolution0=8",
    "export.mesh_upsampling_steps=1",
    "export.march_steps=12",
    "export.turntable_views=4",
    "export.turntable_resolution=16",
    "export.eval_views=2",
]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    return build_stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "stage1.ckpt", CLIP)


def run(stage1: Path, out: Path | None, *extra: str, prompt: str = "a red chair") -> int:
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    extra = tuple(e for e in extra if e not in overrides)
    argv = ["generate", prompt, *FAST, *overrides, "--stage1", str(stage1), "--device", "cpu"]
    if out is not None:
        argv += ["--out", str(out)]
    return main([*argv, "--no-progress", *extra])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def without_timings(value):
    """A report with its wall-clock fields removed (the rest must be reproducible)."""
    if isinstance(value, dict):
        return {
            k: without_timings(v)
            for k, v in value.items()
            if k not in ("timings", "seconds", "command")
        }
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


# -- outputs ------------------------------------------------------------------------------------


def test_generate_writes_every_output(stage1, tmp_path, capsys):
    out = tmp_path / "chair"
    argv = ["generate", "a red chair", *FAST, "--stage1", str(stage1), "--out", str(out)]
    assert main([*argv, "--seed", "3"]) == 0  # with the progress bar, device auto
    err = capsys.readouterr().err
    assert "clip=" in err  # the progress bar shows the CLIP score
    if not torch.cuda.is_available():
        assert "running on the CPU" in err
    names = {"mesh.glb", "mesh.ply", "turntable.gif", "turntable.png", "views.png"}
    names |= {"report.json", "config.yaml", "command.txt", "latent.pt"}
    assert set(leftovers(out)) == names
    assert leftovers(tmp_path) == ["chair"]  # no temporary folder left

    report = strict_json((out / "report.json").read_text())
    assert report["prompt"] == "a red chair" and report["seed"] == 3 and report["samples"] == 1
    assert report["clip"] == CLIP and report["stage1"] == str(stage1)
    assert report["device"]["type"] in ("cpu", "cuda")
    assert report["versions"]["torch"] and report["versions"]["python"]
    assert report["diversity"] is None
    (result,) = report["results"]
    assert len(result["clip_score_per_step"]) == 2 and len(result["history"]) == 2
    assert all(np.isfinite(result[k]) for k in ("clip_score_before", "clip_score_after"))
    for phase in ("stage2_s", "mesh_s", "turntable_s", "views_s"):
        assert result["timings"][phase] >= 0
    assert report["timings"]["total_s"] > 0 and report["timings"]["load_models_s"] >= 0

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == report["config"]
    expected = load_generate_config("tiny", FAST)
    assert GenerateConfig.from_dict(saved) == expected
    assert (out / "command.txt").read_text().startswith("iss3d generate 'a red chair' --out ")

    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert len(mesh.faces) == result["mesh"]["faces"] > 0
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    glb = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    assert len(glb.faces) == len(mesh.faces)
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 4 and gif.size == (16, 16)
    views = np.asarray(Image.open(out / "views.png"))
    assert views.shape == (2 * 16, 2 * 16 + 4, 3)  # eval views x (before | gap | after)


def test_same_seed_same_files_and_default_folder(stage1, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(stage1, None, "--seed", "5") == 0
    first = tmp_path / "generated" / "a-red-chair-seed5"
    assert first.is_dir()
    assert run(stage1, tmp_path / "again", "--seed", "5") == 0
    second = tmp_path / "again"
    for name in ("mesh.glb", "mesh.ply", "turntable.gif", "views.png", "config.yaml"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a = strict_json((first / "report.json").read_text())
    b = strict_json((second / "report.json").read_text())
    assert without_timings(a) == without_timings(b)
    # another seed: other cameras, another shape
    assert run(stage1, tmp_path / "other", "--seed", "6") == 0
    assert (tmp_path / "other" / "mesh.ply").read_bytes() != (first / "mesh.ply").read_bytes()


def test_samples_are_different_shapes(stage1, tmp_path, capsys):
    out = tmp_path / "two"
    assert run(stage1, out, "--samples", "2", "--seed", "1") == 0
    assert "diversity of 2 samples" in capsys.readouterr().out
    assert set(leftovers(out)) == {"sample_0", "sample_1", "report.json", "config.yaml",
                                   "command.txt"}  # fmt: skip
    report = strict_json((out / "report.json").read_text())
    div = report["diversity"]
    assert div["pairs"] == 1
    assert 0 <= div["mean_pairwise_iou"] < 0.98
    assert div["mean_pairwise_chamfer"] > 0
    assert [r["perturbed"] for r in report["results"]] == [True, True]
    meshes = [(out / f"sample_{k}" / "mesh.ply").read_bytes() for k in (0, 1)]
    assert meshes[0] != meshes[1]
    for k in (0, 1):
        sample = strict_json((out / f"sample_{k}" / "report.json").read_text())
        assert sample["sample"] == k and sample["prompt"] == "a red chair"
        assert (out / f"sample_{k}" / "turntable.gif").is_file()


def test_diversity_of_identical_shapes():
    from iss3d.models.decoder import Decoder

    torch.manual_seed(0)
    decoder = Decoder(c_dim=4, hidden=8, n_blocks=1)
    c = torch.randn(1, 4)
    verts = np.random.default_rng(0).random((50, 3))
    div = generate_module.diversity(decoder, [c, c.clone()], [verts, verts], grid=8)
    assert div["mean_pairwise_iou"] == 1.0 and div["mean_pairwise_chamfer"] == 0.0


# -- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "extra", "message"),
    [
        ("", [], "empty prompt"),
        ("   ", [], "empty prompt"),
        ("a red\x07 chair", [], "control character U+0007"),
        ("a red chair", ["--steps", "0"], "--steps must be positive"),
        ("a red chair", ["--views", "0"], "--views must be positive"),
        ("a red chair", ["--views", "-3"], "--views must be positive"),
        ("a red chair", ["--res", "0"], "--res must be positive"),
        ("a red chair", ["--samples", "0"], "--samples must be positive"),
        ("a red chair", ["--preset", "huge"], "no such file"),
        ("a red chair", ["stage2.guidance.loss=l2"], "'loss' must be one of"),
        ("a red chair", ["stage2.lrr=1"], "unknown config key 'stage2.lrr'"),
        ("a red chair", ["--device", "tpu"], "--device must be cpu, cuda or auto"),
    ],
)
def test_bad_arguments(stage1, tmp_path, capsys, prompt, extra, message):
    overrides = [e for e in extra if "=" in e]
    options = [e for e in extra if "=" not in e]
    argv = ["generate", prompt, *overrides, "--stage1", str(stage1), "--out", str(tmp_path / "out")]
    assert main([*argv, "--no-progress", *options]) == 2
    assert message in error_line(capsys)
    assert leftovers(tmp_path) == []


def test_bad_output_folders(stage1, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert run(stage1, tmp_path / "a_file" / "out") == 2
    assert "output folder does not exist" in error_line(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert run(stage1, tmp_path / "full") == 2
    assert "already exists and is not an empty folder" in error_line(capsys)
    assert leftovers(tmp_path / "full") == ["keep.txt"]
    assert leftovers(tmp_path) == ["a_file", "full"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(stage1, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run(stage1, locked / "out") == 2
        assert "not writable" in error_line(capsys)
        assert leftovers(locked) == []
    finally:
        locked.chmod(0o700)


def test_missing_models(stage1, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(session, "DEFAULT_STAGE1", tmp_path / "pretrained" / "stage1.ckpt")
    argv = ["generate", "a red chair", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "no stage-1 model" in line and "--stage1" in line and "iss3d fit stage1" in line
    assert run(tmp_path / "nope.ckpt", tmp_path / "out") == 2
    assert "nope.ckpt" in error_line(capsys)
    assert leftovers(tmp_path) == []
    # the default output folder generated/<prompt>-seed<S>: not left behind on errors
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path / "nope.ckpt", None) == 2
    assert "nope.ckpt" in error_line(capsys)
    assert leftovers(tmp_path) == []


def test_clip_of_another_size_is_an_error_same_size_a_warning(stage1, tmp_path, capsys):
    cfg = clip_config("tiny-64")
    small = {**cfg, "embed_dim": 64}
    other = export_checkpoint(tmp_path / "clip64.pt", build_open_clip(small), small)
    out = tmp_path / "out"
    assert run(stage1, out, "--clip", str(other)) == 2
    line = error_line(capsys)
    assert "64-d features" in line and "128-d" in line and CLIP in line
    assert not out.exists()
    same = export_checkpoint(tmp_path / "clip128.pt", build_open_clip(cfg), cfg)
    assert run(stage1, out, "--clip", str(same)) == 0
    err = capsys.readouterr().err
    assert "iss3d: warning: CLIP" in err and "not the one" in err


def test_long_and_non_latin_prompts_warn_and_run(stage1, tmp_path, capsys):
    long_prompt = ("a red chair with four legs " * 400)[:10_000]
    assert run(stage1, tmp_path / "long", prompt=long_prompt) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("iss3d: warning:")]
    assert len(warnings) == 1 and "only its first 30 tokens are used" in warnings[0]
    report = strict_json((tmp_path / "long" / "report.json").read_text())
    assert report["prompt"] == long_prompt and len(report["warnings"]) == 1

    assert run(stage1, tmp_path / "chinese", prompt="一把红色的椅子") == 0
    err = capsys.readouterr().err
    assert "iss3d: warning: the prompt '一把红色的椅子' is mostly non-Latin text" in err
    assert (tmp_path / "chinese" / "mesh.glb").is_file()


def test_non_finite_stage2_steps_are_reported(stage1, tmp_path, capsys, monkeypatch):
    poison_renders(monkeypatch)  # every stage-2 render is NaN; the exports are not touched
    out = tmp_path / "nan"
    assert run(stage1, out) == 0
    expected = [
        "stage 2: 2 of 2 steps had a non-finite loss and were skipped",
        "stage 2 left the shape unchanged",
    ]
    (summary,) = capsys.readouterr().out.splitlines()
    assert summary.endswith("".join(f"; warning: {w}" for w in expected)), summary
    report = strict_json((out / "report.json").read_text())
    assert report["warnings"] == expected
    (result,) = report["results"]
    assert result["warnings"] == expected
    assert [h["skipped"] for h in result["history"]] == ["non-finite loss"] * 2
    assert result["clip_score_per_step"] == [None, None]  # null, not NaN
    assert result["history"][0]["loss"] is None
    assert result["clip_score_after"] == result["clip_score_before"]


def test_non_finite_steps_of_one_sample_are_reported_with_its_number(
    stage1, tmp_path, capsys, monkeypatch
):
    poison_renders(monkeypatch, {0, 1})  # sample 0's two steps; sample 1 runs normally
    out = tmp_path / "two"
    assert run(stage1, out, "stage2.keep=last", "--samples", "2") == 0
    expected = [
        "stage 2: 2 of 2 steps had a non-finite loss and were skipped",
        "stage 2 left the shape unchanged",
    ]
    report = strict_json((out / "report.json").read_text())
    assert report["warnings"] == [f"sample 0: {w}" for w in expected]
    assert [r["warnings"] for r in report["results"]] == [expected, []]
    sample = strict_json((out / "sample_0" / "report.json").read_text())
    assert sample["warnings"] == expected and sample["clip_score_per_step"] == [None, None]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out / 'sample_0'} ") and "; warning: stage 2" in lines[0]
    assert lines[1].startswith(f"wrote {out / 'sample_1'} ") and "warning" not in lines[1]


# -- interrupts ---------------------------------------------------------------------------------


def test_ctrl_c_during_stage2_leaves_nothing(stage1, tmp_path, capsys, monkeypatch):
    import iss3d.infer.stage2

    real = iss3d.infer.stage2.render_views
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(iss3d.infer.stage2, "render_views", interrupted)
    assert run(stage1, tmp_path / "out") == 130
    assert "interrupted" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_ctrl_c_while_writing_leaves_nothing(stage1, tmp_path, capsys, monkeypatch):
    import iss3d.infer.shape_files

    def interrupted(frames, folder, name="turntable"):
        (Path(folder) / f"{name}.gif").write_bytes(b"GIF89a half")  # a half-written file
        raise KeyboardInterrupt

    monkeypatch.setattr(iss3d.infer.shape_files, "save_turntable", interrupted)
    assert run(stage1, tmp_path / "out", "--samples", "2") == 130
    assert leftovers(tmp_path) == []


def test_guidance_knobs_through_the_command(stage1, tmp_path):
    knobs = [
        "stage2.guidance.view_prompts=true",
        "stage2.guidance.loss=inner",
        "stage2.guidance.aggregation=mean_embedding",
        "stage2.guidance.augment.background=random",
        "stage2.guidance.augment.crop=true",
        "stage2.guidance.augment.perspective=0.2",
        f"stage2.guidance.ensemble=[{{spec: {CLIP}, weight: 0.5}}]",
        "stage2.guidance.prompts=[{text: 'a photo of {prompt}', weight: 0.5}]",
    ]
    out = tmp_path / "knobs"
    assert run(stage1, out, *knobs) == 0
    report = strict_json((out / "report.json").read_text())
    assert report["ensemble"] == [CLIP]
    assert "back view of a red chair" in report["prompts"]
    assert "a photo of a red chair" in report["prompts"]
    assert report["config"]["stage2"]["guidance"]["loss"] == "inner"
    assert len(report["results"][0]["clip_score_per_step"]) == 2


def test_presets():
    paper = load_generate_config("paper")
    s2 = paper.stage2
    assert (s2.steps, s2.views, s2.resolution, s2.lr) == (20, 10, 90, 1e-4)
    assert (s2.march.n_steps, s2.march.n_secant) == (128, 8)
    assert s2.cameras.distance == (2.7, 2.7)  # 1.5 x the synthetic world's 1.8
    g = s2.guidance
    assert (g.loss, g.aggregation, g.lambda_clip, g.lambda_bg) == ("cosine", "sum", 4.0, 3.0)
    assert not g.augment.active and not g.ensemble and not g.view_prompts
    assert paper.export.mesh_resolution0 * 2**paper.export.mesh_upsampling_steps == 256
    tiny = load_generate_config("tiny")
    assert tiny.stage2.steps * tiny.stage2.views * tiny.stage2.resolution**2 <= 100_000
    assert load_generate_config("tiny", ["stage2.steps=3"]).stage2.steps == 3
