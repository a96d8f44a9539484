"""Snapshot image grids: the reals of ``reals.png`` and the G_ema samples of ``fakes*.png``.

Upstream's grid layout (docs/stylegan2-ada.md §5): reals picked with a seeded shuffle (grouped
by label for conditional sets), fakes from fixed latents drawn once per run. Samples come from
the backbone's sampler, so the loop never calls a network directly.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from dnnlib import util


def default_grid_size(resolution: int, device: torch.device) -> tuple[int, int]:
    """Upstream's grid (≈ a 7680×4320 canvas, 7–32 × 4–32 cells) on GPUs; 8×8 on a CPU.

    The 1024-image upstream grid costs minutes per snapshot on a CPU; 64 cells show the same.
    """
    if device.type != 'cuda':
        return 8, 8
    gw = int(np.clip(7680 // resolution, 7, 32))
    gh = int(np.clip(4320 // resolution, 4, 32))
    return gw, gh


def setup_snapshot_image_grid(training_set: Any, grid_size: tuple[int, int], random_seed: int = 0):
    """Pick reals for the grid (grouped by label when conditional). Returns (images, labels)."""
    rnd = np.random.RandomState(random_seed)
    gw, gh = grid_size
    if not training_set.has_labels:
        all_indices = list(range(len(training_set)))
        rnd.shuffle(all_indices)
        grid_indices = [all_indices[i % len(all_indices)] for i in range(gw * gh)]
    else:
        label_groups: dict[tuple, list[int]] = {}
        for idx in range(len(training_set)):
            label = tuple(training_set.get_details(idx).raw_label.flat[::-1])
            label_groups.setdefault(label, []).append(idx)
        label_order = sorted(label_groups.keys())
        for label in label_order:
            rnd.shuffle(label_groups[label])
        grid_indices = []
        for y in range(gh):
            indices = label_groups[label_order[y % len(label_order)]]
            grid_indices += [indices[x % len(indices)] for x in range(gw)]
    images, labels = zip(*[training_set[i] for i in grid_indices])
    return np.stack(images), np.stack(labels)


def save_image_grid(img: np.ndarray, fname: str, drange: tuple[float, float], grid_size: tuple[int, int]) -> None:
    """Tile an [N, C, H, W] batch into one PNG (written atomically)."""
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = (img - lo) * (255 / (hi - lo))
    img = np.rint(img).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _N, C, H, W = img.shape
    img = img.reshape(gh, gw, C, H, W).transpose(0, 3, 1, 4, 2).reshape(gh * H, gw * W, C)
    mode = 'L' if C == 1 else 'RGB'
    with util.atomic_path(fname, suffix='.png') as tmp:
        PIL.Image.fromarray(img[:, :, 0] if C == 1 else img, mode).save(tmp, format='PNG')


@torch.no_grad()
def generate_grid_images(sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], grid_z: list[torch.Tensor],
                         grid_c: list[torch.Tensor]) -> np.ndarray:
    """The grid's fakes, batch by batch (``sampler``: the backbone's, constant noise)."""
    return torch.cat([sampler(z, c).cpu() for z, c in zip(grid_z, grid_c)]).numpy()


