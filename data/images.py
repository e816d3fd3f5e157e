"""Read images, masks and EXR depth maps for the importers, with one-line errors.

Every failure (missing file, folder instead of file, truncated or corrupt data, unsupported
format) raises :class:`iss3d.core.errors.UserError` with the message ``"<path>: <what is wrong>"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from iss3d.core.errors import UserError
from iss3d.core.paths import input_file

# Depth values above this are background (Blender writes ~1e10 where a ray hits nothing).
DEPTH_BACKGROUND = 1e5
# Depth channels in order of preference; then interleaved RGB(A), then the first channel.
DEPTH_CHANNELS = ("Y", "Z", "depth", "R")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_RGB_MODES = ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _load(path: Path) -> Image.Image:
    """Open and fully decode an image (so that truncation is caught here)."""
    input_file(path, "an image file")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image PIL can read (unknown or corrupt format)") from None
    except Exception as err:
        raise UserError(f"{path}: cannot open image ({_one_line(err)})") from None
    try:
        img.load()
    except Exception as err:
        img.close()
        raise UserError(f"{path}: corrupt or truncated image ({_one_line(err)})") from None
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    path = Path(path)
    input_file(path, "an image file")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image PIL can read (unknown or corrupt format)") from None
    except Exception as err:
        raise UserError(f"{path}: cannot open image ({_one_line(err)})") from None
    return int(height), int(width)


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    return (arr.astype(np.uint32) >> 8).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPG as uint8 (H, W, 3) RGB, or (H, W, 4) RGBA when it stores alpha.

    Greyscale and palette images become RGB (RGBA if they carry transparency); 16-bit
    greyscale is reduced to 8 bits.
    """
    path = Path(path)
    img = _load(path)
    try:
        mode = img.mode
        if mode in ("RGB", "RGBA"):
            arr = np.asarray(img)
        elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
            arr = np.asarray(img.convert("RGBA"))
        elif mode in _RGB_MODES:
            arr = np.asarray(img.convert("RGB"))
        elif mode.startswith("I;16"):
            grey = _sixteen_to_eight(np.asarray(img))
            arr = np.repeat(grey[..., None], 3, axis=-1)
        else:
            raise UserError(f"{path}: unsupported image mode {mode!r} (expected 8-bit RGB/RGBA)")
    finally:
        img.close()
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image as bool (H, W): the first channel > 127 (> 127 * 256 for 16-bit)."""
    path = Path(path)
    img = _load(path)
    try:
        mode = img.mode
        if mode.startswith("I;16"):
            first = _sixteen_to_eight(np.asarray(img))
        elif mode == "1":
            first = np.asarray(img).astype(np.uint8) * 255
        elif mode in ("L", "LA", "RGB", "RGBA", "La", "RGBa"):
            arr = np.asarray(img)
            first = arr if arr.ndim == 2 else arr[..., 0]
        elif mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            first = np.asarray(img.convert("RGB"))[..., 0]
        else:
            raise UserError(f"{path}: unsupported mask image mode {mode!r}")
    finally:
        img.close()
    return np.ascontiguousarray(first > 127)


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """(..., 4) uint8 RGBA -> (..., 3) uint8 RGB composited over a white background."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def read_exr_depth(path: str | os.PathLike) -> np.ndarray:
    """Read a depth map from an OpenEXR file as float32 (H, W), values as stored.

    The channel is the first that exists of "Y", "Z", "depth", "R", then the first component
    of an interleaved "RGB"/"RGBA" channel group, then the file's first channel.
    """
    import OpenEXR  # imported here: only the importers need it

    path = Path(path)
    input_file(path, "an image file")
    try:
        with OpenEXR.File(str(path)) as exr:
            channels = exr.channels()
            if not channels:
                raise UserError(f"{path}: EXR file has no channels")
            name = _pick_depth_channel(list(channels))
            pixels = np.array(channels[name].pixels, copy=True)
    except UserError:
        raise
    except Exception as err:
        raise UserError(
            f"{path}: not a readable OpenEXR file, corrupt or truncated? ({_one_line(err)})"
        ) from None
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    if pixels.ndim != 2:
        raise UserError(f"{path}: EXR channel {name!r} has shape {pixels.shape}, expected (H, W)")
    if pixels.dtype.kind not in "fui":
        raise UserError(f"{path}: EXR channel {name!r} has unsupported type {pixels.dtype}")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _pick_depth_channel(names: list[str]) -> str:
    for wanted in DEPTH_CHANNELS:
        if wanted in names:
            return wanted
    for wanted in ("RGB", "RGBA"):
        if wanted in names:
            return wanted
    return names[0]


def labelled_grid(
    rows: list[tuple[str, list[Image.Image]]],
    cell: int = 96,
    header: list[str] | None = None,
    label_width: int = 240,
) -> Image.Image:
    """A white RGB sheet: one row per ``(label, images)``, the label on the left, each image
    resized (nearest) to ``cell`` x ``cell``; optional column titles ``header`` on top."""
    from PIL import ImageDraw, ImageFont

    columns = max((len(images) for _, images in rows), default=0)
    head = 20 if header else 0
    sheet = Image.new("RGB", (label_width + cell * columns, head + cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, title in enumerate(header or []):
        draw.text((label_width + j * cell + 4, 4), title, "black", font)
    for i, (label, images) in enumerate(rows):
        draw.text((4, head + i * cell + cell // 2 - 6), label[:38], "black", font)
        for j, image in enumerate(images):
            tile = image.convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (label_width + j * cell, head + i * cell))
    return sheet
