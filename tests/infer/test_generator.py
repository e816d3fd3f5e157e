"""``iss3d.Generator``: models loaded once, shapes with mesh / latent / views / scores, and
``shape.save`` writing the same files as ``iss3d generate``."""

from __future__ import annotations

import json

import numpy as np
import torch
import trimesh

import iss3d
import iss3d.models.loaders as loaders
from tests.infer.test_generate import CLIP, FAST, run, stage1, without_timings  # noqa: F401


def test_generator_gives_the_files_of_the_command(stage1, tmp_path, monkeypatch):  # noqa: F811
    assert run(stage1, tmp_path / "cli", "--clip", CLIP) == 0

    loads = []
    real = loaders.load_stage1
    monkeypatch.setattr(loaders, "load_stage1", lambda *a, **k: loads.append(a) or real(*a, **k))
    torch.manual_seed(0)  # the random-weight CLIP spec draws from it, as the command seeds it
    gen = iss3d.Generator(stage1=stage1, clip=CLIP, device="cpu", overrides=FAST)
    shape = gen("a red chair", seed=0)
    shape.save(tmp_path / "api")
    other = gen("a blue box", seed=1)
    assert len(loads) == 1  # the second prompt reused the loaded models

    cli, api = tmp_path / "cli", tmp_path / "api"
    assert sorted(p.name for p in api.iterdir()) == sorted(
        p.name for p in cli.iterdir() if p.name != "command.txt"
    )
    for name in ("mesh.glb", "mesh.ply", "turntable.png", "turntable.gif", "views.png"):
        assert (api / name).read_bytes() == (cli / name).read_bytes(), name
    a, b = (torch.load(d / "latent.pt", weights_only=True) for d in (api, cli))
    assert torch.equal(a["latent"], b["latent"]) and a["decoder_sha256"] == b["decoder_sha256"]
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (api, cli))
    assert without_timings(ra) == without_timings(rb)

    assert isinstance(shape.mesh, trimesh.Trimesh) and len(shape.mesh.faces) > 0
    assert shape.mesh.visual.vertex_colors.shape == (len(shape.mesh.vertices), 4)
    assert shape.latent.shape == (1, gen.model.mapper_config.out_dim)
    assert shape.views.dtype == np.uint8 and shape.views.shape == (2, 16, 16, 3)
    assert shape.scores["after"] == rb["results"][0]["clip_score_after"]
    assert len(shape.scores["per_step"]) == 2
    assert not torch.equal(other.latent, shape.latent)
