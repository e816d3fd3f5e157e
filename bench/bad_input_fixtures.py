"""The files the bad-input harness feeds to ``iss3d``: valid fixtures (a tiny synthetic world,
small checkpoints, a generate output, DVR and Blender layouts, an image, a prompt file), and
bad ones built from them (truncated, corrupt, wrong-kind, non-finite, hostile).

:func:`build` writes them all into one folder once per harness run, in about 30 seconds. The
cases only read them; a case that needs to change one (a read-only folder, a run folder that
stylize writes into) copies it into its own folder first. A pickle or YAML payload that runs
code would create :data:`MARKER` in that folder: the harness checks that it never appears.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "models" / "pretrained"
OLD_LAYOUT = REPO / "tests" / "fixtures" / "old_layout"
CONFIGS = REPO / "configs"
#: Created by any payload that gets executed (never, if loading is safe).
MARKER = "EXECUTED"
#: The world: 20 objects x 4 views at 32 px (every split has objects), small ground truth.
WORLD_ARGS = ["--objects", "20", "--views", "4", "--res", "32", "--seed", "0"]
WORLD_ARGS += ["--surface-points", "2048", "--occ-points", "256", "--workers", "1"]
#: A generate run at test size with the shipped models (about 10 s on a CPU).
GENERATE_FAST = [
    "stage2.steps=1",
    "stage2.views=1",
    "stage2.resolution=16",
    "stage2.march.n_steps=12",
    "stage2.march.n_secant=2",
    "export.mesh_resolution0=8",
    "export.mesh_upsampling_steps=1",
    "export.march_steps=12",
    "export.turntable_views=4",
    "export.turntable_resolution=16",
    "export.eval_views=2",
]
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def iss3d(*argv: str, cwd: Path) -> None:
    """Run ``iss3d ARGV`` (offline); raise with its stderr if it fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    done = subprocess.run(
        [sys.executable, "-m", "iss3d", *argv], cwd=cwd, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"fixture command iss3d {' '.join(argv)} failed:\n{done.stderr}")


class Payload:
    """Unpickling this runs ``touch <marker>``: a checkpoint that must never be executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- valid fixtures -------------------------------------------------------------------------
def build_valid(fx: Path) -> None:
    """The world, checkpoints, image, prompt file, generate output, DVR and Blender layouts."""
    iss3d("data", "synth", "--out", str(fx / "world.h5"), *WORLD_ARGS, cwd=fx)
    for name in ("svr.ckpt", "stage1.ckpt", "eid.ckpt"):
        shutil.copy(OLD_LAYOUT / name, fx / name)
    with h5py.File(fx / "world.h5", "r") as f:
        rgb = f["views/rgb"][0]
    Image.fromarray(rgb).save(fx / "image.png")
    (fx / "texts.txt").write_text("a red chair\na blue mug\n")
    iss3d(
        "generate",
        "a red chair",
        *GENERATE_FAST,
        "--out",
        str(fx / "gen"),
        "--device",
        "cpu",
        "--no-progress",
        cwd=fx,
    )
    write_dvr_layout(fx / "world.h5", fx / "dvr")
    write_blender_scene(fx / "world.h5", fx / "blender")
    write_folder_layout(fx / "world.h5", fx / "folder")


def write_dvr_layout(world: Path, root: Path, objects: int = 2) -> None:
    """DVR's ShapeNet layout of the world's first ``objects`` objects (one synset, no depth)."""
    synset = root / "02691156"
    with h5py.File(world, "r") as f:
        offsets, counts = f["objects/view_offset"][:], f["objects/view_count"][:]
        for o in range(objects):
            model = synset / f"model{o}"
            (model / "image").mkdir(parents=True)
            (model / "mask").mkdir()
            cams = {}
            for i, v in enumerate(range(offsets[o], offsets[o] + counts[o])):
                Image.fromarray(f["views/rgb"][v]).save(model / "image" / f"{i:03d}.png")
                mask = f["views/mask"][v].astype(np.uint8) * 255
                Image.fromarray(mask).save(model / "mask" / f"{i:03d}.png")
                cams[f"world_mat_{i}"] = f["views/world_mat"][v].astype(np.float64)
                cams[f"camera_mat_{i}"] = f["views/camera_mat"][v].astype(np.float64)
            np.savez(model / "cameras.npz", **cams)
    (synset / "train.lst").write_text("model0\n")
    (synset / "val.lst").write_text("")
    (synset / "test.lst").write_text("model1\n")


def write_folder_layout(world: Path, root: Path, objects: int = 2) -> None:
    """``iss3d data import-folder``'s layout of the world's first ``objects`` objects: PNG
    views and masks, and a cameras.json with OpenCV pixel intrinsics and world_to_camera."""
    frames = []
    with h5py.File(world, "r") as f:
        h, w = f["views/rgb"].shape[1:3]
        offsets, counts = f["objects/view_offset"][:], f["objects/view_count"][:]
        for o in range(objects):
            (root / f"obj{o}").mkdir(parents=True)
            for i, v in enumerate(range(offsets[o], offsets[o] + counts[o])):
                image, mask = f"obj{o}/{i:03d}.png", f"obj{o}/{i:03d}_mask.png"
                Image.fromarray(f["views/rgb"][v]).save(root / image)
                Image.fromarray(f["views/mask"][v].astype(np.uint8) * 255).save(root / mask)
                focal = float(f["views/camera_mat"][v][0, 0])
                k = [[focal * w / 2, 0.0, (w - 1) / 2], [0.0, focal * h / 2, (h - 1) / 2],
                     [0.0, 0.0, 1.0]]  # fmt: skip
                pose = f["views/world_mat"][v][:3].astype(np.float64).tolist()
                frames.append({"object": f"obj{o}", "image": image, "mask": mask, "K": k,
                               "world_to_camera": pose})  # fmt: skip
    spec = {"convention": "opencv", "objects": {"obj0": {"category": "mug"}}, "frames": frames}
    (root / "cameras.json").write_text(json.dumps(spec))


def folder_texts(good: dict) -> dict[str, str | bytes | None]:
    """Broken cameras.json texts of the import-folder layout (None: a FIFO in its place)."""
    frame = good["frames"][0]

    def frames(**changes) -> str:
        return json.dumps({**good, "frames": [{**frame, **changes}, *good["frames"][1:]]})

    return {
        "invalid-json": '{"frames": [',
        "utf16": json.dumps(good).encode("utf-16"),
        "deep-nesting": '{"frames": ' + "[" * 100000 + "]" * 100000 + "}",
        "not-object": "[1, 2, 3]",
        "frames-empty": json.dumps({**good, "frames": []}),
        "frame-not-object": json.dumps({**good, "frames": [1, 2]}),
        "convention-unknown": json.dumps({**good, "convention": "directx"}),
        "nan-intrinsics": frames(K=[[float("nan"), 0, 15.5], [0, 35, 15.5], [0, 0, 1]]),
        "singular-pose": frames(world_to_camera=[[0, 0, 0, 0]] * 3),
        "image-missing": frames(image="obj0/absent.png"),
        "mask-size": frames(mask="obj0/small_mask.png"),
        "split-unknown": json.dumps({**good, "objects": {"obj0": {"split": "holdout"}}}),
        "fifo": None,
    }


#: The broken cameras.json variants (:func:`folder_texts`).
FOLDER_KINDS = ("invalid-json", "utf16", "deep-nesting", "not-object", "frames-empty",
                "frame-not-object", "convention-unknown", "nan-intrinsics", "singular-pose",
                "image-missing", "mask-size", "split-unknown", "fifo")  # fmt: skip


def build_folder_variants(fx: Path) -> None:
    """Copies of the import-folder layout with one defect each (``fx/folder-<name>``)."""
    good = json.loads((fx / "folder" / "cameras.json").read_text())
    Image.new("L", (8, 8), 255).save(fx / "folder" / "obj0" / "small_mask.png")
    texts = folder_texts(good)
    assert tuple(texts) == FOLDER_KINDS, tuple(texts)
    build_variants(fx, "folder", "cameras.json", texts)


#: Which of the first object's views go into which transforms file of the Blender scene.
BLENDER_SPLITS = {"train": (0, 1), "val": (2,), "test": (3,)}


def write_blender_scene(world: Path, scene: Path, bound: float = 1.5) -> None:
    """A NeRF Blender scene of the world's first object: RGBA PNGs and
    ``transforms_{train,val,test}.json`` (OpenGL camera-to-world, scene scaled by 2 bound)."""
    with h5py.File(world, "r") as f:
        focal = float(f["views/camera_mat"][0][0, 0])
        for split, views in BLENDER_SPLITS.items():
            (scene / split).mkdir(parents=True)
            frames = [_blender_frame(f, v, scene / split, bound) for v in views]
            text = json.dumps({"camera_angle_x": 2.0 * math.atan(1.0 / focal), "frames": frames})
            (scene / f"transforms_{split}.json").write_text(text)


def _blender_frame(f: h5py.File, view: int, folder: Path, bound: float) -> dict:
    """Write view ``view`` as ``folder/r_<view>.png`` (RGBA); its transforms frame."""
    rgba = np.concatenate([f["views/rgb"][view], f["views/mask"][view][..., None] * 255], -1)
    Image.fromarray(rgba.astype(np.uint8)).save(folder / f"r_{view}.png")
    c2w = np.linalg.inv(f["views/world_mat"][view].astype(np.float64))
    c2w[:3, 3] *= 2.0 * bound
    return {"file_path": f"./{folder.name}/r_{view}", "transform_matrix": (c2w @ GL_TO_CV).tolist()}


# -- generic bad files ----------------------------------------------------------------------
def build_generic(fx: Path) -> None:
    """Files that are nothing in particular: empty, random, zeros, text, a folder, a FIFO."""
    rng = np.random.default_rng(0)
    (fx / "empty.bin").write_bytes(b"")
    (fx / "random.bin").write_bytes(rng.bytes(4096))
    (fx / "zeros.bin").write_bytes(bytes(65536))
    (fx / "notes.txt").write_text("these are notes, not data\n")
    (fx / "adir").mkdir()
    os.mkfifo(fx / "pipe")
    (fx / "binary.txt").write_bytes(b"\xff\xfe\x00\x81garbage\x00\n")


def build_hdf5(fx: Path) -> None:
    """Broken multi-view files: truncated, unrelated, schema damage, non-finite numbers."""
    world = fx / "world.h5"
    data = world.read_bytes()
    (fx / "truncated.h5").write_bytes(data[: len(data) // 2])
    (fx / "header-only.h5").write_bytes(data[:512])
    with h5py.File(fx / "other.h5", "w") as f:
        f["x"] = np.arange(10)
    for name, edit in HDF5_EDITS.items():
        path = fx / f"{name}.h5"
        shutil.copy(world, path)
        with h5py.File(path, "r+") as f:
            edit(f)


def _replace(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


def _poison(name: str, index: tuple, value: float = float("nan")) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        arr = f[name][:]
        arr[index] = value
        _replace(f, name, arr)

    return edit


def _set_attr(key: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[key] = value

    return edit


def _delete(name: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]

    return edit


def _shape(name: str, shape: tuple, dtype=np.float32) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        _replace(f, name, np.zeros(shape, dtype))

    return edit


def _strings(name: str, value: bytes) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        n = len(f[name])
        _replace(f, name, np.array([value] * n, dtype=h5py.string_dtype("utf-8")))

    return edit


def _offsets_out_of_range(f: h5py.File) -> None:
    offsets = f["objects/view_offset"][:]
    offsets[-1] = 10**6
    _replace(f, "objects/view_offset", offsets)


def _object_index_out_of_range(f: h5py.File) -> None:
    index = f["views/object_index"][:]
    index[:] = 999
    _replace(f, "views/object_index", index)


def _captions_out_of_range(f: h5py.File) -> None:
    counts = f["objects/caption_count"][:]
    counts[0] = 10**6
    _replace(f, "objects/caption_count", counts)


#: Broken copies of the world: name -> how the copy is damaged (non-finite values go into
#: every object, so that whichever split a command reads meets them).
HDF5_EDITS: dict[str, Callable[[h5py.File], None]] = {
    "nan-world-mat": _poison("views/world_mat", (slice(None), 0, 3)),
    "inf-camera-mat": _poison("views/camera_mat", (slice(None), 0, 0), float("inf")),
    "nan-scale-mat": _poison("objects/scale_mat", (slice(None), 1, 1)),
    "nan-depth": _poison("views/depth", (slice(None), 16, 16)),
    "nan-surface": _poison("eval/surface_points", (slice(None), 0, 0)),
    "nan-occ-points": _poison("eval/occ_points", (slice(None), 0, 1)),
    "inf-surface-normals": _poison("eval/surface_normals", (slice(None), 0, 0), float("inf")),
    "no-views": _delete("views"),
    "no-rgb": _delete("views/rgb"),
    "no-eval": _delete("eval"),
    "bad-format": _set_attr("format", "something-else"),
    "future-version": _set_attr("schema_version", 99),
    "height-string": _set_attr("height", "tall"),
    "height-zero": _set_attr("height", 0),
    "info-not-json": _set_attr("info", "{not json"),
    "world-mat-3x3": _shape("views/world_mat", (80, 3, 3)),
    "rgb-float": _shape("views/rgb", (80, 32, 32, 3)),
    "rgb-wrong-size": _shape("views/rgb", (80, 16, 16, 3), np.uint8),
    "view-offset-range": _offsets_out_of_range,
    "object-index-range": _object_index_out_of_range,
    "caption-count-range": _captions_out_of_range,
    "meta-not-json": _strings("objects/meta", b"{oops"),
    "split-unknown": _strings("objects/split", b"bogus"),
}


# -- checkpoints ----------------------------------------------------------------------------
def build_checkpoints(fx: Path) -> None:
    """Broken checkpoints: truncated, a zip that is not torch's, pickles with a code payload,
    other kinds of content, NaN weights."""
    import torch

    marker = fx / MARKER
    data = (fx / "svr.ckpt").read_bytes()
    (fx / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(fx / "notorch.zip", "w") as z:
        z.writestr("readme.txt", "a zip, not a checkpoint")
    (fx / "payload.pkl").write_bytes(pickle.dumps(Payload(marker)))
    torch.save(Payload(marker), fx / "payload.pt")
    torch.save({"state_dict": {"x": Payload(marker)}}, fx / "payload-nested.pt")
    torch.save({}, fx / "empty-dict.ckpt")
    torch.save([1, 2, 3], fx / "list.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {}}, fx / "no-weights.ckpt")
    ckpt = torch.load(fx / "svr.ckpt", map_location="cpu", weights_only=True)
    for key, value in ckpt["state_dict"].items():
        if key.startswith("decoder.") and value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(ckpt, fx / "nan-weights.ckpt")
    buf = io.BytesIO()
    np.save(buf, np.arange(4))
    (fx / "array.npy").write_bytes(buf.getvalue())
    write_iss_checkpoint(fx / "iss.pth")


def write_iss_checkpoint(path: Path) -> None:
    """A small checkpoint in the official ISS stage-1 layout (``{'model': {generator.linear_<n>.*,
    decoder.*}}``; the decoder takes plain xyz points, as DVR's), random weights."""
    import torch

    from iss3d.models.decoder import Decoder
    from iss3d.models.mapper import MapperConfig

    torch.manual_seed(0)
    mapper = MapperConfig(in_dim=128, out_dim=16, hidden=32, n_wide=2, n_narrow=1).build()
    decoder = Decoder(c_dim=16, hidden=32, n_blocks=1)
    model = {}
    for n, layer in enumerate(mapper.layers, start=1):
        model[f"generator.linear_{n}.weight"] = layer.weight.detach().clone()
        model[f"generator.linear_{n}.bias"] = layer.bias.detach().clone()
    model.update({f"decoder.{k}": v.clone() for k, v in decoder.state_dict().items()})
    torch.save({"model": model, "it": 1}, path)


# -- images ---------------------------------------------------------------------------------
def build_images(fx: Path) -> None:
    """Images of the wrong size, mode or content (the valid one is 32 x 32 RGB)."""
    rgb = np.asarray(Image.open(fx / "image.png"))
    Image.fromarray(rgb).resize((64, 64)).save(fx / "big.png")
    Image.fromarray(rgb).resize((1, 1)).save(fx / "one-pixel.png")
    Image.fromarray(rgb).convert("L").save(fx / "gray.png")
    Image.fromarray(rgb).convert("P").save(fx / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(fx / "cmyk.jpg")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(fx / "sixteen-bit.png")
    Image.fromarray(rgb).convert("F").save(fx / "float.tiff")
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(fx / "animated.gif", save_all=True, append_images=frames[1:])
    data = (fx / "image.png").read_bytes()
    (fx / "truncated.png").write_bytes(data[: len(data) // 2])
    (fx / "text.png").write_text("not an image")
    (fx / "huge-header.png").write_bytes(_huge_png_header())


def _huge_png_header() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


# -- YAML configs ---------------------------------------------------------------------------
def alias_bomb() -> str:
    """A YAML "billion laughs": 9 levels of 9 aliases each."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for a, b in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def yaml_texts(base: dict, section: str, key: str, marker: Path) -> dict[str, str | bytes]:
    """Broken copies of the valid config ``base`` (a stage's tiny preset), each with one
    defect; ``section.key`` is an int setting (``key`` may be dotted: a subsection's)."""
    import yaml

    def edited(value, at: tuple[str, ...] = (section, *key.split("."))) -> str:
        config = copy.deepcopy(base)
        node = config
        for part in at[:-1]:
            node = node.setdefault(part, {})
        node[at[-1]] = value
        return yaml.safe_dump(config, sort_keys=False)

    valid = yaml.safe_dump(base, sort_keys=False)
    return {
        "invalid-syntax": valid + "other: [1, 2\n",
        "tab-indent": valid.replace("\n  ", "\n\t", 1),
        "utf16": valid.encode("utf-16"),
        "binary": b"\xff\xfe\x00\x81\x00garbage",
        "nul-byte": valid + "\x00\n",
        "alias-bomb": valid + alias_bomb(),
        "top-level-list": "- 1\n- 2\n",
        "top-level-number": "42\n",
        "section-number": edited(5, (section,)),
        "section-list": edited([1, 2], (section,)),
        "unknown-top-key": edited({"x": 1}, ("bogus_section",)),
        "unknown-nested-key": edited(1, (section, "bogus_key")),
        "wrong-type-string": edited("many"),
        "wrong-type-bool": edited(True),
        "wrong-type-float": edited(2.5),
        "huge-float": edited(float("inf")),
        "deep-nesting": valid + "deep: " + "[" * 5000 + "]" * 5000 + "\n",
        "python-tag": valid + f'bogus: !!python/object/apply:os.system ["touch {marker}"]\n',
    }


#: The kinds of :func:`yaml_texts`.
YAML_KINDS = tuple(yaml_texts({}, "s", "k", Path("m")))


def build_yaml(fx: Path, stages: dict[str, tuple[str, str]]) -> None:
    """``fx/yaml/<stage>/<kind>.yaml``: the broken configs of :func:`yaml_texts`, from each
    stage's ``configs/<folder>/tiny.yaml`` and its (section, int key)."""
    import yaml

    for stage, (section, key) in stages.items():
        base = yaml.safe_load((CONFIGS / stage / "tiny.yaml").read_text())
        folder = fx / "yaml" / stage
        folder.mkdir(parents=True)
        for kind, text in yaml_texts(base, section, key, fx / MARKER).items():
            path = folder / f"{kind}.yaml"
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


# -- import layouts -------------------------------------------------------------------------
def build_dvr_variants(fx: Path) -> None:
    """Copies of the DVR layout with one defect each (``fx/dvr-<name>``)."""
    for name, edit in DVR_EDITS.items():
        root = fx / f"dvr-{name}"
        shutil.copytree(fx / "dvr", root)
        edit(root, fx)


def build_variants(fx: Path, layout: str, rel: str, texts: dict[str, str | bytes | None]) -> None:
    """``fx/<layout>-<name>``: a copy of ``fx/<layout>`` whose file ``rel`` holds ``texts[name]``
    (None: a FIFO in its place)."""
    for name, content in texts.items():
        root = fx / f"{layout}-{name}"
        shutil.copytree(fx / layout, root)
        (_fifo(rel) if content is None else _write(rel, content))(root, fx)


def _write(rel: str, content: str | bytes) -> Callable[[Path, Path], None]:
    def edit(root: Path, fx: Path) -> None:
        path = root / rel
        if path.exists():
            path.unlink()
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))

    return edit


def _fifo(rel: str) -> Callable[[Path, Path], None]:
    def edit(root: Path, fx: Path) -> None:
        path = root / rel
        if path.exists():
            path.unlink()
        os.mkfifo(path)

    return edit


def _folder(rel: str) -> Callable[[Path, Path], None]:
    def edit(root: Path, fx: Path) -> None:
        (root / rel).mkdir()

    return edit


def _nan_camera(root: Path, fx: Path) -> None:
    path = root / "02691156" / "model0" / "cameras.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["world_mat_0"][0, 3] = float("nan")
    np.savez(path, **arrays)


def _pickled_camera(root: Path, fx: Path) -> None:
    path = root / "02691156" / "model0" / "cameras.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["world_mat_0"] = np.array([Payload(fx / MARKER)], dtype=object)
    np.savez(path, **arrays)


def _mask_size(root: Path, fx: Path) -> None:
    path = root / "02691156" / "model0" / "mask" / "000.png"
    Image.new("L", (8, 8), 255).save(path)


MODEL0 = "02691156/model0"
DVR_EDITS: dict[str, Callable[[Path, Path], None]] = {
    "meta-invalid": _write("metadata.yaml", "02691156: {id: [\n"),
    "meta-list": _write("metadata.yaml", "- airplane\n- chair\n"),
    "meta-number": _write("metadata.yaml", "42\n"),
    "meta-entry-number": _write("metadata.yaml", "02691156: 5\n"),
    "meta-utf16": _write("metadata.yaml", "02691156:\n  name: airplane\n".encode("utf-16")),
    "meta-bomb": _write("metadata.yaml", alias_bomb()),
    "meta-binary": _write("metadata.yaml", b"\xff\xfe\x00\x81"),
    "meta-python-tag": _write("metadata.yaml", '!!python/object/apply:os.system ["true"]\n'),
    "meta-fifo": _fifo("metadata.yaml"),
    "meta-folder": _folder("metadata.yaml"),
    "cameras-corrupt": _write(f"{MODEL0}/cameras.npz", b"PK\x03\x04corrupt"),
    "cameras-empty": _write(f"{MODEL0}/cameras.npz", b""),
    "cameras-fifo": _fifo(f"{MODEL0}/cameras.npz"),
    "cameras-nan": _nan_camera,
    "cameras-pickle": _pickled_camera,
    "image-corrupt": _write(f"{MODEL0}/image/001.png", b"\x89PNG\r\n\x1a\ncorrupt"),
    "image-fifo": _fifo(f"{MODEL0}/image/001.png"),
    "mask-size": _mask_size,
    "lst-binary": _write("02691156/train.lst", b"\xff\xfe\x00\x81\n"),
    "lst-fifo": _fifo("02691156/train.lst"),
}


#: The broken transforms_train.json variants (:func:`blender_texts`).
BLENDER_KINDS = (
    "invalid-json",
    "utf16",
    "binary",
    "not-object",
    "angle-zero",
    "angle-nan",
    "angle-string",
    "frames-empty",
    "frames-not-list",
    "matrix-nan",
    "matrix-shape",
    "image-missing",
    "path-escape",
    "deep-nesting",
    "fifo",
)


def build_blender_variants(fx: Path) -> None:
    """Copies of the Blender scene with one defect each (``fx/blender-<name>``)."""
    good = json.loads((fx / "blender" / "transforms_train.json").read_text())
    texts = blender_texts(good)
    assert tuple(texts) == BLENDER_KINDS, tuple(texts)
    build_variants(fx, "blender", "transforms_train.json", texts)


def blender_texts(good: dict) -> dict[str, str | bytes | None]:
    """Broken transforms_train.json texts (None: a FIFO in its place)."""

    def edited(**changes) -> str:
        return json.dumps({**good, **changes})

    nan_frame = json.loads(json.dumps(good["frames"][0]))
    nan_frame["transform_matrix"][0][3] = "NaN"
    nan_matrix = json.dumps({**good, "frames": [nan_frame]}).replace('"NaN"', "NaN")
    frame = good["frames"][0]
    missing = [{**frame, "file_path": "./train/absent"}]
    return {
        "invalid-json": '{"camera_angle_x": 0.8, "frames": [',
        "utf16": json.dumps(good).encode("utf-16"),
        "binary": b"\xff\xfe\x00\x81",
        "not-object": "[1, 2, 3]",
        "angle-zero": edited(camera_angle_x=0.0),
        "angle-nan": edited(camera_angle_x=float("nan")),
        "angle-string": edited(camera_angle_x="wide"),
        "frames-empty": edited(frames=[]),
        "frames-not-list": edited(frames={"a": 1}),
        "matrix-nan": nan_matrix,
        "matrix-shape": edited(frames=[{**frame, "transform_matrix": [[1, 0], [0, 1]]}]),
        "image-missing": edited(frames=missing),
        "path-escape": edited(frames=[{**frame, "file_path": "/etc/passwd"}]),
        "deep-nesting": '{"camera_angle_x": ' + "[" * 100000 + "]" * 100000 + "}",
        "fifo": None,
    }


def build(fx: Path, yaml_stages: dict[str, tuple[str, str]]) -> Path:
    """Every fixture in ``fx`` (created); returns ``fx``."""
    fx.mkdir(parents=True, exist_ok=True)
    fx.chmod(0o755)
    build_valid(fx)
    build_generic(fx)
    build_hdf5(fx)
    build_checkpoints(fx)
    build_images(fx)
    build_yaml(fx, yaml_stages)
    build_dvr_variants(fx)
    build_blender_variants(fx)
    build_folder_variants(fx)
    return fx
