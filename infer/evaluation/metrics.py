"""Metrics of ``iss3d evaluate``: FID, FPD, CLIP R-precision, IoU and colour accuracy.

- Frechet distance (:func:`frechet_distance`): torchmetrics' ``FrechetInceptionDistance`` fed
  with features computed beforehand (a pass-through feature module), in float64. FID is the
  Frechet distance of image features (:func:`image_feature_network`: Inception-v3 pool3 with
  torch-fidelity's weights, the same as pytorch-fid's, when torch-fidelity and the weights are
  on disk; otherwise a CLIP image tower or a TorchScript network given by spec); FPD the one
  of PointNet features of normalised clouds (:func:`pointnet_features`, all clouds, the last
  partial batch included).
- CLIP R-precision (:func:`r_precision`): per generated shape, all prompts of the set ranked
  by the judge CLIP's score on the shape's renders (:func:`judge_scores`: mean cosine over
  views); R@1 is the share ranked first. Ties count against the shape.
- IoU (:func:`lattice_occupancy`): a shape is kept as occupancy logits on a lattice over the
  padded cube; its occupancy at ground-truth sample points comes by trilinear interpolation.
- Colour (:func:`dominant_color`): surface colours classified to the nearest named colour of a
  palette (the synthetic world's), the most frequent one wins.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iss3d.core.errors import UserError

__all__ = [
    "INCEPTION_WEIGHT_FILES",
    "ImageFeatureNetwork",
    "PassThroughFeatures",
    "dominant_color",
    "find_inception_weights",
    "frechet_distance",
    "image_feature_network",
    "image_features",
    "judge_scores",
    "lattice_occupancy",
    "occupancy_iou_at",
    "parse_prompt",
    "pointnet_features",
    "r_precision",
    "sample_cloud",
]

#: File names of the FID Inception weights (torch-fidelity's and pytorch-fid's: the same
#: network, converted from the TensorFlow 2015-12-05 graph).
INCEPTION_WEIGHT_FILES = (
    "weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
)


# -- Frechet distance ----------------------------------------------------------------------


class PassThroughFeatures(nn.Module):
    """A "feature network" that returns its input: lets torchmetrics' FID take features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (float64).

    ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), unbiased covariances; computed by
    torchmetrics' ``FrechetInceptionDistance`` on the given features.

    Args:
        real, fake: (N, D) and (M, D) features, N, M >= 2.

    Raises:
        ValueError: fewer than two samples in a set, or different feature sizes.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    a = torch.as_tensor(np.asarray(real) if not torch.is_tensor(real) else real).double().cpu()
    b = torch.as_tensor(np.asarray(fake) if not torch.is_tensor(fake) else fake).double().cpu()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(a.shape)}, {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least two samples in each set")
    metric = FrechetInceptionDistance(feature=PassThroughFeatures(a.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(a, real=True)
    metric.update(b, real=False)
    value = float(metric.compute())
    return max(value, 0.0)  # tiny negative values are round-off


# -- image features (FID) ------------------------------------------------------------------


@dataclass
class ImageFeatureNetwork:
    """An image feature network for FID.

    name: what the report calls it, e.g. ``"inception-v3 pool3 (2048)"`` or
        ``"clip:runs/clip-judge/clip.pt"``.
    dim: feature size.
    fn: (B, 3, H, W) float [0, 1] images -> (B, dim) features (no gradients).
    paper_comparable: True only for the Inception network (FID values comparable to papers).
    """

    name: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    paper_comparable: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def _torch_fidelity_available() -> bool:
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    return bool(_TORCH_FIDELITY_AVAILABLE)


def find_inception_weights() -> Path | None:
    """The FID Inception weights in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), or
    None. Nothing is downloaded."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _inception(weights: Path, device: torch.device) -> ImageFeatureNetwork:
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights),
        ).to(device)
    except Exception as err:  # torch-fidelity reports bad files in many ways
        raise UserError(f"{weights}: cannot load as the FID Inception weights ({err})") from None

    @torch.no_grad()
    def fn(images: torch.Tensor) -> torch.Tensor:
        x = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return net(x.to(device)).double().cpu()

    return ImageFeatureNetwork("inception-v3 pool3 (2048)", 2048, fn, True)


def _clip_network(clip, name: str) -> ImageFeatureNetwork:
    @torch.no_grad()
    def fn(images: torch.Tensor) -> torch.Tensor:
        return clip.encode_image(images.to(clip.device)).double().cpu()

    return ImageFeatureNetwork(name, int(clip.embed_dim), fn, False)


def _torchscript(path: Path, device: torch.device) -> ImageFeatureNetwork:
    if not path.is_file():
        raise UserError(f"{path}: no such file (FID feature network)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated, still supported
            net = torch.jit.load(str(path), map_location=device).eval()
    except Exception as err:
        raise UserError(f"{path}: cannot load as a TorchScript feature network ({err})") from None

    @torch.no_grad()
    def fn(images: torch.Tensor) -> torch.Tensor:
        out = net(images.to(device))
        return out.reshape(out.shape[0], -1).double().cpu()

    with torch.no_grad():
        dim = int(fn(torch.full((1, 3, 64, 64), 0.5)).shape[1])
    return ImageFeatureNetwork(f"torchscript:{path}", dim, fn, False)


def image_feature_network(
    spec: str, device: torch.device | str = "cpu", judge=None
) -> tuple[ImageFeatureNetwork | None, str | None]:
    """Resolve an FID feature-network spec.

    Specs:
        ``inception``: Inception-v3 pool3 with torch-fidelity's weights from the torch hub cache
            (:func:`find_inception_weights`); ``inception:PATH``: from a weights file. Needs the
            ``torch-fidelity`` package (``pip install torch-fidelity``).
        ``clip:SPEC``: the image tower of a CLIP model (:func:`iss3d.models.clip.load_clip` spec;
            unit-norm embeddings).
        ``judge``: the judge CLIP's image tower (``judge`` must be given).
        ``torchscript:PATH``: a scripted module, (B, 3, H, W) [0, 1] -> (B, D).
        ``auto``: ``inception`` when it is available, else ``judge`` when there is a judge.
        ``none``: no FID.

    Returns:
        (network, None), or (None, reason) when ``auto`` / ``none`` finds nothing to use.

    Raises:
        UserError: an explicit spec that cannot be honoured (missing package, file, model).
    """
    device = torch.device(device)
    kind, _, arg = spec.partition(":")
    if spec == "none":
        return None, "FID switched off (--fid-features none)"
    if spec == "auto":
        weights = find_inception_weights()
        if _torch_fidelity_available() and weights is not None:
            return _inception(weights, device), None
        why = (
            "torch-fidelity is not installed"
            if not _torch_fidelity_available()
            else f"no Inception weights in {Path(torch.hub.get_dir()) / 'checkpoints'}"
        )
        if judge is not None:
            return _clip_network(judge, f"clip:{judge.spec} (judge; {why})"), None
        return None, f"no FID feature network: {why} and there is no judge CLIP"
    if kind == "inception":
        if not _torch_fidelity_available():
            raise UserError(
                "--fid-features inception needs the torch-fidelity package "
                "(pip install torch-fidelity), or use clip:SPEC"
            )
        weights = Path(arg) if arg else find_inception_weights()
        if weights is None:
            folder = Path(torch.hub.get_dir()) / "checkpoints"
            raise UserError(
                f"--fid-features inception: no weights in {folder} "
                f"({' or '.join(INCEPTION_WEIGHT_FILES)}); give inception:PATH"
            )
        if not weights.is_file():
            raise UserError(f"{weights}: no such file (FID Inception weights)")
        return _inception(weights, device), None
    if kind == "clip" and arg:
        from iss3d.models.clip import load_clip

        return _clip_network(load_clip(arg, device), f"clip:{arg}"), None
    if spec == "judge":
        if judge is None:
            raise UserError("--fid-features judge: there is no judge CLIP (give --judge SPEC)")
        return _clip_network(judge, f"clip:{judge.spec} (judge)"), None
    if kind == "torchscript" and arg:
        return _torchscript(Path(arg), device), None
    raise UserError(
        f"--fid-features {spec!r}: expected auto, none, inception[:PATH], clip:SPEC, judge or "
        "torchscript:PATH"
    )


def image_features(
    network: ImageFeatureNetwork, images: np.ndarray | Sequence[np.ndarray], batch: int = 64
) -> torch.Tensor:
    """(N, H, W, 3) uint8 images -> (N, D) float64 features, in batches (all images used)."""
    out = []
    n = len(images)
    for i in range(0, n, batch):
        chunk = np.stack([np.asarray(x) for x in images[i : i + batch]])
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div(255.0)
        out.append(network(x).double())
    if not out:
        return torch.zeros(0, network.dim, dtype=torch.float64)
    return torch.cat(out)


# -- point clouds (FPD) -------------------------------------------------------------------


def sample_cloud(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of the (P, 3) points: without replacement when P >= n, else with. (n, 3) float32.

    Raises:
        ValueError: an empty cloud.
    """
    if len(points) == 0:
        raise ValueError("cannot sample from an empty point cloud")
    idx = rng.choice(len(points), size=n, replace=len(points) < n)
    return np.asarray(points, dtype=np.float32)[idx]


@torch.no_grad()
def pointnet_features(
    model: nn.Module, clouds: np.ndarray | torch.Tensor, batch: int = 64
) -> torch.Tensor:
    """FPD features of clouds: each centred and scaled to the unit sphere, then the PointNet's
    [global | fc1 | fc2 | logits] feature. Every cloud is used (no partial batch is dropped).

    Args:
        model: :class:`iss3d.models.pointnet.PointNetCls` (put in eval mode here).
        clouds: (N, P, 3).

    Returns:
        (N, 1024 + 512 + 256 + k) float64 on the CPU.
    """
    from iss3d.models.pointnet import normalize_clouds

    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(clouds) if not torch.is_tensor(clouds) else clouds).float()
    out = []
    for i in range(0, len(x), batch):
        chunk = normalize_clouds(x[i : i + batch].to(device))
        out.append(model(chunk).features.double().cpu())
    if not out:
        return torch.zeros(0, model.feature_dim, dtype=torch.float64)
    return torch.cat(out)


# -- CLIP R-precision ------------------------------------------------------------------------


@torch.no_grad()
def judge_scores(
    judge, renders: Sequence[np.ndarray], texts: Sequence[str], batch: int = 64
) -> torch.Tensor:
    """The judge CLIP's score of every prompt for every shape.

    Args:
        judge: a :class:`iss3d.models.clip.ClipModel`.
        renders: S arrays (V, H, W, 3) uint8, the views of each shape.
        texts: the P prompts of the set.

    Returns:
        (S, P) float64: mean over a shape's views of cos(E_I(view), E_T(prompt)).
    """
    text = judge.encode_text(list(texts)).double().cpu()  # (P, D), unit
    flat = [v for views in renders for v in views]
    counts = [len(views) for views in renders]
    emb = []
    for i in range(0, len(flat), batch):
        x = torch.from_numpy(np.stack(flat[i : i + batch])).permute(0, 3, 1, 2).float() / 255.0
        emb.append(judge.encode_image(x.to(judge.device)).double().cpu())
    if not emb:
        return torch.zeros(0, len(texts), dtype=torch.float64)
    cos = torch.cat(emb) @ text.T  # (sum V, P)
    return torch.stack([part.mean(0) for part in torch.split(cos, counts)])


def r_precision(scores: torch.Tensor, true_index: Sequence[int] | torch.Tensor) -> dict:
    """R-precision of ranking prompts per shape.

    Args:
        scores: (S, P) the judge's score of prompt p for shape s.
        true_index: (S,) the prompt each shape was generated from.

    Returns:
        ``{"r_at_1": share ranked first, "r_at_5": share in the top 5, "mean_rank":,
        "ranks": per shape (1 = best)}``; a tie with another prompt counts against the shape.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    t = torch.as_tensor(list(true_index), dtype=torch.long)
    if scores.dim() != 2 or len(t) != scores.shape[0]:
        raise ValueError("scores must be (S, P) with one true index per shape")
    if len(t) == 0:
        return {"r_at_1": None, "r_at_5": None, "mean_rank": None, "ranks": []}
    own = scores.gather(1, t[:, None])
    ahead = (scores >= own).sum(1) - 1  # prompts scoring at least as high, itself excluded
    ranks = (ahead + 1).tolist()
    return {
        "r_at_1": float(np.mean([r == 1 for r in ranks])),
        "r_at_5": float(np.mean([r <= 5 for r in ranks])),
        "mean_rank": float(np.mean(ranks)),
        "ranks": [int(r) for r in ranks],
    }


# -- IoU ----------------------------------------------------------------------------------------


def lattice_occupancy(grid: torch.Tensor | np.ndarray, half: float, points) -> torch.Tensor:
    """Occupancy logits at points, trilinearly interpolated from a lattice.

    Args:
        grid: (R+1, R+1, R+1) logits at ``linspace(-half, half, R+1)`` along x, y, z, indexed
            [x, y, z] (as :func:`iss3d.models.mesh.occupancy_grid`).
        half: the lattice's half side (0.5 + padding / 2).
        points: (P, 3) object-frame points; outside the lattice the nearest border value.

    Returns:
        (P,) float32 logits.
    """
    g = torch.as_tensor(np.asarray(grid) if not torch.is_tensor(grid) else grid).float()
    p = torch.as_tensor(np.asarray(points) if not torch.is_tensor(points) else points).float()
    # grid_sample's last coordinate indexes the input's last dim: [x, y, z] storage -> (z, y, x)
    coords = (p[:, [2, 1, 0]] / half).reshape(1, 1, 1, -1, 3)
    out = F.grid_sample(
        g[None, None], coords, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.reshape(-1)


def occupancy_iou_at(grid: torch.Tensor | np.ndarray, half: float, points, inside) -> float:
    """Volumetric IoU of a lattice shape (logit > 0) against ground-truth occupancy at
    (P, 3) ``points`` with (P,) bool ``inside``; 1 when both are empty."""
    pred = lattice_occupancy(grid, half, points) > 0
    gt = torch.as_tensor(np.asarray(inside)).bool().reshape(-1)
    union = (pred | gt).sum().item()
    return 1.0 if union == 0 else (pred & gt).sum().item() / union


# -- colour and prompt parsing ---------------------------------------------------------------


def dominant_color(
    rgb: np.ndarray, palette: Mapping[str, Sequence[int]]
) -> tuple[str | None, dict[str, float]]:
    """The most frequent named colour among surface colours.

    Args:
        rgb: (N, 3) uint8 colours (points uniform by area, so counts are areas).
        palette: colour name -> (r, g, b) 0..255.

    Returns:
        (name or None for no points, share of points per name).
    """
    if len(rgb) == 0:
        return None, {}
    names = list(palette)
    ref = np.asarray([palette[n] for n in names], dtype=np.float32)
    x = np.asarray(rgb, dtype=np.float32)
    nearest = np.argmin(((x[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(names)) / len(x)
    shares = {names[i]: float(counts[i]) for i in np.flatnonzero(counts)}
    return names[int(np.argmax(counts))], shares


def parse_prompt(
    prompt: str, categories: Sequence[str], colors: Sequence[str]
) -> tuple[str | None, str | None]:
    """(category, colour) named in a prompt: the first word that is a category and the first
    that is a colour (the synthetic world's captions name the main colour first: "a red
    chair", "a chair that is red", "a chair with a red seat and blue legs"); None if absent."""
    words = re.findall(r"[a-z]+", prompt.lower())
    cat = next((w for w in words if w in set(categories)), None)
    col = next((w for w in words if w in set(colors)), None)
    return cat, col
