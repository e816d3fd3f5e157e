"""A human summary of a multi-view dataset file (``iss3d data info``)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from iss3d.data.reader import MultiViewFile
from iss3d.data.records import SPLITS


def summarize(mv: MultiViewFile) -> dict:
    """Counts and settings of a file, JSON-serialisable."""
    counts = mv.view_count
    n_captions = [len(c) for c in mv.captions]
    return {
        "path": str(mv.path),
        "size_mb": round(mv.path.stat().st_size / 2**20, 2),
        "resolution": [mv.height, mv.width],
        "pixel_convention": mv.pixel_convention,
        "objects": mv.num_objects,
        "views": mv.num_views,
        "views_per_object": {"min": int(counts.min()), "max": int(counts.max())},
        "splits": {s: int((mv.splits == s).sum()) for s in SPLITS},
        "categories": dict(sorted(Counter(mv.categories.tolist()).items())),
        "captions": {
            "total": int(sum(n_captions)),
            "objects_without": int(np.sum(np.array(n_captions) == 0)),
        },
        "has_depth": mv.has_depth,
        "occupancy_points": _eval_size(mv, "occupancy"),
        "surface_points": _eval_size(mv, "surface"),
        "input_views": mv.has_input_views,
        "generator": mv.info.get("generator", "unknown"),
    }


def _eval_size(mv: MultiViewFile, kind: str) -> int:
    if kind == "occupancy" and mv.has_occupancy:
        return int(mv.h5["eval"]["occ_points"].shape[1])
    if kind == "surface" and mv.has_surface:
        return int(mv.h5["eval"]["surface_points"].shape[1])
    return 0


def format_summary(summary: dict) -> str:
    """Aligned ``key: value`` lines of :func:`summarize`'s dict."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = " x ".join(str(v) for v in value)
        lines.append(f"{key.replace('_', ' '):>18}: {value}")
    return "\n".join(lines)
