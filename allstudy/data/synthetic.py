"""Synthetic peripheral-blood-smear fields: the study's embedded default dataset.

The real ALL datasets cannot be redistributed, so the study ships a deterministic, seeded generator
of microscope fields that imitate the Taleqani B-ALL dataset: 224 x 224 RGB JPEG fields with a pale
background, many red cells (biconcave discs with a paler centre) and one to three purple-stained
lymphoid cells whose class shows in their morphology only:

* ``Benign`` (hematogones): small cells, round nucleus, very high N:C ratio, dark condensed
  chromatin, no nucleoli, a thin rim of cytoplasm;
* ``Early``: small-to-medium blasts, round or slightly oval nucleus, fine chromatin, scant
  cytoplasm, a faint nucleolus now and then;
* ``Pre``: medium-large blasts, nucleus with a cleft, fine chromatin, a moderate rim of basophilic
  (bluish) cytoplasm, often one nucleolus;
* ``Pro``: large blasts, lobulated nucleus, very fine chromatin, several prominent nucleoli,
  variable cytoplasm, sometimes with small vacuoles.

Class parameters come from overlapping distributions. Everything else (stain hue and strength,
red-cell density and colour, background brightness and tint, illumination gradient, vignetting,
focus blur, sensor noise, exposure, JPEG quality, number of leukocytes) is drawn from the same
distribution for every class, so global colour statistics do not give the class away.

``leukocytes=(low, high)`` crowds each field with that many lymphoid cells, as many real ALL smears
are (the ``demo`` profile's 4-8): the class then shows in every cell of the field, so a model learns
it from a few hundred fields, and the amount of stain (more, larger cells) carries part of the class
into the colour statistics too.

A fraction of the fields are *re-captures*: a second crop of the same rendered slide region,
shifted by 5-40 px, with another exposure, noise and JPEG quality. The pairs are listed in
``SYNTHETIC.json`` as ground truth for duplicate detection.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from allstudy.core.atomic import write_json
from allstudy.data.classes import TALEQANI_CLASSES

#: Name of the marker file that identifies a folder written by this generator.
SYNTHETIC_MARKER = "SYNTHETIC.json"
#: Written into the marker; a folder whose marker names any ``allstudy.*`` generator is ours to replace (such as
#: ``allstudy.data.synthetic``, written for a while after the module moved by a version that drew the platelets in
#: another order: its name differs from this one, so it is rebuilt, never reused).
GENERATOR_NAME = "allstudy.synthetic"  # the marker's value since the first release (the module moved since)
#: Bump when the images for given arguments change; a cached dataset of another version is rebuilt.
GENERATOR_VERSION = 1
NOTE = "Synthetic fields made by allstudy; not patient data. Results on them say nothing about real leukemia."

_REF = 224.0  # sizes below are in pixels of a 224-pixel field
_MARGIN = 64  # canvas = size + margin, so that shifted crops fit
_SHIFT = (5, 40)  # re-capture shift range
_JPEG_QUALITY = (72, 95)  # inclusive
_JPEG_SUBSAMPLING = 2  # 4:2:0, as most microscope cameras write
_LEUKOCYTE_COUNT_P = (0.72, 0.19, 0.09)  # 1, 2, 3 cells per field, every class alike

# Purposes mixed into each SeedSequence, so that streams never collide.
_FIELD, _RECAPTURE, _LAYOUT = 0, 1, 2


@dataclass(frozen=True)
class _Morphology:
    """Distributions of the morphology of one class (lengths relative to the red-cell diameter)."""

    diameter: tuple[float, float]  # cell diameter / red-cell diameter: mean, sd
    nc_ratio: tuple[float, float]  # nucleus radius / cell radius: mean, sd
    eccentric: tuple[float, float]  # nucleus offset / cell radius: uniform range
    aspect: tuple[float, float]  # nucleus ellipse aspect: uniform range
    lobulation: tuple[float, float]  # total harmonic amplitude of the nucleus outline
    cleft_p: float  # probability of a cleft (Pro: of each of two notches)
    cleft_depth: tuple[float, float]  # depth / nucleus radius
    chromatin: tuple[float, float]  # stain density of the nucleus: mean, sd
    chromatin_texture: tuple[float, float]  # texture amplitude, grain sigma (px at 224)
    nucleoli_p: tuple[float, ...]  # probabilities of 0, 1, 2, ... nucleoli
    nucleolus_strength: tuple[float, float]
    cytoplasm: tuple[float, float]  # stain density of the cytoplasm: uniform range
    vacuole_p: float


_MORPHOLOGY: dict[str, _Morphology] = {
    "Benign": _Morphology(
        diameter=(1.16, 0.09),
        nc_ratio=(0.86, 0.03),
        eccentric=(0.0, 0.10),
        aspect=(1.0, 1.10),
        lobulation=(0.0, 0.03),
        cleft_p=0.05,
        cleft_depth=(0.10, 0.25),
        chromatin=(1.45, 0.12),
        chromatin_texture=(0.22, 1.5),
        nucleoli_p=(1.0,),
        nucleolus_strength=(0.0, 0.0),
        cytoplasm=(0.30, 0.50),
        vacuole_p=0.0,
    ),
    "Early": _Morphology(
        diameter=(1.40, 0.12),
        nc_ratio=(0.83, 0.04),
        eccentric=(0.0, 0.12),
        aspect=(1.0, 1.20),
        lobulation=(0.0, 0.05),
        cleft_p=0.12,
        cleft_depth=(0.10, 0.30),
        chromatin=(1.12, 0.10),
        chromatin_texture=(0.13, 0.8),
        nucleoli_p=(0.72, 0.28),
        nucleolus_strength=(0.15, 0.32),
        cytoplasm=(0.30, 0.55),
        vacuole_p=0.03,
    ),
    "Pre": _Morphology(
        diameter=(1.85, 0.15),
        nc_ratio=(0.75, 0.05),
        eccentric=(0.05, 0.18),
        aspect=(1.0, 1.25),
        lobulation=(0.02, 0.06),
        cleft_p=0.85,
        cleft_depth=(0.30, 0.60),
        chromatin=(1.02, 0.10),
        chromatin_texture=(0.12, 0.75),
        nucleoli_p=(0.30, 0.55, 0.15),
        nucleolus_strength=(0.30, 0.50),
        cytoplasm=(0.55, 0.85),
        vacuole_p=0.10,
    ),
    "Pro": _Morphology(
        diameter=(2.10, 0.18),
        nc_ratio=(0.76, 0.05),
        eccentric=(0.0, 0.14),
        aspect=(1.0, 1.30),
        lobulation=(0.09, 0.18),
        cleft_p=0.50,
        cleft_depth=(0.20, 0.45),
        chromatin=(0.92, 0.10),
        chromatin_texture=(0.10, 0.6),
        nucleoli_p=(0.0, 0.10, 0.35, 0.35, 0.20),
        nucleolus_strength=(0.45, 0.65),
        cytoplasm=(0.35, 0.80),
        vacuole_p=0.45,
    ),
}

# Optical densities (per unit stain) of the dyes, in R, G, B; each field mixes two ends.
_NUCLEUS_OD = (np.array([0.64, 0.90, 0.12]), np.array([0.80, 0.82, 0.07]))  # purple .. blue-violet
_CYTOPLASM_OD = (np.array([0.48, 0.32, 0.04]), np.array([0.38, 0.32, 0.08]))  # basophilic blue
_RBC_OD = (np.array([0.12, 0.33, 0.22]), np.array([0.30, 0.24, 0.07]))  # pinkish .. blue-grey
_SMUDGE_OD = (np.array([0.22, 0.46, 0.14]), np.array([0.32, 0.44, 0.12]))  # lilac smudges


def _mix(ends: tuple[np.ndarray, np.ndarray], t: float, strength: float) -> np.ndarray:
    return ((1.0 - t) * ends[0] + t * ends[1]) * strength


def _normal(rng: np.random.Generator, mean_sd: tuple[float, float], width: float = 2.5) -> float:
    mean, sd = mean_sd
    return float(np.clip(rng.normal(mean, sd), mean - width * sd, mean + width * sd))


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smoothed white noise with unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


def _soft(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased mask from a signed distance (negative inside), about one pixel wide."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _outline(
    theta: np.ndarray, radius: float, amplitudes: np.ndarray, phases: np.ndarray, first_harmonic: int
) -> np.ndarray:
    r = np.ones_like(theta)
    for i, (a, p) in enumerate(zip(amplitudes, phases, strict=True)):
        r += a * np.cos((first_harmonic + i) * theta + p)
    return radius * r


def _grid(half: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patch coordinates around a centre with a random sub-pixel offset."""
    fy, fx = rng.uniform(-0.5, 0.5, 2)
    axis = np.arange(-half, half + 1, dtype=np.float32)
    return (axis - np.float32(fy))[:, None], (axis - np.float32(fx))[None, :]


def _leukocyte(label: str, rng: np.random.Generator, d_rbc: float, scale: float) -> tuple[int, np.ndarray, np.ndarray]:
    """One lymphoid cell: (half patch size, nucleus stain density, cytoplasm stain density)."""
    m = _MORPHOLOGY[label]
    rc = 0.5 * d_rbc * _normal(rng, m.diameter)
    half = int(math.ceil(rc * 1.1)) + 3
    y, x = _grid(half, rng)
    rho = np.hypot(x, y)
    theta = np.arctan2(y, x)

    cell_r = _outline(theta, rc, rng.uniform(0.0, 0.035, 2), rng.uniform(0, 2 * np.pi, 2), 2)
    cell = _soft(rho - cell_r)

    # Nucleus: an ellipse with a harmonic outline, maybe cleft, in its own rotated frame.
    rn = rc * _normal(rng, m.nc_ratio)
    off = rc * rng.uniform(*m.eccentric)
    phi = rng.uniform(0, 2 * np.pi)
    alpha = rng.uniform(0, np.pi)
    q = math.sqrt(rng.uniform(*m.aspect))
    dx, dy = x - off * math.cos(phi), y - off * math.sin(phi)
    u = (dx * math.cos(alpha) + dy * math.sin(alpha)) / q
    v = (-dx * math.sin(alpha) + dy * math.cos(alpha)) * q
    ru = np.hypot(u, v)
    tu = np.arctan2(v, u)
    lob = rng.uniform(*m.lobulation)
    amps = lob * rng.dirichlet(np.full(5, 0.8)) if lob > 0 else np.zeros(5)
    phases = rng.uniform(0, 2 * np.pi, 5)
    nuc_r = _outline(tu, rn, amps, phases, 2)
    nucleus = _soft(ru - nuc_r)
    n_clefts = int(rng.random() < m.cleft_p) + (int(rng.random() < m.cleft_p) if label == "Pro" else 0)
    for _ in range(n_clefts):
        beta = rng.uniform(0, 2 * np.pi)
        depth = rn * rng.uniform(*m.cleft_depth)
        width = rn * rng.uniform(0.12, 0.26)
        edge = rn * (1.0 + float(np.dot(amps, np.cos(np.arange(2, 7) * beta + phases))))
        cu, cv = u - edge * math.cos(beta), v - edge * math.sin(beta)
        along = cu * math.cos(beta) + cv * math.sin(beta)
        across = -cu * math.sin(beta) + cv * math.cos(beta)
        notch = np.sqrt((along / depth) ** 2 + (across / width) ** 2)
        nucleus *= 1.0 - _soft((notch - 1.0) * min(depth, width))
    nucleus *= cell

    amp, grain = m.chromatin_texture
    density = _normal(rng, m.chromatin)
    chromatin = 1.0 + amp * _texture(rng, rho.shape, grain * scale)
    nuc = nucleus * (density * chromatin)
    cytoplasm = np.clip(cell - nucleus, 0.0, 1.0) * rng.uniform(*m.cytoplasm)
    cytoplasm *= 1.0 + 0.08 * _texture(rng, rho.shape, 1.5 * scale)

    n_nucleoli = int(rng.choice(len(m.nucleoli_p), p=m.nucleoli_p))
    for _ in range(n_nucleoli):
        r0 = rn * 0.5 * math.sqrt(rng.random())
        a0 = rng.uniform(0, 2 * np.pi)
        size = scale * rng.uniform(1.3, 2.6)
        spot = _soft((np.hypot(u - r0 * math.cos(a0), v - r0 * math.sin(a0)) - size) * 1.5)
        strength = rng.uniform(*m.nucleolus_strength)
        nuc *= 1.0 - strength * spot
        cytoplasm += 0.35 * strength * spot * nucleus  # nucleoli look pale blue-grey

    if rng.random() < m.vacuole_p:
        ring = np.clip(cell - nucleus, 0.0, 1.0)
        for _ in range(int(rng.integers(2, 7))):
            rr = rc * rng.uniform(0.6, 0.9)
            aa = rng.uniform(0, 2 * np.pi)
            vac = _soft(np.hypot(x - rr * math.cos(aa), y - rr * math.sin(aa)) - scale * rng.uniform(1.0, 2.0))
            cytoplasm *= 1.0 - 0.8 * vac * ring
    return half, nuc.astype(np.float32), cytoplasm.astype(np.float32)


def _rbc_sprites(rng: np.random.Generator, d: float, count: int) -> tuple[int, list[np.ndarray]]:
    """A few red-cell thickness sprites (biconcave discs) of one field, sharing a half size."""
    half = int(math.ceil(0.5 * d * 1.2)) + 2
    pallor_mean = rng.uniform(0.30, 0.62)
    sprites = []
    for _ in range(count):
        y, x = _grid(half, rng)
        r = 0.5 * d * float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
        ang = rng.uniform(0, np.pi)
        e = math.sqrt(rng.uniform(1.0, 1.14))
        u = (x * math.cos(ang) + y * math.sin(ang)) / e
        v = (-x * math.sin(ang) + y * math.cos(ang)) * e
        rho = np.hypot(u, v)
        pallor = float(np.clip(pallor_mean + rng.normal(0, 0.08), 0.1, 0.8))
        pr = r * rng.uniform(0.35, 0.55)
        thick = 1.0 - pallor * np.exp(-((rho / pr) ** 2))
        thick *= 1.0 + 0.12 * np.exp(-(((rho - 0.82 * r) / (0.12 * r)) ** 2))  # a defined rim
        sprites.append((_soft(rho - r) * thick).astype(np.float32))
    return half, sprites


def _place(
    rng: np.random.Generator,
    n_target: int,
    lo: float,
    hi: float,
    min_dist: float,
    avoid: list[tuple[float, float, float]],
) -> list[tuple[float, float]]:
    """Random sequential placement of up to n_target points at least min_dist apart."""
    cand = rng.uniform(lo, hi, size=(max(4 * n_target, 8), 2))
    for cy, cx, r in avoid:
        cand = cand[np.hypot(cand[:, 0] - cy, cand[:, 1] - cx) > r]
    # A bucket grid with cells smaller than min_dist / sqrt(2) holds at most one point per cell.
    cell = min_dist / 1.5
    n = int((hi - lo) / cell) + 1
    grid: list[list[tuple[float, float] | None]] = [[None] * (n + 4) for _ in range(n + 4)]
    d2 = min_dist * min_dist
    kept: list[tuple[float, float]] = []
    for y, x in cand.tolist():
        gy, gx = int((y - lo) / cell) + 2, int((x - lo) / cell) + 2
        ok = True
        for row in grid[gy - 2 : gy + 3]:
            for other in row[gx - 2 : gx + 3]:
                if other is not None and (other[0] - y) ** 2 + (other[1] - x) ** 2 < d2:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            grid[gy][gx] = (y, x)
            kept.append((y, x))
            if len(kept) >= n_target:
                break
    return kept


def _paste(canvas: np.ndarray, patch: np.ndarray, cy: float, cx: float, pad: int) -> None:
    h = patch.shape[0] // 2
    y0, x0 = int(round(cy)) + pad - h, int(round(cx)) + pad - h
    canvas[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] += patch


@dataclass
class _Field:
    """A rendered slide region (transmitted light, 0..1, before the camera) and its first capture."""

    canvas: np.ndarray
    offset: tuple[int, int]
    exposure: float
    noise: float
    quality: int


def _leukocyte_count(rng: np.random.Generator, leukocytes: tuple[int, int] | None) -> int:
    """Lymphoid cells in one field: 1-3 (mostly one) by default, else uniform in the inclusive range."""
    if leukocytes is None:
        return 1 + int(rng.choice(3, p=_LEUKOCYTE_COUNT_P))
    return int(rng.integers(leukocytes[0], leukocytes[1] + 1))


def _render_canvas(
    label: str, rng: np.random.Generator, size: int, leukocytes: tuple[int, int] | None = None
) -> _Field:
    if label not in TALEQANI_CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {', '.join(TALEQANI_CLASSES)}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, not {size}")
    scale = size / _REF
    margin = max(8, int(round(_MARGIN * scale)))
    c = size + margin

    # Per-field imaging conditions: the same distributions for every class.
    nuc_col = _mix(_NUCLEUS_OD, rng.random(), rng.uniform(0.85, 1.15)).astype(np.float32)
    cyto_col = _mix(_CYTOPLASM_OD, rng.random(), rng.uniform(0.85, 1.15)).astype(np.float32)
    rbc_col = _mix(_RBC_OD, rng.random(), rng.uniform(0.80, 1.25)).astype(np.float32)
    smudge_col = _mix(_SMUDGE_OD, rng.random(), rng.uniform(0.8, 1.2)).astype(np.float32)
    bg = 1.0 - np.abs(rng.normal(0.0, 0.025, 3))
    bg = (bg / bg.max() * rng.uniform(0.88, 0.99)).astype(np.float32)
    gradient, grad_dir, vignette = rng.uniform(0, 0.08), rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.15)
    blur = rng.uniform(0.35, 1.15) * scale
    d_rbc = rng.uniform(20.0, 26.0) * scale
    coverage = rng.uniform(0.45, 0.80)

    pad = int(2.0 * d_rbc) + 4  # room for the largest patch (a smudge) at the edge
    stains = np.zeros((4, c + 2 * pad, c + 2 * pad), np.float32)
    rbc, nuc, cyto, smudge = stains  # views: red cells, nuclei, cytoplasm, smudges

    # Leukocytes, inside the region that every crop of the canvas shows.
    n_cells = _leukocyte_count(rng, leukocytes)
    cells: list[tuple[float, float, float]] = []
    for _ in range(n_cells):
        half, n_map, c_map = _leukocyte(label, rng, d_rbc, scale)
        r = half - 3
        lo, hi = margin + 0.6 * r, size - 0.6 * r
        for _attempt in range(20):
            cy, cx = rng.uniform(lo, hi, 2)
            if all(math.hypot(cy - y, cx - x) > 0.95 * (r + rr) for y, x, rr in cells):
                cells.append((cy, cx, r))
                _paste(nuc, n_map, cy, cx, pad)
                _paste(cyto, c_map, cy, cx, pad)
                break
    avoid = [(y, x, r + 0.3 * d_rbc) for y, x, r in cells]

    # Now and then a smudge cell (lilac, ragged), every class alike.
    if rng.random() < 0.25:
        rs = d_rbc * rng.uniform(0.7, 1.3)
        half = int(math.ceil(rs * 1.4)) + 2
        y, x = _grid(half, rng)
        theta = np.arctan2(y, x)
        outline = _outline(theta, rs, rng.uniform(0, 0.12, 6), rng.uniform(0, 2 * np.pi, 6), 3)
        blob = _soft(np.hypot(x, y) - outline) * (
            0.55 + 0.35 * np.clip(_texture(rng, (2 * half + 1, 2 * half + 1), 1.0 * scale), -1, 1)
        )
        sy, sx = rng.uniform(0, c, 2)
        _paste(smudge, (blob * rng.uniform(0.5, 0.9)).astype(np.float32), sy, sx, pad)
        avoid.append((sy, sx, rs + 0.3 * d_rbc))

    # Platelets: tiny purple granules.
    for _ in range(int(rng.integers(0, 7))):
        y, x = _grid(3, rng)
        dot = _soft(np.hypot(x, y * rng.uniform(0.7, 1.0)) - rng.uniform(0.8, 1.8) * scale)
        strength = rng.uniform(0.4, 0.8)  # drawn before the position: the order fixes every field's pixels
        py, px = rng.uniform(0, c, 2)
        _paste(nuc, (dot * strength).astype(np.float32), py, px, pad)

    # Red cells: sprites placed by random sequential adsorption, slight overlaps allowed.
    s_half, sprites = _rbc_sprites(rng, d_rbc, 10)
    n_target = int(coverage * (c + d_rbc) ** 2 / (math.pi * (0.5 * d_rbc) ** 2))
    centres = _place(rng, n_target, -0.5 * d_rbc, c + 0.5 * d_rbc, d_rbc * rng.uniform(0.80, 0.92), avoid)
    choice = rng.integers(0, len(sprites), len(centres))
    flips = rng.integers(0, 8, len(centres))
    for (cy, cx), k, f in zip(centres, choice, flips, strict=True):
        s = sprites[k]
        if f & 1:
            s = s[::-1]
        if f & 2:
            s = s[:, ::-1]
        if f & 4:
            s = s.T
        _paste(rbc, s, cy, cx, pad)

    od = np.tensordot(
        stains[:, pad : pad + c, pad : pad + c], np.stack([rbc_col, nuc_col, cyto_col, smudge_col]), axes=(0, 0)
    )
    axis = np.linspace(-1.0, 1.0, c, dtype=np.float32)
    gy, gx = axis[:, None], axis[None, :]
    illum = (1.0 + gradient * (gx * math.cos(grad_dir) + gy * math.sin(grad_dir))) * (
        1.0 - 0.5 * vignette * (gx * gx + gy * gy)
    )
    light = np.exp(-od) * (illum[..., None] * bg)
    light = ndimage.gaussian_filter(light, (blur, blur, 0), mode="nearest")

    offset = (int(rng.integers(0, margin + 1)), int(rng.integers(0, margin + 1)))
    return _Field(
        canvas=light.astype(np.float32),
        offset=offset,
        exposure=float(rng.uniform(0.96, 1.12)),
        noise=float(rng.uniform(0.8, 3.5)),
        quality=int(rng.integers(_JPEG_QUALITY[0], _JPEG_QUALITY[1] + 1)),
    )


_FONT_CACHE: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if px not in _FONT_CACHE:
        try:
            _FONT_CACHE[px] = ImageFont.load_default(size=px)
        except (TypeError, OSError, ImportError):  # an old Pillow or one without FreeType
            _FONT_CACHE[px] = ImageFont.load_default()
    return _FONT_CACHE[px]


def _scale_bar(image: Image.Image) -> None:
    """Burn a small scale bar (black line, "10 um") into the bottom-right corner, in place."""
    size = image.width
    scale = size / _REF
    draw = ImageDraw.Draw(image)
    font = _font(max(7, int(round(8 * scale))))
    box_w, box_h = int(round(36 * scale)), int(round(15 * scale))
    x1, y1 = size - int(round(3 * scale)), size - int(round(3 * scale))
    x0, y0 = x1 - box_w, y1 - box_h
    draw.rectangle((x0, y0, x1, y1), fill=(250, 250, 250))
    line_y = y0 + int(round(3 * scale))
    draw.line(
        (x0 + int(round(4 * scale)), line_y, x1 - int(round(4 * scale)), line_y),
        fill=(0, 0, 0),
        width=max(1, int(round(2 * scale))),
    )
    draw.text(((x0 + x1) / 2, line_y + int(round(2 * scale))), "10 um", fill=(0, 0, 0), font=font, anchor="mt")


def _capture(
    field: _Field, offset: tuple[int, int], exposure: float, noise: float, rng: np.random.Generator, size: int
) -> Image.Image:
    oy, ox = offset
    crop = field.canvas[oy : oy + size, ox : ox + size]
    pixels = crop * np.float32(255.0 * exposure)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(noise)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    _scale_bar(image)
    return image


def render_field(
    label: str, rng: np.random.Generator, size: int = 224, leukocytes: tuple[int, int] | None = None
) -> Image.Image:
    """One synthetic RGB field (``size`` x ``size``) of class ``label``, drawn from ``rng``."""
    field = _render_canvas(label, rng, size, leukocytes)
    return _capture(field, field.offset, field.exposure, field.noise, rng, size)


def _recapture_shift(rng: np.random.Generator, offset: tuple[int, int], margin: int, scale: float) -> tuple[int, int]:
    lo_s, hi_s = max(1, int(round(_SHIFT[0] * scale))), max(2, int(round(_SHIFT[1] * scale)))
    while True:
        shift = []
        for o in offset:
            low, high = max(-hi_s, -o), min(hi_s, margin - o)
            shift.append(int(rng.integers(low, high + 1)))
        if max(abs(shift[0]), abs(shift[1])) >= lo_s:
            return offset[0] + shift[0], offset[1] + shift[1]


def _rng(seed: int, class_index: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(GENERATOR_VERSION, class_index, index, purpose)))
    )


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    image.save(path, format="JPEG", quality=quality, subsampling=_JPEG_SUBSAMPLING, optimize=False)


def _n_recaptures(n_per_class: int, recapture_fraction: float) -> int:
    """Second copies per class: about recapture_fraction of the first captures get one."""
    if recapture_fraction <= 0 or n_per_class < 2:
        return 0
    return min(n_per_class // 2, int(round(n_per_class * recapture_fraction / (1.0 + recapture_fraction))))


def _write_class(
    root: Path,
    class_index: int,
    label: str,
    n: int,
    seed: int,
    size: int,
    recapture_fraction: float,
    tick: Callable[..., object],
    leukocytes: tuple[int, int] | None = None,
) -> list[list[str]]:
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    n_rec = _n_recaptures(n, recapture_fraction)
    n_first = n - n_rec
    layout = _rng(seed, class_index, 0, _LAYOUT)
    recaptured = sorted(int(i) for i in layout.choice(n_first, size=n_rec, replace=False)) if n_rec else []
    slots = layout.permutation(n)
    width = max(4, len(str(n - 1)))
    name = [f"synthetic-{label}-{int(s):0{width}d}.jpg" for s in slots]
    scale = size / _REF
    margin = max(8, int(round(_MARGIN * scale)))
    groups: list[list[str]] = []
    for j in range(n_first):
        rng = _rng(seed, class_index, j, _FIELD)
        field = _render_canvas(label, rng, size, leukocytes)
        _save_jpeg(
            _capture(field, field.offset, field.exposure, field.noise, rng, size), folder / name[j], field.quality
        )
        tick()
        if j in recaptured:
            k = n_first + recaptured.index(j)
            rrng = _rng(seed, class_index, j, _RECAPTURE)
            offset = _recapture_shift(rrng, field.offset, margin, scale)
            change = float(rrng.uniform(0.03, 0.08)) * (1 if rrng.random() < 0.5 else -1)
            quality = field.quality
            while quality == field.quality:
                quality = int(rrng.integers(_JPEG_QUALITY[0], _JPEG_QUALITY[1] + 1))
            image = _capture(field, offset, field.exposure * (1.0 + change), float(rrng.uniform(0.8, 3.5)), rrng, size)
            _save_jpeg(image, folder / name[k], quality)
            groups.append([f"{label}/{name[j]}", f"{label}/{name[k]}"])
            tick()
    return groups


def _parameters(
    seed: int, n_per_class: int, size: int, recapture_fraction: float, leukocytes: tuple[int, int] | None
) -> dict:
    return {
        "synthetic": True,
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_per_class": n_per_class,
        "size": size,
        "recapture_fraction": recapture_fraction,
        "leukocytes": list(leukocytes) if leukocytes else None,  # None: 1-3 per field (a marker without the key)
        "classes": list(TALEQANI_CLASSES),
    }


def _read_marker(folder: Path) -> dict | None:
    """The marker of ``folder`` when an allstudy generator wrote it, else None."""
    try:
        data = json.loads((folder / SYNTHETIC_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    generator = data.get("generator") if isinstance(data, dict) else None
    if data.get("synthetic") is True and isinstance(generator, str) and generator.startswith("allstudy."):
        return data
    return None


def _same_parameters(marker: dict, wanted: dict) -> bool:
    return all(marker.get(key) == value for key, value in wanted.items())


def _remove_abandoned_builds(out_dir: Path) -> None:
    pattern = re.compile(re.escape(out_dir.name) + r"\.(?:tmp|old)-(\d+)$")
    if not out_dir.parent.is_dir():
        return
    for entry in out_dir.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or not entry.is_dir():
            continue
        pid = int(match.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # its writer is still running
            except ProcessLookupError:
                pass
            except (PermissionError, OSError):
                continue
        shutil.rmtree(entry, ignore_errors=True)


def check_positive(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int when it is a whole number of at least ``minimum``; else a ValueError naming it."""
    if not isinstance(value, (int, float, np.integer)) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    return int(value)


def build_dataset(
    out_dir: str | os.PathLike,
    wanted: dict,
    write: Callable[[Path, Callable[..., object]], dict],
    total: int,
    progress: bool = False,
    unit: str = "synthetic fields",
) -> Path:
    """Write a synthetic dataset into ``out_dir`` at once, or reuse the one there; return ``out_dir``.

    ``wanted``: the generator's name and arguments, written into ``SYNTHETIC.json``; a folder whose marker
    holds the same values is reused as is, one of another allstudy generator or other arguments is rebuilt.
    A non-empty folder without the marker is never touched (ValueError). ``write(folder, tick)`` writes the
    files into ``<out_dir>.tmp-<pid>``, calls ``tick()`` once per file (``total`` in all) and returns more
    of the marker; the folder is renamed into place when complete.
    """
    out_dir = Path(out_dir)
    requested = out_dir
    if out_dir.is_symlink():  # swap the folder the link points at, keep the link
        out_dir = out_dir.resolve()

    def check_target() -> bool:
        """True when out_dir already holds the wanted dataset; raise when it is not ours to replace."""
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir} is a file, not a folder; choose an empty folder instead")
        if not out_dir.is_dir() or not any(out_dir.iterdir()):
            return False
        marker = _read_marker(out_dir)
        if marker is None:
            raise ValueError(
                f"{out_dir} is not empty and holds no {SYNTHETIC_MARKER} of {wanted['generator']}; "
                f"refusing to overwrite it: choose an empty folder instead"
            )
        return _same_parameters(marker, wanted)

    if check_target():
        return requested

    _remove_abandoned_builds(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=unit, unit="img")
        tick = bar.update if bar is not None else (lambda *_: None)
        try:
            extra = write(tmp, tick)
        finally:
            if bar is not None:
                bar.close()
        write_json(tmp / SYNTHETIC_MARKER, {**wanted, **extra})

        if check_target():  # another process finished the same dataset meanwhile
            shutil.rmtree(tmp)
            return requested
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return requested


def generate_dataset(
    out_dir: str | os.PathLike,
    n_per_class: int = 100,
    seed: int = 0,
    size: int = 224,
    recapture_fraction: float = 0.1,
    progress: bool = False,
    leukocytes: tuple[int, int] | None = None,
) -> Path:
    """Write ``out_dir/<class>/synthetic-<class>-NNNN.jpg`` for every class in TALEQANI_CLASSES and
    ``out_dir/SYNTHETIC.json``; return ``out_dir``.

    ``n_per_class`` counts files, re-capture second copies included. ``leukocytes``: the inclusive range of
    lymphoid cells per field (drawn uniformly), e.g. ``(4, 8)`` for fields as crowded with blasts as many real
    ALL smears; None: one to three, mostly one. A folder already holding a
    dataset made with the same arguments is reused as is; one made with other arguments is rebuilt
    (:func:`build_dataset`).
    """
    n_per_class = check_positive("n_per_class", n_per_class)
    seed = check_positive("seed", seed, 0)
    if not 0.0 <= recapture_fraction <= 1.0:
        raise ValueError(f"recapture_fraction must be between 0 and 1, not {recapture_fraction!r}")
    size = check_positive("size (pixels)", size, 64)
    if leukocytes is not None:
        low, high = (int(v) for v in leukocytes)
        if not 1 <= low <= high or (low, high) != tuple(leukocytes):
            raise ValueError(
                f"leukocytes must be a range (low, high) of whole numbers with 1 <= low <= high, not {leukocytes!r}"
            )
        leukocytes = (low, high)
    wanted = _parameters(seed, n_per_class, size, float(recapture_fraction), leukocytes)

    def write(folder: Path, tick: Callable[..., object]) -> dict:
        groups: list[list[str]] = []
        for ci, label in enumerate(TALEQANI_CLASSES):
            groups += _write_class(
                folder, ci, label, n_per_class, seed, size, float(recapture_fraction), tick, leukocytes
            )
        return {"recapture_groups": groups, "note": NOTE}

    return build_dataset(out_dir, wanted, write, n_per_class * len(TALEQANI_CLASSES), progress)
