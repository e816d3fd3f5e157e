"""Use a stage-1 checkpoint: the mapper M and the fine-tuned decoder D (stage 2, generation)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from iss3d.core.errors import UserError
from iss3d.models.checkpoints import load_prefixed, safe_load
from iss3d.models.decoder import Decoder, DecoderConfig
from iss3d.models.mapper import Mapper, MapperConfig
from iss3d.train.stage1 import Stage1Config
from iss3d.train.svr import SVRConfig

__all__ = ["Stage1Model", "import_iss_checkpoint", "load_stage1"]


@dataclass
class Stage1Model:
    """A trained mapper and decoder, in eval mode, with what is needed to use them.

    Attributes:
        mapper: M, (B, clip_embed_dim) CLIP features -> (B, c_dim) latents.
        decoder: D after stage 1's fine-tuning (white decoder-drawn background).
        mapper_config, decoder_config: their architectures.
        clip_spec: the CLIP model stage 1 was trained with (``iss3d.models.clip.load_clip(spec)``).
        clip_embed_dim: its feature size (= ``mapper_config.in_dim``).
        image_size: (H, W) of the training views, or None.
        config: the stage-1 config; svr_config: the SVR model's config.
    """

    mapper: Mapper
    decoder: Decoder
    mapper_config: MapperConfig
    decoder_config: DecoderConfig
    clip_spec: str | None
    clip_embed_dim: int
    image_size: tuple[int, int] | None
    config: Stage1Config
    svr_config: SVRConfig

    @torch.no_grad()
    def latent(self, features: torch.Tensor) -> torch.Tensor:
        """(B, clip_embed_dim) CLIP features -> (B, c_dim) shape latents M(f)."""
        return self.mapper(features)


def load_stage1(path: str | os.PathLike, device: str | torch.device = "cpu") -> Stage1Model:
    """Load a checkpoint written by ``iss3d fit stage1`` (Lightning's .ckpt, weights only).

    Needs nothing else: the SVR checkpoint and the dataset it names need not exist.

    Raises:
        UserError: missing / unreadable file, not a stage-1 checkpoint, bad keys or shapes.
    """
    path = Path(path)
    ckpt = safe_load(path, what="stage-1 checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"{path}: not an iss3d checkpoint (no state_dict / hyper_parameters)")
    hp = ckpt["hyper_parameters"]
    if not all(k in hp for k in ("config", "svr_config", "clip_embed_dim")):
        raise UserError(f"{path}: not an iss3d stage-1 checkpoint (no mapper / SVR configs)")
    config = Stage1Config.from_dict(hp["config"])
    svr_config = SVRConfig.from_dict(hp["svr_config"])
    mapper, decoder = config.mapper.build(), svr_config.decoder.build()
    state = ckpt["state_dict"]
    load_prefixed(mapper, state, "mapper.", path)
    load_prefixed(decoder, state, "decoder.", path)
    size = hp.get("image_size")
    return Stage1Model(
        mapper=mapper.to(device).eval(),
        decoder=decoder.to(device).eval(),
        mapper_config=config.mapper,
        decoder_config=svr_config.decoder,
        clip_spec=hp.get("clip_spec"),
        clip_embed_dim=int(hp["clip_embed_dim"]),
        image_size=tuple(size) if size else None,
        config=config,
        svr_config=svr_config,
    )


def import_iss_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    clip_spec: str = "ViT-B-32:openai",
    image_size: tuple[int, int] = (224, 224),
) -> Stage1Model:
    """Convert an official ISS stage-1 checkpoint into a stage-1 file ``generate`` reads.

    The mapper (``generator.*``) and the decoder (``decoder.*``) are kept, their architectures
    read off the weights (:func:`iss3d.models.checkpoints.load_iss_checkpoint`); the configs are
    ``stage1/paper`` and ``svr/paper`` with those sizes. The CLIP weights in the file are not
    copied: ``clip_spec`` names the model (ISS used OpenAI's ViT-B/32). Written to a temporary
    name, then renamed; the result is loaded back as a check.

    Raises:
        UserError: unreadable or not an ISS checkpoint, or a mapper whose input size is not the
            named CLIP's (checked when stage 2 loads it).
    """
    from iss3d.core.atomic import atomic_output
    from iss3d.core.config import load_config
    from iss3d.models.checkpoints import load_iss_checkpoint

    iss = load_iss_checkpoint(src)
    origin = f"converted from the ISS checkpoint {Path(src).name}"
    m, d = iss.mapper_config, iss.decoder_config
    config = load_config(
        Stage1Config,
        "stage1/paper",
        [
            ("data.path", origin),
            ("clip", clip_spec),
            *((f"mapper.{k}", v) for k, v in vars(m).items()),
        ],
    )
    svr_config = load_config(
        SVRConfig,
        "svr/paper",
        [
            ("data.path", origin),
            ("encoder.c_dim", d.c_dim),
            *((f"decoder.{k}", v) for k, v in vars(d).items()),
        ],
    )
    mapper, decoder = iss.build_mapper(), iss.build_decoder()
    state = {f"mapper.{k}": v for k, v in mapper.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    ckpt = {
        "state_dict": state,
        "hyper_parameters": {
            "config": config.to_dict(),
            "svr_config": svr_config.to_dict(),
            "image_size": list(image_size),
            "clip_spec": clip_spec,
            "clip_embed_dim": int(m.in_dim),
        },
    }
    with atomic_output(dst) as tmp:
        torch.save(ckpt, tmp)
    return load_stage1(dst)
