"""``iss3d eval stage1``: how well a stage-1 checkpoint's mapper fits, on any split.

The figures are those stage-1 validation logs (:class:`iss3d.train.stage1.Stage1System`), computed
over a whole split with the checkpoint's own mapper, fine-tuned decoder and SVR encoder:

- ``cos``: mean cosine(M(f_I), E_S(I)) over the objects' input views;
- ``iou_svr``, ``iou_mapper``: volumetric IoU of the shapes decoded from E_S(I) and M(f_I)
  (uniform ground-truth samples, logit > 0), and ``iou_ratio`` = iou_mapper / iou_svr;
- ``iou_text``: IoU of the shapes decoded from M(f_T), f_T the CLIP text feature of each
  object's first caption (ISS without stage 2), and ``iou_text_ratio`` against iou_svr;
- ``bg_whiteness``: mean colour of rendered background pixels of ``render_objects`` objects.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from iss3d.core.errors import UserError
from iss3d.data.carve import ground_truth_source
from iss3d.data.reader import MultiViewFile
from iss3d.models.loaders import SVRModel, load_stage1, load_stage1_encoder, read_checkpoint

__all__ = ["evaluate_stage1"]


def evaluate_stage1(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "test",
    clip_spec: str | None = None,
    n_steps: int = 64,
    render_objects: int = 8,
    device: torch.device | str = "cpu",
) -> dict:
    """Stage-1 figures of ``checkpoint`` over every object of ``split`` in ``data``.

    Args:
        checkpoint: a ``last.ckpt`` of ``iss3d fit stage1``.
        data: a multi-view HDF5: volumetric IoU where it has occupancy (exact, or carved by
            ``iss3d data carve``), mask IoU of rendered held-out views in any case (captions
            for ``iou_text``).
        split: the objects to measure.
        clip_spec: the CLIP model (default: the spec the checkpoint was trained with).
        n_steps: march steps of the background renders.
        render_objects: objects rendered in full for ``bg_whiteness``.
        device: where to run.

    Returns:
        ``{"split", "objects", "checkpoint", "data", "clip", "ground_truth", "means": {figure:
        value}}``; ``ground_truth``: ``"exact"``, ``"visual_hull"`` or ``"views"``.
    """
    import pytorch_lightning as pl

    from iss3d.models.clip import load_clip
    from iss3d.train.datamodule import MultiViewDataModule
    from iss3d.train.stage1 import Stage1Config, Stage1System, check_dimensions

    device = torch.device(device)
    ck = read_checkpoint(checkpoint, "stage1")
    model = load_stage1(ck)
    svr = SVRModel(load_stage1_encoder(ck), model.decoder, model.card)
    hp = ck.data.get("hyper_parameters") or {}
    if not isinstance(hp.get("config"), dict):
        raise UserError(
            f"{checkpoint}: holds no stage-1 training config (written by `iss3d fit stage1`)"
        )
    cfg = Stage1Config.from_dict(hp["config"])
    spec = clip_spec or model.clip_spec
    if not spec:
        raise UserError(f"{checkpoint}: names no CLIP model; give --clip SPEC")
    clip = load_clip(spec, device)
    with MultiViewFile(data) as mv:
        truth = ground_truth_source(mv) or "views"
        objects = len(mv.objects_in(split))
        mv.check_ground_truth(mv.objects_in(split))  # before Lightning starts (one-line errors)
    if objects == 0:
        raise UserError(f"{data}: no objects in split {split!r}")
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, path=str(data), val_split=split),
        val=dataclasses.replace(
            cfg.val, n_steps=n_steps, render_objects=render_objects, image_objects=0
        ),
    )
    check_dimensions(cfg, svr, clip)
    system = Stage1System(cfg, svr=svr, clip=clip)
    system.mapper.load_state_dict(model.mapper.state_dict())
    datamodule = MultiViewDataModule(cfg.data)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1.0,
    )
    (logged,) = trainer.validate(system, datamodule=datamodule, verbose=False)
    means = {k.removeprefix("val/"): float(v) for k, v in logged.items()}
    return {
        "split": split,
        "objects": objects,
        "checkpoint": str(checkpoint),
        "data": str(data),
        "clip": spec,
        "ground_truth": truth,
        "means": means,
    }
