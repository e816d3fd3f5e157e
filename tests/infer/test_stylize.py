"""``iss3d stylize``: texture mode leaves the shape exactly as it was and changes colours
towards the style; shape+texture keeps the shape with the 3D prior and loses it without;
non-finite steps are skipped and reported; outputs and report (strict JSON); bad inputs (one
line, exit 2, nothing written); Ctrl-C leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import trimesh
from PIL import Image

from iss3d.core.errors import UserError
from iss3d.infer.cli import main
from iss3d.infer.guidance import Guide, PromptSchedule
from iss3d.infer.shape_files import decoder_fingerprint, load_latent
from iss3d.infer.stylize import (
    StylizeConfig,
    load_stylize_config,
    occupancy_lattice,
    run_stylize,
    shape_iou,
)
from iss3d.models.clip import load_clip
from iss3d.models.decoder import BranchedDecoder, split_branches
from iss3d.models.loaders import load_stage1
from iss3d.models.losses import prior_loss
from iss3d.models.mesh import MeshConfig, extract_mesh
from tests.fixtures.cli import error_line
from tests.fixtures.nonfinite import counted_optimizer_steps, poison_renders, strict_json
from tests.fixtures.stage1_ckpt import build_stage1_checkpoint

CLIP = "clip/tiny-64"

GENERATE_FAST = [
    "stage2.steps=2",
    "stage2.keep=last",  # the tuned latent, which the tests tell from the stage-1 one
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

# CPU-test size of the stylization loop (a few milliseconds per step with the fixture models).
LOOP = {
    "stylize.views": 2,
    "stylize.resolution": 24,
    "stylize.march.n_steps": 16,
    "stylize.march.n_secant": 2,
    "stylize.prior.points": 1024,
    "stylize.iou_grid": 32,
}
FAST = [f"{k}={v}" for k, v in LOOP.items()] + [
    "export.mesh_resolution0=8",
    "export.mesh_upsampling_steps=1",
    "export.march_steps=12",
    "export.turntable_views=4",
    "export.turntable_resolution=16",
    "export.eval_views=2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An ``iss3d generate`` folder (tiny fixture models, 2 stage-2 steps)."""
    root = tmp_path_factory.mktemp("generated")
    ckpt = build_stage1_checkpoint(root / "stage1.ckpt", CLIP)
    out = root / "chair"
    argv = ["generate", "a red chair", *GENERATE_FAST, "--stage1", str(ckpt), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def shape(run_dir):
    """(stage-1 model, latent c, CLIP) of the generated shape."""
    latent = load_latent(run_dir)
    torch.manual_seed(0)  # clip/<name> specs have random weights from the global RNG
    return load_stage1(latent["stage1"]), latent["latent"], load_clip(CLIP)


def loop_config(steps: int, lr: float, **extra):
    overrides = [*LOOP.items(), ("stylize.steps", steps), ("stylize.lr", lr)]
    return load_stylize_config("tiny", overrides + [(f"stylize.{k}", v) for k, v in extra.items()])


def stylize_cli(run_dir: Path, out: Path | None, *extra: str, style: str = "wooden") -> int:
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    options = [e for e in extra if e not in overrides]
    argv = ["stylize", str(run_dir), style, *FAST, *overrides, "--device", "cpu", "--no-progress"]
    if out is not None:
        argv += ["--out", str(out)]
    return main([*argv, *options])


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- the loop -----------------------------------------------------------------------------------


def test_generate_saves_the_latent(run_dir, shape):
    model, c, _ = shape
    latent = load_latent(run_dir)
    assert c.shape == (1, model.decoder.c_dim) and c.dtype == torch.float32
    assert Path(latent["stage1"]).is_absolute() and latent["clip"] == CLIP
    assert latent["prompt"] == "a red chair"
    assert latent["decoder_sha256"] == decoder_fingerprint(model.decoder)
    assert not torch.equal(latent["latent_before"], c)


def test_texture_mode_tunes_only_the_colour_branch(shape, monkeypatch):
    model, c, clip = shape
    cfg = loop_config(steps=6, lr=1e-2).stylize
    guide = Guide([clip], [1.0], PromptSchedule("wooden", cfg.guidance), cfg.guidance)
    seen = []
    real_loss = Guide.loss

    def loss(self, images, azimuth, elevation):
        seen.append(images.shape[0])
        return real_loss(self, images, azimuth, elevation)

    monkeypatch.setattr(Guide, "loss", loss)
    initial = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    result = run_stylize(model.decoder, c, guide, cfg, torch.Generator().manual_seed(0))
    assert seen == [cfg.views] * cfg.steps  # every view of every step is in the loss
    tuned = result.decoder
    assert isinstance(tuned, BranchedDecoder) and result.mode == "texture"
    split = split_branches(model.decoder)
    for (name, before), after in zip(
        split.occupancy_branch.state_dict().items(),
        tuned.occupancy_branch.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(before, after), name
    pairs = zip(split.color_branch.parameters(), tuned.color_branch.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    points = occupancy_lattice(24)
    with torch.no_grad():
        assert torch.equal(tuned.occupancy(points, c), model.decoder.occupancy(points, c))
        surface = torch.from_numpy(extract_mesh(model.decoder, c, MeshConfig(8, 1)).vertices)
        change = (tuned.rgb(surface[None], c) - model.decoder.rgb(surface[None], c)).abs()
        assert change.mean() > 0.1, change.mean()  # on the surface: 0.54 at this setting
    assert shape_iou(model.decoder, tuned, c, 32) == 1.0
    for k, v in model.decoder.state_dict().items():  # the stage-1 decoder is untouched
        assert torch.equal(v, initial[k]), k
    scores = [h["clip_score"] for h in result.history]
    assert scores[-1] > scores[0]
    assert all(h["loss_prior"] == 0.0 for h in result.history)


def test_shape_mode_prior_keeps_the_shape(shape):
    model, c, clip = shape

    def iou(lambda_prior: float) -> float:
        cfg = loop_config(steps=12, lr=3e-3, lambda_prior=lambda_prior).stylize
        guide = Guide([clip], [1.0], PromptSchedule("wooden", cfg.guidance), cfg.guidance)
        result = run_stylize(
            model.decoder, c, guide, cfg, torch.Generator().manual_seed(0), mode="shape+texture"
        )
        assert result.mode == "shape+texture"
        if lambda_prior > 0:
            assert result.history[-1]["loss_prior"] > 0
        return shape_iou(model.decoder, result.decoder, c, 32)

    held, free = iou(10.0), iou(0.0)
    assert held >= 0.9, held
    assert free < held - 0.2, (free, held)


@pytest.mark.parametrize("mode", ["texture", "shape+texture"])
def test_non_finite_steps_leave_the_decoder_alone(shape, monkeypatch, mode):
    model, c, clip = shape
    cfg = loop_config(steps=3, lr=1e-2, lambda_prior=10.0).stylize
    guide = Guide([clip], [1.0], PromptSchedule("wooden", cfg.guidance), cfg.guidance)
    poison_renders(monkeypatch)  # every step's renders are NaN
    with counted_optimizer_steps() as updates:
        result = run_stylize(
            model.decoder, c, guide, cfg, torch.Generator().manual_seed(0), mode=mode
        )
    assert updates == []
    assert [h["skipped"] for h in result.history] == ["non-finite loss"] * 3
    initial = split_branches(model.decoder) if mode == "texture" else model.decoder
    pairs = zip(initial.state_dict().values(), result.decoder.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert result.warnings == [
        "stylize: 3 of 3 steps had a non-finite loss and were skipped",
        "stylize left the shape and its colours unchanged",
    ]


def test_finite_stylize_steps_still_tune_between_non_finite_ones(shape, monkeypatch):
    model, c, clip = shape
    cfg = loop_config(steps=3, lr=1e-2).stylize
    guide = Guide([clip], [1.0], PromptSchedule("wooden", cfg.guidance), cfg.guidance)
    poison_renders(monkeypatch, {1})
    result = run_stylize(model.decoder, c, guide, cfg, torch.Generator().manual_seed(0))
    assert [h["skipped"] for h in result.history] == [None, "non-finite loss", None]
    split = split_branches(model.decoder)
    pairs = zip(split.color_parameters(), result.decoder.color_parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert all(torch.isfinite(p).all() for p in result.decoder.parameters())
    assert result.warnings == ["stylize: 1 of 3 steps had a non-finite loss and was skipped"]


def test_prior_loss_is_zero_for_the_same_decoder_and_positive_otherwise(shape):
    model, c, _ = shape
    points = occupancy_lattice(8)
    # Zero up to rounding: the reference is decoded without autograd (a path with its
    # additions in another order).
    assert prior_loss(model.decoder, model.decoder, c, points).item() < 1e-5
    other = split_branches(model.decoder)
    with torch.no_grad():
        other.occupancy_branch.fc_out.bias.add_(1.0)
    assert prior_loss(other, model.decoder, c, points).item() == pytest.approx(1.0, abs=1e-5)
    assert 0 < prior_loss(other, model.decoder, c, points, "probabilities").item() < 0.25


# -- the command --------------------------------------------------------------------------------


def test_stylize_writes_every_output(run_dir, tmp_path, capsys):
    before = listing(run_dir)
    assert stylize_cli(run_dir, None, "stylize.steps=6", "stylize.lr=1e-2") == 0
    out = run_dir / "style-wooden"
    assert "IoU to the initial shape 1.000" in capsys.readouterr().out
    names = {"mesh.glb", "mesh.ply", "turntable.gif", "turntable.png", "views.png"}
    names |= {"report.json", "config.yaml", "command.txt", "stylized.pt"}
    assert set(listing(out)) == names
    assert listing(run_dir) == sorted(before + [f"style-wooden/{n}" for n in names] + [out.name])

    report = strict_json((out / "report.json").read_text())
    assert report["style"] == "wooden" and report["mode"] == "texture"
    assert report["prompt"] == "a red chair" and report["run_dir"] == str(run_dir)
    assert report["iou_to_initial"] == 1.0 and report["iou_grid"] == 33
    assert report["color_change"] > 0.05
    assert report["clip_score_after"] > report["clip_score_before"]
    assert len(report["clip_score_per_step"]) == 6 and len(report["history"]) == 6
    assert report["timings"]["stylize_s"] >= 0 and report["timings"]["total_s"] > 0
    assert StylizeConfig.from_dict(report["config"]).stylize.steps == 6
    assert (out / "command.txt").read_text().startswith("iss3d stylize ")

    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert len(mesh.faces) == report["mesh"]["faces"] > 0
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert Image.open(out / "turntable.gif").n_frames == 4
    assert Image.open(out / "views.png").size == (2 * 16 + 4, 2 * 16)
    saved = torch.load(out / "stylized.pt", weights_only=True)
    assert saved["mode"] == "texture" and saved["kind"] == "branched"

    # shape+texture: its own default folder, the shape may move a little
    assert stylize_cli(run_dir, None, "--mode", "shape+texture", "stylize.steps=4") == 0
    report = strict_json((run_dir / "style-wooden-shape" / "report.json").read_text())
    assert report["mode"] == "shape+texture" and report["iou_to_initial"] >= 0.9
    assert report["history"][-1]["loss_prior"] > 0


def test_stylize_reports_non_finite_steps(run_dir, tmp_path, capsys, monkeypatch):
    poison_renders(monkeypatch)
    out = tmp_path / "nan"
    assert stylize_cli(run_dir, out, "stylize.steps=2") == 0
    expected = [
        "stylize: 2 of 2 steps had a non-finite loss and were skipped",
        "stylize left the shape and its colours unchanged",
    ]
    (summary,) = capsys.readouterr().out.splitlines()
    assert summary.endswith("".join(f"; warning: {w}" for w in expected)), summary
    assert "colour change 0.000" in summary
    report = strict_json((out / "report.json").read_text())
    assert report["warnings"] == expected
    assert report["clip_score_per_step"] == [None, None]  # null, not NaN
    assert [h["skipped"] for h in report["history"]] == ["non-finite loss"] * 2


NOT_WRITTEN = [
    ("", [], "empty style text"),
    ("   ", [], "empty style text"),
    ("wood\x07en", [], "control character U+0007"),
    ("wooden", ["--steps", "0"], "--steps must be positive"),
    ("wooden", ["--steps", "-2"], "--steps must be positive"),
    ("wooden", ["--views", "0"], "--views must be positive"),
    ("wooden", ["--res", "4"], "--res must be at least 8"),
    ("wooden", ["--mode", "shape"], "--mode must be texture or shape+texture"),
    ("wooden", ["stylize.steps=0"], "'steps' must be positive"),
    ("wooden", ["stylize.lambda_prior=-1"], "'lambda_prior' must be >= 0"),
    ("wooden", ["stylize.lrr=1"], "unknown config key 'stylize.lrr'"),
    ("wooden", ["--preset", "huge"], "no such file"),
]


@pytest.mark.parametrize(("style", "extra", "message"), NOT_WRITTEN)
def test_bad_arguments(run_dir, tmp_path, capsys, style, extra, message):
    before = listing(run_dir)
    assert stylize_cli(run_dir, None, *extra, style=style) == 2
    assert message in error_line(capsys)
    assert listing(run_dir) == before


def test_bad_run_folders(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (tmp_path / "nope", "no such folder"),
        (tmp_path / "a_file", "not a folder"),
        (tmp_path / "empty", "not an `iss3d generate` output folder"),
    ]
    samples = tmp_path / "two"
    (samples / "sample_0").mkdir(parents=True)
    (samples / "sample_0" / "latent.pt").write_bytes((run_dir / "latent.pt").read_bytes())
    cases.append((samples, "several samples (sample_0); stylize one of them"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "latent.pt").write_bytes(b"not a torch file")
    cases.append((broken, "cannot read as a PyTorch latent"))
    for folder, message in cases:
        before = listing(tmp_path)
        assert stylize_cli(folder, None) == 2
        assert message in error_line(capsys), folder
        assert listing(tmp_path) == before


def test_bad_output_folders(run_dir, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert stylize_cli(run_dir, tmp_path / "full") == 2
    assert "already exists and is not an empty folder" in error_line(capsys)
    assert listing(tmp_path / "full") == ["keep.txt"]
    assert stylize_cli(run_dir, tmp_path / "missing" / "out") == 2
    assert "output folder does not exist" in error_line(capsys)
    if os.name == "posix" and os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert stylize_cli(run_dir, locked / "out") == 2
            assert "not writable" in error_line(capsys)
        finally:
            locked.chmod(0o700)
    assert listing(tmp_path) == ["full", "full/keep.txt"] + (
        ["locked"] if (tmp_path / "locked").exists() else []
    )


def test_missing_or_other_stage1(run_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    latent = torch.load(run_dir / "latent.pt", weights_only=True)
    torch.save({**latent, "stage1": str(tmp_path / "gone.ckpt")}, moved / "latent.pt")
    assert stylize_cli(moved, None) == 2
    line = error_line(capsys)
    assert "gone.ckpt" in line and "--stage1" in line
    assert listing(moved) == ["latent.pt"]
    other = build_stage1_checkpoint(tmp_path / "other.ckpt", CLIP, seed=1)
    assert stylize_cli(moved, None, "stylize.steps=1", "--stage1", str(other)) == 0
    assert "is not the one" in capsys.readouterr().err


def test_config_is_strict_and_presets_parse():
    paper = load_stylize_config("paper").stylize
    assert (paper.views, paper.resolution, paper.lr) == (10, 90, 1e-4)
    assert paper.guidance.augment.background == "random" and paper.guidance.aggregation == "sum"
    tiny = load_stylize_config("tiny")
    assert tiny.stylize.mode == "texture" and tiny.stylize.guidance.augment.background == "random"
    with pytest.raises(UserError, match="unknown key 'colour'"):
        StylizeConfig.from_dict({"stylize": {"colour": 1}})
    with pytest.raises(UserError, match="'mode' must be one of"):
        StylizeConfig.from_dict({"stylize": {"mode": "shape"}})


# -- interrupts ---------------------------------------------------------------------------------


def test_ctrl_c_mid_run_leaves_nothing(run_dir, tmp_path, capsys, monkeypatch):
    import iss3d.infer.stage2

    real = iss3d.infer.stage2.render_views
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(iss3d.infer.stage2, "render_views", interrupted)
    before = listing(run_dir)
    assert stylize_cli(run_dir, None, "stylize.steps=4", style="marble") == 130
    assert "interrupted" in capsys.readouterr().err
    assert listing(run_dir) == before
    assert stylize_cli(run_dir, tmp_path / "out", "stylize.steps=4", style="marble") == 130
    assert listing(tmp_path) == []


def test_ctrl_c_while_writing_leaves_nothing(run_dir, capsys, monkeypatch):
    import iss3d.infer.shape_files

    def interrupted(frames, folder, name="turntable"):
        (Path(folder) / f"{name}.gif").write_bytes(b"GIF89a half")
        raise KeyboardInterrupt

    monkeypatch.setattr(iss3d.infer.shape_files, "save_turntable", interrupted)
    before = listing(run_dir)
    assert stylize_cli(run_dir, None, "stylize.steps=1", style="glass") == 130
    assert listing(run_dir) == before
