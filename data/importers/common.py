"""What every importer shares: reading a JSON file with one-line errors, and captions.

Captions live in one ``captions.json`` at the root of any layout (DVR, Blender, folder), mapping
object ids (as the importer names them: ``<synset>/<model>`` for DVR, the scene folder's name
for Blender, the ``cameras.json`` id for the folder layout) to a list of texts, or one text::

    {"02691156/1a04e3eab45ca15dd86060f189eb133": ["a red jet", "a small red airplane"],
     "02691156/1a6ad7a24bb89733f412783097373bdc": "a blue propeller plane"}

Objects it does not name get no captions; ids naming no imported object are counted in the
importer's summary line.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from iss3d.core.errors import UserError
from iss3d.core.paths import input_file, name_taken, read_json
from iss3d.data.records import SPLITS

CAPTIONS_FILE = "captions.json"
#: Longest caption accepted (characters); CLIP reads 77 tokens, so longer texts are noise.
MAX_CAPTION = 1000


def check_captions(value: Any, where: str) -> list[str]:
    """An object's captions: a list of texts (or one text) -> list of stripped texts.

    Raises:
        UserError naming ``where`` when a caption is not text, empty, longer than
        ``MAX_CAPTION`` or holds control characters (a newline included).
    """
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise UserError(f"{where}: captions must be a list of texts, got {type(value).__name__}")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: caption {i} is not a non-empty text")
        if len(text) > MAX_CAPTION:
            raise UserError(f"{where}: caption {i} is longer than {MAX_CAPTION} characters")
        if any(unicodedata.category(ch) == "Cc" for ch in text):
            raise UserError(f"{where}: caption {i} holds a control character")
        out.append(text.strip())
    return out


def read_captions(root: Path) -> tuple[dict[str, list[str]], Path | None]:
    """``root/captions.json`` checked: (object id -> captions, the file), or ({}, None) when the
    layout has none."""
    path = root / CAPTIONS_FILE
    if not name_taken(path):
        return {}, None
    table = read_json(path, "a captions file (object id -> list of texts)")
    if not isinstance(table, dict):
        raise UserError(f"{path}: must map object ids to lists of texts")
    return {str(k): check_captions(v, f"{path}: {k!r}") for k, v in table.items()}, path


def caption_note(table: dict[str, list[str]], path: Path | None, imported: set[str]) -> str:
    """The summary's words on captions: how many objects got how many, from which file, and how
    many of the file's ids named no imported object."""
    if path is None:
        return f"no captions ({CAPTIONS_FILE} absent)"
    used = [ids for ids in table if ids in imported and table[ids]]
    texts = sum(len(table[i]) for i in used)
    note = f"{texts} captions for {len(used)} of {len(imported)} objects ({path.name})"
    unknown = sorted(set(table) - imported)
    if unknown:
        note += f", {len(unknown)} ids naming no imported object (e.g. {unknown[0]!r}) ignored"
    return note


def read_split_lists(folder: Path) -> dict[str, str] | None:
    """Object folder name -> split from ``folder``'s ``train.lst``, ``val.lst``, ``test.lst``
    (one name per line; DVR's convention); None when it has none."""
    lists = [(s, folder / f"{s}.lst") for s in SPLITS if (folder / f"{s}.lst").exists()]
    if not lists:
        return None
    assignment: dict[str, str] = {}
    source: dict[str, Path] = {}
    for split, path in lists:
        input_file(path, "a split list (.lst)")  # a FIFO would block the read forever
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: cannot read split list ({err})") from None
        for line in lines:
            name = line.strip()
            if not name:
                continue
            if name in assignment and assignment[name] != split:
                raise UserError(
                    f"{path}: model {name!r} is also listed in {source[name]} "
                    "(a model belongs to one split)"
                )
            assignment[name] = split
            source[name] = path
    return assignment
