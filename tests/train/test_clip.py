"""CLIP training: `iss3d fit clip` smoke run with resume and export, data checks, zero-shot
metrics, `iss3d eval clip`."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from iss3d.core.config import load_config
from iss3d.data.reader import MultiViewFile
from iss3d.data.writer import MultiViewWriter
from iss3d.infer.cli import main
from iss3d.models.clip import load_clip
from iss3d.train.clip import ClipConfig, ClipOptimConfig, zero_shot_classes, zero_shot_metrics
from tests.fixtures.cli import error_line, metrics_rows

TINY = [
    "model=tiny-64",
    "data.batch_size=8",
    "val.batch_size=64",
    "optim.warmup_steps=2",
    "trainer.log_every=1",
    "export_half=false",
]


def fit(data: Path, out: Path, *extra: str) -> int:
    argv = ["fit", "clip", "--config", "clip/tiny", "--data", str(data), "--out", str(out)]
    return main([*argv, "--no-progress", *TINY, *extra])


def test_shipped_config_parses():
    cfg = load_config(ClipConfig, "clip/tiny", [("data.path", "world.h5")])
    assert cfg.data.mode == "view" and cfg.trainer.max_steps > 0
    assert ClipConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    load_clip(f"clip/{cfg.model}")  # the model config it names exists and builds


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    o = ClipOptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    factors = [o.lr_factor(s, 110) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[110] == pytest.approx(0.1)


def test_fit_clip_smoke_resume_export_and_eval(tiny_world, tmp_path, capsys):
    mv = MultiViewFile(tiny_world)
    assert all(mv.captions[o] for o in range(mv.num_objects))  # the fixture has captions
    out = tmp_path / "run"
    assert fit(tiny_world, out, "trainer.max_steps=3", "trainer.val_check_interval=2") == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["path"] == str(tiny_world) and saved["model"] == "tiny-64"
    assert ClipConfig.from_dict(saved).to_dict() == saved
    command = (out / "command.txt").read_text().splitlines()
    assert len(command) == 1 and command[0].startswith("iss3d fit clip --config clip/tiny")
    ckpt = out / "checkpoints" / "last.ckpt"
    first = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert first["global_step"] == 3
    assert "model.logit_scale" in first["state_dict"]
    assert first["hyper_parameters"]["model_config"]["embed_dim"] == 128
    rows = metrics_rows(out)
    losses = [float(r["train/loss_clip"]) for r in rows if r.get("train/loss_clip")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    val = [r for r in rows if r.get("val/top1")]
    assert len(val) == 1 and 0 <= float(val[0]["val/top1"]) <= 1
    assert 0 <= float(val[0]["val/text_to_image_r1"]) <= 1
    assert (out / "clip.pt").is_file()

    # resume: only max_steps changes; continues from step 3
    assert (
        fit(tiny_world, out, "trainer.max_steps=4", "trainer.val_check_interval=2", "--resume") == 0
    )
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4
    resumed = [int(r["step"]) for r in metrics_rows(out, 1) if r.get("train/loss")]
    assert resumed == [3]
    assert len((out / "command.txt").read_text().splitlines()) == 2

    # the export and the Lightning checkpoint load to the same model (fp32 export)
    exported, lightning = load_clip(str(out / "clip.pt")), load_clip(str(ckpt))
    assert exported.info["step"] == 4 and exported.info["trained_on"] == str(tiny_world)
    images, prompts = torch.rand(2, 3, 32, 32), ["a red chair", "a blue torus"]
    assert torch.equal(exported.encode_image(images), lightning.encode_image(images))
    assert torch.equal(exported.encode_text(prompts), lightning.encode_text(prompts))

    capsys.readouterr()
    report = tmp_path / "eval.json"
    argv = ["eval", "clip", str(out / "clip.pt"), "--data", str(tiny_world), "--split", "train"]
    assert main([*argv, "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "top1" in printed and "text_to_image_r1" in printed
    result = json.loads(report.read_text())
    assert result["kind"] == "world" and result["classes"] == 121
    assert result["n"] == int((mv.splits[mv.view_object] == "train").sum())
    assert 0 <= result["top1"] <= 1 and 0 <= result["text_to_image_r1"] <= 1


def test_zero_shot_classes_of_the_world_match_first_captions(tiny_world):
    mv = MultiViewFile(tiny_world)
    classes = zero_shot_classes(mv)
    assert classes.kind == "world" and len(classes.prompts) == 121
    for obj in range(mv.num_objects):
        assert classes.prompts[classes.labels[obj]] == mv.captions[obj][0]
        assert classes.categories[classes.labels[obj]] == mv.categories[obj]


def test_zero_shot_metrics_by_hand():
    text = torch.eye(4)
    labels = torch.tensor([0, 0, 1, 2])
    perfect = zero_shot_metrics(text[labels], labels, text)
    assert perfect["top1"] == 1.0 and perfect["text_to_image_r1"] == 1.0
    assert perfect["n"] == 4 and perfect["n_classes"] == 3
    images = text[torch.tensor([1, 0, 1, 3])]  # view 0 says class 1, view 3 says class 3
    m = zero_shot_metrics(images, labels, text)
    assert m["top1"] == 0.5
    # class 0 -> view 1 (right), class 1 -> view 0 (first of the two best: wrong), class 2 -> no
    # view matches it better than the others: argmax is view 0 (wrong)
    assert m["text_to_image_r1"] == pytest.approx(1 / 3)


def _copy_without_captions(src: Path, dst: Path) -> Path:
    mv = MultiViewFile(src)
    with MultiViewWriter(dst, mv.height, mv.width, mv.pixel_convention, mv.has_depth) as w:
        for obj in range(mv.num_objects):
            rec = mv.read_object(obj)
            rec.captions = []
            w.add(rec)
    assert not any(MultiViewFile(dst).captions)
    return dst


def test_dataset_without_captions_is_refused_before_any_folder(tiny_world, tmp_path, capsys):
    bare = _copy_without_captions(tiny_world, tmp_path / "bare.h5")
    out = tmp_path / "run"
    assert fit(bare, out, "trainer.max_steps=1") == 2
    line = error_line(capsys)
    assert "no captions" in line and "bare.h5" in line
    assert not out.exists()
    # and a config mistake
    assert fit(tiny_world, out, "data.mode=object") == 2
    assert "data.mode must be 'view'" in error_line(capsys)
    assert not out.exists()
    assert np.all(MultiViewFile(tiny_world).splits != "")  # the fixture is untouched
