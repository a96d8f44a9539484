"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020), default policy ``color,translation,cutout``.

Spec: docs/methods.md §4. Every op draws its parameters per sample from the global torch RNG on the
input's device (seeded runs are reproducible) and is differentiable w.r.t. the input to any
order. Images are NCHW (or NHWC with ``channels_first=False``) in [−1, 1]. Ops, in policy order:

* ``color``: brightness x += u − ½; saturation x ← (x − x̄_ch)·2u + x̄_ch (x̄_ch: per-pixel mean over
  channels); contrast x ← (x − x̄)·(u + ½) + x̄ (x̄: per-image mean); u ~ U(0, 1) per sample, each.
* ``translation`` (ratio 1/8): integer shifts uniform in [−s, s] per axis, s = ⌊r·size + ½⌋ for
  that axis; vacated pixels are zero.
* ``cutout`` (ratio 1/2): a zero square (rectangle for non-square images) of side
  ⌊r·size + ½⌋ whose centre offset is uniform in {0, …, size − (side mod 2)}; the square starts
  at offset − ⌊side/2⌋ and may hang over the border.

Unlike ADA there is no probability p: every op is applied to every image, always.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from torch_utils import persistence

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """u ~ U(0, 1) per sample, shaped [B, 1, 1, 1], in x's dtype and device."""
    return torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device)


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    """x + (u − ½), one u per sample (docs/methods.md §4, item 1)."""
    return x + (_uniform(x) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    """(x − x̄_ch)·2u + x̄_ch with x̄_ch the per-pixel channel mean (docs/methods.md §4, item 1)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    """(x − x̄)·(u + ½) + x̄ with x̄ the per-image mean over C, H, W (docs/methods.md §4, item 1)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_uniform(x) + 0.5) + mean


def translation_shift(size: int, ratio: float = TRANSLATION_RATIO) -> int:
    """Maximum shift s = ⌊ratio·size + ½⌋ (4 px at 32, 32 px at 256)."""
    return int(size * ratio + 0.5)


def cutout_side(size: int, ratio: float = CUTOUT_RATIO) -> int:
    """Cutout side ⌊ratio·size + ½⌋ (16 px at 32, 128 px at 256)."""
    return int(size * ratio + 0.5)


def rand_translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by integers (ty, tx) uniform in [−s, s] per axis; zero fill (docs/methods.md §4, item 2).

    out[i, j] = x[i + ty, j + tx] where that pixel exists, else 0 (the H shift is drawn first).
    """
    batch, channels, height, width = x.shape
    sy, sx = translation_shift(height, ratio), translation_shift(width, ratio)
    ty = torch.randint(-sy, sy + 1, size=[batch, 1], device=x.device)
    tx = torch.randint(-sx, sx + 1, size=[batch, 1], device=x.device)
    rows = torch.arange(height, device=x.device)[None, :] + ty  # [B, H] source rows
    cols = torch.arange(width, device=x.device)[None, :] + tx  # [B, W] source cols
    # Gather from a 1-pixel zero border: out-of-range sources land on it.
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1])
    rows = rows.clamp(-1, height) + 1
    cols = cols.clamp(-1, width) + 1
    index = (rows[:, :, None] * (width + 2) + cols[:, None, :]).reshape(batch, 1, height * width)
    out = padded.reshape(batch, channels, -1).gather(2, index.expand(batch, channels, height * width))
    return out.reshape(batch, channels, height, width)


def rand_cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero a side×side square at a random position, possibly partly outside (docs/methods.md §4, item 3).

    The square covers rows [oy − ⌊side/2⌋, oy − ⌊side/2⌋ + side) with oy uniform in
    {0, …, H − (side mod 2)} (the H offset is drawn first), columns likewise.
    """
    batch, _, height, width = x.shape
    side_y, side_x = cutout_side(height, ratio), cutout_side(width, ratio)
    oy = torch.randint(0, height + (1 - side_y % 2), size=[batch, 1], device=x.device)
    ox = torch.randint(0, width + (1 - side_x % 2), size=[batch, 1], device=x.device)
    y0, x0 = oy - side_y // 2, ox - side_x // 2
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    in_y = (rows >= y0) & (rows < y0 + side_y)  # [B, H]
    in_x = (cols >= x0) & (cols < x0 + side_x)  # [B, W]
    mask = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * mask[:, None].to(x.dtype)


AUGMENT_FNS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    'color': (rand_brightness, rand_saturation, rand_contrast),
    'translation': (rand_translation,),
    'cutout': (rand_cutout,),
}


def parse_policy(policy: str) -> list[str]:
    """'color,translation,cutout' → ['color', 'translation', 'cutout']; '' → [].

    Raises ValueError naming the unknown op and the known ones.
    """
    if not isinstance(policy, str):
        raise ValueError(f'policy must be a comma-separated string, got {type(policy).__name__}')
    names = [name.strip() for name in policy.split(',')] if policy.strip() else []
    for name in names:
        if name not in AUGMENT_FNS:
            raise ValueError(f'unknown DiffAugment op "{name}" in policy "{policy}"; '
                             f'known: {", ".join(AUGMENT_FNS)}')
    return names


def policy_ops(policy: str, random_order: bool = False,
               cutout_ratio: float = CUTOUT_RATIO) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The ops of a policy in policy order ('color' is brightness, saturation, contrast), or —
    ``random_order`` — the same ops in a random order drawn from the global torch RNG (CHAIN's
    FastGAN-D_big code shuffles them on every call). ``cutout_ratio``: the cutout side as a
    fraction of the image (1/2; Projected GAN's D uses 0.2, docs/projected.md §5)."""
    ops = [fn for name in parse_policy(policy) for fn in AUGMENT_FNS[name]]
    if cutout_ratio != CUTOUT_RATIO:
        ops = [functools.partial(rand_cutout, ratio=cutout_ratio) if fn is rand_cutout else fn for fn in ops]
    if random_order and len(ops) > 1:
        ops = [ops[i] for i in torch.randperm(len(ops)).tolist()]
    return ops


def DiffAugment(x: torch.Tensor, policy: str = 'color,translation,cutout', channels_first: bool = True,
                random_order: bool = False, cutout_ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Apply the policy's ops to a batch (NCHW, or NHWC if not ``channels_first``), in policy order
    or — ``random_order`` — in a fresh random order; ``cutout_ratio`` as in :func:`policy_ops`."""
    ops = policy_ops(policy, random_order, cutout_ratio)
    if not ops:
        return x
    if x.ndim != 4:
        raise ValueError(f'DiffAugment: x must be a 4-D image batch, got shape {list(x.shape)}')
    if not channels_first:
        x = x.permute(0, 3, 1, 2)
    for fn in ops:
        x = fn(x)
    if not channels_first:
        x = x.permute(0, 2, 3, 1)
    return x.contiguous()


@persistence.persistent_class
class DiffAugmentPipe(torch.nn.Module):
    """DiffAugment as a module, interchangeable with ``AugmentPipe`` in the loss (``pipe(images)``).

    There is deliberately no ``p`` buffer: DiffAugment applies every op to every image, so the ADA
    controller and ``--p`` do not apply (the training loop checks ``hasattr(pipe, 'p')``). No
    parameters or buffers; the policy is validated at construction.
    """

    def __init__(self, policy: str = 'color,translation,cutout', random_order: bool = False,
                 cutout_ratio: float = CUTOUT_RATIO) -> None:
        super().__init__()
        if not 0 < cutout_ratio <= 1:
            raise ValueError(f'cutout_ratio must be in (0, 1], got {cutout_ratio!r}')
        self.policy = ','.join(parse_policy(policy))
        self.random_order = bool(random_order)
        self.cutout_ratio = float(cutout_ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return DiffAugment(images, self.policy, channels_first=True, random_order=self.random_order,
                           cutout_ratio=self.cutout_ratio)

    def extra_repr(self) -> str:
        return f'policy={self.policy!r}, random_order={self.random_order}, cutout_ratio={self.cutout_ratio}'
