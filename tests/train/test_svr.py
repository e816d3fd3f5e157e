"""SVR training: configs and overrides, run folders, resume, the losses, one-line CLI errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from iss3d.core.config import CONFIG_DIR, load_config
from iss3d.core.errors import UserError
from iss3d.infer.cli import main
from iss3d.models.metrics import depth_l1, iou, mask_iou, occupancy_iou
from iss3d.train import runs
from iss3d.train.datamodule import MultiViewDataModule
from iss3d.train.svr import SVRConfig, SVRMarchConfig, SVRSystem, svr_losses, weighted_total
from tests.fixtures.cli import error_line, metrics_rows

# Small enough for a CPU step in well under a second on the 32 px tiny world.
TINY = [
    "data.batch_size=4",
    "data.views_per_object=2",
    "data.pixels=32",
    "data.occupancy_points=64",
    "encoder.c_dim=16",
    "encoder.width=8",
    "decoder.c_dim=16",
    "decoder.hidden=32",
    "decoder.n_blocks=1",
    "march.n_steps=[[0, 8], [2, 12]]",
    "march.n_secant=2",
    "val.n_steps=8",
    "val.render_objects=2",
    "val.image_objects=2",
    "trainer.log_every=1",
]


def fit(tiny_world: Path, out: Path, *extra: str, config: str = "svr/tiny") -> int:
    argv = ["fit", "svr", "--config", config, "--data", str(tiny_world), "--out", str(out)]
    return main([*argv, "--no-progress", *TINY, *extra])


# -- smoke train + resume --------------------------------------------------------------------


def test_fit_writes_run_folder_and_resumes(tiny_world, tmp_path):
    out = tmp_path / "run"
    assert fit(tiny_world, out, "trainer.max_steps=4", "trainer.val_check_interval=2") == 0
    assert (out / "config.yaml").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["path"] == str(tiny_world)
    assert saved["decoder"]["hidden"] == 32
    assert saved["trainer"]["max_steps"] == 4
    assert SVRConfig.from_dict(saved).to_dict() == saved  # the saved config parses back
    command = (out / "command.txt").read_text().splitlines()
    assert len(command) == 1 and command[0].startswith("iss3d fit svr --config svr/tiny")
    assert "trainer.max_steps=4" in command[0]
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    first = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert first["global_step"] == 4
    assert any(k.startswith("decoder.fc_p") for k in first["state_dict"])
    assert any(k.startswith("encoder.") for k in first["state_dict"])
    card = first["architecture"]  # the architecture, apart from the training recipe
    assert card["kind"] == "svr" and card["decoder"]["hidden"] == 32
    assert card["image_size"] == [32, 32]
    rows = metrics_rows(out)
    train_rows = [r for r in rows if r.get("train/loss")]
    assert train_rows and all(math.isfinite(float(r["train/loss"])) for r in train_rows)
    assert {"train/loss_rgb", "train/loss_freespace", "train/n_steps"} <= set(rows[0])
    val_rows = [r for r in rows if r.get("val/iou")]
    assert len(val_rows) == 2 and all(0 <= float(r["val/iou"]) <= 1 for r in val_rows)
    assert (out / "val" / "step_2.png").is_file() and (out / "val" / "step_4.png").is_file()
    # the march schedule switched from 8 to 12 steps at step 2
    steps = {int(r["step"]): float(r["train/n_steps"]) for r in train_rows}
    assert steps[0] == 8 and steps[3] == 12

    # Resume: only max_steps changes; training continues from step 4 in the same folder.
    assert (
        fit(tiny_world, out, "trainer.max_steps=6", "trainer.val_check_interval=2", "--resume") == 0
    )
    second = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert second["global_step"] == 6
    resumed = [int(r["step"]) for r in metrics_rows(out, version=1) if r.get("train/loss")]
    assert resumed and min(resumed) >= 4
    assert len((out / "command.txt").read_text().splitlines()) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["max_steps"] == 6

    # The checkpoint rebuilds the system from its stored config.
    system = SVRSystem.load_from_checkpoint(ckpt, map_location="cpu")
    assert system.cfg.decoder.hidden == 32


def test_weight_average_is_what_the_checkpoint_holds(tiny_world, tmp_path):
    out = tmp_path / "run"
    extra = [
        "trainer.val_check_interval=2",
        "trainer.checkpoint_every=2",
        "trainer.ema_decay=0.5",
        "optim.lr=0.01",
    ]
    assert fit(tiny_world, out, "trainer.max_steps=4", *extra) == 0
    ckpt = out / "checkpoints" / "last.ckpt"
    first = torch.load(ckpt, map_location="cpu", weights_only=True)
    averaged, raw = first["state_dict"], first["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    # what the loaders read is the average
    system = SVRSystem.load_from_checkpoint(ckpt, map_location="cpu")
    key = "decoder.fc_out.weight"
    assert torch.equal(system.state_dict()[key], averaged[key])
    # resuming goes on updating the average
    assert fit(tiny_world, out, "trainer.max_steps=6", *extra, "--resume") == 0
    second = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert second["global_step"] == 6
    assert not torch.equal(second["state_dict"][key], averaged[key])


def test_resume_with_other_config_is_refused(tiny_world, tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(tiny_world, out, "trainer.max_steps=1", "trainer.val_check_interval=0") == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.rglob("*"))
    assert fit(tiny_world, out, "trainer.max_steps=2", "optim.lr=0.5", "--resume") == 2
    line = error_line(capsys)
    assert "optim.lr" in line and "max_steps" in line
    assert sorted(p.name for p in out.rglob("*")) == before
    # and a non-empty folder without --resume
    assert fit(tiny_world, out, "trainer.max_steps=2") == 2
    assert "--resume" in error_line(capsys)


# -- learning ---------------------------------------------------------------------------------


def small_config(tiny_world: Path, *extra: str) -> SVRConfig:
    overrides = [("data.path", str(tiny_world)), *TINY, *extra]
    return load_config(SVRConfig, "svr/tiny", overrides)


def test_losses_finite_and_overfit_one_batch(tiny_world):
    """50 Adam steps on one batch with the tiny config's DVR loss weights (its 3D loss off, the
    encoder at a 30x lower rate than the decoder): every loss and gradient stays finite, the
    silhouette losses (freespace + occupancy, defined on every ray) fall below 60 %, the total
    below 80 % (rgb and depth grow from 0 as rays start to hit, so the total falls less), and
    the predicted silhouettes mostly match. (Seed 0: silhouette ratio 0.21, mask accuracy 0.92.)"""
    torch.manual_seed(0)
    cfg = small_config(
        tiny_world,
        "data.pixels=64",
        "decoder.hidden=64",
        "decoder.n_blocks=2",
        "march.n_steps=[[0, 16]]",
        "march.n_secant=4",
        "loss.lambda_occupancy3d=0",
        "data.occupancy_points=null",
        "optim.lr=3e-3",
        "optim.encoder_lr=1e-4",
        "optim.milestones=[]",
    )
    dm = MultiViewDataModule(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    system = SVRSystem(cfg)
    opt = system.configure_optimizers()
    march_cfg = cfg.march.march_config(0)
    totals, silhouette, names = [], [], set()
    for _ in range(50):
        c = system.encode(batch["image"][:, 0])
        losses, stats, _ = svr_losses(system.decoder, c, batch, cfg.loss, march_cfg)
        names |= set(losses)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        total = weighted_total(losses, cfg.loss)
        opt.zero_grad()
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in system.parameters() if p.grad is not None)
        opt.step()
        totals.append(total.item())
        silhouette.append((losses["loss_freespace"] + losses["loss_occupancy"]).item())
    assert names == {f"loss_{n}" for n in ("rgb", "depth", "freespace", "occupancy", "normal")}
    assert sum(silhouette[-3:]) < 0.6 * sum(silhouette[:3]), silhouette
    assert sum(totals[-3:]) < 0.8 * sum(totals[:3]), totals
    assert stats["mask_accuracy"] > 0.8, stats


def first_batch_losses(cfg: SVRConfig):
    """(losses, batch, system, c) of a fresh system on the first training batch."""
    dm = MultiViewDataModule(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    system = SVRSystem(cfg)
    c = system.encode(batch["image"][:, 0])
    losses, _, _ = svr_losses(system.decoder, c, batch, cfg.loss, cfg.march.march_config(0))
    return losses, batch, system, c


def test_zero_lambda_skips_the_loss(tiny_world):
    cfg = small_config(
        tiny_world, "loss.lambda_normal=0", "loss.lambda_rgb=0", "loss.lambda_occupancy3d=0"
    )
    losses, *_ = first_batch_losses(cfg)
    assert set(losses) == {"loss_depth", "loss_freespace", "loss_occupancy"}


def test_optional_3d_occupancy_loss(tiny_world):
    with pytest.raises(UserError, match=r"needs data\.occupancy_points"):
        small_config(tiny_world, "loss.lambda_occupancy3d=1", "data.occupancy_points=null")
    cfg = small_config(tiny_world, "loss.lambda_occupancy3d=1")
    losses, batch, system, c = first_batch_losses(cfg)
    value = losses["loss_occupancy3d"]
    # Summed over 64 samples per object and averaged over objects: 64 * BCE per sample.
    logits = system.decoder.occupancy(batch["occ_points"], c)
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["occ_inside"]) * 64
    )
    torch.testing.assert_close(value, expected)


# -- configs and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["optim.lrr=1"], ["optim.lrr"]),
        (["nosuch=1"], ["nosuch"]),
        (["optim.lr.x=1"], ["optim.lr.x"]),
        (["encoder.c_dim=32"], ["c_dim", "32", "16"]),
        (["optim.lr=fast"], ["lr", "fast"]),
        (["trainer.ema_decay=1.5"], ["ema_decay", "1.5"]),
        (["data.views_per_object=1"], ["views_per_object"]),
        (["data.views_per_object=7"], ["views_per_object", "6"]),
        (["march.n_steps=[[5, 16]]"], ["n_steps"]),
        (["bad override"], ["bad override"]),
    ],
)
def test_bad_config_is_one_line_error_and_no_folder(tiny_world, tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    assert fit(tiny_world, out, *extra) == 2
    line = error_line(capsys)
    assert all(w in line for w in words), line
    assert not out.exists()


def test_missing_data_and_config_files(tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "nope.h5"
    assert fit(missing, out) == 2
    assert "nope.h5" in error_line(capsys)
    assert not out.exists()
    assert fit(missing, out, config=str(tmp_path / "none.yaml")) == 2
    assert "none.yaml" in error_line(capsys)
    assert not out.exists()


def test_unknown_key_in_yaml_file(tiny_world, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    text = (CONFIG_DIR / "svr" / "tiny.yaml").read_text()
    bad.write_text(text.replace("optim:\n", "optim:\n  momentum: 0.9\n"))
    out = tmp_path / "run"
    assert fit(tiny_world, out, config=str(bad)) == 2
    assert "momentum" in error_line(capsys)
    assert not out.exists()


def test_config_differences_allow_only_the_resumable_changes():
    saved = {"trainer": {"max_steps": 1, "log_every": 5}, "optim": {"lr": 1e-4}}
    new = {"trainer": {"max_steps": 9, "log_every": 5}, "optim": {"lr": 1e-4}}
    assert runs.config_differences(saved, new) == []
    new["optim"]["lr"] = 2e-4
    assert runs.config_differences(saved, new) == ["optim.lr"]


def test_precision_auto_is_bf16_mixed_only_where_bf16_is_native(monkeypatch):
    assert runs.resolve_precision("16-mixed", "cpu") == "16-mixed"  # as given
    monkeypatch.setattr(
        "iss3d.models.precision.native_bfloat16", lambda device: device.type == "cpu"
    )
    assert runs.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr("iss3d.models.precision.native_bfloat16", lambda device: False)
    assert runs.resolve_precision("auto", "cpu") == "32-true"


def test_march_schedule():
    m = SVRMarchConfig(n_steps=[(0, 16), (50000, 32), (100000, 64), (250000, 128)])
    assert [m.n_steps_at(s) for s in (0, 49999, 50000, 100000, 249999, 10**6)] == [
        16,
        16,
        32,
        64,
        64,
        128,
    ]


def test_training_march_takes_dvrs_outside_cube_option():
    m = SVRMarchConfig(outside_cube="march", depth_range=(0.5, 3.0)).march_config(7)
    assert (m.outside_cube, m.depth_range) == ("march", (0.5, 3.0))
    assert SVRMarchConfig().march_config(0).outside_cube == "skip"
    with pytest.raises(UserError, match="outside_cube"):
        SVRMarchConfig(outside_cube="clip")


def test_paper_config_builds_and_steps(tiny_world, tmp_path, capsys):
    cfg = load_config(SVRConfig, "svr/paper", [("data.path", str(tiny_world))])
    assert cfg.decoder.hidden == 512 and cfg.decoder.n_blocks == 5
    assert cfg.encoder.kind == "resnet18" and cfg.encoder.c_dim == 256
    assert cfg.data.batch_size == 64 and cfg.data.pixels == 1024
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert [n for _, n in cfg.march.n_steps] == [16, 32, 64, 128]
    out = tmp_path / "paper"
    argv = ["fit", "svr", "--config", "svr/paper", "--data", str(tiny_world), "--out", str(out)]
    small = ["data.batch_size=2", "data.pixels=16", "data.views_per_object=2"]
    run_cfg = ["trainer.max_steps=1", "trainer.val_check_interval=0", "data.num_workers=0"]
    assert main([*argv, "--no-progress", *small, *run_cfg]) == 0
    note = capsys.readouterr().err  # DVR's march schedule is for 300k steps
    assert "march.n_steps changes at step 50000" in note and "16 samples per ray" in note
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1
    assert ckpt["state_dict"]["decoder.fc_p.weight"].shape == (512, 3)
    assert ckpt["state_dict"]["encoder.fc.weight"].shape == (256, 512)


# -- metrics ---------------------------------------------------------------------------------


class HalfSpace:
    """occupancy = x coordinate (inside where x > 0); no latent."""

    def occupancy(self, points, c):
        return points[..., 0]


def test_metrics():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    gt = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    assert iou(pred, gt).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert mask_iou(pred.float().view(3, 1, 2, 2), gt.float().view(3, 1, 2, 2)).tolist() == (
        pytest.approx([1 / 3, 1.0, 0.0])
    )
    points = torch.rand(2, 1000, 3) - 0.5
    inside = torch.stack([points[0, :, 0] > 0, points[1, :, 0] > 0.25])
    got = occupancy_iou(HalfSpace(), None, points, inside, chunk=64)
    expect = (points[1, :, 0] > 0.25).sum() / (points[1, :, 0] > 0).sum()
    assert got[0] == 1.0 and got[1] == pytest.approx(expect.item())
    inf = math.inf
    d = depth_l1(
        torch.tensor([[1.0, 2.0, inf], [inf, inf, 1.0]]),
        torch.tensor([[1.5, inf, 1.0], [1.0, inf, inf]]),
    )
    assert d[0] == pytest.approx(0.5) and math.isnan(d[1])
