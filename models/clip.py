"""The frozen CLIP model E_I / E_T: one wrapper over open_clip models, ours and published ones.

:func:`load_clip` takes one spec string and returns a :class:`ClipModel` (eval mode, every
parameter frozen) with its tokenizer and a differentiable preprocessing of [0, 1] images:

==============================================  ==============================================
spec                                            what is loaded
==============================================  ==============================================
``"ViT-B-32:openai"``, ``"ViT-B-32:laion2b_s34b_b79k"``  an open_clip model name and pretrained
                                                tag; the weights must already be in the local
                                                Hugging Face cache (nothing is downloaded unless
                                                ``download=True``)
``"ViT-B-32:/path/open_clip_pytorch_model.bin"``  an open_clip name and a local weights file
                                                (``.bin`` / ``.pt`` / ``.pth`` state dict, or
                                                ``.safetensors``)
``"runs/clip-tiny/clip.pt"``                    a checkpoint written by ``iss3d fit clip`` (the
                                                exported ``clip.pt`` or the run's Lightning
                                                ``checkpoints/last.ckpt``); it holds its model
                                                config, so no registry is needed
``"clip/tiny-64"``                              ``configs/clip/tiny-64.json`` with random
                                                weights (tests only; ``trained`` is False)
==============================================  ==============================================

Preprocessing (:meth:`ClipModel.preprocess`) is differentiable and better than the official ISS
code's (nearest-neighbour resize to 224, one scalar mean/std): an antialiased bicubic (or the
model's own interpolation) resize of the shorter side to ``image_size``, a centre crop when the
image is not square, then the model's per-channel mean/std.

Every checkpoint is read with ``torch.load(weights_only=True)``
(``iss3d.models.checkpoints.safe_load``) or with safetensors; a wrong-shaped state is a one-line
UserError naming the first bad key.
"""

from __future__ import annotations

import copy
import json
import math
import os
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from iss3d.core.errors import UserError
from iss3d.core.paths import input_file
from iss3d.core.resources import config_dir
from iss3d.models.checkpoints import load_state_into, safe_load
from iss3d.models.encoder import check_images

__all__ = [
    "CHECKPOINT_FORMAT",
    "CLIP_CONFIG_DIR",
    "ClipModel",
    "RandomResizedCrop",
    "build_open_clip",
    "clip_config",
    "export_checkpoint",
    "load_clip",
    "register_clip_configs",
    "resize_and_crop",
]


#: Our small open_clip model configs (``clip/<name>`` specs): ``configs/clip/<name>.json``.
CLIP_CONFIG_DIR = config_dir() / "clip"

#: The ``format`` entry of an exported checkpoint (``iss3d fit clip`` writes ``DIR/clip.pt``).
CHECKPOINT_FORMAT = "iss3d-clip"

_CONFIG_PREFIX = "clip/"
_ALLOWED_WHITESPACE = "\t\n\r"


# -- configs ------------------------------------------------------------------------------


def register_clip_configs() -> None:
    """Add ``configs/clip/*.json`` to open_clip's model registry (idempotent), so that
    ``open_clip.create_model("tiny-64")`` and ``open_clip.get_tokenizer("tiny-64")`` work."""
    if CLIP_CONFIG_DIR.is_dir() and CLIP_CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CLIP_CONFIG_DIR)


def clip_config(name: str) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of one of ours.

    Args:
        name: ``"tiny-64"``, ``"clip/tiny-64"``, or a path to such a JSON file.

    Raises:
        UserError: no such config (lists ours), unreadable JSON, or missing sections.
    """
    path = Path(name)
    if not path.is_file():
        stem = name.removeprefix(_CONFIG_PREFIX).removesuffix(".json")
        path = CLIP_CONFIG_DIR / f"{stem}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CLIP_CONFIG_DIR.glob("*.json"))) or "none"
        raise UserError(f"CLIP config {name!r}: no such file (ours: {known})")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read as a JSON CLIP config ({err})") from None
    _check_model_config(cfg, path)
    return cfg


def _check_model_config(cfg: Any, where: str | os.PathLike) -> None:
    if not isinstance(cfg, Mapping) or not all(
        k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")
    ):
        raise UserError(
            f"{where}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
        )


def build_open_clip(model_config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised open_clip ``CLIP`` (or ``CustomTextCLIP``) from a model config.

    Args:
        model_config: ``{"embed_dim", "vision_cfg", "text_cfg", optional "quick_gelu",
            "custom_text", ...}`` as in open_clip's JSON model configs.

    Raises:
        UserError: a config open_clip refuses (unknown keys, bad sizes).
    """
    cfg = copy.deepcopy(dict(model_config))
    _check_model_config(cfg, "model config")
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        return cls(**cfg)
    except (TypeError, ValueError, AssertionError) as err:
        raise UserError(f"bad open_clip model config: {err}") from None


# -- preprocessing -------------------------------------------------------------------------


def resize_and_crop(
    images: torch.Tensor, size: int, interpolation: str = "bicubic"
) -> torch.Tensor:
    """Differentiable resize of the shorter side to ``size`` (antialiased), then centre crop.

    Args:
        images: (B, 3, H, W) float, any H and W.
        size: output side in pixels.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (antialiased when shrinking);
            ``"nearest"`` is allowed for comparison with the official ISS code.

    Returns:
        (B, 3, size, size); the input itself when it already has that size.
    """
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if interpolation == "nearest":
        out = F.interpolate(images, size=(nh, nw), mode="nearest")
    else:
        out = F.interpolate(
            images, size=(nh, nw), mode=interpolation, align_corners=False, antialias=True
        )
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[..., top : top + size, left : left + size]


class RandomResizedCrop:
    """A batched, differentiable random resized crop (+ optional horizontal flip), one crop per
    image, usable as ``augment`` of :meth:`ClipModel.encode_image`.

    Args:
        scale: range of the crop's area as a share of the image.
        ratio: range of the crop's aspect ratio (width / height).
        flip: flip each crop horizontally with probability 1/2.
        generator: a ``torch.Generator`` for reproducible crops (on the images' device).

    Call: (B, 3, H, W) -> (B, 3, H, W), bilinear sampling inside the image (no padding).
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = False,
        generator: torch.Generator | None = None,
    ):
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise UserError(f"RandomResizedCrop: bad scale {scale} or ratio {ratio}")
        self.scale, self.ratio, self.flip, self.generator = scale, ratio, flip, generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        dev = images.device
        g = self.generator

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(b, device=dev, generator=g)

        area = uniform(*self.scale)
        log_ratio = uniform(math.log(self.ratio[0]), math.log(self.ratio[1])).exp()
        # crop width and height as fractions of the image side (clamped to fit)
        cw = (area * log_ratio).sqrt().clamp(max=1.0)
        ch = (area / log_ratio).sqrt().clamp(max=1.0)
        cx = (1 - cw) * (2 * torch.rand(b, device=dev, generator=g) - 1)
        cy = (1 - ch) * (2 * torch.rand(b, device=dev, generator=g) - 1)
        sx = cw
        if self.flip:
            sx = torch.where(torch.rand(b, device=dev, generator=g) < 0.5, -cw, cw)
        theta = torch.zeros(b, 2, 3, device=dev, dtype=images.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = sx, cx
        theta[:, 1, 1], theta[:, 1, 2] = ch, cy
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", align_corners=False)


# -- tokenizers ------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int) -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=context_length)


def check_prompt(prompt: Any, index: int = 0) -> str:
    """Raise UserError for a prompt that is not text, is empty, or holds control characters.

    Tabs and line breaks count as whitespace (the tokenizer collapses them); other control
    characters (category Cc) and lone surrogates are refused, naming their position.
    """
    if not isinstance(prompt, str):
        raise UserError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise UserError(f"prompt {index}: empty prompt (give some words to match)")
    for pos, ch in enumerate(prompt):
        if ch in _ALLOWED_WHITESPACE:
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise UserError(
                f"prompt {index}: control character U+{ord(ch):04X} at position {pos} "
                f"(in {prompt[max(0, pos - 20) : pos]!r}...)"
            )
    return prompt


def _count_tokens(tokenizer: Any, prompt: str) -> int | None:
    """Tokens of ``prompt`` before truncation, start/end tokens included (None: unknown)."""
    if isinstance(tokenizer, open_clip.SimpleTokenizer):
        return len(tokenizer.encode(prompt)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if callable(inner):
        try:
            return len(inner(prompt)["input_ids"])
        except Exception:  # an exotic tokenizer: skip the warning rather than fail
            return None
    return None


# -- the model -------------------------------------------------------------------------------


class ClipModel(nn.Module):
    """Frozen CLIP (eval mode, requires_grad False) + its tokenizer + differentiable preprocessing.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP``.
        tokenizer: callable ``list[str] -> (N, context_length) int64`` tokens.
        spec: how it was loaded (see :func:`load_clip`).
        image_mean, image_std: per-channel normalisation of [0, 1] RGB.
        interpolation: resize mode of :meth:`preprocess` (``"bicubic"`` or ``"bilinear"``).
        trained: False for random weights (``clip/<name>`` specs).
        info: facts about the weights (``trained_on``, ``step``, ...), for reports.
        freeze: True (the default) freezes the parameters and keeps the model in eval mode.
            ``iss3d fit clip`` wraps the model it trains with False, for validation only.

    Attributes:
        spec: how it was loaded, e.g. ``"ViT-B-32:openai"``, a checkpoint path, ``"clip/tiny-64"``.
        embed_dim: joint embedding size. image_size: the model's input side.
        context_length: text tokens per prompt (longer prompts are truncated with a warning).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        spec: str,
        image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
        image_std: Sequence[float] = OPENAI_DATASET_STD,
        interpolation: str = "bicubic",
        trained: bool = True,
        info: Mapping[str, Any] | None = None,
        freeze: bool = True,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.trained = trained
        self.info = dict(info or {})
        self.frozen = freeze
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        ctx = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", None)
        self.context_length = int(ctx)
        self.embed_dim = int(_embed_dim(model))
        self.interpolation = (
            interpolation if interpolation in ("bicubic", "bilinear") else "bicubic"
        )
        mean = torch.tensor(list(image_mean), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(list(image_std), dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}
        if freeze:
            model.requires_grad_(False)
            model.eval()

    def train(self, mode: bool = True) -> ClipModel:
        """A frozen model stays in eval mode whatever its parent does."""
        super().train(mode and not self.frozen)
        return self

    def extra_repr(self) -> str:
        return (
            f"spec={self.spec!r}, embed_dim={self.embed_dim}, image_size={self.image_size}, "
            f"context_length={self.context_length}, trained={self.trained}"
        )

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- images -------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the model's input, differentiably.

        Args:
            images: (B, 3, H, W) float in [0, 1], any H, W.

        Returns:
            (B, 3, image_size, image_size), resized (shorter side, antialiased), centre-cropped
            and normalised with the model's per-channel mean/std.
        """
        x = resize_and_crop(images, self.image_size, self.interpolation)
        return (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)

    def encode_image(
        self,
        images: torch.Tensor,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """CLIP image features, differentiable with respect to ``images``.

        Args:
            images: (B, 3, H, W) float in [0, 1], any H, W, on the model's device.
            augment: optional (B, 3, H, W) -> (B, 3, H', W') applied before the resize, e.g.
                :class:`RandomResizedCrop`.

        Returns:
            (B, embed_dim) float32, L2-normalised.
        """
        check_images(images, "CLIP input images")
        if augment is not None:
            images = augment(images)
        x = self.preprocess(images).to(self.dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    # -- text ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Checked prompts -> (N, context_length) int64 tokens on the CPU.

        Raises:
            UserError: a prompt that is empty, not a string, or holds control characters.

        Warns (UserWarning) for each prompt longer than ``context_length`` tokens: it is
        truncated (the end token is kept).
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings; wrap a single prompt in a list")
        checked = [check_prompt(p, i) for i, p in enumerate(prompts)]
        for i, prompt in enumerate(checked):
            n = _count_tokens(self.tokenizer, prompt)
            if n is not None and n > self.context_length:
                message = (
                    f"prompt {i} ({prompt[:40]!r}...) has {n} tokens, more than the CLIP "
                    f"context length {self.context_length}; only its first "
                    f"{self.context_length - 2} tokens are used"
                )
                warnings.warn(message, UserWarning, stacklevel=3)
        return self.tokenizer(checked)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text features of prompts, without gradients, cached per prompt string.

        Args:
            prompts: N strings (any script; the BPE tokenizer covers Unicode).

        Returns:
            (N, embed_dim) float32, L2-normalised, on the model's device.

        Raises:
            UserError: an empty / whitespace-only prompt, a non-string, a control character.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings; wrap a single prompt in a list")
        prompts = list(prompts)
        device = self.device
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if todo:
            tokens = self.tokenize(todo).to(device)
            with torch.no_grad():
                feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            for prompt, feat in zip(todo, feats, strict=True):
                self._text_cache[prompt] = feat
        out = []
        for prompt in prompts:
            feat = self._text_cache[prompt]
            if feat.device != device:
                feat = feat.to(device)
                self._text_cache[prompt] = feat
            out.append(feat)
        if not out:
            return torch.zeros(0, self.embed_dim, device=device)
        return torch.stack(out)

    def clear_cache(self) -> None:
        """Forget cached text features (needed only if the weights change)."""
        self._text_cache.clear()


def _embed_dim(model: nn.Module) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return proj.shape[-1]
    if isinstance(proj, nn.Linear):
        return proj.out_features
    visual_dim = getattr(model.visual, "output_dim", None)
    if visual_dim is not None:
        return int(visual_dim)
    with torch.no_grad():
        size = model.visual.image_size
        side = size[0] if isinstance(size, tuple | list) else size
        return model.encode_image(torch.zeros(1, 3, side, side)).shape[-1]


# -- loading --------------------------------------------------------------------------------


def load_clip(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> ClipModel:
    """Load a frozen CLIP model from a spec string (see the module docstring for the forms).

    Args:
        spec: ``"<open_clip name>:<pretrained tag>"``, ``"<open_clip name>:<weights file>"``,
            a checkpoint of ``iss3d fit clip`` (``clip.pt`` or ``last.ckpt``), or
            ``"clip/<name>"`` (a config in ``configs/clip/``, random weights).
        device: where the model goes.
        cache_dir: Hugging Face hub cache to look in for pretrained tags (default: the hub's
            own, ``HF_HUB_CACHE`` / ``HF_HOME``).
        download: let open_clip download missing pretrained weights (never when
            ``HF_HUB_OFFLINE=1``). False (default): missing weights are an immediate error.

    Raises:
        UserError: unknown model name or tag (with some valid ones), weights not available
            offline (says how to provide them), unreadable or wrong-shaped checkpoint (names
            the first bad key), a bad spec.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"CLIP spec must be a non-empty string, got {spec!r}")
    register_clip_configs()
    name, colon, source = spec.partition(":")
    if Path(spec).exists() and not Path(spec).is_dir():
        input_file(spec, "a CLIP checkpoint file")  # a FIFO or device: refused, never read
        clip = _load_checkpoint_spec(spec)
    elif spec.startswith(_CONFIG_PREFIX):
        clip = _load_config_spec(spec)
    elif colon and name and "/" not in name and os.sep not in name:
        clip = _load_open_clip_spec(spec, name, source, cache_dir, download)
    elif Path(spec).suffix in (".pt", ".ckpt", ".pth", ".bin", ".safetensors"):
        raise UserError(f"{spec}: no such file")
    else:
        clip = _no_tag_error(spec)
    return clip.to(device)


def _tokenizer_for(name: str | None, model: nn.Module, model_config: Mapping[str, Any]):
    text_cfg = model_config.get("text_cfg", {})
    ctx = int(getattr(model, "context_length", None) or text_cfg.get("context_length", 77))
    if name is None or not (text_cfg.get("hf_tokenizer_name") or "siglip" in name.lower()):
        return _simple_tokenizer(ctx)
    try:
        return open_clip.get_tokenizer(name, context_length=ctx)
    except Exception as err:
        raise UserError(
            f"CLIP model {name!r}: cannot load its tokenizer offline ({type(err).__name__}); "
            "put it in the Hugging Face cache first"
        ) from None


def _load_config_spec(spec: str) -> ClipModel:
    cfg = clip_config(spec)
    model = build_open_clip(cfg)
    return ClipModel(
        model,
        _tokenizer_for(None, model, cfg),
        spec,
        trained=False,
        info={"model_config": spec.removeprefix(_CONFIG_PREFIX), "weights": "random"},
    )


def export_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: Mapping[str, Any],
    *,
    image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
    image_std: Sequence[float] = OPENAI_DATASET_STD,
    interpolation: str = "bicubic",
    half: bool = True,
    **info: Any,
) -> Path:
    """Write a self-contained CLIP checkpoint that :func:`load_clip` reads (atomically).

    Contents: ``format`` ("iss3d-clip"), ``version`` (1), ``model_config`` (the open_clip
    config), ``state_dict`` (fp16 when ``half``, else fp32), ``context_length``, ``image_size``,
    ``image_mean``, ``image_std``, ``interpolation``, and ``info`` (e.g. ``trained_on``,
    ``step``; plain values only).
    """
    from iss3d.core.atomic import atomic_output

    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in model.state_dict().items()
    }
    text_cfg = model_config["text_cfg"]
    size = model_config["vision_cfg"].get("image_size", 224)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model_config": copy.deepcopy(dict(model_config)),
        "state_dict": state,
        "context_length": int(text_cfg.get("context_length", 77)),
        "image_size": int(size[0] if isinstance(size, list | tuple) else size),
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
        "interpolation": interpolation,
        "info": dict(info),
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def _load_checkpoint_spec(spec: str) -> ClipModel:
    path = Path(spec)
    ckpt = safe_load(path, what="CLIP checkpoint")
    if not isinstance(ckpt, Mapping):
        raise UserError(f"{path}: not an iss3d CLIP checkpoint (a {type(ckpt).__name__})")
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        cfg, state = ckpt.get("model_config"), ckpt.get("state_dict")
        mean = ckpt.get("image_mean", OPENAI_DATASET_MEAN)
        std = ckpt.get("image_std", OPENAI_DATASET_STD)
        interpolation = ckpt.get("interpolation", "bicubic")
        info = dict(ckpt.get("info", {}))
    elif isinstance(ckpt.get("hyper_parameters"), Mapping) and "state_dict" in ckpt:
        hp = ckpt["hyper_parameters"]
        cfg = hp.get("model_config")
        if cfg is None:
            raise UserError(
                f"{path}: a Lightning checkpoint without a CLIP model_config (not from "
                "`iss3d fit clip`?)"
            )
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        mean = hp.get("image_mean", OPENAI_DATASET_MEAN)
        std = hp.get("image_std", OPENAI_DATASET_STD)
        interpolation = "bicubic"
        info = {"trained_on": hp.get("trained_on"), "step": ckpt.get("global_step")}
    else:
        keys = ", ".join(map(str, list(ckpt)[:6]))
        raise UserError(
            f"{path}: not an iss3d CLIP checkpoint (no model_config; keys: {keys}); for an "
            "open_clip weights file use '<model name>:<path>', e.g. 'ViT-B-32:" + str(path) + "'"
        )
    _check_model_config(cfg, path)
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: the checkpoint's state_dict is not a mapping")
    model = build_open_clip(cfg)
    load_state_into(model, {k: _to_dtype(v) for k, v in state.items()}, path)
    return ClipModel(
        model,
        _tokenizer_for(None, model, cfg),
        str(spec),
        image_mean=mean,
        image_std=std,
        interpolation=interpolation,
        trained=True,
        info=info,
    )


def _to_dtype(value: Any) -> Any:
    """fp16/bf16 stored tensors back to fp32 (the model's dtype); others unchanged."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def _no_tag_error(spec: str) -> ClipModel:
    if spec in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(spec)
        hint = f" e.g. {spec}:{tags[0]}" if tags else ""
        raise UserError(
            f"CLIP spec {spec!r}: give the weights as '{spec}:<pretrained tag or file>'{hint}"
        )
    raise UserError(
        f"CLIP spec {spec!r}: not a file, not 'clip/<config>' and not '<open_clip name>:<tag>' "
        "(e.g. 'ViT-B-32:openai', 'ViT-B-32:/path/open_clip_pytorch_model.bin', "
        "'runs/clip-tiny/clip.pt', 'clip/tiny-64')"
    )


def _some(items: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_open_clip_spec(
    spec: str,
    name: str,
    source: str,
    cache_dir: str | os.PathLike | None,
    download: bool,
) -> ClipModel:
    models = open_clip.list_models()
    if name not in models:
        close = [m for m in models if name.lower().replace("/", "-") in m.lower()]
        suggestions = close or [m for m in models if m.startswith(("ViT-B", "RN50"))]
        raise UserError(
            f"CLIP spec {spec!r}: unknown open_clip model {name!r} (e.g. {_some(suggestions)})"
        )
    if not source:
        _no_tag_error(name)
    tags = open_clip.list_pretrained_tags_by_model(name)
    pcfg: dict[str, Any] = {}
    if Path(source).is_file():
        weights = Path(source)
    elif open_clip.get_pretrained_cfg(name, source):
        pcfg = open_clip.get_pretrained_cfg(name, source)
        weights = _cached_weights(spec, name, source, pcfg, cache_dir, download)
    elif "/" in source or os.sep in source or Path(source).suffix:
        raise UserError(f"CLIP spec {spec!r}: {source}: no such file")
    else:
        raise UserError(
            f"CLIP spec {spec!r}: unknown pretrained tag {source!r} for {name} "
            f"(known: {_some(tags) if tags else 'none; give a weights file'})"
        )
    try:
        model = open_clip.create_model(
            name,
            pretrained=None,
            force_quick_gelu=bool(pcfg.get("quick_gelu", False)),
            pretrained_image=False,  # the full weights come next: no tower downloads
            pretrained_text=False,
        )
    except Exception as err:
        raise UserError(f"CLIP spec {spec!r}: open_clip cannot build {name}: {err}") from None
    state = _read_state(weights)
    state = _adapt_state(model, state)
    load_state_into(model, state, weights)
    model_config = open_clip.get_model_config(name) or {}
    mean = pcfg.get("mean") or getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = pcfg.get("std") or getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD
    return ClipModel(
        model,
        _tokenizer_for(name, model, model_config),
        spec,
        image_mean=mean,
        image_std=std,
        interpolation=pcfg.get("interpolation", "bicubic"),
        trained=True,
        info={"weights": str(weights)},
    )


def _hub_candidates(pcfg: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    hub = pcfg.get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = []
    if filename == "open_clip_pytorch_model.bin":
        names.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return repo, names


def _cached_weights(
    spec: str,
    name: str,
    tag: str,
    pcfg: Mapping[str, Any],
    cache_dir: str | os.PathLike | None,
    download: bool,
) -> Path:
    """The local file of a pretrained tag's weights, or an immediate UserError."""
    if pcfg.get("file"):
        return Path(pcfg["file"])
    hub = _hub_candidates(pcfg)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache

        repo, names = hub
        for filename in names:
            found = try_to_load_from_cache(
                repo, filename, cache_dir=str(cache_dir) if cache_dir else None
            )
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = pcfg.get("url", "")
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return local
    if download and not _hf_offline():
        try:
            path = open_clip.download_pretrained(
                dict(pcfg), cache_dir=str(cache_dir) if cache_dir else None
            )
        except Exception as err:
            raise UserError(f"CLIP spec {spec!r}: download failed: {err}") from None
        if path:
            return Path(path)
    where = f"{repo}/{names[-1]}" if hub is not None else url
    how = f"`huggingface-cli download {repo} {names[-1]}`" if hub is not None else f"fetch {url}"
    reason = "HF_HUB_OFFLINE=1" if _hf_offline() else "downloads are off"
    raise UserError(
        f"CLIP spec {spec!r}: weights {where} are not in the local cache and {reason}; on a "
        f"machine with internet run {how} and pass '{name}:/path/to/{os.path.basename(where)}', "
        "or copy the Hugging Face cache here (HF_HOME)"
    )


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as err:
            raise UserError(f"{path}: cannot read as safetensors ({err})") from None
    else:
        state = safe_load(path, what="CLIP weights file")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # ours (clip.pt) or a training checkpoint
    if not isinstance(state, Mapping) or not state:
        raise UserError(f"{path}: not a CLIP state dict")
    out = {}
    for key, value in state.items():
        k = str(key)
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = _to_dtype(value)
    return out


def _adapt_state(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """open_clip's own fix-ups of published state dicts (third-party layouts, scalar shapes)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and isinstance(target, torch.Tensor):
            value = state[key]
            if isinstance(value, torch.Tensor) and value.numel() == target.numel():
                state[key] = value.reshape(target.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    state.pop("text.transformer.embeddings.position_ids", None)
    return state
