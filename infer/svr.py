"""Use a trained SVR model (:func:`iss3d.models.loaders.load_svr`): read input images, evaluate
single-view IoU."""

from __future__ import annotations

import os

import numpy as np
import torch

from iss3d.core.errors import UserError
from iss3d.data.carve import ground_truth_source
from iss3d.data.images import composite_over_white, read_image
from iss3d.data.reader import MultiViewFile
from iss3d.models.encoder import check_images
from iss3d.models.loaders import SVRModel
from iss3d.models.march import MarchConfig
from iss3d.models.metrics import depth_l1, mask_iou, occupancy_iou
from iss3d.models.renderer import Renderer


def image_tensor(path: str | os.PathLike, model: SVRModel) -> torch.Tensor:
    """Read an input image as (1, 3, H, W) in [0, 1]; RGBA is composited over white.

    Raises UserError when its size differs from the training views' or it is not RGB(A).
    """
    array = read_image(path)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise UserError(f"{path}: expected an RGB or RGBA image, got shape {array.shape}")
    if array.shape[2] == 4:
        array = composite_over_white(array)
    if model.image_size is not None and tuple(array.shape[:2]) != tuple(model.image_size):
        h, w = model.image_size
        raise UserError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} pixels, "
            f"the model was trained on {w}x{h}"
        )
    tensor = torch.from_numpy(array).permute(2, 0, 1).float().div(255.0)[None]
    check_images(tensor)
    return tensor


@torch.no_grad()
def evaluate_svr(
    model: SVRModel,
    file: MultiViewFile,
    split: str = "test",
    input_views: int = 1,
    n_steps: int = 128,
    device: str | torch.device = "cpu",
    max_objects: int | None = None,
) -> dict:
    """Single-view reconstruction quality on ``split``.

    For each object and each of its first ``input_views`` views: encode the view, then
    - iou: volumetric IoU at the file's uniform occupancy samples (logit > 0 vs ground truth),
      where the file has occupancy (exact, or a visual hull carved by ``iss3d data carve``:
      ``ground_truth`` says which);
    - mask_iou, depth_l1: a full render of the next view (a view the model was not given)
      against its mask and depth (depth error on pixels both hit): images, masks and cameras
      are all they need, so they are reported for any file.
    Returns per-object rows, the means and per-category means of the main metric (``iou``, or
    ``mask_iou`` without occupancy).
    """
    truth = ground_truth_source(file)
    objects = file.objects_in(split)
    if max_objects is not None:
        objects = objects[:max_objects]
    if len(objects) == 0:
        raise UserError(f"{file.path}: no objects in split {split!r}")
    renderer = Renderer(MarchConfig(n_steps=n_steps, method="grid"))
    rows = []
    for obj in objects:
        views = file.views_of(int(obj))
        occ = file.read_occupancy(int(obj))
        if occ is not None:
            points = torch.from_numpy(occ.points[: occ.n_uniform]).to(device)[None]
            inside = torch.from_numpy(occ.inside[: occ.n_uniform]).to(device)[None]
        for k in range(min(input_views, len(views))):
            source = file.read_view(int(views[k]))
            target = file.read_view(int(views[(k + 1) % len(views)]))
            image = (
                torch.from_numpy(source.rgb).permute(2, 0, 1).float().div(255.0)[None].to(device)
            )
            c = model.encode(image)
            render = renderer.render_images(
                model.decoder,
                c,
                *(
                    torch.from_numpy(np.asarray(m, np.float32))[None].to(device)
                    for m in (target.world_mat, target.camera_mat, target.scale_mat)
                ),
                file.height,
                file.width,
                file.pixel_convention,
            )
            gt_mask = torch.from_numpy(target.mask)[None, None].float().to(device)
            row = {
                "object_id": str(file.object_ids[obj]),
                "category": str(file.categories[obj]),
                "input_view": int(views[k]),
                "mask_iou": float(mask_iou(render["mask"], gt_mask)[0]),
            }
            if occ is not None:
                row["iou"] = float(occupancy_iou(model.decoder, c, points, inside)[0])
            if target.depth is not None:
                gt_depth = torch.from_numpy(target.depth)[None, None].to(device)
                row["depth_l1"] = float(depth_l1(render["depth"], gt_depth)[0])
            rows.append(row)
    means = {
        key: _mean_of_finite([r[key] for r in rows])
        for key in ("iou", "mask_iou", "depth_l1")
        if key in rows[0]
    }
    main = "iou" if truth is not None else "mask_iou"
    per_category: dict[str, list[float]] = {}
    for r in rows:
        per_category.setdefault(r["category"], []).append(r[main])
    return {
        "split": split,
        "objects": len(objects),
        "input_views": input_views,
        "ground_truth": truth or "views",
        "means": means,
        f"{main}_per_category": {k: float(np.mean(v)) for k, v in sorted(per_category.items())},
        "rows": rows,
    }


def _mean_of_finite(values: list[float]) -> float:
    """Mean over the finite values (depth error is NaN for a render with no common hits)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
