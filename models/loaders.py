"""Build trained models from checkpoints: the one place that turns a file into modules.

Every checkpoint ``iss3d fit svr|stage1|eid`` writes carries an **architecture card**
(``ckpt["architecture"]``, :class:`ArchitectureCard`): which modules the weights belong to and
their sizes, apart from the training recipe in ``hyper_parameters``. The loaders read the card
alone, so a training key added, renamed or removed later never stops a checkpoint from loading.
Checkpoints written before cards existed are read through :func:`read_card`, which takes only
the architecture sections (``encoder``, ``decoder``, ``mapper``) of their stored configs and
ignores everything else.

Loaders: :func:`load_svr` (E_S + D), :func:`load_stage1` (M + D, and E_S when stored),
:func:`load_eid` (the E_I + D baseline's D), :func:`load_pointnet` (the FPD classifier, its
architecture read off the weights), :func:`load_clip` (a CLIP spec; its checkpoints store their
open_clip config), and :func:`import_iss_checkpoint` (an official ISS stage-1 file, converted).
Official DVR weights load into modules built from DVR's own config with
:func:`iss3d.models.checkpoints.load_dvr_checkpoint`.

All files are read with ``weights_only=True``; every failure is a one-line UserError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from iss3d.core.atomic import atomic_output
from iss3d.core.config import StrictConfig, to_dict
from iss3d.core.errors import UserError
from iss3d.models.checkpoints import load_iss_checkpoint, load_prefixed, load_state_into, safe_load
from iss3d.models.clip import load_clip
from iss3d.models.decoder import Decoder, DecoderConfig
from iss3d.models.encoder import EncoderConfig
from iss3d.models.mapper import Mapper, MapperConfig
from iss3d.models.pointnet import CHECKPOINT_FORMAT as POINTNET_FORMAT
from iss3d.models.pointnet import PointNetCls, PointNetInfo, map_pointnet_key

__all__ = [
    "ArchitectureCard",
    "Checkpoint",
    "EIDModel",
    "SVRModel",
    "Stage1Model",
    "check_checkpoint",
    "import_iss_checkpoint",
    "load_clip",
    "load_eid",
    "load_pointnet",
    "load_stage1",
    "load_stage1_encoder",
    "load_svr",
    "read_card",
    "read_checkpoint",
]

#: The card layout version written by :meth:`ArchitectureCard.to_checkpoint`.
CARD_VERSION = 1
Kind = Literal["svr", "stage1", "ei-d"]
#: What each kind needs on its card.
_NEEDS = {
    "svr": ("encoder", "decoder"),
    "stage1": ("decoder", "mapper", "clip_embed_dim"),
    "ei-d": ("decoder", "clip_embed_dim"),
}
_WHAT = {"svr": "SVR checkpoint", "stage1": "stage-1 checkpoint", "ei-d": "E_I + D checkpoint"}
_WRITER = {"svr": "iss3d fit svr", "stage1": "iss3d fit stage1", "ei-d": "iss3d fit eid"}


@dataclass
class ArchitectureCard(StrictConfig):
    """What a checkpoint's weights are: enough to build its modules, nothing of its training.

    Attributes:
        kind: ``svr`` (state ``encoder.*``, ``decoder.*``), ``stage1`` (``mapper.*``,
            ``decoder.*``, and ``encoder.*`` when ``encoder`` is set) or ``ei-d`` (``decoder.*``
            conditioned on CLIP image features).
        encoder: E_S's architecture (None: no encoder stored).
        decoder: D's architecture.
        mapper: M's architecture (stage 1).
        clip_spec: the CLIP the model was trained with (``load_clip`` spec), if any.
        clip_embed_dim: that CLIP's feature size (stage 1: M's input; E_I + D: D's c_dim).
        image_size: [H, W] of the training views (the size E_S expects), if known.
        version: the card layout.
    """

    CONFIG_NAME = "architecture card"

    kind: Kind
    decoder: DecoderConfig
    encoder: EncoderConfig | None = None
    mapper: MapperConfig | None = None
    clip_spec: str | None = None
    clip_embed_dim: int | None = None
    image_size: tuple[int, int] | None = None
    version: int = CARD_VERSION

    def __post_init__(self) -> None:
        missing = [name for name in _NEEDS[self.kind] if getattr(self, name) is None]
        if missing:
            raise UserError(f"architecture card of kind {self.kind!r} lacks {', '.join(missing)}")

    def to_checkpoint(self) -> dict[str, Any]:
        """The plain-dict form stored as ``ckpt["architecture"]``."""
        return to_dict(self)


def read_card(ckpt: Any, path: Path, kind: Kind) -> ArchitectureCard:
    """The architecture card of a loaded checkpoint ``ckpt`` of ``kind``.

    A checkpoint with an ``architecture`` entry gives it; an earlier one (``hyper_parameters``
    holding the training configs) gives the architecture sections of those configs, and nothing
    else of them is read.

    Raises:
        UserError: not an iss3d checkpoint of ``kind``, or an unreadable card.
    """
    what = _WHAT[kind]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an iss3d {what} (no state_dict)")
    stored = ckpt.get("architecture")
    try:
        if stored is not None:
            card = ArchitectureCard.from_dict(stored)
        else:
            card = _card_from_hyper_parameters(ckpt.get("hyper_parameters"))
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    if card is None or card.kind != kind:
        found = f"a {_WHAT[card.kind]}" if card is not None else "no architecture"
        raise UserError(f"{path}: not an iss3d {what} ({found}; written by `{_WRITER[kind]}`)")
    return card


@dataclass
class Checkpoint:
    """A checkpoint read once: ``data`` as ``torch.load`` gave it, its ``card`` and ``path``.
    Every ``load_*`` below takes one in place of a path, so a file read for one purpose is not
    read again for another."""

    path: Path
    data: dict
    card: ArchitectureCard


def read_checkpoint(path: str | os.PathLike, kind: Kind | None = None) -> Checkpoint:
    """Read ``path`` and its card; ``kind``: the kind it must be (None: SVR, stage 1 or
    E_I + D, whichever it is).

    Raises:
        UserError: unreadable, not an iss3d checkpoint (of ``kind``), or an unreadable card.
    """
    path = Path(path)
    if kind is not None:
        data = safe_load(path, what=_WHAT[kind])
        return Checkpoint(path, data, read_card(data, path, kind))
    data = safe_load(path, what="checkpoint")
    card = None
    if isinstance(data, dict) and "state_dict" in data:
        stored = data.get("architecture")
        try:
            card = (
                ArchitectureCard.from_dict(stored)
                if stored is not None
                else _card_from_hyper_parameters(data.get("hyper_parameters"))
            )
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    if card is None:
        raise UserError(f"{path}: not an iss3d training checkpoint (of fit svr, stage1 or eid)")
    return Checkpoint(path, data, card)


def check_checkpoint(path: str | os.PathLike) -> ArchitectureCard:
    """Load the model a training checkpoint of any kind holds (SVR, stage 1, E_I + D), as a
    check that every tensor has its module's shape; returns its card.

    Raises:
        UserError: unreadable, not an iss3d training checkpoint, or a missing, unexpected or
            wrongly shaped tensor.
    """
    checkpoint = read_checkpoint(path)
    load = {"svr": load_svr, "stage1": load_stage1, "ei-d": load_eid}[checkpoint.card.kind]
    load(checkpoint)
    return checkpoint.card


def _card_from_hyper_parameters(hp: Any) -> ArchitectureCard | None:
    """The card of a checkpoint written before cards, from its configs' architecture sections
    (None when ``hp`` is not what an ``iss3d fit`` command wrote); the kind is read off them."""
    if not isinstance(hp, dict) or not isinstance(hp.get("config"), dict):
        return None
    config = hp["config"]
    size = hp.get("image_size")
    image_size = tuple(size) if size else None
    if hp.get("kind") == "ei-d":
        return ArchitectureCard(
            kind="ei-d",
            decoder=DecoderConfig.from_dict(config.get("decoder")),
            clip_spec=hp.get("clip_spec"),
            clip_embed_dim=_int_or_none(hp.get("clip_embed_dim")),
        )
    if isinstance(hp.get("svr_config"), dict) and "mapper" in config:
        svr = hp["svr_config"]
        return ArchitectureCard(
            kind="stage1",
            decoder=DecoderConfig.from_dict(svr.get("decoder")),
            encoder=EncoderConfig.from_dict(svr.get("encoder")),
            mapper=MapperConfig.from_dict(config["mapper"]),
            clip_spec=hp.get("clip_spec"),
            clip_embed_dim=_int_or_none(hp.get("clip_embed_dim")),
            image_size=image_size,
        )
    if "encoder" in config and "decoder" in config:
        return ArchitectureCard(
            kind="svr",
            decoder=DecoderConfig.from_dict(config["decoder"]),
            encoder=EncoderConfig.from_dict(config["encoder"]),
            image_size=image_size,
        )
    return None


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def _checkpoint(source: str | os.PathLike | Checkpoint, kind: Kind) -> Checkpoint:
    """``source`` read as a checkpoint of ``kind``, or checked to be one when already read."""
    if not isinstance(source, Checkpoint):
        return read_checkpoint(source, kind)
    if source.card.kind != kind:
        found = _WHAT[source.card.kind]
        raise UserError(f"{source.path}: not an iss3d {_WHAT[kind]} (a {found})")
    return source


# -- the models ----------------------------------------------------------------------------------


@dataclass
class SVRModel:
    """A trained encoder E_S and decoder D, in eval mode, and their card.

    ``card.image_size``: (H, W) of the training views, the size :meth:`encode` expects.
    """

    encoder: nn.Module
    decoder: Decoder
    card: ArchitectureCard

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.card.image_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, c_dim) latents."""
        return self.encoder(images)


def load_svr(
    source: str | os.PathLike | Checkpoint, device: str | torch.device = "cpu"
) -> SVRModel:
    """E_S + D from a checkpoint of ``iss3d fit svr`` (or its ``iss3d slim`` copy).

    Raises:
        UserError: missing / unreadable file, not an SVR checkpoint, bad keys or shapes.
    """
    ck = _checkpoint(source, "svr")
    card = ck.card
    encoder, decoder = card.encoder.build(), card.decoder.build()
    load_prefixed(encoder, ck.data["state_dict"], "encoder.", ck.path)
    load_prefixed(decoder, ck.data["state_dict"], "decoder.", ck.path)
    return SVRModel(encoder.to(device).eval(), decoder.to(device).eval(), card)


@dataclass
class Stage1Model:
    """A trained mapper M and decoder D (after stage 1's fine-tuning), in eval mode.

    Attributes:
        mapper: M, (B, clip_embed_dim) CLIP features -> (B, c_dim) latents.
        decoder: D (white decoder-drawn background).
        card: the architecture card (E_S's architecture in ``card.encoder`` when the file
            holds E_S as ``encoder.*``, as ``iss3d fit stage1`` writes it).
    """

    mapper: Mapper
    decoder: Decoder
    card: ArchitectureCard

    @property
    def mapper_config(self) -> MapperConfig:
        return self.card.mapper

    @property
    def decoder_config(self) -> DecoderConfig:
        return self.card.decoder

    @property
    def clip_spec(self) -> str | None:
        """The CLIP model stage 1 was trained with (``load_clip(spec)``)."""
        return self.card.clip_spec

    @property
    def clip_embed_dim(self) -> int:
        return int(self.card.clip_embed_dim)

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.card.image_size

    @torch.no_grad()
    def latent(self, features: torch.Tensor) -> torch.Tensor:
        """(B, clip_embed_dim) CLIP features -> (B, c_dim) shape latents M(f)."""
        return self.mapper(features)


def load_stage1(
    source: str | os.PathLike | Checkpoint, device: str | torch.device = "cpu"
) -> Stage1Model:
    """M + D from a checkpoint of ``iss3d fit stage1`` (or ``iss3d slim`` / ``import-iss``).

    Needs nothing else: the SVR checkpoint and the dataset it was trained from need not exist.

    Raises:
        UserError: missing / unreadable file, not a stage-1 checkpoint, bad keys or shapes.
    """
    ck = _checkpoint(source, "stage1")
    card = ck.card
    mapper, decoder = card.mapper.build(), card.decoder.build()
    load_prefixed(mapper, ck.data["state_dict"], "mapper.", ck.path)
    load_prefixed(decoder, ck.data["state_dict"], "decoder.", ck.path)
    return Stage1Model(mapper.to(device).eval(), decoder.to(device).eval(), card)


def load_stage1_encoder(source: str | os.PathLike | Checkpoint) -> nn.Module:
    """E_S (frozen during stage 1) from a stage-1 checkpoint that stores it, in eval mode."""
    ck = _checkpoint(source, "stage1")
    if ck.card.encoder is None:
        raise UserError(f"{ck.path}: holds no image encoder (converted checkpoints keep M and D)")
    encoder = ck.card.encoder.build()
    load_prefixed(encoder, ck.data["state_dict"], "encoder.", ck.path)
    return encoder.eval()


@dataclass
class EIDModel:
    """E_I + D: a decoder conditioned directly on (B, clip_embed_dim) CLIP features (c = f).

    decoder: D with c_dim = clip_embed_dim (eval mode).
    clip_spec: the CLIP model it was trained with; clip_embed_dim: its feature size.
    """

    decoder: Decoder
    clip_spec: str | None
    clip_embed_dim: int


def load_eid(
    source: str | os.PathLike | Checkpoint, device: str | torch.device = "cpu"
) -> EIDModel:
    """D of a checkpoint written by ``iss3d fit eid``.

    Raises:
        UserError: missing / unreadable file, not an E_I + D checkpoint, bad keys or shapes, a
            decoder whose c_dim is not the CLIP feature size.
    """
    ck = _checkpoint(source, "ei-d")
    card = ck.card
    decoder = card.decoder.build()
    load_prefixed(decoder, ck.data["state_dict"], "decoder.", ck.path)
    if card.decoder.c_dim != card.clip_embed_dim:
        raise UserError(
            f"{ck.path}: decoder c_dim {card.decoder.c_dim} != CLIP feature size "
            f"{card.clip_embed_dim}"
        )
    return EIDModel(decoder.to(device).eval(), card.clip_spec, int(card.clip_embed_dim))


def load_pointnet(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[PointNetCls, PointNetInfo]:
    """A PointNet classifier for FPD, in eval mode; its class count read off ``fc3``.

    Accepts ``iss3d fit pointnet``'s ``pointnet.pt`` or its Lightning ``last.ckpt``, and a bare
    state dict in TreeGAN's naming (its published FPD classifier), optionally wrapped by
    DataParallel (``module.``).

    Raises:
        UserError: missing / unreadable file, not a PointNet state, a missing, unexpected or
            wrongly shaped key.
    """
    path = Path(path)
    obj = safe_load(path, what="PointNet checkpoint")
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a PointNet checkpoint (a {type(obj).__name__})")
    info: dict[str, Any] = {}
    source = "TreeGAN-layout state dict"
    if obj.get("format") == POINTNET_FORMAT:
        state = obj.get("state_dict")
        info = {k: obj.get(k) for k in ("categories", "num_points")}
        info["extra"] = obj.get("extra") or {}
        source = "iss3d fit pointnet"
    elif isinstance(obj.get("state_dict"), dict):  # a Lightning checkpoint
        state = obj["state_dict"]
        hp = obj.get("hyper_parameters") or {}
        info = {"categories": hp.get("categories"), "num_points": None, "extra": {}}
        source = "iss3d fit pointnet (Lightning checkpoint)"
    else:
        state = obj
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: not a PointNet checkpoint (no state dict)")
    mapped = {map_pointnet_key(str(k)): v for k, v in state.items()}
    fc3 = mapped.get("fc3.weight")
    if not isinstance(fc3, torch.Tensor) or fc3.dim() != 2 or fc3.shape[1] != 256:
        raise UserError(
            f"{path}: not a TreeGAN-layout PointNet classifier (no 256-input 'fc3.weight')"
        )
    model = PointNetCls(k=int(fc3.shape[0]))
    load_state_into(model, mapped, path)
    categories = info.get("categories")
    if categories is not None and len(categories) != model.k:
        raise UserError(
            f"{path}: lists {len(categories)} categories but the classifier has {model.k} outputs"
        )
    return model.to(device).eval(), PointNetInfo(
        k=model.k,
        categories=list(categories) if categories is not None else None,
        num_points=info.get("num_points"),
        source=source,
        extra=dict(info.get("extra") or {}),
    )


def import_iss_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    clip_spec: str = "ViT-B-32:openai",
    image_size: tuple[int, int] = (224, 224),
) -> Stage1Model:
    """Convert an official ISS stage-1 checkpoint into a stage-1 file ``generate`` reads.

    The mapper (``generator.*``) and the decoder (``decoder.*``) are kept, their architectures
    read off the weights (:func:`iss3d.models.checkpoints.load_iss_checkpoint`) onto the card.
    The CLIP weights in the file are not copied: ``clip_spec`` names the model (ISS used
    OpenAI's ViT-B/32). Written to a temporary name, then renamed; the result is loaded back as
    a check.

    Raises:
        UserError: unreadable or not an ISS checkpoint.
    """
    iss = load_iss_checkpoint(src)
    mapper, decoder = iss.build_mapper(), iss.build_decoder()
    card = ArchitectureCard(
        kind="stage1",
        decoder=iss.decoder_config,
        mapper=iss.mapper_config,
        clip_spec=clip_spec,
        clip_embed_dim=int(iss.mapper_config.in_dim),
        image_size=tuple(image_size),
    )
    state = {f"mapper.{k}": v for k, v in mapper.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    ckpt = {
        "state_dict": state,
        "architecture": card.to_checkpoint(),
        "hyper_parameters": {"converted_from": f"the ISS checkpoint {Path(src).name}"},
    }
    with atomic_output(dst) as tmp:
        torch.save(ckpt, tmp)
    return load_stage1(dst)
