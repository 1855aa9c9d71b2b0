"""Tests of safe image reading (allstudy.data.images): broken files give reasons, odd modes become RGB."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from allstudy.data.images import MAX_PIXELS, MIN_SIDE, ImageInfo, ImageProblem, inspect_bytes, read_rgb, to_rgb

# ---------------------------------------------------------------------------------------------
# Makers of image bytes, all in memory (no image file is committed).


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise_rgb(width: int = 80, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG (correct CRCs) whose IHDR claims width x height RGB, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _truncated_jpeg() -> bytes:
    data = _encode(_noise_rgb(), "JPEG", quality=90)
    return data[: len(data) // 2]


#: name -> (bytes maker, a word the reason must contain)
BROKEN: dict[str, tuple[Callable[[], bytes], str]] = {
    "zero-bytes.jpg": (lambda: b"", "empty"),
    "text-named.jpg": (lambda: b"This is a text file, not a picture.\n" * 20, "not an image"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "one-pixel.png": (lambda: _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "too small"),
    "narrow-31x40.png": (lambda: _encode(Image.new("RGB", (31, 40), (200, 30, 30)), "PNG"), "too small"),
    "short-40x31.png": (lambda: _encode(Image.new("RGB", (40, 31), (200, 30, 30)), "PNG"), "too small"),
    # Pillow's own limit (far above 2 x 89 M pixels) refuses it while opening ...
    "bomb-100000x100000.png": (lambda: _png_header_only(100_000, 100_000), "decompression bomb"),
    # ... and the study's tighter limit (MAX_PIXELS) refuses one that Pillow would still open.
    "bomb-9000x9000.png": (lambda: _png_header_only(9_000, 9_000), "decompression bomb"),
    "bomb-8001x8000.png": (lambda: _png_header_only(8_001, 8_000), "decompression bomb"),
}


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    paths = {}
    for name, (make, _) in BROKEN.items():
        path = folder / name
        path.write_bytes(make())
        paths[name] = path
    return paths


# ---------------------------------------------------------------------------------------------
# Broken files: a reason in words, never a crash.


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_inspect_reports_broken_file_without_raising(name: str, broken_files: dict[str, Path]):
    path = broken_files[name]
    info, image = inspect_bytes(path.read_bytes(), path)  # must not raise
    assert image is None
    assert isinstance(info, ImageInfo)
    assert BROKEN[name][1] in info.problem.lower(), info.problem
    assert (info.width, info.height, info.mode) == (0, 0, "")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_read_rgb_raises_image_problem_with_path_and_reason(name: str, broken_files: dict[str, Path]):
    path = broken_files[name]
    with pytest.raises(ImageProblem) as caught:
        read_rgb(path)
    problem = caught.value
    assert isinstance(problem, ValueError)
    assert problem.path == str(path)
    assert BROKEN[name][1] in problem.reason.lower()
    assert str(path) in str(problem) and problem.reason in str(problem)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_inspect_without_path_never_raises(name: str, broken_files: dict[str, Path]):
    info, image = inspect_bytes(broken_files[name].read_bytes())
    assert image is None and info.problem


def test_read_rgb_of_missing_file_is_an_image_problem(tmp_path: Path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageProblem, match="cannot read the file") as caught:
        read_rgb(path)
    assert str(path) in str(caught.value)


def test_image_problem_without_path_is_just_the_reason():
    problem = ImageProblem(None, "something is wrong")
    assert problem.path is None and str(problem) == "something is wrong"


def test_too_small_names_the_size_and_the_minimum():
    info, _ = inspect_bytes(BROKEN["narrow-31x40.png"][0]())
    assert "31x40" in info.problem and str(MIN_SIDE) in info.problem


def test_min_side_is_accepted():
    info, image = inspect_bytes(_encode(Image.new("RGB", (MIN_SIDE, MIN_SIDE), (10, 20, 30)), "PNG"))
    assert info.problem == "" and image is not None and image.size == (MIN_SIDE, MIN_SIDE)


def _spy_on_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every attempt to decode pixels (ImageFile.load / Image.load)."""
    calls: list[str] = []
    real_file_load, real_image_load = ImageFile.ImageFile.load, Image.Image.load

    def file_load(self, *args, **kwargs):
        calls.append(f"ImageFile.load {self.size}")
        return real_file_load(self, *args, **kwargs)

    def image_load(self, *args, **kwargs):
        calls.append(f"Image.load {self.size}")
        return real_image_load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", file_load)
    monkeypatch.setattr(Image.Image, "load", image_load)
    return calls


@pytest.mark.parametrize("size", [(100_000, 100_000), (9_000, 9_000), (8_001, 8_000)])
def test_huge_header_is_refused_before_decoding(size: tuple[int, int], monkeypatch: pytest.MonkeyPatch):
    data = _png_header_only(*size)
    calls = _spy_on_decoding(monkeypatch)
    info, image = inspect_bytes(data, "bomb.png")
    assert image is None
    assert "decompression bomb" in info.problem
    assert calls == [], f"pixels were decoded before the size was refused: {calls}"


def test_decoding_spy_sees_a_normal_decode(monkeypatch: pytest.MonkeyPatch):
    """The spy above is effective: a normal image does go through load()."""
    data = _encode(_noise_rgb(), "PNG")
    calls = _spy_on_decoding(monkeypatch)
    info, image = inspect_bytes(data)
    assert info.problem == "" and image is not None
    assert calls


def test_max_pixels_itself_is_not_a_bomb():
    # 8000 x 8000 is exactly MAX_PIXELS: allowed by the size check (then the tiny IDAT is truncated).
    assert 8_000 * 8_000 == MAX_PIXELS
    info, _ = inspect_bytes(_png_header_only(8_000, 8_000))
    assert "decompression bomb" not in info.problem
    assert "truncated" in info.problem


# ---------------------------------------------------------------------------------------------
# Readable oddities: converted to RGB, with a note.


def _read(data: bytes, tmp_path: Path, name: str) -> tuple[ImageInfo, np.ndarray]:
    """Inspect the bytes and read them back from a file; both routes must agree."""
    info, image = inspect_bytes(data, name)
    assert info.problem == "", info.problem
    assert image is not None and image.mode == "RGB"
    path = tmp_path / name
    path.write_bytes(data)
    from_file = read_rgb(path)
    assert from_file.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(from_file), np.asarray(image))
    return info, np.asarray(image)


def test_rgb_jpeg_is_read_without_note(tmp_path: Path):
    info, pixels = _read(_encode(_noise_rgb(), "JPEG", quality=95), tmp_path, "plain.jpg")
    assert (info.width, info.height, info.mode, info.frames, info.note) == (80, 64, "RGB", 1, "")
    assert pixels.shape == (64, 80, 3) and pixels.dtype == np.uint8


def test_grey_l(tmp_path: Path):
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1))  # 40 x 50
    info, pixels = _read(_encode(Image.fromarray(grey, "L"), "PNG"), tmp_path, "grey.png")
    assert info.mode == "L" and "L" in info.note and "RGB" in info.note
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], grey)


def test_rgba_transparent_pixels_become_white(tmp_path: Path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[:, 20:40] = (0, 0, 255, 255)  # opaque blue -> blue
    rgba[:, 40:] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    info, pixels = _read(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), tmp_path, "alpha.png")
    assert info.mode == "RGBA" and "RGBA" in info.note
    assert (pixels[:, :20] == 255).all()
    assert (pixels[:, 20:40] == (0, 0, 255)).all()
    assert np.abs(pixels[:, 40:].astype(int) - 127).max() <= 2


def test_cmyk_jpeg(tmp_path: Path):
    cmyk = Image.new("CMYK", (48, 40), (0, 255, 255, 0))  # pure red in CMYK
    info, pixels = _read(_encode(cmyk, "JPEG", quality=95), tmp_path, "cmyk.jpg")
    assert info.mode == "CMYK" and "CMYK" in info.note
    mean = pixels.reshape(-1, 3).mean(axis=0)
    assert mean[0] > 230 and mean[1] < 25 and mean[2] < 25, mean


def test_sixteen_bit_grey_is_rescaled_not_saturated(tmp_path: Path):
    values = np.full((40, 40), 32768, np.uint16)
    values[:, :10] = 0
    values[:, 10:20] = 65535
    values[:, 20:30] = 1000  # dark in 16 bits, must not become bright
    data = _encode(Image.fromarray(values), "PNG")
    info, pixels = _read(data, tmp_path, "grey16.png")
    assert info.mode.startswith("I"), info.mode
    assert info.mode in info.note
    assert (pixels[:, :10] == 0).all()
    assert (pixels[:, 10:20] == 255).all()
    assert np.abs(pixels[:, 20:30].astype(int) - round(1000 / 65535 * 255)).max() <= 1
    assert np.abs(pixels[:, 30:].astype(int) - 128).max() <= 1, "mid-grey 32768 must come out near 128"


def test_palette_png_with_transparency(tmp_path: Path):
    index = np.zeros((40, 40), np.uint8)
    index[:, 20:] = 1
    palette_image = Image.fromarray(index, "P")
    palette_image.putpalette([0, 0, 0, 0, 160, 0] + [0] * (256 * 3 - 6))
    data = _encode(palette_image, "PNG", transparency=0)  # index 0 (black) is transparent
    info, pixels = _read(data, tmp_path, "palette.png")
    assert info.mode == "P" and "P" in info.note
    assert (pixels[:, :20] == 255).all(), "transparent palette entries must come out white, not black"
    assert (pixels[:, 20:] == (0, 160, 0)).all()


def test_palette_png_without_transparency(tmp_path: Path):
    index = np.zeros((40, 40), np.uint8)
    palette_image = Image.fromarray(index, "P")
    palette_image.putpalette([10, 20, 30] + [0] * (256 * 3 - 3))
    info, pixels = _read(_encode(palette_image, "PNG"), tmp_path, "palette-opaque.png")
    assert (pixels == (10, 20, 30)).all()


def test_bmp_is_lossless(tmp_path: Path):
    source = _noise_rgb(50, 40, seed=4)
    info, pixels = _read(_encode(source, "BMP"), tmp_path, "field.bmp")
    assert (info.width, info.height, info.mode) == (50, 40, "RGB")
    np.testing.assert_array_equal(pixels, np.asarray(source))


def test_grey_bmp_gets_a_note(tmp_path: Path):
    info, pixels = _read(_encode(Image.new("L", (40, 40), 77), "BMP"), tmp_path, "grey.bmp")
    assert info.note and "RGB" in info.note
    assert (pixels == 77).all()


def test_animated_gif_uses_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (40, 40), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    info, pixels = _read(buffer.getvalue(), tmp_path, "animated.gif")
    assert info.frames == 3
    assert "frames" in info.note and "3" in info.note and "first" in info.note
    assert (pixels == (255, 0, 0)).all()


def test_extension_does_not_matter(tmp_path: Path):
    """Format is decided by content: a PNG named .jpg reads fine."""
    info, pixels = _read(_encode(Image.new("RGB", (40, 40), (1, 2, 3)), "PNG"), tmp_path, "really-a-png.jpg")
    assert (pixels == (1, 2, 3)).all()


def test_exif_orientation_is_applied(tmp_path: Path):
    image = Image.new("RGB", (40, 64), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _, pixels = _read(_encode(image, "JPEG", exif=exif.tobytes()), tmp_path, "rotated.jpg")
    assert pixels.shape[:2] == (40, 64)


def test_read_rgb_uses_given_bytes(tmp_path: Path):
    path = tmp_path / "named.png"  # does not exist: the bytes are used
    image = read_rgb(path, data=_encode(Image.new("RGB", (40, 40), (9, 8, 7)), "PNG"))
    assert np.asarray(image)[0, 0].tolist() == [9, 8, 7]


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("1", 1, (255, 255, 255)),
        ("LA", (90, 255), (90, 90, 90)),
        ("LA", (0, 0), (255, 255, 255)),
        ("RGB", (4, 5, 6), (4, 5, 6)),
    ],
)
def test_to_rgb_in_memory(mode: str, value, expected):
    result = to_rgb(Image.new(mode, (40, 40), value))
    assert result.mode == "RGB"
    assert np.asarray(result)[0, 0].tolist() == list(expected)


def test_to_rgb_thirty_two_bit_integer():
    result = to_rgb(Image.fromarray(np.full((40, 40), 32768, np.int32)))
    assert result.mode == "RGB" and abs(int(np.asarray(result)[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("mode, value", [("RGB", (0, 0, 0)), ("L", 0)])
def test_trns_transparency_of_rgb_and_grey_png_becomes_white(mode: str, value):
    data = _encode(Image.new(mode, (40, 40), value), "PNG", transparency=value)
    info, image = inspect_bytes(data)
    assert info.problem == ""
    assert (np.asarray(image) == 255).all()
