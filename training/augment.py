"""ADA's adaptive discriminator augmentation pipeline (``AugmentPipe``) and its presets.

Spec: docs/methods.md §3.2 (the ``bgc`` pipeline, per-op parameters), docs/stylegan2-ada.md §2
(augpipe presets, ``AugmentPipe`` keyword defaults) and docs/stylegan2-ada.md §7 (``grid_sample``
note). Paper: Karras et al., "Training Generative Adversarial Networks with Limited Data",
NeurIPS 2020, Appendix B.

Every op is applied to each image independently with probability ``p × multiplier`` (the
multiplier is the op's constructor keyword, 1 in every preset). The pipe is differentiable (to
second order) w.r.t. the input images, so D's gradients flow back to G and R1 can differentiate
through it. Stages, in order:

1. **Geometry** (xflip, rotate90, xint, scale, rotate, aniso, xfrac): inverse 3×3 homogeneous
   matrices per image (pixel units, origin at the image centre, x right, y down). The pixel
   "blit" part (xflip, rotate90, xint) is an exact gather (:func:`blit_resample`); the general
   part is executed once by :func:`geometric_resample` (reflect padding, 2× sym6 upsampling,
   bilinear ``grid_sample``, 2× sym6 downsampling, crop).
2. **Colour** (brightness, contrast, lumaflip, hue, saturation): one 4×4 matrix per image acting
   on (r, g, b, 1); the luma axis is v = (1, 1, 1)/√3.
3. **Image-space filtering** (imgfilter): four frequency bands with random log-normal gains,
   see :func:`imgfilter_bank` and :meth:`AugmentPipe._imgfilter`.
4. **Corruptions**: additive Gaussian noise, cutout.

Images are NCHW floats in [−1, 1] with 1 (luma-only colour handling) or 3 channels.

Deliberate differences from upstream (all keep the augmentation distribution):
- p == 0 returns the input tensor itself (drawing nothing); images that no geometric op touched
  (identity matrix) and images without an imgfilter draw skip the resampling/filtering, so they
  come back bit-exact (upstream draws and sends every image through the 2× up/down path even at
  p = 0, which returns it up to float rounding). Reference mode (below) does as upstream.
- For square images xflip, rotate90 and xint are executed exactly as a pixel gather (reflection
  fills what xint shifts in); only scale/rotate/aniso/xfrac go through ``grid_sample``. Upstream
  folds all seven into one matrix; with the sym6 filter that slightly blurs flipped/rotated images.
- The 2× grid's half-pixel offset uses the sym6 filter's centroid (see :func:`upsample_offset`)
  instead of upstream's hard-coded −½, so geometric ops pivot exactly on the image centre.
- ``debug_percentile`` replaces *every* draw, including the "is this op applied" draw, by its
  exact quantile: an op is applied iff ``debug_percentile < p × multiplier``, normal draws use
  σ·√2·erfinv(2q−1), half-normal draws σ·√2·erfinv(q), and integer draws are clamped to the
  top value at q = 1. The post-rotation is never applied in debug mode (so the total rotation
  is exactly θ). The per-pixel noise field stays random.
- Reflect padding of the imgfilter path also works for images smaller than the filter.

Random draws (docs/stylegan2-ada.md §2): the pipe consumes the global torch RNG exactly as
upstream does, so the same seed gives the same augmentation parameters. Ops draw in pipeline
order (xflip, rotate90, xint, scale, pre-rotate, aniso, post-rotate, xfrac, brightness,
contrast, lumaflip, hue, saturation, imgfilter bands 0…3, noise, cutout); each op first draws
its value and then its "is it applied" uniform, except cutout (gate, then centre). Integer
draws are ⌊U·k⌋, uniform ranges (2U − 1)·max, normal values N·std, log-normal 2^(N·std), noise
σ = |N|·std then the noise field; every imgfilter band draws, whatever its strength. The
application thresholds are computed in float32 from the float32 ``p`` buffer (as upstream's
``multiplier × p`` tensors), rotations' as 1 − √(1 − rotate·p). Rotation direction: a drawn
angle θ (rotate, and θ = i·90° for rotate90) turns the content by −θ in the y-down pixel frame,
i.e. counter-clockwise on screen for θ > 0 (rotate90 with i = 1 is ``torch.rot90(x, 1, (2, 3))``).

Reference mode (:func:`set_reference_mode` / ``with reference_mode():``, off by default)
reproduces upstream's augmented batches for the same seed, input and p, bitwise in float32 on
the CPU: the geometric ops are folded into one matrix and every image of the batch is resampled
(upstream's ½-pixel upsampling offset, its matrix association order and [B, C] filter calls);
imgfilter filters every image; and p = 0 runs the pipe (drawing, resampling, filtering) instead
of returning the input, so the RNG stream stays aligned with upstream's at p = 0 too. The draws
and the colour arithmetic are the same in both modes.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dnnlib import util
from torch_utils import persistence
from torch_utils.ops import upfirdn2d

# ---------------------------------------------------------------------------------------------
# Wavelet taps (orthonormal decomposition lowpass filters; sum √2, unit energy). Published
# mathematical constants (Daubechies' least-asymmetric "symlets").

SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)

# ---------------------------------------------------------------------------------------------
# Presets (docs/stylegan2-ada.md §2): each listed op gets probability multiplier 1.

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
_FILTER = dict(imgfilter=1)
_NOISE = dict(noise=1)
_CUTOUT = dict(cutout=1)

AUGPIPE_SPECS: dict[str, dict[str, float]] = {
    'blit': dict(_BLIT),
    'geom': dict(_GEOM),
    'color': dict(_COLOR),
    'filter': dict(_FILTER),
    'noise': dict(_NOISE),
    'cutout': dict(_CUTOUT),
    'bg': dict(**_BLIT, **_GEOM),
    'bgc': dict(**_BLIT, **_GEOM, **_COLOR),
    'bgcf': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER),
    'bgcfn': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE),
    'bgcfnc': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE, **_CUTOUT),
}

# Expected power of natural images in the four imgfilter bands, lowest band first (a 1/f
# spectrum; ADA Appendix B): 10 : 1 : 1 : 1, normalised to sum 1.
IMGFILTER_EXPECTED_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)


# ---------------------------------------------------------------------------------------------
# Batched homogeneous matrices. Entries are Python numbers or [B] tensors.

def _matrix(rows: Sequence[Sequence[object]], batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Stack a square table of scalars / [B] tensors into a [B, n, n] tensor."""
    n = len(rows)
    entries = [torch.as_tensor(e, dtype=dtype, device=device).expand(batch) for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(batch, n, n)


def translate2d(tx: object, ty: object, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, 3, 3] translation by (tx, ty)."""
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], batch, dtype, device)


def scale2d(sx: object, sy: object, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, 3, 3] axis-aligned scaling by (sx, sy)."""
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], batch, dtype, device)


def rotate2d(theta: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, 3, 3] rotation by θ: (x, y) → (x cosθ − y sinθ, x sinθ + y cosθ) (y points down)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], batch, dtype, device)


def _luma_axis(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """v = (1, 1, 1, 0)/√3 in homogeneous colour space (docs/methods.md §3.2), rounded from float64."""
    return torch.tensor(np.array([1, 1, 1, 0]) / np.sqrt(3), dtype=dtype, device=device)


def rotate_about_luma(theta: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, 4, 4] rotation by θ about the luma axis v (Rodrigues: cosθ·I + sinθ·[v]× + (1−cosθ)·vvᵀ).

    Entry (i, j) is v_i·v_j·(1 − cosθ) + cosθ on the diagonal and v_i·v_j·(1 − cosθ) ∓ v_k·sinθ
    off it, evaluated in that order (upstream's rounding).
    """
    v = _luma_axis(dtype, device)
    vx, vy, vz = v[0], v[1], v[2]
    c, s = torch.cos(theta), torch.sin(theta)
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]], batch, dtype, device)


# ---------------------------------------------------------------------------------------------
# Reference mode (see the module docstring).

#: Reproduce upstream's augmented batches (on) or use degan's exact paths (off, default); only
#: the calls made while it is on are affected.
_REFERENCE_MODE = util.GlobalSwitch(False)
#: ``set_reference_mode(enabled) -> old value``; ``with reference_mode():`` gives upstream's batches.
set_reference_mode = _REFERENCE_MODE.set
reference_mode = _REFERENCE_MODE.scope


# ---------------------------------------------------------------------------------------------
# Random draws (with the debug_percentile override).

class _Draws:
    """All random draws of one forward call; with ``q`` set, each draw is its exact q-quantile.

    Every draw is one ``torch.rand`` / ``torch.randn`` call of shape [B, *shape] on the images'
    device, made in the order the methods are called. An op draws its value first and then its
    gate (:meth:`gated`), as upstream does (module docstring, "Random draws").
    """

    def __init__(self, batch: int, device: torch.device, q: Optional[float]) -> None:
        self.batch, self.device, self.q = batch, device, q

    def unit(self, shape: Sequence[int] = ()) -> torch.Tensor:
        """U(0, 1) (the q-quantile is q)."""
        if self.q is None:
            return torch.rand([self.batch, *shape], device=self.device)
        return torch.full([self.batch, *shape], self.q, device=self.device)

    def gate(self, prob: float, shape: Sequence[int] = ()) -> torch.Tensor:
        """Bool [B, *shape]: the op is applied (U < prob)."""
        return self.unit(shape) < prob

    def gated(self, value: torch.Tensor, prob: float, default: float, shape: Sequence[int] = ()) -> torch.Tensor:
        """``value`` (already drawn) where a gate drawn now is open, else ``default``; gate shape [B, *shape]."""
        return torch.where(self.gate(prob, shape), value, torch.full_like(value, default))

    def symmetric(self, *scales: float, shape: Sequence[int] = ()) -> torch.Tensor:
        """Uniform on ±Π scales, computed as (2U − 1)·scale₁·scale₂… (upstream's rounding)."""
        value = self.unit(shape) * 2 - 1
        for scale in scales:
            value = value * scale
        return value

    def integer(self, k: int, shape: Sequence[int] = ()) -> torch.Tensor:
        """Uniform integer in {0, …, k−1} (as float): ⌊U·k⌋, clamped to k − 1 for q = 1."""
        return torch.floor(self.unit(shape) * k).clamp(max=k - 1)

    def normal(self, std: float, shape: Sequence[int] = ()) -> torch.Tensor:
        """N(0, std²)."""
        if self.q is None:
            return torch.randn([self.batch, *shape], device=self.device) * std
        value = std * math.sqrt(2) * torch.erfinv(torch.tensor(2 * self.q - 1, dtype=torch.float64))
        return torch.full([self.batch, *shape], float(value), device=self.device)

    def half_normal(self, std: float, shape: Sequence[int] = ()) -> torch.Tensor:
        """|N(0, std²)|."""
        if self.q is None:
            return torch.randn([self.batch, *shape], device=self.device).abs() * std
        value = std * math.sqrt(2) * torch.erfinv(torch.tensor(self.q, dtype=torch.float64))
        return torch.full([self.batch, *shape], float(value), device=self.device)

    def lognormal2(self, std: float, shape: Sequence[int] = ()) -> torch.Tensor:
        """2^N(0, std²)."""
        return torch.exp2(self.normal(std, shape))


def _threshold(p: torch.Tensor, *factors: float) -> float:
    """Application probability factor₁·p·factor₂… in float32, left to right (upstream's tensor arithmetic)."""
    prob = factors[0] * p
    for factor in factors[1:]:
        prob = prob * factor
    return float(prob)


def _rotation_threshold(p: torch.Tensor, rotate: float) -> float:
    """P(pre-rotation) = P(post-rotation) = 1 − √(1 − rotate·p) in float32, so P(either) = rotate·p."""
    return float(1 - torch.sqrt((1 - rotate * p).clamp(0, 1)))


# ---------------------------------------------------------------------------------------------
# Padding and filters.

def _reflect_indices(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of a reflect-padded axis (edge sample not repeated), for any pad size."""
    return _reflect_coord(torch.arange(-before, n + after, device=device), n)


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding of an NCHW tensor; unlike ``F.pad`` it accepts pads ≥ the image size."""
    h, w = x.shape[2], x.shape[3]
    if max(left, right) < w and max(top, bottom) < h:
        return F.pad(x, [left, right, top, bottom], mode='reflect')
    x = x.index_select(3, _reflect_indices(w, left, right, x.device))
    return x.index_select(2, _reflect_indices(h, top, bottom, x.device))


def imgfilter_bank(lowpass: Sequence[float] = SYM2, num_bands: int = 4) -> np.ndarray:
    """The imgfilter band-pass bank, [num_bands, taps] float64, lowest band first.

    Construction (ADA Appendix B, "image-space filtering"): from the wavelet lowpass h (sym2,
    Σh = √2) and its modulated highpass g[n] = (−1)ⁿ h[n], form the zero-phase half-band pair
    lo = (h ⋆ h̃)/2 and hi = (g ⋆ g̃)/2 (autocorrelations, h̃ = h reversed). They are power
    complementary: lo + hi = δ, lo(ω=0) = 1, lo(π) = 0, hi(0) = 0, hi(π) = 1. Starting from the
    single band δ, each of num_bands − 1 octave steps dilates every existing band by 2 (zero
    insertion, halving its frequencies), convolves it with lo, and adds hi as the new top band.
    So band k covers ≈ [π/2^(K−k), π/2^(K−k−1)] (band 0: [0, π/2^(K−1)]) and the rows sum to δ.
    """
    h = np.asarray(lowpass, dtype=np.float64)
    g = h * (-1.0) ** np.arange(h.size)
    lo = np.convolve(h, h[::-1]) / 2
    hi = np.convolve(g, g[::-1]) / 2
    bank = np.ones([1, 1])
    for _ in range(num_bands - 1):
        dilated = np.zeros([bank.shape[0], bank.shape[1] * 2 - 1])
        dilated[:, ::2] = bank
        bank = np.stack([np.convolve(row, lo) for row in dilated])
        top = np.zeros([1, bank.shape[1]])
        start = (bank.shape[1] - hi.size) // 2
        top[0, start:start + hi.size] = hi
        bank = np.concatenate([bank, top])
    return bank


# ---------------------------------------------------------------------------------------------
# Geometric resampling.

def upsample_offset(Hz_geom: torch.Tensor) -> float:
    """Where ``upsample2d(·, Hz_geom, up=2)`` puts low-res coordinate x: at 2x + offset (2× pixels).

    Centre-origin coordinates on both grids. With the automatic padding p0 = ⌈taps/2⌉ the output
    sample j is centred on zero-inserted position j + taps − 1 − p0 − c, where c = Σ k·f[k] / Σ f[k]
    is the filter's centroid (its DC group delay), giving offset = c − (taps − 1 − p0) − ½. The
    correlation-downsample of :func:`geometric_resample` has the same offset, so identity is
    exact; using the true centroid (5.098 for sym6 → offset −0.402) makes flips, rotations and
    scalings pivot on the image centre. Upstream hard-codes −½ (a centroid of 5), which shifts
    the pivot by ≈0.05 px.
    """
    f = Hz_geom.detach().to('cpu', torch.float64)
    taps = f.shape[0]
    centroid = float((torch.arange(taps, dtype=torch.float64) * f).sum() / f.sum())
    return centroid - (taps - 1 - (taps + 1) // 2) - 0.5


def geometric_resample(images: torch.Tensor, G_inv: torch.Tensor, Hz_geom: torch.Tensor,
                       reference: bool = False) -> torch.Tensor:
    """Resample each image through its inverse homogeneous transform (docs/methods.md §3.2).

    ``G_inv`` [B, 3, 3] maps output pixel coordinates to input pixel coordinates (pixel units,
    origin at the image centre). Steps: reflect-pad by the margin the transformed corners need
    (plus the filter support, at most size − 1 per side); upsample 2× with ``Hz_geom`` (the
    sym6 lowpass); bilinear ``grid_sample`` (zeros outside, align_corners=False) onto a 2× grid
    that keeps ``len(Hz_geom)//4`` extra pixels per side; filter with the same lowpass as a
    correlation and decimate 2×, cropping the extra pixels. With G_inv = I the result equals the
    input up to float rounding: the sym6 autocorrelation has δ at its even lags (orthonormality),
    so 2× up, filter and 2× down cancel.

    ``reference=True`` (reference mode) uses upstream's arithmetic: the 2× grid offset −½
    instead of :func:`upsample_offset`, upstream's association order of the matrix products and
    [B, C, H, W] filter calls, so the result equals upstream's bitwise (float32, CPU).
    """
    batch, channels, height, width = images.shape
    dtype, device = images.dtype, images.device
    Hz_geom = Hz_geom.to(device=device)
    Hz_pad = Hz_geom.shape[0] // 4
    G_inv = G_inv.to(dtype=dtype, device=device)

    def scale(sx: float, sy: float) -> torch.Tensor:
        return scale2d(sx, sy, batch, dtype, device)

    def translate(tx: float, ty: float) -> torch.Tensor:
        return translate2d(tx, ty, batch, dtype, device)

    # Margin: how far the transformed output corners reach beyond the input (plus filter support).
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], dtype=dtype, device=device)
    with torch.no_grad():
        reach = (G_inv @ corners)[:, :2, :].permute(1, 0, 2).reshape(2, -1)  # [xy, B*4]
        margin = torch.cat([-reach, reach]).amax(dim=1)  # [x0, y0, x1, y1]
        margin = margin + torch.tensor([2 * Hz_pad - cx, 2 * Hz_pad - cy] * 2, dtype=dtype, device=device)
        margin = margin.clamp(min=0).minimum(torch.tensor([width - 1, height - 1] * 2, dtype=dtype, device=device))
        mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())

    # Pad, and move the origin to the padded image's centre.
    images = F.pad(images, [mx0, mx1, my0, my1], mode='reflect')
    G_inv = translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ G_inv

    # Upsample 2×; in 2× pixel units a low-res coordinate x sits at 2x + offset (centre-origin).
    # (Filter as one [1, B·C, H, W] image: the depthwise FIR is much faster on CPU with batch 1.)
    padded_h, padded_w = images.shape[2], images.shape[3]
    if reference:
        images = upfirdn2d.upsample2d(images, Hz_geom, up=2)
        G_inv = scale(2, 2) @ G_inv @ scale(1 / 2, 1 / 2)
        G_inv = translate(-0.5, -0.5) @ G_inv @ translate(0.5, 0.5)
    else:
        images = upfirdn2d.upsample2d(images.reshape(1, batch * channels, padded_h, padded_w), Hz_geom, up=2)
        images = images.reshape(batch, channels, padded_h * 2, padded_w * 2)
        offset = upsample_offset(Hz_geom)
        to_up = translate(offset, offset) @ scale(2, 2)
        from_up = scale(0.5, 0.5) @ translate(-offset, -offset)
        G_inv = to_up @ G_inv @ from_up

    # Sample the 2× output grid (with Hz_pad extra low-res pixels per side) in normalised units.
    out_shape = [batch, channels, (height + Hz_pad * 2) * 2, (width + Hz_pad * 2) * 2]
    to_norm_in = scale(2 / images.shape[3], 2 / images.shape[2])
    from_norm_out = scale(1 / (2 / out_shape[3]), 1 / (2 / out_shape[2]))
    theta = (to_norm_in @ G_inv @ from_norm_out)[:, :2, :]
    grid = F.affine_grid(theta, out_shape, align_corners=False)
    images = F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    # Downsample 2× (correlation with the same filter) and crop the extra pixels.
    if reference:
        return upfirdn2d.downsample2d(images, Hz_geom, down=2, padding=-Hz_pad * 2, flip_filter=True)
    images = images.reshape(1, batch * channels, out_shape[2], out_shape[3])
    images = upfirdn2d.downsample2d(images, Hz_geom, down=2, padding=-Hz_pad * 2, flip_filter=True)
    return images.reshape(batch, channels, height, width)


def blit_resample(images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Exact pixel resampling for transforms that map pixel centres to pixel centres.

    ``G_inv`` [B, 3, 3] (centre-origin pixel units, as in :func:`geometric_resample`) must map
    every output pixel centre to an input pixel centre (flips, 90° rotations of a square image,
    integer translations); source positions outside the image are reflected back (edge sample not
    repeated). Implemented as one gather, so it is differentiable to any order.
    """
    batch, channels, height, width = images.shape
    device = images.device
    G_inv = G_inv.to(device=device, dtype=torch.float64)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float64) - cy,
                            torch.arange(width, device=device, dtype=torch.float64) - cx, indexing='ij')
    pos = torch.stack([xs.flatten(), ys.flatten(), torch.ones_like(xs.flatten())])  # [3, H*W]
    src = G_inv @ pos  # [B, 3, H*W]
    col = _reflect_coord(torch.round(src[:, 0] + cx).long(), width)
    row = _reflect_coord(torch.round(src[:, 1] + cy).long(), height)
    index = (row * width + col)[:, None, :].expand(batch, channels, height * width)
    return images.reshape(batch, channels, height * width).gather(2, index).reshape(batch, channels, height, width)


def _reflect_coord(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect integer coordinates into [0, n) (period 2(n−1), edge not repeated)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _product(matrices: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """M₁ @ M₂ @ … (None for an empty list)."""
    if not matrices:
        return None
    out = matrices[0]
    for m in matrices[1:]:
        out = out @ m
    return out


def _apply_per_sample(images: torch.Tensor, G_inv: torch.Tensor,
                      fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``fn`` only on the images whose G_inv is not the identity; the others stay bit-exact."""
    eye = torch.eye(3, dtype=G_inv.dtype, device=G_inv.device)
    idx = (G_inv != eye).flatten(1).any(dim=1).nonzero().flatten()
    if idx.numel() == 0:
        return images
    if idx.numel() == images.shape[0]:
        return fn(images, G_inv).to(images.dtype)
    out = fn(images.index_select(0, idx), G_inv.index_select(0, idx))
    return images.index_copy(0, idx, out.to(images.dtype))


# ---------------------------------------------------------------------------------------------

@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """ADA augmentation pipeline (docs/methods.md §3.2; docs/stylegan2-ada.md §2 for keywords/defaults).

    Each keyword without a suffix is an op's probability multiplier: the op is applied to a given
    image with probability ``p × multiplier``. ``p`` is a float32 0-dim buffer (initially 0) set
    by the training loop / ADA controller; it travels in snapshots. ``forward(images,
    debug_percentile=None)``; see the module docstring for the debug mode.
    """

    def __init__(self, xflip: float = 0, rotate90: float = 0, xint: float = 0, xint_max: float = 0.125,
                 scale: float = 0, rotate: float = 0, aniso: float = 0, xfrac: float = 0,
                 scale_std: float = 0.2, rotate_max: float = 1, aniso_std: float = 0.2, xfrac_std: float = 0.125,
                 brightness: float = 0, contrast: float = 0, lumaflip: float = 0, hue: float = 0,
                 saturation: float = 0, brightness_std: float = 0.2, contrast_std: float = 0.5,
                 hue_max: float = 1, saturation_std: float = 1,
                 imgfilter: float = 0, imgfilter_bands: Sequence[float] = (1, 1, 1, 1), imgfilter_std: float = 1,
                 noise: float = 0, cutout: float = 0, noise_std: float = 0.1, cutout_size: float = 0.5) -> None:
        super().__init__()
        self.register_buffer('p', torch.zeros([]))  # overall multiplier for augmentation probability

        # Pixel blitting.
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        # General geometric transformations.
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        # Colour transformations.
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        # Image-space filtering.
        self.imgfilter, self.imgfilter_std = float(imgfilter), float(imgfilter_std)
        self.imgfilter_bands = [float(b) for b in imgfilter_bands]
        # Image-space corruptions.
        self.noise, self.cutout = float(noise), float(cutout)
        self.noise_std, self.cutout_size = float(noise_std), float(cutout_size)

        self.register_buffer('Hz_geom', upfirdn2d.setup_filter(list(SYM6)))  # sym6 lowpass, sum 1
        bank = imgfilter_bank(SYM2, num_bands=4)
        if len(self.imgfilter_bands) != bank.shape[0]:
            raise ValueError(f'AugmentPipe: imgfilter_bands needs {bank.shape[0]} entries, got {len(self.imgfilter_bands)}')
        self.register_buffer('Hz_fbank', torch.as_tensor(bank, dtype=torch.float32))

    # ----------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, debug_percentile: Optional[float] = None) -> torch.Tensor:
        """Augment a batch [B, C, H, W] (C ∈ {1, 3}, values in [−1, 1]); differentiable."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f'AugmentPipe: images must be [B, 1 or 3, H, W], got {list(images.shape)}')
        p = self.p.detach().to('cpu', torch.float32)  # thresholds in float32, as upstream's tensors
        reference = bool(_REFERENCE_MODE)
        if float(p) <= 0 and not reference:
            return images  # every op is gated by p
        q = None if debug_percentile is None else float(debug_percentile)
        if q is not None and not 0 <= q <= 1:
            raise ValueError(f'AugmentPipe: debug_percentile must be in [0, 1], got {q}')
        draws = _Draws(images.shape[0], images.device, q)
        images = self._geometric(images, draws, p, reference)
        images = self._colour(images, draws, p)
        images = self._imgfilter(images, draws, p, reference)
        images = self._noise(images, draws, p)
        return self._cutout(images, draws, p)

    # ----------------------------------------------------------------------------------------
    # Geometry.

    def _geometric_matrices(self, draws: _Draws, p: torch.Tensor, height: int, width: int,
                            dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Inverse transforms of the enabled ops, [B, 3, 3] each: (blit ops, general ops), in draw order.

        The forward transform is G = A_k…A₂A₁ with A₁ = xflip applied first, so the inverse used for
        sampling is G⁻¹ = A₁⁻¹A₂⁻¹…A_k⁻¹ = blit⁻¹ · general⁻¹ (blit = xflip, rotate90, xint; general
        = scale, pre-rotate, aniso, post-rotate, xfrac). Each op draws its value, then its gate
        (module docstring, "Random draws"). A drawn angle θ enters the inverse as R(θ), so the
        content turns by −θ (counter-clockwise on screen for θ > 0, y pointing down).
        """
        batch, device = draws.batch, draws.device
        blit: list[torch.Tensor] = []
        general: list[torch.Tensor] = []

        if self.xflip > 0:  # mirror x with prob ½ when applied
            i = draws.gated(draws.integer(2), _threshold(p, self.xflip), 0)
            blit.append(scale2d(1 - 2 * i, 1, batch, dtype, device))
        if self.rotate90 > 0:  # rotate by i quarter turns, i uniform in {0, 1, 2, 3}
            i = draws.gated(draws.integer(4), _threshold(p, self.rotate90), 0)
            blit.append(rotate2d(math.pi / 2 * i, batch, dtype, device))
        if self.xint > 0:  # integer translation, uniform in ±xint_max of the size, rounded to pixels
            t = draws.gated(draws.symmetric(self.xint_max, shape=[2]), _threshold(p, self.xint), 0, [1])
            blit.append(translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height), batch, dtype, device))
        if self.scale > 0:  # isotropic scaling 2^N(0, scale_std²)
            s = draws.gated(draws.lognormal2(self.scale_std), _threshold(p, self.scale), 1)
            general.append(scale2d(1 / s, 1 / s, batch, dtype, device))
        p_rot = _rotation_threshold(p, self.rotate)  # P(pre or post rotation) = rotate·p
        if self.rotate > 0:  # pre-rotation, θ ~ U(−π, π)·rotate_max
            theta = draws.gated(draws.symmetric(math.pi, self.rotate_max), p_rot, 0)
            general.append(rotate2d(theta, batch, dtype, device))
        if self.aniso > 0:  # anisotropic scaling: x by s, y by 1/s
            s = draws.gated(draws.lognormal2(self.aniso_std), _threshold(p, self.aniso), 1)
            general.append(scale2d(1 / s, 1 / (1 / s), batch, dtype, device))
        if self.rotate > 0 and draws.q is None:  # post-rotation (skipped in debug mode)
            theta = draws.gated(draws.symmetric(math.pi, self.rotate_max), p_rot, 0)
            general.append(rotate2d(theta, batch, dtype, device))
        if self.xfrac > 0:  # fractional translation N(0, xfrac_std²) of the size
            t = draws.gated(draws.normal(self.xfrac_std, [2]), _threshold(p, self.xfrac), 0, [1])
            general.append(translate2d(-t[:, 0] * width, -t[:, 1] * height, batch, dtype, device))
        return blit, general

    def _geometric(self, images: torch.Tensor, draws: _Draws, p: torch.Tensor, reference: bool) -> torch.Tensor:
        """Blit ops exactly (pixel gather), then resample the images whose general transform moves.

        For square images, xflip/rotate90/xint permute pixels exactly (reflection fills what xint
        shifts in, like the reflect padding of the resampling path). Non-square images fold them
        into the resampled matrix (a 90° rotation of a non-square grid is not a permutation).
        In reference mode all enabled ops form one matrix, multiplied left to right in draw
        order, and the whole batch is resampled the upstream way when any op is enabled.
        """
        batch, _, height, width = images.shape
        dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
        blit, general = self._geometric_matrices(draws, p, height, width, dtype)
        if reference:
            G_inv = _product(blit + general)
            return images if G_inv is None else geometric_resample(images, G_inv, self.Hz_geom, reference=True)
        blit_inv, general_inv = _product(blit), _product(general)
        if blit_inv is not None and height != width:
            general_inv = blit_inv if general_inv is None else blit_inv @ general_inv
            blit_inv = None
        if blit_inv is not None:
            images = _apply_per_sample(images, blit_inv, lambda x, G: blit_resample(x, G))
        if general_inv is not None:
            images = _apply_per_sample(images, general_inv, lambda x, G: geometric_resample(x, G, self.Hz_geom))
        return images

    # ----------------------------------------------------------------------------------------
    # Colour.

    def _colour_matrix(self, draws: _Draws, p: torch.Tensor, channels: int,
                       dtype: torch.dtype) -> Optional[torch.Tensor]:
        """4×4 colour matrix C = M_k…M₁·I on (r, g, b, 1), M₁ = brightness first; None if no op is enabled.

        Each op draws its value, then its gate (module docstring, "Random draws").
        """
        batch, device = draws.batch, draws.device
        eye = torch.eye(4, dtype=dtype, device=device)
        C: Optional[torch.Tensor] = None

        def then(M: torch.Tensor) -> None:
            nonlocal C
            C = M @ (eye if C is None else C)

        def gated(value: torch.Tensor, prob: float, default: float) -> torch.Tensor:
            return draws.gated(value, prob, default).to(dtype)

        v = _luma_axis(dtype, device)
        vvT = torch.outer(v, v)
        if self.brightness > 0:  # add N(0, brightness_std²) to every channel
            b = gated(draws.normal(self.brightness_std), _threshold(p, self.brightness), 0)
            then(_matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], batch, dtype, device))
        if self.contrast > 0:  # multiply by 2^N(0, contrast_std²) (about 0, mid-grey)
            c = gated(draws.lognormal2(self.contrast_std), _threshold(p, self.contrast), 1)
            then(_matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], batch, dtype, device))
        if self.lumaflip > 0:  # Householder reflection of the luma axis, with prob ½ when applied
            i = gated(draws.integer(2), _threshold(p, self.lumaflip), 0)
            then(eye - 2 * vvT * i[:, None, None])
        if self.hue > 0 and channels > 1:  # rotate about the luma axis by θ ~ U(−π, π)·hue_max
            theta = gated(draws.symmetric(math.pi, self.hue_max), _threshold(p, self.hue), 0)
            then(rotate_about_luma(theta, batch, dtype, device))
        if self.saturation > 0 and channels > 1:  # scale the chroma (⊥ luma) by 2^N(0, saturation_std²)
            s = gated(draws.lognormal2(self.saturation_std), _threshold(p, self.saturation), 1)
            # vvᵀ + (I − vvᵀ)·s; its [3, 3] entry s only scales row 3 of C, which is never used.
            then(vvT + (eye - vvT) * s[:, None, None])
        return C

    def _colour(self, images: torch.Tensor, draws: _Draws, p: torch.Tensor) -> torch.Tensor:
        """x ← C[:3,:3]·x + C[:3,3] per pixel; for 1 channel the luma-only form (grey in, grey out)."""
        batch, channels, height, width = images.shape
        dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
        C = self._colour_matrix(draws, p, channels, dtype)
        if C is None:
            return images
        flat = images.reshape(batch, channels, height * width)
        if channels == 3:
            flat = C[:, :3, :3] @ flat + C[:, :3, 3:]
        else:
            # Grey g is (g, g, g) in RGB; the output's channel mean is g·Σ_j mean_i C_ij + mean_i C_i3.
            rows = C[:, :3, :].mean(dim=1)  # [B, 4]
            flat = flat * rows[:, :3].sum(dim=1)[:, None, None] + rows[:, 3][:, None, None]
        return flat.reshape(batch, channels, height, width)

    # ----------------------------------------------------------------------------------------
    # Image-space filtering.

    def _imgfilter_gains(self, draws: _Draws, p: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image band gains g [B, bands] and whether any band was drawn [B].

        For each band i in turn (every band draws, whatever its strength; value, then gate): with
        prob imgfilter·p·band_strength_i, a gain t_i = 2^N(0, std²) for band i (others 1) forms t;
        t is divided by √(Σ_j e_j t_j²) with e the expected power spectrum (10, 1, 1, 1)/13, so the
        expected image power is unchanged; g = Π t.
        """
        num_bands = self.Hz_fbank.shape[0]
        expected_power = torch.tensor(IMGFILTER_EXPECTED_POWER, dtype=dtype, device=draws.device)
        g = torch.ones([draws.batch, num_bands], dtype=dtype, device=draws.device)
        any_drawn = torch.zeros([draws.batch], dtype=torch.bool, device=draws.device)
        for i, band_strength in enumerate(self.imgfilter_bands):
            t_i = draws.lognormal2(self.imgfilter_std)
            gate = draws.gate(_threshold(p, self.imgfilter, band_strength))
            t_i = torch.where(gate, t_i, torch.ones_like(t_i))
            t = torch.ones([draws.batch, num_bands], dtype=dtype, device=draws.device)
            t[:, i] = t_i.to(dtype)
            t = t / (expected_power * t.square()).sum(dim=-1, keepdim=True).sqrt()
            g = g * t
            any_drawn = any_drawn | gate
        return g, any_drawn

    def _imgfilter(self, images: torch.Tensor, draws: _Draws, p: torch.Tensor, reference: bool) -> torch.Tensor:
        """Filter each drawn image (every image in reference mode) with the separable kernel k = g·Hz_fbank.

        Along x, then y, with reflect padding; the 2-D response at (ω_x, ω_y) is k(ω_x)·k(ω_y), so
        e.g. a constant image is scaled by g_0² and a ±1 checkerboard by g_3².
        """
        if self.imgfilter <= 0:
            return images
        batch, channels, height, width = images.shape
        dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
        g, drawn = self._imgfilter_gains(draws, p, dtype)
        if reference:
            drawn = torch.ones_like(drawn)
        idx = drawn.nonzero().flatten()
        if idx.numel() == 0:
            return images
        sub = images if idx.numel() == batch else images.index_select(0, idx)
        n = sub.shape[0]
        kernel = (g if idx.numel() == batch else g.index_select(0, idx)) @ self.Hz_fbank.to(dtype)  # [n, taps]
        kernel = kernel.repeat_interleave(channels, dim=0)[:, None, :]  # [n*C, 1, taps]
        pad = self.Hz_fbank.shape[1] // 2
        x = reflect_pad(sub.reshape(1, n * channels, height, width), pad, pad, pad, pad)
        x = F.conv2d(x, kernel[:, :, None, :].to(x.dtype), groups=n * channels)  # along x
        x = F.conv2d(x, kernel[:, :, :, None].to(x.dtype), groups=n * channels)  # along y
        x = x.reshape(n, channels, height, width)
        return x if idx.numel() == batch else images.index_copy(0, idx, x)

    # ----------------------------------------------------------------------------------------
    # Corruptions.

    def _noise(self, images: torch.Tensor, draws: _Draws, p: torch.Tensor) -> torch.Tensor:
        """Additive Gaussian noise with per-image std σ ~ |N(0, noise_std²)| (when applied).

        Draws σ, then its gate, then the noise field (one N(0, 1) per pixel and channel).
        """
        if self.noise <= 0:
            return images
        sigma = draws.gated(draws.half_normal(self.noise_std, [1, 1, 1]), _threshold(p, self.noise), 0, [1, 1, 1])
        return images + torch.randn_like(images) * sigma.to(images.dtype)

    def _cutout(self, images: torch.Tensor, draws: _Draws, p: torch.Tensor) -> torch.Tensor:
        """Zero a rectangle of cutout_size × the image size, centre uniform in the image.

        Draws the gate first, then the centre (upstream's order for this op).
        """
        if self.cutout <= 0:
            return images
        _, _, height, width = images.shape
        gate = draws.gate(_threshold(p, self.cutout), [1, 1])  # [B, 1, 1]
        size = gate.to(torch.float32) * self.cutout_size  # 0 where not applied
        centre = draws.unit([2, 1, 1])  # [B, 2, 1, 1]
        xs = (torch.arange(width, device=draws.device) + 0.5) / width
        ys = (torch.arange(height, device=draws.device) + 0.5) / height
        keep_x = (xs[None, None, :] - centre[:, 0]).abs() >= size / 2  # [B, 1, W]
        keep_y = (ys[None, :, None] - centre[:, 1]).abs() >= size / 2  # [B, H, 1]
        mask = (keep_x | keep_y).to(images.dtype)
        return images * mask[:, None]

