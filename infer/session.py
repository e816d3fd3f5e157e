"""What a generation or stylization run sets up before its loop, and reports around it.

The models (:func:`resolve_models`: the stage-1 checkpoint and the CLIP model that goes with
it, the shipped ones by default), the guiding CLIP ensemble (:func:`load_ensemble`) and its
text targets (:func:`build_guide`), the progress bar over steps (:class:`Progress`), warnings
on stderr (:func:`warn`, :func:`warning_suffix`) and the run facts every report records
(:func:`versions`, :func:`device_info`).
"""

from __future__ import annotations

import filecmp
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from iss3d.core.errors import UserError
from iss3d.core.resources import pretrained_dir

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_STAGE1",
    "PRETRAINED_DIR",
    "Progress",
    "build_guide",
    "device_info",
    "load_ensemble",
    "resolve_models",
    "versions",
    "warn",
    "warning_suffix",
]

#: Where ``iss3d generate`` looks for models when --stage1 / --clip are not given.
PRETRAINED_DIR = pretrained_dir()
DEFAULT_STAGE1 = PRETRAINED_DIR / "stage1.ckpt"
DEFAULT_CLIP = PRETRAINED_DIR / "clip.pt"


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"iss3d: warning: {' '.join(str(message).split())}", file=sys.stderr)


def warning_suffix(messages: list[str]) -> str:
    """``messages`` for the end of a summary line: "; warning: <text>" each ("" for none)."""
    return "".join(f"; warning: {w}" for w in messages)


def resolve_models(stage1: Path | None, clip: str | None, device: torch.device):
    """Load the stage-1 model and the CLIP model that goes with it.

    The stage-1 checkpoint: ``stage1``, else ``models/pretrained/stage1.ckpt``. The CLIP
    model: ``clip``; else ``clip.pt`` beside the checkpoint; else the spec the checkpoint
    records. A CLIP whose feature size is not the mapper's input size is an error; a
    different spec of the right size a warning.

    Returns (stage-1 model, its path, CLIP model, CLIP spec).
    """
    from iss3d.models.clip import load_clip
    from iss3d.models.loaders import load_stage1

    if stage1 is None:
        if not DEFAULT_STAGE1.is_file():
            raise UserError(
                f"no stage-1 model: {DEFAULT_STAGE1} does not exist; train one with `iss3d fit "
                "stage1` (see README) and pass --stage1 CKPT (and --clip SPEC), or put "
                "stage1.ckpt and clip.pt in that folder"
            )
        stage1 = DEFAULT_STAGE1
    model = load_stage1(stage1, device)
    recorded = model.clip_spec
    if clip is None:
        clip_model, clip = _recorded_clip(Path(stage1), recorded, device)
    else:
        clip_model = load_clip(clip, device)
        same_size = clip_model.embed_dim == model.clip_embed_dim
        if recorded and same_size and not _same_spec(clip, recorded):
            warn(
                f"CLIP {clip!r} is not the one {stage1} was trained with ({recorded!r}); "
                "the feature sizes match, but the shapes may not fit the text"
            )
    if clip_model.embed_dim != model.clip_embed_dim:
        raise UserError(
            f"CLIP {clip!r} gives {clip_model.embed_dim}-d features but the stage-1 checkpoint "
            f"{stage1} was trained with {recorded!r} ({model.clip_embed_dim}-d); pass that CLIP "
            "with --clip"
        )
    return model, Path(stage1), clip_model, str(clip)


def _recorded_clip(stage1: Path, recorded: str | None, device: torch.device):
    """The CLIP of a stage-1 checkpoint given without --clip: ``clip.pt`` beside it, else the
    spec it records. Returns (CLIP model, spec)."""
    from iss3d.models.clip import load_clip

    sibling = stage1.parent / "clip.pt"
    candidates = ([str(sibling)] if sibling.is_file() else []) + ([recorded] if recorded else [])
    if not candidates:
        raise UserError(f"{stage1}: records no CLIP model; pass --clip SPEC")
    errors = []
    for spec in candidates:
        try:
            return load_clip(spec, device), spec
        except UserError as err:
            errors.append(str(err))
    raise UserError(
        f"{stage1}: its CLIP model is not available here ({errors[-1]}); pass --clip SPEC"
    )


def _same_spec(a: str, b: str) -> bool:
    """The same spec, the same file, or two files with the same bytes (a copied checkpoint)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.is_file() and pb.is_file() and filecmp.cmp(pa, pb, shallow=False)


def load_ensemble(clip_model, guidance, device: torch.device) -> tuple[list, list[float]]:
    """The guiding CLIP models and their weights: ``clip_model`` (the stage-1 CLIP, whose text
    feature is M's input and the scores' reference) first, then ``guidance.ensemble``'s."""
    from iss3d.models.clip import load_clip

    members, weights = [clip_model], [guidance.clip_weight]
    for member in guidance.ensemble:
        members.append(load_clip(member.spec, device))
        weights.append(member.weight)
    return members, weights


def build_guide(members: list, weights: list[float], text: str, guidance, seen: list[str]):
    """The :class:`iss3d.infer.guidance.Guide` of ``text`` (its prompt schedule encoded by every
    member). Python warnings raised meanwhile (e.g. a prompt longer than CLIP's context) are
    printed once each and appended to ``seen``. Returns (guide, schedule)."""
    from iss3d.infer.guidance import Guide, PromptSchedule

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schedule = PromptSchedule(text, guidance)
        guide = Guide(members, weights, schedule, guidance)
    for w in caught:
        line = " ".join(str(w.message).split())
        if line not in seen:
            seen.append(line)
            warn(line)
    return guide, schedule


class Progress:
    """A tqdm bar over stage-2 steps showing the current CLIP score (nothing when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True, unit="step")

    def __call__(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(clip=f"{record['clip_score']:.4f}", loss=f"{record['loss']:.4f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages that decide the outputs."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("iss3d", "torch", "open_clip_torch", "numpy", "trimesh", "scikit-image"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(device: torch.device) -> dict[str, Any]:
    """The device a run used: type, name and torch's CPU threads."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info
