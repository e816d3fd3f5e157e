"""The metrics and report files of ``iss3d evaluate`` (after every item is on disk).

Per method (all its prompts and samples):

- ``fid``: Frechet distance between the feature Gaussians of its renders (every view of every
  shape) and of the reference views.
- ``fpd``: Frechet distance between PointNet features of its surface clouds (non-empty shapes)
  and of the reference objects' surface points (the same number of points, normalised).
- ``r_at_1`` / ``r_at_5`` / ``mean_rank``: CLIP R-precision with the judge over all prompts of
  the set; ``judge_score``: the judge's mean cosine between a shape's views and its prompt.
- ``iou``: mean over shapes of the best volumetric IoU with a ground-truth object of the
  prompt: objects (of the reference split) that have the prompt as a caption, else objects of
  the category the prompt names, with its colour when any has it.
- ``color_acc``: share of shapes whose dominant surface colour (nearest named colour) is the
  colour the prompt names (first colour word), for prompts that name one.
- ``empty_rate``: share of shapes with no surface; ``seconds``: mean generation time.

A metric that cannot be computed (no judge, no PointNet, no ground truth, too few samples) is
None with its reason in ``metrics_info``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iss3d.core.atomic import atomic_output, json_ready, json_text
from iss3d.infer.evaluation import metrics as em
from iss3d.infer.evaluation.items import load_item, plan_items
from iss3d.infer.evaluation.methods import METHODS

__all__ = ["METRICS", "bar_chart", "compute_results", "gallery", "ordering_lines", "write_report"]

#: (key, column title, True when higher is better)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("fid", "FID", False),
    ("fpd", "FPD", False),
    ("r_at_1", "R@1", True),
    ("judge_score", "CLIP score (judge)", True),
    ("iou", "IoU", True),
    ("color_acc", "Colour acc.", True),
    ("empty_rate", "Empty", False),
    ("seconds", "s / shape", False),
)


# -- reference set -------------------------------------------------------------------------------


class _Reference:
    """The reference split of ``--ref-data``, read lazily."""

    def __init__(self, file, cfg):
        self.file = file
        self.cfg = cfg
        self.objects = [int(o) for o in file.objects_in(cfg.split)]
        self._occ: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        metas = [file.meta(o) for o in self.objects]
        self.main_colors = (
            [m.get("main_color") for m in metas]
            if metas and all("main_color" in m for m in metas)
            else None
        )

    def images(self) -> list[np.ndarray]:
        rows = self.file.views_in(self.cfg.split)
        n = min(self.cfg.max_images, len(rows))
        pick = np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))
        return [self.file.read_rgb(int(rows[i])) for i in pick]

    def clouds(self, points: int, seed: int) -> np.ndarray:
        objects = self.objects[: self.cfg.max_objects] if self.cfg.max_objects else self.objects
        rng = np.random.default_rng(seed)
        return np.stack(
            [em.sample_cloud(self.file.read_surface(o).points, points, rng) for o in objects]
        )

    def occupancy(self, obj: int) -> tuple[np.ndarray, np.ndarray]:
        if obj not in self._occ:
            s = self.file.read_occupancy(obj)
            n = s.n_uniform or len(s.points)
            self._occ[obj] = (s.points[:n].astype(np.float32), s.inside[:n].astype(bool))
        return self._occ[obj]

    def candidates(self, prompt: str) -> list[int]:
        """Ground-truth objects for a prompt (see the module docstring)."""
        f = self.file
        key = prompt.casefold()
        exact = [o for o in self.objects if key in (c.casefold() for c in f.captions[o])]
        if exact:
            return exact
        from iss3d.data.synth.world import COLORS

        colours = list(COLORS) if self.main_colors is not None else []
        category, colour = em.parse_prompt(prompt, f.category_names, colours)
        if category is None:
            return []
        same = [o for o in self.objects if f.categories[o] == category]
        if colour is not None and self.main_colors is not None:
            coloured = [
                o
                for o, c in zip(self.objects, self.main_colors, strict=True)
                if o in set(same) and c == colour
            ]
            if coloured:
                return coloured
        return same


# -- metrics ------------------------------------------------------------------------------------


@dataclass
class _Baseline:
    """The reference side of every method's metrics (None where a metric is not computed)."""

    ref: _Reference
    fid: torch.Tensor | None  # features of the reference views
    fpd: torch.Tensor | None  # PointNet features of the reference clouds
    candidates: dict[str, list[int]] | None  # ground-truth objects of each prompt, for IoU
    colours: bool  # whether the reference records object colours (colour accuracy)


def _fid_reference(p, ref: _Reference) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """(features of the reference views, metrics_info["fid"])."""
    if p.fid_network is None:
        return None, {"skipped": p.fid_reason}
    images = ref.images()
    features = em.image_features(p.fid_network, images, p.cfg.batch)
    return features, {
        "network": p.fid_network.name,
        "paper_comparable": p.fid_network.paper_comparable,
        "reference_images": len(images),
    }


def _fpd_reference(p, ref: _Reference) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """(PointNet features of the reference clouds, metrics_info["fpd"])."""
    if p.pointnet is None or p.pointnet_reason is not None:
        return None, {"skipped": p.pointnet_reason}
    cfg = p.cfg
    clouds = ref.clouds(cfg.shape.points, p.options.seed)
    features = em.pointnet_features(p.pointnet, clouds, cfg.batch)
    return features, {
        "pointnet": p.pointnet_info.source,
        "k": p.pointnet_info.k,
        "feature_dim": p.pointnet.feature_dim,
        "points": cfg.shape.points,
        "reference_clouds": len(clouds),
    }


def _baseline(p, ref: _Reference) -> tuple[_Baseline, dict[str, Any]]:
    """(the reference side of the metrics, results.json's ``metrics_info``)."""
    o = p.options
    info: dict[str, Any] = {}
    ref_fid, info["fid"] = _fid_reference(p, ref)
    ref_fpd, info["fpd"] = _fpd_reference(p, ref)
    if p.judge is not None:
        info["r_precision"] = {
            "judge": p.judge.spec,
            "prompts": len(p.texts),
            "chance_r_at_1": 1.0 / len(p.texts),
        }
    else:
        info["r_precision"] = {"skipped": p.judge_reason}
    has_occ = p.reference.has_occupancy
    info["iou"] = (
        {"ground_truth": "best match among the prompt's reference objects"}
        if has_occ
        else {"skipped": f"{o.ref_data} has no occupancy samples"}
    )
    has_colour = ref.main_colors is not None
    info["color_acc"] = (
        {"palette": "synthetic world colours (nearest named colour, majority of points)"}
        if has_colour
        else {"skipped": f"{o.ref_data} records no object colours (not the synthetic world)"}
    )
    candidates = {t: ref.candidates(t) for t in p.texts} if has_occ else None
    return _Baseline(ref, ref_fid, ref_fpd, candidates, has_colour), info


def _item_entries(name: str, its: list, recs: list) -> list[dict[str, Any]]:
    """The per-item rows of results.json (the metrics below add their columns)."""
    return [
        {
            "method": name,
            "prompt": it.prompt,
            "sample": it.sample,
            "empty": bool(meta["empty"]),
            "seconds": float(meta["generate_s"]),
            "guidance_clip_score": (
                meta["clip_score_per_step"][-1] if meta["clip_score_per_step"] else None
            ),
            "warnings": meta.get("warnings", []),  # item files of older versions lack them
            "file": it.relpath,
        }
        for it, (_, meta) in zip(its, recs, strict=True)
    ]


def _fid_fields(p, ref_fid: torch.Tensor | None, recs: list) -> dict[str, Any]:
    """FID of one method's renders (every view of every shape)."""
    if ref_fid is None:
        return {"fid": None}
    frames = [f for arrays, _ in recs for f in arrays["renders"]]
    if len(frames) < 2:
        return {"fid": None}
    fake = em.image_features(p.fid_network, frames, p.cfg.batch)
    return {"fid": em.frechet_distance(ref_fid, fake)}


def _fpd_fields(p, ref_fpd: torch.Tensor | None, recs: list) -> dict[str, Any]:
    """FPD of one method's surface clouds (non-empty shapes), and how many there are."""
    if ref_fpd is None:
        return {"fpd": None}
    cfg = p.cfg
    rng = np.random.default_rng(p.options.seed)
    clouds = [
        em.sample_cloud(a["points"], cfg.shape.points, rng) for a, meta in recs if not meta["empty"]
    ]
    fpd = None
    if len(clouds) >= 2:
        fpd = em.frechet_distance(
            ref_fpd, em.pointnet_features(p.pointnet, np.stack(clouds), cfg.batch)
        )
    return {"fpd": fpd, "fpd_shapes": len(clouds)}


def _r_precision_fields(p, its: list, recs: list, entries: list[dict]) -> dict[str, Any]:
    """R@1, R@5, mean rank and judge score of one method; each entry gets its rank and
    judge score."""
    fields: dict[str, Any] = dict.fromkeys(("r_at_1", "r_at_5", "mean_rank", "judge_score"))
    if p.judge is None:
        return fields
    scores = em.judge_scores(p.judge, [a["renders"] for a, _ in recs], p.texts, p.cfg.batch)
    truth = [it.prompt_index for it in its]
    rp = em.r_precision(scores, truth)
    own = scores[torch.arange(len(truth)), torch.tensor(truth)]
    fields.update({k: rp[k] for k in ("r_at_1", "r_at_5", "mean_rank")})
    fields["judge_score"] = float(own.mean())
    for e, rank, s in zip(entries, rp["ranks"], own.tolist(), strict=True):
        e["rank"], e["judge_score"] = rank, float(s)
    return fields


def _iou_fields(base: _Baseline, its: list, recs: list, entries: list[dict]) -> dict[str, Any]:
    """Mean best IoU with a ground-truth object of the prompt; each entry gets its IoU (None
    without ground truth)."""
    if base.candidates is None:
        return {"iou": None}
    ious = []
    for it, (arrays, meta), e in zip(its, recs, entries, strict=True):
        objs = base.candidates[it.prompt]
        if not objs:
            e["iou"] = None
            continue
        best = max(
            em.occupancy_iou_at(arrays["grid"], meta["half"], *base.ref.occupancy(obj))
            for obj in objs
        )
        e["iou"] = best
        ious.append(best)
    return {"iou": float(np.mean(ious)) if ious else None, "iou_shapes": len(ious)}


def _colour_fields(base: _Baseline, its: list, recs: list, entries: list[dict]) -> dict[str, Any]:
    """Share of shapes (of prompts that name a colour) whose dominant colour is the prompt's;
    each such entry gets its colour and whether it is right."""
    from iss3d.data.synth.world import COLORS

    if not base.colours:
        return {"color_acc": None}
    hits = []
    for it, (arrays, _), e in zip(its, recs, entries, strict=True):
        _, colour = em.parse_prompt(it.prompt, [], list(COLORS))
        if colour is None:
            continue
        pred, _ = em.dominant_color(arrays["colors"], COLORS)
        e["color"], e["color_ok"] = pred, pred == colour
        hits.append(pred == colour)
    return {"color_acc": float(np.mean(hits)) if hits else None, "color_shapes": len(hits)}


def _method_results(
    p, base: _Baseline, name: str, its: list, recs: list
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results.json's row of one method, its per-item entries)."""
    row: dict[str, Any] = {"title": METHODS[name].title, "status": "ok", "items": len(its)}
    entries = _item_entries(name, its, recs)
    row["empty_rate"] = float(np.mean([e["empty"] for e in entries]))
    row["seconds"] = float(np.mean([e["seconds"] for e in entries]))
    row.update(_fid_fields(p, base.fid, recs))
    row.update(_fpd_fields(p, base.fpd, recs))
    row.update(_r_precision_fields(p, its, recs, entries))
    row.update(_iou_fields(base, its, recs, entries))
    row.update(_colour_fields(base, its, recs, entries))
    return row, entries


def compute_results(p, items: list) -> dict[str, Any]:
    """Every metric of every method from the item files (see the module docstring).

    Args:
        p: :class:`iss3d.infer.evaluation.run.Prepared`; items: every
            :class:`iss3d.infer.evaluation.items.Item`.

    Returns:
        The content of results.json.
    """
    cfg, o = p.cfg, p.options
    ref = _Reference(p.reference, cfg.reference)
    records = {it: load_item(o.out / it.relpath) for it in items}
    base, info = _baseline(p, ref)
    methods: dict[str, Any] = {}
    per_item: list[dict[str, Any]] = []
    for name in p.methods:
        its = [it for it in items if it.method == name]
        row, entries = _method_results(p, base, name, its, [records[it] for it in its])
        methods[name] = json_ready(row)
        per_item.extend(entries)
    for name, reason in p.skipped.items():
        methods[name] = {"title": METHODS[name].title, "status": "skipped", "reason": reason}
    return {
        "texts": str(o.texts),
        "prompts": p.texts,
        "samples": o.samples,
        "seed": o.seed,
        "reference": {
            "path": str(o.ref_data),
            "split": cfg.reference.split,
            "objects": len(ref.objects),
        },
        "models": p.models,
        "judge": p.judge.spec if p.judge is not None else None,
        "config": cfg.to_dict(),
        "command": o.command,
        "metrics_info": info,
        "methods": methods,
        "items": per_item,
    }


# -- files ---------------------------------------------------------------------------------------


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key in ("fid", "fpd"):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    if key == "seconds":
        return f"{value:.1f}"
    return f"{value:.3f}"


#: The metrics the paper's ablation claims rest on, compared full vs. each other method.
ORDERING_METRICS = ("iou", "r_at_1", "fid", "fpd")


def ordering_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """A markdown table: for every evaluated method other than ``full``, whether ISS (full)
    beats it on each of :data:`ORDERING_METRICS` (the paper's claim), with both values.
    Empty when ``full`` was not evaluated or nothing else was."""
    full = rows.get("full")
    others = [k for k, v in rows.items() if k != "full" and v["status"] == "ok"]
    if full is None or full["status"] != "ok" or not others:
        return []
    meta = {key: (title, higher) for key, title, higher in METRICS}
    head = ["Compared with", *[meta[k][0] for k in ORDERING_METRICS]]
    lines = [
        "## Does ISS (full) beat each ablation, as in the paper?",
        "",
        "yes / **no**: full's value is better / not better; full vs. the method.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in others:
        cells = [f"{rows[name]['title']} (`{name}`)"]
        for key in ORDERING_METRICS:
            a, b = full.get(key), rows[name].get(key)
            if a is None or b is None:
                cells.append("n/a")
                continue
            better = a > b if meta[key][1] else a < b
            cells.append(f"{'yes' if better else '**no**'}: {_fmt(key, a)} vs. {_fmt(key, b)}")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _markdown(results: dict[str, Any]) -> str:
    rows = results["methods"]
    head = ["Method", *[f"{t} {'↑' if hi else '↓'}" for _, t, hi in METRICS]]
    lines = [
        "# iss3d evaluation",
        "",
        f"{len(results['prompts'])} prompts from `{results['texts']}` x {results['samples']} "
        f"sample(s); reference: `{results['reference']['path']}` (split "
        f"{results['reference']['split']}, {results['reference']['objects']} objects).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, row in rows.items():
        if row["status"] != "ok":
            continue
        cells = [f"{row['title']} (`{name}`)"] + [_fmt(k, row.get(k)) for k, _, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *ordering_lines(rows)]
    skipped = {k: v for k, v in rows.items() if v["status"] != "ok"}
    if skipped:
        lines += ["", "Skipped methods:", ""]
        lines += [f"- `{k}` ({v['title']}): {v['reason']}" for k, v in skipped.items()]
    info = results["metrics_info"]
    lines += ["", "Metrics:", ""]
    fid = info["fid"]
    if "skipped" in fid:
        lines.append(f"- FID: not computed ({fid['skipped']}).")
    else:
        note = "" if fid["paper_comparable"] else " (not comparable with the paper's Inception FID)"
        lines.append(
            f"- FID: features {fid['network']}{note}; {fid['reference_images']} reference views."
        )
    fpd = info["fpd"]
    if "skipped" in fpd:
        lines.append(f"- FPD: not computed ({fpd['skipped']}).")
    else:
        lines.append(
            f"- FPD: PointNet ({fpd['pointnet']}, k={fpd['k']}, {fpd['feature_dim']}-d "
            f"features) on {fpd['points']} surface points centred and scaled to the unit "
            f"sphere; {fpd['reference_clouds']} reference clouds; empty shapes are left out."
        )
    rp = info["r_precision"]
    if "skipped" in rp:
        lines.append(f"- R@1 and judge score: not computed ({rp['skipped']}).")
    else:
        lines.append(
            f"- R@1: CLIP R-precision over the {rp['prompts']} prompts (chance "
            f"{rp['chance_r_at_1']:.3f}), judge `{rp['judge']}` (not the guidance model), "
            "score = mean cosine over the views."
        )
    for key, label in (("iou", "IoU"), ("color_acc", "Colour accuracy")):
        if "skipped" in info[key]:
            lines.append(f"- {label}: not computed ({info[key]['skipped']}).")
    lines.append("- Empty: share of shapes without a surface; s / shape: generation time.")
    lines += ["", "![gallery](plots/gallery.png)", ""]
    return "\n".join(lines)


def _csv(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    keys = [k for k, _, _ in METRICS] + ["r_at_5", "mean_rank", "items"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "title", "status", *keys, "reason"])
    for name, row in results["methods"].items():
        writer.writerow(
            [name, row["title"], row["status"]]
            + ["" if row.get(k) is None else row[k] for k in keys]
            + [row.get("reason", "")]
        )
    return buf.getvalue()


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def bar_chart(title: str, labels: list[str], values: list[float | None], higher: bool):
    """A PIL bar chart of one metric (n/a bars left empty)."""
    from PIL import Image, ImageDraw

    width, height, top, bottom = 40 + 100 * len(labels), 260, 40, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((10, 8), f"{title} ({'higher' if higher else 'lower'} is better)", "black", font)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    vmax = max([abs(v) for v in finite], default=1.0) or 1.0
    base = height - bottom
    draw.line((20, base, width - 20, base), fill="black")
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x0 = 30 + 100 * i
        if v is not None and math.isfinite(v):
            h = (height - top - bottom - 14) * abs(v) / vmax
            draw.rectangle((x0, base - h, x0 + 70, base), fill=(70, 110, 180))
            draw.text((x0, base - h - 12), f"{v:.3g}", "black", font)
        else:
            draw.text((x0, base - 14), "n/a", "gray", font)
        draw.text((x0, base + 6), label[:14], "black", font)
    return img


def gallery(p, items: list, cell: int = 96):
    """Prompts (rows) x methods (columns): the front view of sample 0 of each shape."""
    from PIL import Image

    from iss3d.data.images import labelled_grid

    index = {(it.method, it.prompt_index): it for it in items if it.sample == 0}
    rows = []
    for i, prompt in enumerate(p.texts):
        frames = []
        for m in p.methods:
            arrays, _ = load_item(p.options.out / index[(m, i)].relpath)
            frames.append(Image.fromarray(arrays["renders"][0]))
        rows.append((prompt, frames))
    return labelled_grid(rows, cell, header=list(p.methods))


def _save_png(image, path: Path) -> None:
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def write_report(out: Path, results: dict[str, Any], p) -> list[Path]:
    """Write results.json, results.csv, report.md and plots/ (each file atomically)."""
    written = []
    for name, text in (
        ("results.json", json_text(results, indent=2, ensure_ascii=False) + "\n"),
        ("results.csv", _csv(results)),
        ("report.md", _markdown(results)),
    ):
        with atomic_output(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(out / name)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    ok = [m for m in p.methods if results["methods"][m]["status"] == "ok"]
    for key, title, higher in METRICS:
        values = [results["methods"][m].get(key) for m in ok]
        if all(v is None for v in values):
            continue
        _save_png(bar_chart(title, ok, values, higher), plots / f"{key}.png")
    items = plan_items(p.methods, p.texts, p.options.samples)
    _save_png(gallery(p, items), plots / "gallery.png")
    written.append(plots)
    return written
