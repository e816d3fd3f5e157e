"""The items of ``iss3d evaluate``: one (method, prompt, sample) each, and its file.

An item is saved as its own small ``.npz`` under ``OUT/items/<method>/`` (:attr:`Item.relpath`):
the arrays :func:`iss3d.infer.evaluation.run.describe_shape` keeps (renders, coloured surface
points, an occupancy lattice) plus a ``meta`` JSON string (the facts, timings and warnings),
written atomically by :func:`save_item` and read by :func:`load_item`. Both the generation
(:mod:`iss3d.infer.evaluation.run`) and the metrics (:mod:`iss3d.infer.evaluation.report`) use
this module; it imports neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iss3d.core.atomic import atomic_output, json_text

__all__ = ["Item", "item_seed", "load_item", "plan_items", "save_item"]


def _slug(prompt: str, n: int = 40) -> str:
    words = re.findall(r"\w+", unicodedata.normalize("NFKC", prompt).lower(), flags=re.ASCII)
    return "-".join(words)[:n].strip("-") or "prompt"


def item_seed(seed: int, prompt: str, sample: int) -> int:
    """The seed of one (prompt, sample): the same for every method (paired comparisons)."""
    ss = np.random.SeedSequence([seed, zlib.crc32(prompt.encode("utf-8")), sample])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Item:
    """One (method, prompt, sample); ``prompt_index`` is the prompt's row in the text set."""

    method: str
    prompt: str
    prompt_index: int
    sample: int

    @property
    def relpath(self) -> str:
        digest = hashlib.sha1(self.prompt.encode("utf-8")).hexdigest()[:8]
        return f"items/{self.method}/{_slug(self.prompt)}-{digest}-s{self.sample}.npz"


def plan_items(methods: list[str], texts: list[str], samples: int) -> list[Item]:
    """Every item, method by method, prompt by prompt, sample by sample."""
    return [Item(m, p, i, k) for m in methods for i, p in enumerate(texts) for k in range(samples)]


def save_item(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write one item's ``.npz`` (arrays + ``meta`` as JSON) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json_text(meta)), **arrays)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_item(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of an item file written by :func:`save_item`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta
