"""Contact sheets: a grid of objects (rows) by views (columns) with each object's caption."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from iss3d.data.reader import MultiViewFile

MIN_TILE = 96  # small renders are upscaled (nearest) to at least this many pixels
LABEL_WIDTH = 220


def contact_sheet(
    mv: MultiViewFile,
    objects: list[int] | np.ndarray,
    views: int = 6,
) -> Image.Image:
    """An RGB image: one row per object index in ``objects``, ``views`` evenly spread views each.

    The left column names the object, its category and split, and its longest caption.
    """
    scale = max(1, -(-MIN_TILE // max(mv.height, mv.width)))  # ceil division
    tile_h, tile_w = mv.height * scale, mv.width * scale
    sheet = Image.new("RGB", (LABEL_WIDTH + views * tile_w, len(objects) * tile_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, obj in enumerate(objects):
        rows = mv.views_of(int(obj))
        picks = rows[np.linspace(0, len(rows) - 1, num=min(views, len(rows))).round().astype(int)]
        for col, view in enumerate(picks):
            tile = Image.fromarray(mv.read_rgb(int(view))).resize((tile_w, tile_h), Image.NEAREST)
            sheet.paste(tile, (LABEL_WIDTH + col * tile_w, row * tile_h))
        caption = max(mv.captions[obj], key=len) if mv.captions[obj] else "(no caption)"
        label = [f"{mv.object_ids[obj]}", f"{mv.categories[obj]} / {mv.splits[obj]}"]
        label += textwrap.wrap(caption, width=34)
        draw.multiline_text((6, row * tile_h + 6), "\n".join(label), fill=(0, 0, 0), font=font)
        draw.line(
            [(0, (row + 1) * tile_h - 1), (sheet.width, (row + 1) * tile_h - 1)],
            fill=(220, 220, 220),
        )
    return sheet


def pick_objects(mv: MultiViewFile, count: int, split: str | None, seed: int) -> np.ndarray:
    """Up to ``count`` object rows of ``split``, spread over categories (round-robin), seeded."""
    rng = np.random.default_rng(seed)
    candidates = mv.objects_in(split)
    by_category: dict[str, list[int]] = {}
    for obj in rng.permutation(candidates):
        by_category.setdefault(str(mv.categories[obj]), []).append(int(obj))
    picked: list[int] = []
    queues = [by_category[c] for c in sorted(by_category)]
    while len(picked) < count and any(queues):
        for q in queues:
            if q and len(picked) < count:
                picked.append(q.pop())
    return np.array(picked, dtype=np.int64)
