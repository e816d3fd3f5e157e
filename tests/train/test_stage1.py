"""ISS stage 1: `iss3d fit stage1` (smoke run, resume, bad inputs), the losses' gradient routing,
the background loss, and loading a stage-1 checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from iss3d.core.config import load_config
from iss3d.data.reader import MultiViewFile
from iss3d.data.synth.build import SynthConfig, synthesize
from iss3d.infer.cli import main
from iss3d.models.clip import load_clip
from iss3d.models.decoder import Decoder
from iss3d.models.loaders import ArchitectureCard, load_stage1, load_svr
from iss3d.models.losses import background_ray_loss
from iss3d.models.march import MarchConfig
from iss3d.models.renderer import Renderer, trace_surface
from iss3d.train.datamodule import MultiViewDataModule
from iss3d.train.stage1 import Stage1Config, Stage1System
from iss3d.train.svr import ray_batch
from tests.fixtures.cli import error_line, metrics_rows
from tests.fixtures.nonfinite import strict_json

CLIP = "clip/tiny-64"  # random weights, 128-d features: enough to wire everything up

# A tiny SVR model: 2 training steps through `iss3d fit svr` (c_dim 16).
SVR_TINY = [
    "data.batch_size=4",
    "data.pixels=16",
    "encoder.c_dim=16",
    "encoder.width=8",
    "decoder.c_dim=16",
    "decoder.hidden=32",
    "decoder.n_blocks=1",
    "march.n_steps=[[0, 8]]",
    "march.n_secant=2",
    "trainer.max_steps=2",
    "trainer.val_check_interval=0",
]

# Stage 1 at CPU-test size on the 32 px tiny world.
TINY = [
    "data.batch_size=4",
    "data.pixels=32",
    "mapper.out_dim=16",
    "mapper.hidden=32",
    "march.n_steps=[[0, 8]]",
    "march.n_secant=2",
    "val.n_steps=8",
    "val.render_objects=2",
    "val.image_objects=2",
    "trainer.log_every=1",
]


@pytest.fixture(scope="module")
def svr_ckpt(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("svr") / "run"
    argv = ["fit", "svr", "--config", "svr/tiny", "--data", str(tiny_world), "--out", str(out)]
    assert main([*argv, "--no-progress", *SVR_TINY]) == 0
    return out / "checkpoints" / "last.ckpt"


def fit(tiny_world, svr, out, *extra, clip=CLIP) -> int:
    argv = ["fit", "stage1", "--config", "stage1/tiny", "--data", str(tiny_world)]
    argv += ["--svr", str(svr), "--clip", clip, "--out", str(out), "--no-progress"]
    return main([*argv, *TINY, *extra])


# -- smoke run, resume, checkpoint ---------------------------------------------------------------


def test_fit_stage1_smoke_resume_and_load(tiny_world, svr_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    noisy_l1 = ["loss.noise_alpha=0.25", "loss.mapper_loss=l1", "loss.lambda_mapper=2000"]
    steps = ["trainer.max_steps=3", "trainer.val_check_interval=2"]
    prefit = ["prefit.epochs=2", "prefit.batch_size=8"]
    assert fit(tiny_world, svr_ckpt, out, *steps, *noisy_l1, *prefit) == 0
    assert "mapper pre-fit: 2 epochs on " in capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["svr"] == str(svr_ckpt) and saved["clip"] == CLIP
    assert Stage1Config.from_dict(saved).to_dict() == saved
    command = (out / "command.txt").read_text()
    assert command.startswith("iss3d fit stage1 --config stage1/tiny --svr ")
    rows = metrics_rows(out)
    train = [r for r in rows if r.get("train/loss")]
    assert len(train) == 3
    (pre,) = [r for r in rows if r.get("prefit/cos")]
    assert np.isfinite(float(pre["prefit/loss"])) and -1 <= float(pre["prefit/cos"]) <= 1
    for name in ("loss_mapper", "loss_bg", "loss_freespace", "loss_occupancy", "cos"):
        assert all(np.isfinite(float(r[f"train/{name}"])) for r in train), name
    val = [r for r in rows if r.get("val/iou_mapper")]
    assert len(val) == 1
    for name in ("iou_svr", "iou_mapper", "iou_text", "bg_whiteness", "cos"):
        assert 0 <= float(val[0][f"val/{name}"]) <= 1 or name == "cos", name
    assert "val/iou_ratio" in val[0] and "val/iou_text_ratio" in val[0]
    grid = np.asarray(Image.open(out / "val" / "step_2.png"))
    assert grid.shape == (2 * 32, 4 * 32, 3)  # 2 objects x (GT | E_S | M(f_I) | M(f_T))

    ckpt = out / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert raw["global_step"] == 3
    keys = raw["state_dict"].keys()
    assert any(k.startswith("mapper.linear_12.") for k in keys)
    assert not any(k.startswith(("clip", "_clip")) for k in keys)  # CLIP is not saved

    # Resume: continues from step 3 in the same folder.
    steps = ["trainer.max_steps=4", "trainer.val_check_interval=2"]
    assert fit(tiny_world, svr_ckpt, out, *steps, *noisy_l1, *prefit, "--resume") == 0
    assert "mapper pre-fit" not in capsys.readouterr().out  # only before the first joint step
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    resumed = [int(r["step"]) for r in metrics_rows(out, version=1) if r.get("train/loss")]
    assert resumed == [3]

    # `iss3d eval stage1`: the validation figures over a whole split, as JSON.
    report = tmp_path / "eval.json"
    argv = ["eval", "stage1", str(ckpt), "--data", str(tiny_world), "--split", "val"]
    assert main([*argv, "--render-objects", "1", "--n-steps", "8", "--out", str(report)]) == 0
    result = strict_json(report.read_text())
    means = result["means"]
    assert result["split"] == "val" and result["objects"] > 0 and result["clip"] == CLIP
    for name in ("iou_svr", "iou_mapper", "iou_text", "bg_whiteness"):
        assert 0 <= means[name] <= 1, name
    assert -1 <= means["cos"] <= 1
    if means["iou_svr"] > 0:  # a 3-step model may decode nothing: no ratio (JSON null) then
        assert means["iou_ratio"] == pytest.approx(means["iou_mapper"] / means["iou_svr"], 1e-5)
    else:
        assert means["iou_ratio"] is None
    assert result["ground_truth"] == "exact"
    assert 0 <= means["mask_iou_mapper"] <= 1 and 0 <= means["mask_iou_svr"] <= 1

    # A file without 3D ground truth: held-out views only (renders of the tests' own).
    from tests.fixtures.primitives import Primitive, write_file

    prims = [Primitive("box", "red", (0.3, 0.2, 0.25)), Primitive("cone", "blue", (0.3,) * 3)]
    views_only = write_file(tmp_path / "boxes.h5", prims, views=4, res=32, split="val")
    argv = ["eval", "stage1", str(ckpt), "--data", str(views_only), "--split", "val"]
    assert main([*argv, "--render-objects", "2", "--n-steps", "8", "--out", str(report)]) == 0
    result = strict_json(report.read_text())
    assert result["ground_truth"] == "views" and "iou_svr" not in result["means"]
    assert 0 <= result["means"]["mask_iou_mapper"] <= 1

    # The stage-1 checkpoint alone (+ CLIP) gives the mapper and the fine-tuned decoder.
    svr = load_svr(svr_ckpt)
    moved = tmp_path / "elsewhere.ckpt"
    shutil.copy(ckpt, moved)
    model = load_stage1(moved)
    card = ArchitectureCard.from_dict(torch.load(moved, weights_only=True)["architecture"])
    assert card.kind == "stage1" and card.encoder == svr.card.encoder
    assert model.clip_spec == CLIP and model.clip_embed_dim == 128
    assert model.image_size == (32, 32)
    assert model.mapper_config.out_dim == 16 and model.decoder_config == svr.card.decoder
    f = load_clip(CLIP).encode_image(torch.rand(2, 3, 32, 32))
    assert model.latent(f).shape == (2, 16)
    tuned, original = model.decoder.state_dict(), svr.decoder.state_dict()
    assert tuned.keys() == original.keys()
    assert any(not torch.equal(tuned[k], original[k]) for k in tuned)  # D was fine-tuned


def test_prefit_reads_the_training_views_of_the_extra_data(tiny_world, svr_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    prefit = ["prefit.epochs=1", f"data.extra_data=[{tiny_world}, {tiny_world}]"]
    assert (
        fit(
            tiny_world,
            svr_ckpt,
            out,
            "trainer.max_steps=1",
            "trainer.val_check_interval=0",
            *prefit,
        )
        == 0
    )
    file = MultiViewFile(tiny_world)
    expected = 3 * len(file.views_in("train"))  # never the extra files' val or test views
    assert expected < len(file.views_in("train")) + 2 * len(file.views_in(None))
    (pre,) = [r for r in metrics_rows(out) if r.get("prefit/views")]
    assert int(float(pre["prefit/views"])) == expected
    assert f"mapper pre-fit: 1 epochs on {expected} views" in capsys.readouterr().out


def test_extra_data_of_another_image_size_is_refused(tiny_world, svr_ckpt, tmp_path, capsys):
    other = synthesize(
        tmp_path / "other.h5",
        SynthConfig(objects=2, views=2, res=16, occ_uniform=64, occ_near=64, surface_points=2048),
        workers=1,
        progress=False,
    )
    prefit = ["prefit.epochs=1", f"data.extra_data=[{other}]"]
    steps = ["trainer.max_steps=1", "trainer.val_check_interval=0"]
    assert fit(tiny_world, svr_ckpt, tmp_path / "run", *steps, *prefit) == 2
    line = error_line(capsys)
    assert "other.h5" in line and "16x16" in line and "32x32" in line
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


# -- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors_and_no_folder(tiny_world, svr_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        ({"clip": "clip/no-such-model"}, ["no-such-model"]),
        ({"extra": ["mapper.in_dim=64"]}, ["128", "mapper.in_dim", "64"]),
        ({"extra": ["mapper.out_dim=32"]}, ["c_dim 16", "mapper.out_dim", "32"]),
        ({"svr": tmp_path / "missing.ckpt"}, ["missing.ckpt", "no such file"]),
        ({"extra": ["loss.mapper_loss=l3"]}, ["mapper_loss", "l3"]),
        ({"extra": ["loss.noise_alpha=2"]}, ["noise_alpha"]),
        ({"extra": [f"data.extra_data=[{tmp_path / 'none.h5'}]"]}, ["extra_data", "none.h5"]),
    ]
    not_svr = tmp_path / "not_svr.ckpt"
    torch.save({"model": {"generator.linear_1.weight": torch.zeros(2, 2)}}, not_svr)
    cases.append(({"svr": not_svr}, ["not_svr.ckpt", "not an iss3d SVR checkpoint"]))
    for case, words in cases:
        svr = case.get("svr", svr_ckpt)
        assert fit(tiny_world, svr, out, *case.get("extra", []), clip=case.get("clip", CLIP)) == 2
        line = error_line(capsys)
        assert all(w in line for w in words), (case, line)
        assert not out.exists()
    argv = ["fit", "stage1", "--config", "stage1/tiny", "--data", str(tiny_world), "--out"]
    assert main([*argv, str(out), "--clip", CLIP, *TINY]) == 2
    assert "--svr" in error_line(capsys)
    assert not out.exists()


def test_eval_stage1_bad_inputs(tiny_world, svr_ckpt, tmp_path, capsys):
    argv = ["eval", "stage1", str(tmp_path / "missing.ckpt"), "--data", str(tiny_world)]
    assert main(argv) != 0
    assert error_line(capsys).endswith("missing.ckpt: no such file")
    argv = ["eval", "stage1", str(svr_ckpt), "--data", str(tiny_world)]
    assert main(argv) != 0
    assert "not an iss3d stage-1 checkpoint" in error_line(capsys)


def test_dataset_without_captions_skips_text_iou(tiny_world, svr_ckpt, tmp_path, capsys):
    world = tmp_path / "no_captions.h5"
    shutil.copy(tiny_world, world)
    with h5py.File(world, "r+") as f:
        f["objects/caption_count"][...] = 0
    out = tmp_path / "run"
    steps = ["trainer.max_steps=1", "trainer.val_check_interval=1"]
    assert fit(world, svr_ckpt, out, *steps, "loss.lambda_bg=0") == 0  # also: L_bg off
    assert "skips the text IoU" in capsys.readouterr().err
    rows = metrics_rows(out)
    val = [r for r in rows if r.get("val/iou_mapper")]
    assert len(val) == 1 and not val[0].get("val/iou_text")
    assert "train/loss_bg" not in rows[0] and "train/loss_mapper" in rows[0]
    assert np.asarray(Image.open(out / "val" / "step_1.png")).shape == (64, 128, 3)


# -- the losses ---------------------------------------------------------------------------------


def _system_and_batch(tiny_world, svr_ckpt):
    overrides = [("data.path", str(tiny_world)), ("svr", str(svr_ckpt)), ("clip", CLIP), *TINY]
    cfg = load_config(Stage1Config, "stage1/tiny", overrides)
    dm = MultiViewDataModule(cfg.data)
    dm.setup("fit")
    return Stage1System(cfg), next(iter(dm.train_dataloader())), cfg


def test_decoder_and_background_losses_never_reach_the_mapper(tiny_world, svr_ckpt):
    torch.manual_seed(0)
    system, batch, cfg = _system_and_batch(tiny_world, svr_ckpt)
    system.train()
    assert not system.encoder.training and system.decoder.training
    losses, _ = system.stage1_losses(batch, cfg.march.march_config(0))
    assert {"loss_mapper", "loss_bg", "loss_freespace"} <= set(losses)
    assert losses["loss_bg"].item() > 0
    decoder_side = sum(v for k, v in losses.items() if k != "loss_mapper")
    decoder_side.backward(retain_graph=True)
    assert all(p.grad is None for p in system.mapper.parameters())
    assert all(p.grad is None for p in system.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in system.decoder.parameters())
    system.zero_grad(set_to_none=True)
    losses["loss_mapper"].backward()
    assert all(p.grad is None for p in system.decoder.parameters())
    assert all(p.grad is not None for p in system.mapper.parameters())
    # one optimizer, two groups: the mapper and the decoder, never the encoder or CLIP
    opt = system.configure_optimizers()
    groups = [{id(p) for p in g["params"]} for g in opt.param_groups]
    mapper_ids = {id(p) for p in system.mapper.parameters()}
    decoder_ids = {id(p) for p in system.decoder.parameters()}
    assert groups == [mapper_ids, decoder_ids]
    assert [g["lr"] for g in opt.param_groups] == [cfg.optim.lr, cfg.optim.decoder_lr]


def _background_whiteness(decoder, c, batch) -> float:
    out = Renderer(MarchConfig(n_steps=16)).render_images(
        decoder,
        c,
        batch["world_mat"][:, 1],
        batch["camera_mat"][:, 1],
        batch["scale_mat"][:, 1],
        32,
        32,
        background="field",
    )
    background = (out["mask"] < 0.5).expand_as(out["rgb"])
    return out["rgb"][background].mean().item()


def test_background_loss_turns_the_background_white(tiny_world):
    torch.manual_seed(0)
    cfg = Stage1Config.from_dict(
        {"data": {"path": str(tiny_world), "mode": "object", "views_per_object": 2, "pixels": 64}}
    )
    dm = MultiViewDataModule(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    decoder = Decoder(c_dim=8, hidden=32, n_blocks=1)
    c = torch.randn(batch["image"].shape[0], 8)
    r = ray_batch(batch)
    before = _background_whiteness(decoder, c, batch)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(10):
        hits = trace_surface(decoder, c, r["origins"], r["dirs"], MarchConfig(16))
        loss, share = background_ray_loss(decoder, c, hits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert share > 0
    after = _background_whiteness(decoder, c, batch)
    assert before < 0.7 and after > before + 0.2, (before, after)
