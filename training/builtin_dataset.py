"""The built-in low-shot dataset: ~100 procedurally drawn, face-like RGB images.

Issue "Foundation I", item 4: a small deterministic dataset that ships with the code, so that
the README's main command (``train.py --data=builtin``) and the tests need no download.
Every image is a cartoon portrait — a gradient background, shoulders, a shaded head with hair,
two eyes with irises and pupils, a nose and a mouth — with controlled variation in position,
size, colours, hair style, gaze and smile. The common layout is easy for a GAN to pick up
within a few hundred kimg (a blurry head first, then eyes and mouth), so progress is visible.

Determinism: the drawing uses only IEEE-exact numpy operations (+, −, ×, ÷, sqrt, clip,
floor) on float64 and random numbers taken as raw 64-bit words from ``PCG64`` seeded through
``SeedSequence([seed, image_index])`` (both algorithms are fixed by numpy's stability
policy). There are no transcendental functions, fonts or global random state, so the pixels
are bit-identical across runs, machines and numpy versions, and image ``i`` does not depend
on ``num_images``. Shapes are placed in resolution-independent coordinates, so
``builtin:32`` holds the same portraits as ``builtin`` (64 px), drawn at a lower resolution.

Each image also has an integer label, its hair colour class (0 black, 1 brown, 2 blond,
3 red; see :data:`LABEL_NAMES`), stored in ``dataset.json`` so that ``--cond=1`` can be tried.

Layering: this module sits on :mod:`training.image_files` (it writes its zip with
:class:`~training.image_files.DatasetWriter`) and knows no Dataset class;
:mod:`training.dataset` resolves ``builtin`` / ``builtin:RES`` paths through
:func:`parse_builtin_spec` and :func:`ensure_builtin_dataset`.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from dnnlib import util
from training.image_files import DatasetWriter

#: Bump when the drawing changes, so that cached zips of an older version are not reused.
BUILTIN_VERSION = 1
DEFAULT_RESOLUTION = 64
DEFAULT_NUM_IMAGES = 100
LABEL_NAMES = ('black hair', 'brown hair', 'blond hair', 'red hair')

_HAIR_RGB = ((0.10, 0.09, 0.10), (0.38, 0.22, 0.11), (0.93, 0.80, 0.45), (0.78, 0.30, 0.10))
_SKIN_RGB = ((0.98, 0.85, 0.74), (0.93, 0.76, 0.62), (0.80, 0.60, 0.45), (0.62, 0.44, 0.31), (0.45, 0.31, 0.22))
_IRIS_RGB = ((0.20, 0.45, 0.80), (0.40, 0.25, 0.12), (0.25, 0.55, 0.30), (0.45, 0.50, 0.55))
_MOUTH_RGB = (0.60, 0.16, 0.20)
_NUM_RANDOM_WORDS = 40


class _Uniforms:
    """Uniform draws in [0, 1) from raw PCG64 words (53-bit mantissa), stable across numpy versions."""

    def __init__(self, seed: int, index: int):
        words = np.random.PCG64(np.random.SeedSequence([seed, index])).random_raw(_NUM_RANDOM_WORDS)
        self._values = [float(int(w) >> 11) * (2.0 ** -53) for w in words]
        self._pos = 0

    def uniform(self, lo: float, hi: float) -> float:
        value = self._values[self._pos]
        self._pos += 1
        return lo + (hi - lo) * value

    def choice(self, n: int) -> int:
        return min(int(self.uniform(0, n)), n - 1)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """Piecewise-linear HSV → RGB (no trigonometry, so exact across platforms)."""
    h = (h % 1.0) * 6.0
    sector = int(h)
    f = h - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    return np.array(table[sector % 6], dtype=np.float64)


def _draw_params(seed: int, index: int) -> dict:
    """All random choices of one portrait, in normalized [0, 1] image coordinates."""
    u = _Uniforms(seed, index)
    p: dict = {}
    hue = u.uniform(0, 1)
    p['bg_top'] = _hsv_to_rgb(hue, u.uniform(0.2, 0.5), u.uniform(0.85, 1.0))
    p['bg_bottom'] = _hsv_to_rgb(hue + u.uniform(0.08, 0.3), u.uniform(0.3, 0.6), u.uniform(0.45, 0.7))
    p['cx'], p['cy'] = 0.5 + u.uniform(-0.06, 0.06), 0.50 + u.uniform(-0.04, 0.04)
    p['rx'] = u.uniform(0.20, 0.26)
    p['ry'] = p['rx'] * u.uniform(1.12, 1.32)
    p['skin'] = np.array(_SKIN_RGB[u.choice(len(_SKIN_RGB))]) * u.uniform(0.94, 1.04)
    p['label'] = u.choice(len(_HAIR_RGB))
    p['hair'] = np.array(_HAIR_RGB[p['label']]) * u.uniform(0.85, 1.1)
    p['hairline'] = u.uniform(0.15, 0.55)
    p['hair_volume'] = u.uniform(1.05, 1.2)
    p['hair_length'] = u.uniform(-0.2, 1.1)  # ≤ 0: short hair; otherwise hair falls this far (× ry) below cy
    p['shirt'] = _hsv_to_rgb(u.uniform(0, 1), u.uniform(0.5, 0.9), u.uniform(0.35, 0.85))
    p['shoulder_rx'] = u.uniform(0.40, 0.50)
    p['eye_y'] = u.uniform(0.02, 0.16)
    p['eye_dx'] = u.uniform(0.36, 0.48)
    p['eye_r'] = u.uniform(0.13, 0.18)
    p['iris'] = np.array(_IRIS_RGB[u.choice(len(_IRIS_RGB))])
    p['gaze_x'], p['gaze_y'] = u.uniform(-0.35, 0.35), u.uniform(-0.2, 0.2)
    p['mouth_y'] = u.uniform(0.40, 0.56)
    p['mouth_w'] = u.uniform(0.28, 0.48)
    p['smile'] = u.uniform(-0.5, 1.4)
    p['mouth_t'] = u.uniform(0.05, 0.09)
    p['light'] = u.uniform(0.15, 0.35)
    return p


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an ellipse boundary (negative inside)."""
    q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return (q - 1.0) * min(rx, ry)


def _coverage(sd: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of a shape given its signed distance, one pixel wide ramp."""
    return np.clip(0.5 - sd / pixel, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Alpha-composite a colour (or a per-pixel colour image) over ``img`` in place."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * color


def _draw_portrait(p: dict, x: np.ndarray, y: np.ndarray, pixel: float) -> np.ndarray:
    """Render one portrait as float64 [H, W, 3] in [0, 1]."""
    t = y[..., None]
    img = p['bg_top'] * (1.0 - t) + p['bg_bottom'] * t
    cx, cy, rx, ry = p['cx'], p['cy'], p['rx'], p['ry']

    # Long hair behind the head, shoulders, neck.
    if p['hair_length'] > 0:
        back = np.maximum(_ellipse_sd(x, y, cx, cy, rx * p['hair_volume'] * 1.05, ry * 1.1),
                          y - (cy + ry * p['hair_length']))
        _paint(img, _coverage(back, pixel), p['hair'])
    shoulders = _ellipse_sd(x, y, cx, 1.08, p['shoulder_rx'], 0.26)
    _paint(img, _coverage(shoulders, pixel), p['shirt'])
    neck = np.maximum(np.abs(x - cx) - rx * 0.45, np.maximum(cy - y, y - (cy + ry + 0.1)))
    _paint(img, _coverage(neck, pixel), p['skin'] * 0.8)

    # Head, shaded by a light from the upper left.
    shade = 1.0 + p['light'] * (0.5 - 0.5 * (x - cx) / rx - 0.5 * (y - cy) / ry) * 0.5
    skin = np.clip(p['skin'] * shade[..., None], 0.0, 1.0)
    _paint(img, _coverage(_ellipse_sd(x, y, cx, cy, rx, ry), pixel), skin)

    # Hair cap: the top of a slightly larger ellipse, above the hairline.
    cap = np.maximum(_ellipse_sd(x, y, cx, cy, rx * p['hair_volume'], ry * (1 + (p['hair_volume'] - 1) * 0.7)),
                     y - (cy - ry * p['hairline']))
    _paint(img, _coverage(cap, pixel), p['hair'])

    # Eyes: white, iris, pupil.
    ey, edx, er = cy - ry * p['eye_y'], rx * p['eye_dx'], rx * p['eye_r']
    for side in (-1.0, 1.0):
        ex = cx + side * edx
        _paint(img, _coverage(_ellipse_sd(x, y, ex, ey, er * 1.25, er), pixel), np.array([0.97, 0.97, 0.97]))
        ix, iy = ex + p['gaze_x'] * er, ey + p['gaze_y'] * er
        _paint(img, _coverage(_ellipse_sd(x, y, ix, iy, er * 0.62, er * 0.62), pixel), p['iris'])
        _paint(img, _coverage(_ellipse_sd(x, y, ix, iy, er * 0.3, er * 0.3), pixel), np.array([0.03, 0.03, 0.03]))

    # Nose: a small darker ellipse; mouth: a thick parabola (corners up when smiling).
    _paint(img, _coverage(_ellipse_sd(x, y, cx, cy + ry * 0.2, rx * 0.09, ry * 0.13), pixel) * 0.6, p['skin'] * 0.7)
    mx, my, mw = cx, cy + ry * p['mouth_y'], rx * p['mouth_w']
    s = (x - mx) / mw
    curve = my + p['smile'] * rx * 0.18 * (1.0 - s * s)
    mouth = np.maximum(np.abs(y - curve) - rx * p['mouth_t'], np.abs(x - mx) - mw)
    _paint(img, _coverage(mouth, pixel), np.array(_MOUTH_RGB))
    return img


def _check_resolution(resolution: int) -> None:
    if not (isinstance(resolution, (int, np.integer)) and 4 <= resolution <= 1024
            and (resolution & (resolution - 1)) == 0):
        raise util.UserError(f'built-in dataset resolution must be a power of two between 4 and 1024 '
                             f'(got {resolution}); use e.g. builtin:32')


def generate_builtin_images(resolution: int = DEFAULT_RESOLUTION, num_images: int = DEFAULT_NUM_IMAGES,
                            seed: int = 0) -> np.ndarray:
    """Draw the built-in dataset: uint8 array [num_images, resolution, resolution, 3] (HWC, RGB).

    Bit-identical for equal arguments on any machine; image ``i`` is the same for any
    ``num_images > i``.
    """
    _check_resolution(resolution)
    if num_images < 1:
        raise util.UserError(f'built-in dataset needs at least one image (got num_images={num_images})')
    coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    y, x = np.meshgrid(coords, coords, indexing='ij')
    out = np.empty([num_images, resolution, resolution, 3], dtype=np.uint8)
    for i in range(num_images):
        img = _draw_portrait(_draw_params(seed, i), x, y, 1.0 / resolution)
        out[i] = np.clip(np.floor(img * 255.0 + 0.5), 0, 255).astype(np.uint8)
    return out


def generate_builtin_labels(num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> np.ndarray:
    """Hair colour class of each built-in image: int64 [num_images] in 0..3 (see LABEL_NAMES)."""
    return np.array([_draw_params(seed, i)['label'] for i in range(num_images)], dtype=np.int64)


def parse_builtin_spec(path: str) -> Optional[int]:
    """``'builtin'`` → 0 (default resolution), ``'builtin:32'`` → 32, anything else → None."""
    m = re.fullmatch(r'builtin(?::(\d+))?', str(path).strip())
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) else 0


def builtin_dataset_path(resolution: int = DEFAULT_RESOLUTION, num_images: int = DEFAULT_NUM_IMAGES) -> str:
    """Where :func:`ensure_builtin_dataset` keeps the zip (``<cache>/datasets/builtin-…zip``)."""
    name = f'builtin-v{BUILTIN_VERSION}-{resolution}x{resolution}-n{num_images}.zip'
    return util.make_cache_dir_path('datasets', name)


def ensure_builtin_dataset(resolution: int = DEFAULT_RESOLUTION, num_images: int = DEFAULT_NUM_IMAGES) -> str:
    """Write the built-in dataset as a training zip into the cache once; return its path.

    The zip has the layout of ``dataset_tool.py`` output (``00000/img00000000.png``,
    ``dataset.json`` with the hair-colour labels) and is written to a temporary name and
    renamed, so concurrent processes (e.g. several GPUs) never see a partial file.
    """
    _check_resolution(resolution)
    path = builtin_dataset_path(resolution, num_images)
    if os.path.isfile(path):
        return path
    images = generate_builtin_images(resolution, num_images)
    labels = generate_builtin_labels(num_images)
    with DatasetWriter(path, exist_ok=True) as writer:
        for i in range(num_images):
            writer.add_image(images[i], label=int(labels[i]))
    return path
