"""PyTorch datasets over a multi-view HDF5 file: one item per view, or one per object.

Randomness (pixel samples, caption choice, which views of an object) comes from a numpy
Generator seeded with ``(seed, epoch, index)``, never from global state, so an item depends only
on those three numbers: the same in any DataLoader worker, different across epochs.

The epoch comes either with the index (``dataset[(index, epoch)]``, what :class:`EpochSampler`
yields, which also works with persistent workers) or from :meth:`set_epoch` (for plain integer
indices; in worker processes it only takes effect when the workers are started afresh).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from iss3d.core.errors import UserError
from iss3d.data.pixels import sample_pixels
from iss3d.data.reader import MultiViewFile
from iss3d.data.records import SPLITS, ViewSample

Index = int | tuple[int, int]


def open_file(path_or_file: str | os.PathLike | MultiViewFile) -> MultiViewFile:
    """A :class:`MultiViewFile` for a path, or the given one unchanged."""
    if isinstance(path_or_file, MultiViewFile):
        return path_or_file
    return MultiViewFile(path_or_file)


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {SPLITS} (or None for all objects)")


def _check_sampling(pixels: int | None, inside_fraction: float | None) -> None:
    if pixels is not None and (not isinstance(pixels, int) or pixels <= 0):
        raise UserError(f"pixels must be a positive integer or None, got {pixels!r}")
    if inside_fraction is not None and not 0.0 <= inside_fraction <= 1.0:
        raise UserError(f"inside_fraction must be in [0, 1] or None, got {inside_fraction!r}")


class _MultiViewDataset(Dataset):
    """What both datasets share: the file, the split's objects, seeding, view conversion."""

    def __init__(
        self,
        path_or_file: str | os.PathLike | MultiViewFile,
        split: str | None,
        pixels: int | None,
        inside_fraction: float | None,
        seed: int,
    ):
        _check_split(split)
        _check_sampling(pixels, inside_fraction)
        self.file = open_file(path_or_file)
        self.split = split
        self.pixels = pixels
        self.inside_fraction = inside_fraction
        self.seed = int(seed)
        self.epoch = 0
        self.objects = self.file.objects_in(split)
        labels = {name: i for i, name in enumerate(self.file.category_names)}
        self._labels = np.array([labels[c] for c in self.file.categories], dtype=np.int64)

    @property
    def category_names(self) -> list[str]:
        """Category label ``i`` is ``category_names[i]`` (over the whole file, not the split)."""
        return self.file.category_names

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices."""
        self.epoch = int(epoch)

    def _rng(self, index: Index) -> tuple[int, np.random.Generator]:
        if isinstance(index, tuple | list):
            index, epoch = int(index[0]), int(index[1])
        else:
            index, epoch = int(index), self.epoch
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        return index, np.random.default_rng([self.seed, epoch, index])

    def _caption(self, obj: int, rng: np.random.Generator) -> str:
        captions = self.file.captions[obj]
        return str(captions[rng.integers(len(captions))]) if captions else ""

    def _view_tensors(self, view: ViewSample, rng: np.random.Generator) -> dict:
        """One view as tensors: image (3, H, W), mask (1, H, W), depth, matrices, pixels."""
        # numpy writes the (3, H, W) float image C-contiguous in one pass (a permuted torch view
        # would stay strided and make collation several times slower).
        image = np.empty((3, *view.rgb.shape[:2]), np.float32)
        np.divide(view.rgb.transpose(2, 0, 1), np.float32(255.0), out=image)
        item = {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(view.mask[None].astype(np.float32)),
        }
        if view.depth is not None:
            item["depth"] = torch.from_numpy(view.depth[None].astype(np.float32, copy=False))
        item["world_mat"] = torch.from_numpy(np.asarray(view.world_mat, np.float32))
        item["camera_mat"] = torch.from_numpy(np.asarray(view.camera_mat, np.float32))
        item["scale_mat"] = torch.from_numpy(np.asarray(view.scale_mat, np.float32))
        if self.pixels is not None:
            px = sample_pixels(
                view.rgb,
                view.mask,
                view.depth,
                self.pixels,
                rng,
                self.inside_fraction,
                self.file.pixel_convention,
            )
            item["pixel_xy"] = torch.from_numpy(px.xy)
            item["pixel_rgb"] = torch.from_numpy(px.rgb)
            item["pixel_mask"] = torch.from_numpy(px.mask).float()
            if px.depth is not None:
                item["pixel_depth"] = torch.from_numpy(px.depth)
        return item


class ViewDataset(_MultiViewDataset):
    """One item per view of the objects in ``split``.

    Args:
        path_or_file: an iss3d multi-view HDF5 path or an open :class:`MultiViewFile`.
        split: "train", "val", "test", or None for every object.
        pixels: when set, also sample this many pixels per view (see data/pixels.py).
        inside_fraction: share of sampled pixels on the object; None for uniform.
        seed: base seed of every item's randomness.

    Item (dict), H x W the file's view size, n = ``pixels``:
        image: (3, H, W) float32 in [0, 1]; mask: (1, H, W) float32 in {0, 1};
        depth: (1, H, W) float32 camera-space z, inf off the object (only if the file has depth);
        world_mat, camera_mat, scale_mat: (4, 4) float32 (DVR convention, data/cameras.py);
        object_index: int, view_index: int (rows in the file); category: int label, the position
        in ``file.category_names``; caption: str, one of the object's captions at random ("" if
        none); with ``pixels``: pixel_xy (n, 2) float32 normalised coordinates in the file's
        pixel convention, pixel_rgb (n, 3) float32 in [0, 1], pixel_mask (n,) float32,
        pixel_depth (n,) float32 (inf off the object; only if the file has depth).

    Index with an int, or with ``(index, epoch)`` as :class:`EpochSampler` yields.
    """

    def __init__(
        self,
        path_or_file: str | os.PathLike | MultiViewFile,
        split: str | None,
        pixels: int | None = None,
        inside_fraction: float | None = 0.5,
        seed: int = 0,
    ):
        super().__init__(path_or_file, split, pixels, inside_fraction, seed)
        self.views = self.file.views_in(split)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: Index) -> dict:
        index, rng = self._rng(index)
        row = int(self.views[index])
        view = self.file.read_view(row)
        obj = view.object_index
        item = self._view_tensors(view, rng)
        item["object_index"] = obj
        item["view_index"] = row
        item["category"] = int(self._labels[obj])
        item["caption"] = self._caption(obj, rng)
        return item


class ObjectDataset(_MultiViewDataset):
    """One item per object of ``split``: ``views_per_object`` distinct views stacked.

    Args:
        views_per_object: K distinct views chosen at random per item (in random order);
            None takes every view in file order (batching then needs equal view counts).
        Others as :class:`ViewDataset`.

    Item (dict), K views: image (K, 3, H, W), mask (K, 1, H, W), depth (K, 1, H, W),
        world_mat, camera_mat, scale_mat (K, 4, 4), view_index (K,) int64 rows in the file,
        with ``pixels``: pixel_xy (K, n, 2), pixel_rgb (K, n, 3), pixel_mask (K, n),
        pixel_depth (K, n); and object_index int, category int, caption str, as in ViewDataset;
        with ``occupancy_points`` P: occ_points (P, 3) float32 object frame and occ_inside (P,)
        float32 in {0, 1}, drawn at random from the object's stored ground-truth samples (the
        file's uniform and near-surface ones alike).
    """

    def __init__(
        self,
        path_or_file: str | os.PathLike | MultiViewFile,
        split: str | None,
        views_per_object: int | None,
        pixels: int | None = None,
        inside_fraction: float | None = 0.5,
        seed: int = 0,
        occupancy_points: int | None = None,
    ):
        super().__init__(path_or_file, split, pixels, inside_fraction, seed)
        if occupancy_points is not None:
            if not isinstance(occupancy_points, int) or occupancy_points <= 0:
                raise UserError(
                    f"occupancy_points must be a positive integer or None, got {occupancy_points!r}"
                )
            if not self.file.has_occupancy:
                raise UserError(
                    f"{self.file.path}: has no occupancy samples (eval data) to train on"
                )
        self.occupancy_points = occupancy_points
        if views_per_object is not None:
            if not isinstance(views_per_object, int) or views_per_object <= 0:
                raise UserError(
                    f"views_per_object must be a positive integer or None, got {views_per_object!r}"
                )
            counts = self.file.view_count[self.objects]
            if len(counts) and counts.min() < views_per_object:
                short = int(self.objects[int(np.argmin(counts))])
                raise UserError(
                    f"{self.file.path}: views_per_object is {views_per_object}, but object "
                    f"{self.file.object_ids[short]} has only {int(counts.min())} views"
                )
        self.views_per_object = views_per_object

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: Index) -> dict:
        index, rng = self._rng(index)
        obj = int(self.objects[index])
        rows = self.file.views_of(obj)
        if self.views_per_object is not None:
            rows = rows[rng.choice(len(rows), size=self.views_per_object, replace=False)]
        views = [self._view_tensors(self.file.read_view(int(r)), rng) for r in rows]
        item = {key: torch.stack([v[key] for v in views]) for key in views[0]}
        item["view_index"] = torch.from_numpy(rows.astype(np.int64))
        item["object_index"] = obj
        item["category"] = int(self._labels[obj])
        item["caption"] = self._caption(obj, rng)
        if self.occupancy_points is not None:
            occ = self.file.read_occupancy(obj)
            pick = rng.integers(0, len(occ.points), size=self.occupancy_points)
            item["occ_points"] = torch.from_numpy(occ.points[pick])
            item["occ_inside"] = torch.from_numpy(occ.inside[pick].astype(np.float32))
        return item


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` pairs so that items know their epoch, even in persistent workers.

    Args:
        size: dataset length.
        shuffle: a new permutation each epoch, drawn from ``(seed, epoch)``; else in order.
        seed: base seed of the permutations.
        advance: move to the next epoch at each pass. False keeps epoch 0 forever (validation:
            the same pixel samples and captions every time).
        rank, world_size: this process's share of each pass when ``world_size`` processes train
            together (distributed data parallel): items ``rank, rank + world_size, ...`` of the
            epoch's order. Every rank draws the same order (same seed and epoch), so the shares
            are disjoint and cover the epoch.
        pad: with ``world_size > 1``, repeat items from the start of the order until every rank
            has ``ceil(size / world_size)`` (training: ranks must take the same number of
            steps); False: shares differ by at most one item and nothing repeats (validation).

    Lightning calls :meth:`set_epoch` before each pass; without it the epoch counts passes.
    :meth:`skip` starts the next pass part-way (a resumed run).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool,
        seed: int = 0,
        advance: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size = int(size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.advance = advance
        self.rank, self.world_size, self.pad = int(rank), int(world_size), pad
        self._next_epoch = 0
        self._requested: int | None = None
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self._requested = int(epoch)

    @property
    def upcoming_epoch(self) -> int:
        """The epoch the next pass will draw."""
        if not self.advance:
            return 0
        return self._requested if self._requested is not None else self._next_epoch

    def skip(self, items: int) -> None:
        """Leave out the first ``items`` of this rank's next pass (0: a whole pass)."""
        self._skip = int(items)

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.upcoming_epoch
        self._requested = None
        self._next_epoch = epoch + 1
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        if self.world_size > 1:
            if self.pad and self.size:
                order = np.resize(order, len(self) * self.world_size)
            order = order[self.rank :: self.world_size]
        skip, self._skip = self._skip, 0
        return iter([(int(i), epoch) for i in order[skip:]])


class ConcatItems(Dataset):
    """Datasets one after another, indexed like them: an int, or ``(index, epoch)`` as
    :class:`EpochSampler` yields (torch's ConcatDataset takes ints only). Items keep their own
    dataset's fields, so ``object_index`` is the row in that dataset's file.

    Args:
        parts: the datasets, each of fixed length.
    """

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.ends = np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index: Index) -> dict:
        i, epoch = index if isinstance(index, tuple) else (index, None)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        part = int(np.searchsorted(self.ends, i, side="right"))
        local = i - (int(self.ends[part - 1]) if part else 0)
        return self.parts[part][local if epoch is None else (local, epoch)]
