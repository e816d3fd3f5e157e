"""``iss3d evaluate`` end to end on tiny models: every method, the report files (strict JSON),
resuming, shards, stage-2 warnings per item, bad inputs (one line, exit 2, no results), and the
methods' building blocks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iss3d.core import config as config_lib
from iss3d.infer.cli import build_parser, main
from iss3d.infer.evaluation import run as ev
from iss3d.infer.evaluation.items import Item, item_seed, load_item, plan_items
from iss3d.infer.evaluation.methods import METHODS, LatentParameter, VoxelField
from iss3d.models.clip import build_open_clip, clip_config, export_checkpoint
from iss3d.models.decoder import DecoderConfig
from iss3d.models.pointnet import PointNetCls, export_pointnet
from tests.fixtures.cli import error_line
from tests.fixtures.nonfinite import poison_renders, strict_json
from tests.fixtures.stage1_ckpt import build_stage1_checkpoint

# prompts whose (category, colour) the tiny world has: IoU and colour accuracy get ground truth
PROMPTS = ["a pink mug", "a cyan lamp", "a green sphere"]

FAST = [
    "stage2.steps=2",
    "stage2.views=2",
    "stage2.resolution=16",
    "stage2.march.n_steps=12",
    "stage2.march.n_secant=2",
    "pure_clip.grid=8",
    "pure_clip.stage2.steps=2",
    "pure_clip.stage2.views=2",
    "pure_clip.stage2.resolution=16",
    "pure_clip.stage2.march.n_steps=12",
    "render.views=2",
    "render.resolution=16",
    "render.march_steps=12",
    "shape.mesh_resolution0=8",
    "shape.mesh_upsampling_steps=1",
    "shape.iou_grid=8",
    "shape.points=256",
    "reference.split=null",
    "reference.max_images=24",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval_models")
    cfg = clip_config("tiny-64")
    torch.manual_seed(123)
    judge = export_checkpoint(d / "judge.pt", build_open_clip(cfg), cfg)
    torch.manual_seed(0)
    pointnet = export_pointnet(d / "pointnet.pt", PointNetCls(k=11))
    decoder_cfg = DecoderConfig(c_dim=128, hidden=32, n_blocks=1)
    torch.manual_seed(0)
    decoder = decoder_cfg.build()
    torch.save(
        {
            "state_dict": {f"decoder.{k}": v for k, v in decoder.state_dict().items()},
            "hyper_parameters": {
                "kind": "ei-d",
                "config": {"decoder": config_lib.to_dict(decoder_cfg)},
                "clip_spec": "clip/tiny-64",
                "clip_embed_dim": 128,
            },
        },
        d / "eid.ckpt",
    )
    texts = d / "texts.txt"
    texts.write_text("# three prompts\n" + "\n".join(PROMPTS) + "\n")
    return {
        "stage1": build_stage1_checkpoint(d / "stage1.ckpt", "clip/tiny-64"),
        "stage1_nobg": build_stage1_checkpoint(d / "nobg.ckpt", "clip/tiny-64", seed=1),
        "judge": judge,
        "pointnet": pointnet,
        "eid": d / "eid.ckpt",
        "texts": texts,
    }


def argv(models, world, out, *extra, texts=None, judge=True, methods=None) -> list[str]:
    a = ["evaluate", "--texts", str(texts or models["texts"]), "--ref-data", str(world)]
    a += ["--out", str(out), "--stage1", str(models["stage1"]), "--device", "cpu"]
    a += ["--pointnet", str(models["pointnet"]), "--no-progress"]
    if judge:
        a += ["--judge", str(models["judge"])]
    if methods:
        a += ["--methods", methods]
    return [*a, *extra, *FAST]


@pytest.fixture(scope="module")
def full_run(models, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    assert main(argv(models, tiny_world, out)) == 0
    return out


# -- the run and its report -----------------------------------------------------------------


def test_all_methods_run_or_are_skipped_with_reasons(full_run):
    results = strict_json((full_run / "results.json").read_text())
    methods = results["methods"]
    assert list(methods)[:5] == ["full", "no-stage2", "no-stage1", "no-bg2", "pure-clip"]
    ran = [m for m, r in methods.items() if r["status"] == "ok"]
    assert sorted(ran) == sorted(["full", "no-stage2", "no-stage1", "no-bg2", "pure-clip"])
    assert "--ei-d" in methods["ei-d"]["reason"]
    assert "--stage1-nobg" in methods["no-bg1"]["reason"]
    assert "--stage1-nobg" in methods["no-bg"]["reason"]
    for name in ran:
        row = methods[name]
        assert row["items"] == 3
        assert row["fid"] is not None and row["fid"] >= 0
        assert row["fpd"] is not None and row["fpd"] >= 0
        assert 0 <= row["r_at_1"] <= 1 and 1 <= row["mean_rank"] <= 3
        assert row["iou"] is not None and 0 <= row["iou"] <= 1 and row["iou_shapes"] == 3
        assert row["color_acc"] is not None and row["color_shapes"] == 3
    items = results["items"]
    assert len(items) == 15
    assert all(1 <= it["rank"] <= 3 for it in items)
    info = results["metrics_info"]
    assert info["r_precision"]["judge"].endswith("judge.pt")
    assert "judge" in info["fid"]["network"] and not info["fid"]["paper_comparable"]
    assert info["fpd"]["feature_dim"] == 1024 + 512 + 256 + 11
    assert len(list((full_run / "items").rglob("*.npz"))) == 15


def test_report_files(full_run):
    report = (full_run / "report.md").read_text()
    assert "| Method | FID ↓ | FPD ↓ | R@1 ↑" in report
    assert "| ISS (full) (`full`) |" in report and "| pure CLIP guidance (`pure-clip`) |" in report
    assert "- `ei-d` (E_I + D): needs --ei-d" in report
    assert "not comparable with the paper's Inception FID" in report
    assert "## Does ISS (full) beat each ablation, as in the paper?" in report
    assert "| w/o stage 2 (`no-stage2`) | " in report.split("as in the paper?")[1]
    rows = (full_run / "results.csv").read_text().splitlines()
    assert rows[0].startswith("method,title,status,fid,fpd,r_at_1")
    assert len(rows) == 1 + len(METHODS)
    from PIL import Image

    plots = full_run / "plots"
    for name in ("fid", "fpd", "r_at_1", "iou", "color_acc", "gallery"):
        assert (plots / f"{name}.png").is_file(), name
    gallery = Image.open(plots / "gallery.png")
    assert gallery.height >= 3 * 96 and gallery.width >= 5 * 96


def test_ordering_table_marks_where_full_is_not_better():
    from iss3d.infer.evaluation.report import ordering_lines

    def row(title, **values):
        return {"title": title, "status": "ok", **values}

    rows = {
        "full": row("ISS", iou=0.6, r_at_1=0.3, fid=1.0, fpd=None),
        "no-stage2": row("w/o stage 2", iou=0.7, r_at_1=0.1, fid=2.0, fpd=3.0),
        "ei-d": {"title": "E_I + D", "status": "skipped"},
    }
    table = "\n".join(ordering_lines(rows))
    assert "| w/o stage 2 (`no-stage2`) | **no**: 0.600 vs. 0.700 | yes: 0.300 vs. 0.100 |" in table
    assert "| yes: 1 vs. 2 | n/a |" in table and "ei-d" not in table
    assert ordering_lines({"full": rows["full"]}) == []
    assert ordering_lines({"no-stage2": rows["no-stage2"]}) == []


def test_items_hold_renders_points_and_lattice(full_run):
    item = Item("full", PROMPTS[0], 0, 0)
    arrays, meta = load_item(full_run / item.relpath)
    assert arrays["renders"].shape == (2, 16, 16, 3) and arrays["renders"].dtype == np.uint8
    assert arrays["grid"].shape == (9, 9, 9)
    assert meta["prompt"] == PROMPTS[0] and meta["method"] == "full"
    assert meta["seed"] == item_seed(0, PROMPTS[0], 0)
    if not meta["empty"]:
        assert arrays["points"].shape == (256, 3) and arrays["colors"].shape == (256, 3)
    assert len(meta["clip_score_per_step"]) == 2


def test_rerun_skips_finished_items_and_redoes_missing_ones(models, tiny_world, full_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(full_run, out)
    files = sorted((out / "items").rglob("*.npz"))
    before = {f: f.stat().st_mtime_ns for f in files}
    victim = out / Item("no-stage2", PROMPTS[1], 1, 0).relpath
    kept = strict_json((out / "results.json").read_text())["methods"]["no-stage2"]
    victim.unlink()  # as if the run had been interrupted before this item
    assert main(argv(models, tiny_world, out, methods="no-stage2")) == 0
    for f in files:
        if f != victim:
            assert f.stat().st_mtime_ns == before[f], f
    assert victim.is_file()
    again = strict_json((out / "results.json").read_text())["methods"]
    assert list(again) == ["no-stage2"]
    # the remade item gives the same metrics: deterministic on the CPU (timings aside)
    assert {k: v for k, v in again["no-stage2"].items() if k != "seconds"} == {
        k: v for k, v in kept.items() if k != "seconds"
    }


def test_shards_split_the_items_and_merge_to_the_same_results(
    models, tiny_world, full_run, tmp_path, capsys
):
    out = tmp_path / "sharded"
    methods = "full,no-stage2"
    for shard in ("0/2", "1/2"):
        assert main(argv(models, tiny_world, out, "--shard", shard, methods=methods)) == 0
        assert not (out / "results.json").exists()
    assert "run without --shard" in capsys.readouterr().out
    assert len(list((out / "items").rglob("*.npz"))) == 6
    assert main(argv(models, tiny_world, out, methods=methods)) == 0
    sharded = strict_json((out / "results.json").read_text())["methods"]
    single = strict_json((full_run / "results.json").read_text())["methods"]
    for name in ("full", "no-stage2"):
        for key in ("r_at_1", "judge_score", "iou", "color_acc", "fpd"):
            assert sharded[name][key] == pytest.approx(single[name][key]), (name, key)
    for prompt_index, prompt in enumerate(PROMPTS):
        item = Item("full", prompt, prompt_index, 0)
        a, _ = load_item(out / item.relpath)
        b, _ = load_item(full_run / item.relpath)
        assert np.array_equal(a["renders"], b["renders"])


def test_models_for_every_ablation(models, tiny_world, tmp_path):
    out = tmp_path / "ablations"
    extra = ["--stage1-nobg", str(models["stage1_nobg"]), "--ei-d", str(models["eid"])]
    texts = tmp_path / "one.txt"
    texts.write_text("a pink mug\na cyan lamp\n")
    a = argv(models, tiny_world, out, *extra, texts=texts, methods="ei-d,no-bg1,no-bg")
    assert main(a) == 0
    methods = strict_json((out / "results.json").read_text())["methods"]
    assert [m for m, r in methods.items() if r["status"] == "ok"] == ["ei-d", "no-bg1", "no-bg"]
    nobg1, _ = load_item(out / Item("no-bg1", "a pink mug", 0, 0).relpath)
    nobg, _ = load_item(out / Item("no-bg", "a pink mug", 0, 0).relpath)
    assert nobg1["grid"].shape == nobg["grid"].shape


def test_non_finite_stage2_steps_are_warned_per_item(
    models, tiny_world, tmp_path, monkeypatch, capsys
):
    poison_renders(monkeypatch)  # every stage-2 render is NaN; the evaluation renders are not
    out = tmp_path / "nan"
    texts = tmp_path / "one.txt"
    texts.write_text("a pink mug\n")
    assert main(argv(models, tiny_world, out, texts=texts, methods="full,pure-clip")) == 0
    expected = [
        "stage 2: 2 of 2 steps had a non-finite loss and were skipped",
        "stage 2 left the shape unchanged",
    ]
    err = capsys.readouterr().err
    results = strict_json((out / "results.json").read_text())
    strict_json((out / "run.json").read_text())
    for item in results["items"]:
        assert item["warnings"] == expected and item["guidance_clip_score"] is None
        _, meta = load_item(out / item["file"])
        assert meta["clip_score_per_step"] == [None, None]  # the item file's JSON: null, not NaN
        for text in expected:
            assert f"iss3d: warning: {item['file']}: {text}" in err


# -- bad input: one line, exit 2, no results ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a red mug\n\na blue cone\n", "texts.txt:2: empty line"),
        ("a red mug\n   \n", "texts.txt:2: empty line"),
        ("a red mug\na blue cone\nA  red mug\n", "texts.txt:3: duplicate prompt"),
        ("# only a comment\n", "no prompts"),
    ],
)
def test_bad_text_files(models, tiny_world, tmp_path, capsys, content, message):
    texts = tmp_path / "texts.txt"
    texts.write_text(content)
    out = tmp_path / "out"
    assert main(argv(models, tiny_world, out, texts=texts)) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_bad_methods_ref_data_and_models(models, tiny_world, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(argv(models, tiny_world, out, methods="full,dreamfusion")) == 2
    assert "unknown method 'dreamfusion'" in error_line(capsys)
    assert main(argv(models, tmp_path / "absent.h5", out)) == 2
    assert "absent.h5: no such file (--ref-data" in error_line(capsys)
    assert main(argv(models, tiny_world, out, methods="full,ei-d")) == 2
    line = error_line(capsys)
    assert "method 'ei-d' needs --ei-d" in line
    assert main(argv(models, tiny_world, out, "--samples", "0")) == 2
    assert "--samples" in error_line(capsys)
    assert main(argv(models, tiny_world, out, "--shard", "2/2")) == 2
    assert "--shard" in error_line(capsys)
    assert not out.exists()


def test_judge_must_not_be_the_guidance_model(models, tiny_world, tmp_path, capsys):
    out = tmp_path / "out"
    a = argv(models, tiny_world, out, "--judge", "clip/tiny-64", judge=False)
    assert main(a) == 2
    assert "is the guidance CLIP" in error_line(capsys)
    # the same weights under another name are the same model
    copy = tmp_path / "guide-copy.pt"
    copy.write_bytes(Path(models["judge"]).read_bytes())
    a = argv(models, tiny_world, out, judge=False)
    assert main([*a, "--clip", str(models["judge"]), "--judge", str(copy)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("iss3d: error: ") and "is the guidance CLIP" in lines[-1]
    assert all(line.startswith("iss3d: warning:") for line in lines[:-1])  # not stage 1's CLIP
    assert not out.exists()


def test_an_out_folder_is_reused_only_with_the_same_settings(
    models, tiny_world, full_run, tmp_path, capsys
):
    assert main(argv(models, tiny_world, full_run, "--seed", "1")) == 2
    assert "made with other settings" in error_line(capsys)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(argv(models, tiny_world, stranger)) == 2
    assert "holds no run.json" in error_line(capsys)


def test_missing_judge_and_pointnet_skip_their_metrics(models, tiny_world, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "DEFAULT_JUDGE", tmp_path / "none.pt")
    monkeypatch.setattr(ev, "DEFAULT_POINTNET", tmp_path / "none.pt")
    out = tmp_path / "out"
    a = argv(models, tiny_world, out, judge=False, methods="no-stage2")
    a = [x for i, x in enumerate(a) if x != "--pointnet" and a[i - 1] != "--pointnet"]
    assert main(a) == 0
    results = strict_json((out / "results.json").read_text())
    info = results["metrics_info"]
    assert "no judge CLIP" in info["r_precision"]["skipped"]
    assert "no PointNet" in info["fpd"]["skipped"]
    assert "skipped" in info["fid"]  # no Inception (no torch-fidelity) and no judge
    row = results["methods"]["no-stage2"]
    assert row["r_at_1"] is None and row["fpd"] is None and row["fid"] is None
    assert row["iou"] is not None
    assert "R@1 and judge score: not computed" in (out / "report.md").read_text()


# -- pieces -------------------------------------------------------------------------------------


def test_read_texts_and_the_shipped_prompt_sets(tmp_path):
    root = Path(__file__).resolve().parents[2] / "configs" / "texts"
    synth = ev.read_texts(root / "synth_test.txt")
    assert synth == ev.world_test_prompts() and len(synth) >= 30
    from iss3d.data.synth.world import HELD_OUT

    for category, colour in HELD_OUT:
        assert any(p.endswith(f"{colour} {category}") for p in synth)
    assert len(ev.read_texts(root / "shapenet_paper.txt")) == 52
    f = tmp_path / "t.txt"
    f.write_text("a  red   mug\r\n# comment\nbig cone")
    assert ev.read_texts(f) == ["a red mug", "big cone"]


def test_items_seeds_and_shards():
    items = plan_items(["full", "no-stage2"], PROMPTS, 2)
    assert len(items) == 12 and len({it.relpath for it in items}) == 12
    seeds = {(it.prompt, it.sample): item_seed(0, it.prompt, it.sample) for it in items}
    assert len(set(seeds.values())) == 6  # the same per (prompt, sample) for every method
    assert ev.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "0/0", "-1/2"):
        with pytest.raises(ev.UserError):
            ev.parse_shard(bad)


def test_worker_command_is_a_valid_shard_command(tmp_path):
    o = ev.EvaluateOptions(
        texts=Path("t.txt"),
        ref_data=Path("w.h5"),
        out=tmp_path,
        methods="full,no-stage2",
        samples=2,
        judge="j.pt",
        workers=2,
        overrides=["stage2.steps=3"],
    )
    cmd = ev._worker_command(o, "1/2")
    args = build_parser().parse_args(cmd[3:])
    assert args.shard == "1/2" and args.samples == 2 and args.judge == "j.pt"
    assert args.methods == "full,no-stage2" and args.overrides == ["stage2.steps=3"]
    assert args.workers == 1


def test_worker_environment_shares_the_cpu_or_spreads_the_gpus():
    base = {"PATH": "/bin"}
    assert ev.worker_environment(1, 2, 0, base, 16)["OMP_NUM_THREADS"] == "8"
    assert ev.worker_environment(0, 4, 0, base, 2)["OMP_NUM_THREADS"] == "1"
    assert (
        ev.worker_environment(0, 2, 0, {**base, "OMP_NUM_THREADS": "3"}, 16)["OMP_NUM_THREADS"]
        == "3"
    )  # the user's setting wins
    gpu = ev.worker_environment(3, 4, 2, base, 16)
    assert gpu["CUDA_VISIBLE_DEVICES"] == "1" and "OMP_NUM_THREADS" not in gpu
    assert base == {"PATH": "/bin"}  # not modified


def test_voxel_field_is_a_differentiable_sphere_the_stage2_loop_can_move():
    from iss3d.infer.guidance import GuidanceConfig, Guide, PromptSchedule
    from iss3d.infer.stage2 import Stage2Config, run_stage2
    from iss3d.models.clip import load_clip

    field = VoxelField(8, 0.55)
    c = field.initial_latent(0.3, 20.0)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.25, 0.0]]])
    occ = field.occupancy(pts, c)[0]
    assert occ[0] > 0 > occ[1] and occ[2] > 0
    assert torch.allclose(field.rgb(pts, c), torch.full((1, 3, 3), 0.5))
    both = field.occupancy_and_rgb(pts, c)
    assert torch.equal(both[0], field.occupancy(pts, c)) and torch.equal(both[1], field.rgb(pts, c))
    torch.manual_seed(0)
    clip = load_clip("clip/tiny-64")
    guidance = GuidanceConfig(lambda_bg=0.0)
    cfg = Stage2Config(steps=2, views=2, resolution=16, lr=0.1, guidance=guidance)
    cfg.march.n_steps = 12
    guide = Guide([clip], [1.0], PromptSchedule("a red mug", guidance), guidance)
    start = LatentParameter(c)
    result = run_stage2(start, field, guide, cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(result.latent_after, c)
    assert torch.equal(start.latent.detach(), c)  # the loop works on a copy


def test_fit_eid_writes_a_checkpoint_the_ei_d_method_loads(tiny_world, tmp_path):
    from iss3d.models.loaders import load_eid

    out = tmp_path / "eid"
    a = ["fit", "eid", "--config", "eid/tiny", "--clip", "clip/tiny-64"]
    a += ["--data", str(tiny_world), "--out", str(out), "--no-progress"]
    a += ["trainer.max_steps=1", "trainer.val_check_interval=1", "data.batch_size=2"]
    a += ["data.pixels=8", "data.occupancy_points=64", "decoder.hidden=32", "decoder.n_blocks=1"]
    a += ["march.n_steps=[[0, 8]]"]
    assert main(a) == 0
    model = load_eid(out / "checkpoints" / "last.ckpt")
    assert model.clip_embed_dim == 128 and model.clip_spec == "clip/tiny-64"
    occ = model.decoder.occupancy(torch.zeros(1, 4, 3), torch.zeros(1, 128))
    assert occ.shape == (1, 4)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {}}}, tmp_path / "other.ckpt")
    with pytest.raises(ev.UserError, match="not an iss3d E_I"):
        load_eid(tmp_path / "other.ckpt")
