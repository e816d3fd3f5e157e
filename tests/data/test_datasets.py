"""Pixel sampling, the view / object datasets and the DataModule, on the tiny synthetic world."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.data.cameras import coords_to_pixels
from iss3d.data.datasets import EpochSampler, ObjectDataset, ViewDataset
from iss3d.data.pixels import sample_pixel_indices, sample_pixels
from iss3d.data.reader import MultiViewFile
from iss3d.train.datamodule import DataConfig, MultiViewDataModule

RES = 32  # the tiny world's view size


def _pixel_rows_cols(xy: torch.Tensor, convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (row, col) of normalised coordinates; asserts they sit exactly on pixels."""
    colrow = coords_to_pixels(xy, RES, RES, convention)
    rounded = colrow.round()
    assert torch.allclose(colrow, rounded, atol=1e-4)
    cols, rows = rounded.long().unbind(-1)
    return rows, cols


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# -- pixel sampling -------------------------------------------------------------------------


def _disc_mask(size: int = RES) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_inside_fraction_is_honoured(fraction):
    mask = _disc_mask()
    n = 100
    idx = sample_pixel_indices(mask, n, np.random.default_rng(0), fraction)
    assert idx.shape == (n,) and idx.dtype == np.int64
    assert len(np.unique(idx)) == n
    assert mask.reshape(-1)[idx].sum() == round(n * fraction)


def test_uniform_sampling_covers_both_sides():
    mask = _disc_mask()
    idx = sample_pixel_indices(mask, 600, np.random.default_rng(0), None)
    assert len(np.unique(idx)) == 600
    share = mask.reshape(-1)[idx].mean()
    assert abs(share - mask.mean()) < 0.08


@pytest.mark.parametrize("fill", [False, True])
def test_one_sided_masks_fill_from_the_other_side(fill):
    mask = np.full((RES, RES), fill)
    idx = sample_pixel_indices(mask, 200, np.random.default_rng(1), 0.5)
    assert len(np.unique(idx)) == 200  # no repeats while the image has enough pixels
    assert (mask.reshape(-1)[idx] == fill).all()


def test_too_few_inside_pixels_takes_them_all():
    mask = np.zeros((RES, RES), bool)
    mask[3, 4] = mask[10, 11] = mask[20, 2] = True
    idx = sample_pixel_indices(mask, 10, np.random.default_rng(2), 0.5)
    assert len(np.unique(idx)) == 10
    assert mask.reshape(-1)[idx].sum() == 3


@pytest.mark.parametrize("fill", [None, False, True])
def test_image_smaller_than_n_samples_with_replacement(fill):
    mask = _disc_mask(8) if fill is None else np.full((8, 8), fill)
    idx = sample_pixel_indices(mask, 100, np.random.default_rng(3), 0.5)
    assert idx.shape == (100,) and idx.min() >= 0 and idx.max() < 64
    inside = mask.reshape(-1)[idx].sum()
    assert inside == {None: 50, False: 0, True: 100}[fill]


@pytest.mark.parametrize("convention", ["center", "dvr"])
def test_sample_pixels_agree_with_the_image(convention):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    mask = _disc_mask()
    depth = np.where(mask, rng.uniform(1, 2, (RES, RES)), np.inf).astype(np.float32)
    px = sample_pixels(rgb, mask, depth, 50, rng, 0.5, convention)
    assert px.xy.shape == (50, 2) and px.xy.dtype == np.float32
    assert px.rgb.shape == (50, 3) and px.rgb.dtype == np.float32
    assert px.mask.shape == (50,) and px.depth.shape == (50,)
    rows, cols = _pixel_rows_cols(torch.from_numpy(px.xy), convention)
    np.testing.assert_array_equal(rows.numpy() * RES + cols.numpy(), px.index)
    np.testing.assert_allclose(px.rgb, rgb[rows, cols] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(px.mask, mask[rows, cols])
    np.testing.assert_array_equal(px.depth, depth[rows, cols])
    assert np.isinf(px.depth[~px.mask]).all() and np.isfinite(px.depth[px.mask]).all()
    assert sample_pixels(rgb, mask, None, 5, rng).depth is None


# -- datasets -------------------------------------------------------------------------------


def test_view_dataset_item(tiny_world):
    ds = ViewDataset(tiny_world, "train", pixels=64, inside_fraction=0.5, seed=0)
    f = ds.file
    assert len(ds) == len(f.views_in("train")) > 0
    item = ds[3]
    for key, shape in {
        "image": (3, RES, RES),
        "mask": (1, RES, RES),
        "depth": (1, RES, RES),
        "world_mat": (4, 4),
        "camera_mat": (4, 4),
        "scale_mat": (4, 4),
        "pixel_xy": (64, 2),
        "pixel_rgb": (64, 3),
        "pixel_mask": (64,),
        "pixel_depth": (64,),
    }.items():
        assert item[key].shape == shape, key
        assert item[key].dtype == torch.float32, key
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["image"].is_contiguous()
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    row = item["view_index"]
    assert row == int(f.views_in("train")[3]) and item["object_index"] == int(f.view_object[row])
    obj = item["object_index"]
    assert f.category_names[item["category"]] == f.categories[obj]
    assert item["caption"] in f.captions[obj]
    view = f.read_view(row)
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy() * 255, view.rgb)
    np.testing.assert_array_equal(item["world_mat"].numpy(), view.world_mat)
    assert item["pixel_mask"].sum() == 32


def test_view_dataset_pixels_agree_with_the_image(tiny_world):
    ds = ViewDataset(tiny_world, None, pixels=200, inside_fraction=0.5, seed=3)
    assert ds.file.pixel_convention == "center"
    for index in (0, 17, len(ds) - 1):
        item = ds[index]
        rows, cols = _pixel_rows_cols(item["pixel_xy"], ds.file.pixel_convention)
        assert torch.equal(item["pixel_rgb"], item["image"][:, rows, cols].T)
        assert torch.equal(item["pixel_mask"], item["mask"][0, rows, cols])
        assert torch.equal(item["pixel_depth"], item["depth"][0, rows, cols])


def test_view_dataset_without_pixels_or_split(tiny_world):
    ds = ViewDataset(tiny_world, None, pixels=None)
    assert len(ds) == ds.file.num_views
    item = ds[0]
    assert not any(key.startswith("pixel_") for key in item)


def test_object_dataset_item(tiny_world):
    ds = ObjectDataset(tiny_world, "train", views_per_object=4, pixels=16, seed=0)
    f = ds.file
    assert len(ds) == len(f.objects_in("train"))
    item = ds[1]
    k = 4
    for key, shape in {
        "image": (k, 3, RES, RES),
        "mask": (k, 1, RES, RES),
        "depth": (k, 1, RES, RES),
        "world_mat": (k, 4, 4),
        "camera_mat": (k, 4, 4),
        "scale_mat": (k, 4, 4),
        "pixel_xy": (k, 16, 2),
        "pixel_rgb": (k, 16, 3),
        "pixel_mask": (k, 16),
        "pixel_depth": (k, 16),
    }.items():
        assert item[key].shape == shape, key
        assert item[key].dtype == torch.float32, key
    obj = item["object_index"]
    assert obj == int(f.objects_in("train")[1])
    rows = item["view_index"].tolist()
    assert len(set(rows)) == k and set(rows) <= set(f.views_of(obj).tolist())
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(item["world_mat"][i].numpy(), f.world_mats[row])
    assert item["caption"] in f.captions[obj]
    assert f.category_names[item["category"]] == f.categories[obj]
    every = ObjectDataset(tiny_world, "val", views_per_object=None)[0]
    assert every["view_index"].tolist() == f.views_of(every["object_index"]).tolist()


def test_object_dataset_rejects_too_many_views(tiny_world):
    with pytest.raises(UserError, match="has only 6 views"):
        ObjectDataset(tiny_world, "train", views_per_object=7)


def test_bad_split_is_a_user_error(tiny_world):
    with pytest.raises(UserError, match="split 'trian'"):
        ViewDataset(tiny_world, "trian")


def test_items_are_deterministic(tiny_world):
    a = ViewDataset(tiny_world, "train", pixels=32, seed=5)
    b = ViewDataset(MultiViewFile(tiny_world), "train", pixels=32, seed=5)
    _assert_items_equal(a[(7, 2)], b[(7, 2)])
    assert torch.equal(a[7]["pixel_xy"], a[(7, 0)]["pixel_xy"])
    assert not torch.equal(a[(7, 0)]["pixel_xy"], a[(7, 1)]["pixel_xy"])  # per epoch
    assert not torch.equal(a[(7, 0)]["pixel_xy"], a[(8, 0)]["pixel_xy"])  # per index
    c = ViewDataset(tiny_world, "train", pixels=32, seed=6)
    assert not torch.equal(a[(7, 0)]["pixel_xy"], c[(7, 0)]["pixel_xy"])  # per seed
    a.set_epoch(1)
    assert torch.equal(a[7]["pixel_xy"], a[(7, 1)]["pixel_xy"])


def test_dataset_pickles_without_a_handle(tiny_world):
    ds = ObjectDataset(tiny_world, "train", views_per_object=2, pixels=8)
    first = ds[(0, 0)]  # opens the HDF5 handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.file._h5 is None
    _assert_items_equal(clone[(0, 0)], first)


def test_epoch_sampler():
    s = EpochSampler(10, shuffle=True, seed=0)
    first, second = list(s), list(s)
    assert sorted(i for i, _ in first) == list(range(10))
    assert {e for _, e in first} == {0} and {e for _, e in second} == {1}
    assert [i for i, _ in first] != [i for i, _ in second]
    s.set_epoch(0)
    assert list(s) == first
    fixed = EpochSampler(5, shuffle=False, advance=False)
    fixed.set_epoch(3)
    assert list(fixed) == list(fixed) == [(i, 0) for i in range(5)]


@pytest.mark.parametrize(("size", "world"), [(10, 2), (10, 3), (7, 4), (3, 4)])
def test_epoch_sampler_ranks_share_each_pass(size, world):
    """Training: every rank takes as many items, together the whole epoch (padded by repeats
    of its first items); validation: disjoint shares without repeats."""
    train = [EpochSampler(size, True, seed=2, rank=r, world_size=world) for r in range(world)]
    shares = [[i for i, _ in s] for s in train]
    assert {len(share) for share in shares} == {-(-size // world)}
    assert {i for share in shares for i in share} == set(range(size))
    assert sum(len(share) for share in shares) - size < world
    val = [EpochSampler(size, False, rank=r, world_size=world, pad=False) for r in range(world)]
    items = sorted(i for s in val for i, _ in s)
    assert items == list(range(size))
    assert [len(s) for s in val] == [len(list(s)) for s in val]


def test_epoch_sampler_skips_into_a_pass():
    s = EpochSampler(10, shuffle=True, seed=0)
    s.set_epoch(3)
    whole = list(s)
    s.set_epoch(3)
    s.skip(4)
    assert s.upcoming_epoch == 3
    assert list(s) == whole[4:]
    assert len(list(s)) == 10  # the skip is for one pass only


# -- DataModule -----------------------------------------------------------------------------


def _module(path, **kw) -> MultiViewDataModule:
    cfg = {"path": str(path), "batch_size": 8, "pixels": 16, "seed": 1, **kw}
    dm = MultiViewDataModule(DataConfig.from_dict(cfg))
    dm.setup("fit")
    return dm


def test_workers_yield_the_same_batches(tiny_world):
    """num_workers=2 (persistent, two epochs) gives exactly the batches of num_workers=0."""
    epochs = {}
    for workers in (0, 2):
        loader = _module(tiny_world, num_workers=workers).train_dataloader()
        epochs[workers] = [list(loader), list(loader)]
        assert loader.persistent_workers == (workers > 0)
    for serial, parallel in zip(epochs[0], epochs[2], strict=True):
        assert len(serial) == len(parallel) == 8  # 60 train views, batches of 8
        for a, b in zip(serial, parallel, strict=True):
            _assert_items_equal(a, b)
    first, second = epochs[0]
    assert not torch.equal(first[0]["view_index"], second[0]["view_index"])  # reshuffled


def test_datamodule_loaders(tiny_world):
    dm = _module(tiny_world)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, RES, RES)
    assert batch["pixel_xy"].shape == (8, 16, 2)
    assert len(batch["caption"]) == 8 and batch["category"].dtype == torch.int64
    val = dm.val_dataloader()
    assert [b["view_index"].tolist() for b in val] == [b["view_index"].tolist() for b in val]
    val_views = dm.file.views_in("val").tolist()
    assert torch.cat([b["view_index"] for b in val]).tolist() == val_views
    assert all(torch.equal(a["pixel_xy"], b["pixel_xy"]) for a, b in zip(val, val, strict=True))

    obj = _module(tiny_world, mode="object", views_per_object=3, batch_size=2)
    batch = next(iter(obj.train_dataloader()))
    assert batch["image"].shape == (2, 3, 3, RES, RES)
    assert batch["pixel_rgb"].shape == (2, 3, 16, 3)
    assert batch["object_index"].shape == (2,)
    assert len(obj.dataset(None)) == obj.file.num_objects


def test_datamodule_empty_train_split(tiny_world):
    dm = MultiViewDataModule(DataConfig(path=str(tiny_world), train_split="test"))
    with pytest.raises(UserError, match="no objects in split 'test'"):
        dm.setup("fit")


def test_extra_data_train_splits_join_training_only(tiny_world, tmp_path):
    dm = _module(tiny_world, extra_data=[str(tiny_world), str(tiny_world)])
    train = dm.dataset("train")
    joined = dm.training_dataset()
    assert len(joined) == 3 * len(train)  # the extra files' val and test objects stay out
    n = len(train)
    for k in (0, n - 1):  # the same file twice: global item part * n + k is item k
        for part in (1, 2):
            _assert_items_equal(joined[(part * n + k, 3)], train[(k, 3)])
    with pytest.raises(IndexError):
        joined[3 * n]
    assert sum(len(b["view_index"]) for b in dm.train_dataloader()) == 3 * n
    alone = _module(tiny_world)
    val = [b["view_index"].tolist() for b in dm.val_dataloader()]
    assert val == [b["view_index"].tolist() for b in alone.val_dataloader()]
    missing = MultiViewDataModule(
        DataConfig.from_dict({"path": str(tiny_world), "extra_data": [str(tmp_path / "x.h5")]})
    )
    with pytest.raises(UserError, match=r"^data.extra_data: .*x.h5: no such file$"):
        missing.setup("fit")


def test_data_config_is_strict(tiny_world):
    with pytest.raises(UserError, match=r"^unknown key 'x' in data config \(known keys: path, "):
        DataConfig.from_dict({"path": str(tiny_world), "x": 1})
    for bad in (
        {"mode": "scene"},
        {"batch_size": 0},
        {"pixels": -1},
        {"inside_fraction": 1.5},
        {"val_split": "validation"},
        {"num_workers": True},
        {"extra_data": "extra.h5"},
        {"extra_data": [""]},
    ):
        with pytest.raises(UserError, match="data config"):
            DataConfig.from_dict({"path": str(tiny_world), **bad})
    with pytest.raises(UserError, match="missing key 'path'"):
        DataConfig.from_dict({})
    cfg = DataConfig.from_dict({"path": str(tiny_world), "inside_fraction": None})
    assert DataConfig.from_dict(cfg.to_dict()) == cfg


def test_object_items_carry_occupancy_samples(tiny_world):
    ds = ObjectDataset(tiny_world, "train", views_per_object=2, occupancy_points=100)
    item = ds[3]
    assert item["occ_points"].shape == (100, 3) and item["occ_inside"].shape == (100,)
    occ = MultiViewFile(tiny_world).read_occupancy(int(ds.objects[3]))
    stored = {tuple(p) for p in occ.points.round(4).tolist()}
    assert all(tuple(p) in stored for p in item["occ_points"].numpy().round(4).tolist())
    assert 0 < item["occ_inside"].mean() < 1
    with pytest.raises(UserError, match="occupancy_points"):
        ObjectDataset(tiny_world, "train", views_per_object=2, occupancy_points=0)
