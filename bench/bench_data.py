"""How fast views come out of a multi-view HDF5 file: raw reads, and through the DataLoader.

Builds synthetic files (60 objects x 24 views at 64 and 128 px, lzf, one chunk per view) in a
temporary folder, then measures on one core (``torch.set_num_threads(1)``):

- random single-view reads per second with ``MultiViewFile.read_view`` (rgb + mask + depth) and
  with ``read_rgb`` alone, over a few thousand random rows after a warm-up;
- where a read's time goes: each dataset's ``ds[i]``, the raw compressed chunk fetch
  (``read_direct_chunk``: HDF5 index lookup and file read, no filter), and the same three reads
  from an uncompressed copy of the views (h5py/HDF5 call overhead without lzf);
- ViewDataset + DataLoader throughput (views/s), batch 64, num_workers 0 and 2, without and with
  1,024 sampled pixels per view.

The files are freshly written, so they sit in the OS page cache: these are decode rates, not
disk rates. HDF5's default 1 MiB chunk cache holds only ~85 views of 64 px rgb, so random reads
over the full file mostly miss it; the --quick files are small enough to sit in it (inflated).
Target: >= 5,000 random views/s at 64 px with lzf on one core.

Run: ``python -m bench.bench_data [--quick]`` (or through ``python -m bench.run``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.common import rate, target, write_result
from iss3d.data.datasets import EpochSampler, ViewDataset
from iss3d.data.reader import MultiViewFile
from iss3d.data.synth.build import SynthConfig, synthesize

NAME = "data"
TARGET_VIEWS_PER_S_64 = 5000.0

FULL = {
    "objects": 60,
    "views": 24,
    "resolutions": [64, 128],
    "reads": 5000,
    "warmup_reads": 500,
    "repeats": 3,
    "batch_size": 64,
    "loader_workers": [0, 2],
    "loader_pixels": [None, 1024],
    "loader_epochs": 2,
    "synth_workers": 2,
}
QUICK = {
    **FULL,
    "objects": 8,
    "views": 8,
    "reads": 500,
    "warmup_reads": 50,
    "repeats": 1,
    "loader_epochs": 1,
}


def build_file(folder: Path, res: int, cfg: dict) -> tuple[Path, float]:
    """A synthetic file at ``res`` pixels (small ground truth: it is not what we read)."""
    path = folder / f"world_{res}.h5"
    synth = SynthConfig(
        objects=cfg["objects"],
        views=cfg["views"],
        res=res,
        surface_points=2048,
        occ_uniform=256,
        occ_near=256,
        seed=0,
    )
    start = time.perf_counter()
    synthesize(path, synth, workers=cfg["synth_workers"], progress=False)
    return path, time.perf_counter() - start


def read_figures(path: Path, res: int, cfg: dict) -> dict:
    """Random single-view read rates (one core) and where a read's time goes."""
    f = MultiViewFile(path)
    rng = np.random.default_rng(0)
    rows = [int(i) for i in rng.integers(0, f.num_views, cfg["reads"])]
    for i in rows[: cfg["warmup_reads"]]:
        f.read_view(i)
    n, repeats = len(rows), cfg["repeats"]

    def all_views():
        for i in rows:
            f.read_view(i)

    def rgb_only():
        for i in rows:
            f.read_rgb(i)

    out = {
        f"read_view_per_s_{res}px": rate(all_views, n, repeats)[0],
        f"read_rgb_per_s_{res}px": rate(rgb_only, n, repeats)[0],
    }
    views = f.h5["views"]
    names = [name for name in ("rgb", "mask", "depth") if name in views]
    for name in names:
        ds = views[name]
        zeros = (0,) * (ds.ndim - 1)

        def decoded(ds=ds):
            for i in rows:
                ds[i]

        def raw(ds=ds, zeros=zeros):
            for i in rows:
                ds.id.read_direct_chunk((i, *zeros))

        out[f"us_per_read_{name}_{res}px"] = 1e6 / rate(decoded, n, repeats)[0]
        out[f"us_per_raw_chunk_{name}_{res}px"] = 1e6 / rate(raw, n, repeats)[0]
        stored = np.mean([len(ds.id.read_direct_chunk((i, *zeros))[1]) for i in rows[:200]])
        out[f"lzf_ratio_{name}_{res}px"] = ds[0].nbytes / stored
    out[f"read_view_uncompressed_per_s_{res}px"] = _uncompressed_rate(f, names, rows, repeats)
    f.close()
    return out


def _uncompressed_rate(f: MultiViewFile, names: list[str], rows: list[int], repeats: int) -> float:
    """Prototype: the reader's reads from an uncompressed copy of the views (no lzf)."""
    copy = f.path.with_name(f"{f.path.stem}_uncompressed.h5")
    src = f.h5["views"]
    with h5py.File(copy, "w") as out:
        for name in names:
            ds = src[name]
            out.create_dataset(name, data=ds[:], chunks=(1, *ds.shape[1:]))
    mem = h5py.File(copy, "r")
    datasets = [mem[name] for name in names]
    for i in rows[: len(rows) // 10]:  # warm-up
        for ds in datasets:
            ds[i]

    def read():
        for i in rows:
            for ds in datasets:
                ds[i]

    value = rate(read, len(rows), repeats)[0]
    mem.close()
    copy.unlink()
    return value


def loader_rate(path: Path, workers: int, pixels: int | None, cfg: dict) -> tuple[float, float]:
    """ViewDataset views/s through a DataLoader (after a warm-up epoch), and the warm-up's s."""
    dataset = ViewDataset(path, None, pixels=pixels, inside_fraction=0.5, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=cfg["batch_size"],
        sampler=EpochSampler(len(dataset), shuffle=True, seed=0),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(cfg["loader_epochs"]):
        for _ in loader:
            pass
    elapsed = time.perf_counter() - start
    del loader  # stops persistent workers
    return cfg["loader_epochs"] * len(dataset) / elapsed, warmup


def main(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    torch.set_num_threads(1)
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="iss3d-bench-data-") as tmp:
        for res in cfg["resolutions"]:
            path, synth_s = build_file(Path(tmp), res, cfg)
            figures[f"file_mb_{res}px"] = path.stat().st_size / 2**20
            figures[f"build_s_{res}px"] = synth_s
            figures.update(read_figures(path, res, cfg))
            for workers in cfg["loader_workers"]:
                for pixels in cfg["loader_pixels"]:
                    tag = f"{res}px_w{workers}" + (f"_p{pixels}" if pixels else "")
                    views_s, warmup_s = loader_rate(path, workers, pixels, cfg)
                    figures[f"loader_views_per_s_{tag}"] = views_s
                    figures[f"loader_first_epoch_s_{tag}"] = warmup_s
    key = "read_view_per_s_64px"
    targets = {}
    if key in figures:
        targets[key] = target(figures[key], TARGET_VIEWS_PER_S_64, ">=")
    notes = [
        "Files are freshly written and sit in the OS page cache: decode rates, not disk rates.",
        "read_* figures: one process, torch.set_num_threads(1), random rows, median of repeats.",
        "us_per_raw_chunk_*: read_direct_chunk, the stored lzf bytes without decompression.",
        "read_view_uncompressed_*: the same three reads from an uncompressed copy (same chunks).",
        "loader_*: ViewDataset over all views, batch 64, shuffled, after one warm-up epoch; "
        "w = num_workers (persistent), p = pixels sampled per view.",
    ]
    return write_result(NAME, figures, cfg, quick, targets, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke testing")
    main(parser.parse_args().quick)
