"""The models shipped in models/pretrained/ (built by `make models`): they load, fit together,
stay within the size budget, and `iss3d generate` uses them when no checkpoint is given."""

from __future__ import annotations

import json

import torch

from iss3d.infer.cli import main
from iss3d.infer.session import DEFAULT_CLIP, DEFAULT_STAGE1, PRETRAINED_DIR
from iss3d.models.clip import load_clip
from iss3d.models.loaders import load_stage1, load_svr

JUDGE = PRETRAINED_DIR / "clip-judge.pt"
SVR = PRETRAINED_DIR / "svr.pt"


def test_shipped_models_fit_together_within_30_mb():
    files = [DEFAULT_STAGE1, DEFAULT_CLIP, JUDGE, SVR]
    assert sum(f.stat().st_size for f in files) <= 30e6
    stage1, clip, judge, svr = load_stage1(files[0]), load_clip(str(files[1])), None, None
    judge, svr = load_clip(str(files[2])), load_svr(files[3])
    assert clip.trained and judge.trained
    assert stage1.mapper_config.in_dim == clip.embed_dim == judge.embed_dim
    assert stage1.mapper_config.out_dim == svr.card.decoder.c_dim
    # The judge is another model, not a copy of the guiding CLIP.
    text = ["a red chair", "a blue sphere"]
    assert not torch.allclose(clip.encode_text(text), judge.encode_text(text))


def test_shipped_clip_tells_colours_and_shapes_apart():
    clip = load_clip(str(DEFAULT_CLIP))
    prompts = ["a red sphere", "a blue sphere", "a red box", "a blue box"]
    text = clip.encode_text(prompts)
    images = torch.ones(4, 3, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 20**2).float()
    square = ((yy - 32).abs() < 18).float() * ((xx - 32).abs() < 18).float()
    for i, (shape, colour) in enumerate(
        [
            (disc, (0.8, 0.14, 0.14)),
            (disc, (0.14, 0.25, 0.8)),
            (square, (0.8, 0.14, 0.14)),
            (square, (0.14, 0.25, 0.8)),
        ]
    ):
        for ch in range(3):
            images[i, ch] = torch.where(shape > 0, torch.tensor(colour[ch]), images[i, ch])
    with torch.no_grad():
        scores = clip.encode_image(images) @ text.T
    # Colour is the easy part: each image prefers the prompts of its own colour.
    for i in range(4):
        same = [j for j in range(4) if j % 2 == i % 2]
        assert scores[i, same].max() > scores[i, [j for j in range(4) if j not in same]].max()


def test_generate_uses_the_shipped_models_by_default(tmp_path):
    out = tmp_path / "chair"
    argv = ["generate", "a red chair", "stage2.steps=2", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stage1"] == str(DEFAULT_STAGE1)
    assert (out / "mesh.glb").stat().st_size > 0
    sheet = tmp_path / "gallery.png"
    assert main(["gallery", str(out), str(out), "--out", str(sheet), "--frames", "3"]) == 0
    from PIL import Image

    image = Image.open(sheet)
    assert image.size == (240 + 3 * 96, 2 * 96)
    assert main(["gallery", str(tmp_path), "--out", str(tmp_path / "bad.png")]) == 2
    assert not (tmp_path / "bad.png").exists()
