"""Reading images safely: decide by content, guard against bombs, convert every readable mode to RGB.

Every problem is a reason in words, never a crash: the data scan records it and goes on, the
predictor shows it to the user.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Fields smaller than this on either side cannot show a cell; they are refused.
MIN_SIDE = 32
#: Refuse to decode more pixels than this (a 8000 x 8000 scan); checked from the header, before decoding.
MAX_PIXELS = 64_000_000

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class ImageProblem(ValueError):
    """An image file that cannot be used, with the reason in words."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}")


@dataclass(frozen=True)
class ImageInfo:
    """What the header and a full decode say about one file. ``problem`` is empty for a usable image."""

    width: int = 0
    height: int = 0
    mode: str = ""
    frames: int = 1
    problem: str = ""
    note: str = ""


def _open_checked(data: bytes, path: str | os.PathLike | None) -> Image.Image:
    """Open from bytes, check size and pixel count from the header, then decode fully."""
    if len(data) == 0:
        raise ImageProblem(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageProblem(
            path, "not an image: Pillow cannot identify its format (wrong extension or not a picture)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageProblem(path, f"decompression bomb refused: {err}") from None
    except Exception as err:  # a damaged header raises many different things
        if "truncat" in str(err).lower():
            raise ImageProblem(path, f"truncated file: {err}") from None
        raise ImageProblem(path, f"unreadable header: {type(err).__name__}: {err}") from None
    return check_image(image, path)


def check_image(image: Image.Image, path: str | os.PathLike | None = None) -> Image.Image:
    """Refuse an opened image that is too large (bomb guard, from its header) or too small, then decode it."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageProblem(
            path,
            f"decompression bomb refused: {width}x{height} = {width * height:,} pixels "
            f"exceeds the limit of {MAX_PIXELS:,}",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageProblem(path, f"too small: {width}x{height} px (a field needs at least {MIN_SIDE} px a side)")
    try:
        image.load()
    except Exception as err:  # truncated or corrupt data
        raise ImageProblem(path, f"truncated or corrupt image data: {err}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: transparency over white, 16-bit rescaled, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    if "transparency" in image.info and image.mode in ("P", "L", "RGB", "1"):
        image = image.convert("RGBA")  # a PNG's transparent colour: composited over white below
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max(initial=0)), 1e-12)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _mode_note(image: Image.Image) -> str:
    frames = getattr(image, "n_frames", 1)
    notes = []
    if image.mode != "RGB":
        notes.append(f"mode {image.mode} converted to RGB")
    if frames > 1:
        notes.append(f"{frames} frames: the first is used")
    return "; ".join(notes)


def read_rgb(path: str | os.PathLike | None, data: bytes | None = None) -> Image.Image:
    """Read an image file (format decided by content) as RGB; raise :class:`ImageProblem` if unusable."""
    if data is None:
        if path is None:
            raise ValueError("read_rgb needs a path or the file's bytes (data=...)")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ImageProblem(path, f"cannot read the file: {err.strerror or err}") from None
    return to_rgb(_open_checked(data, path))


def inspect_bytes(data: bytes, path: str | os.PathLike | None = None) -> tuple[ImageInfo, Image.Image | None]:
    """Inspect image bytes; return its info and, when usable, the RGB image. Never raises ImageProblem."""
    try:
        image = _open_checked(data, path)
    except ImageProblem as problem:
        return ImageInfo(problem=problem.reason), None
    info = ImageInfo(
        width=image.size[0],
        height=image.size[1],
        mode=image.mode,
        frames=getattr(image, "n_frames", 1),
        note=_mode_note(image),
    )
    try:
        rgb = to_rgb(image)
    except Exception as err:
        return ImageInfo(
            info.width, info.height, info.mode, info.frames, problem=f"cannot convert mode {image.mode} to RGB: {err}"
        ), None
    return info, rgb


def luma(image: np.ndarray) -> np.ndarray:
    """Grey levels of an RGB uint8 image as Pillow's "L" (ITU-R 601 luma), uint8; a grey (2-D) image unchanged."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a grey or RGB uint8 image, not {image.shape} {image.dtype}")
    return np.asarray(Image.fromarray(image, "RGB").convert("L"))
