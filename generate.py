"""Generate images from a trained degan snapshot of any backbone (StyleGAN2-ADA's generate.py, CPU or GPU).

Examples:

\b
  python generate.py --network=runs/00000-builtin-low_shot/network-snapshot-000002.pt --seeds=0-7 --outdir=out
\b
  # one 4x4 grid, truncated, with a fixed class for a conditional network
  python generate.py --network=snap.pt --seeds=0-15 --trunc=0.7 --class=3 --grid --outdir=out
"""

from __future__ import annotations

import os

import dnnlib.util  # imports no torch

dnnlib.util.let_idle_openmp_threads_sleep()  # before torch is imported; a user's setting wins

import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from typing import Optional  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from backbones.base import GeneratorFn  # noqa: E402
from dnnlib import util  # noqa: E402
from dnnlib.util import UserError  # noqa: E402
from training import snapshot_io  # noqa: E402


#: numpy's ``RandomState`` seeds: 0 … 2**32 − 1 (upstream draws z = RandomState(seed).randn).
MAX_SEED = 2 ** 32 - 1
#: At most this many seeds per call (each image is held in memory until all are written).
MAX_SEEDS = 1_000_000


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``'0-7,12'`` → [0, …, 7, 12]; every seed within numpy's 0 … 2**32 − 1.

    A number outside that range (``-1``, ``4294967296``) is a one-line UserError naming --seeds
    and the range; the range is checked before a span such as ``0-99999999999`` is expanded."""
    spans = []
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'(-?\d+)(?:\s*-\s*(-?\d+))?', part)
        if not m:
            raise UserError(f'--seeds: cannot parse "{part}" as a seed or a range like 0-7 '
                            f'(seeds are integers from 0 to {MAX_SEED})')
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        for value in (lo, hi):
            if not 0 <= value <= MAX_SEED:
                raise UserError(f'--seeds: {value} is not a valid seed; seeds must be between 0 and {MAX_SEED} '
                                f'(2**32-1, numpy\'s seed range)')
        if hi < lo:
            raise UserError(f'--seeds: bad range "{part}": the end is smaller than the start')
        spans.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in spans)
    if count > MAX_SEEDS:
        raise UserError(f'--seeds={text} names {count} seeds; at most {MAX_SEEDS} at a time (one image each)')
    return [seed for lo, hi in spans for seed in range(lo, hi + 1)]


def pick_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device=cuda: no CUDA device is available; use --device=cpu')
    return torch.device(name)


def make_label(G: GeneratorFn, class_idx: Optional[int], device: torch.device) -> torch.Tensor:
    """One-hot label for conditional networks; an empty label otherwise."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            print('warning: --class is ignored for an unconditional network', file=sys.stderr)
        return label
    if class_idx is None:
        raise UserError(f'this network is conditional ({G.c_dim} classes): pass --class=N')
    if not 0 <= class_idx < G.c_dim:
        raise UserError(f'--class must be between 0 and {G.c_dim - 1}')
    label[:, class_idx] = 1
    return label


@torch.no_grad()
def generate_images(G: GeneratorFn, seeds: list[int], label: torch.Tensor, device: torch.device) -> list[np.ndarray]:
    """One HWC uint8 image per seed from the backbone's sampler; z = RandomState(seed).randn(1, z_dim)
    as upstream."""
    images = []
    for seed in seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
        img = G(z, label)
        img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        images.append(img[0].cpu().numpy())
    return images


def save_png(array: np.ndarray, path: str) -> None:
    mode = 'L' if array.shape[2] == 1 else 'RGB'
    with util.atomic_path(path, suffix='.png') as tmp:
        PIL.Image.fromarray(array[:, :, 0] if mode == 'L' else array, mode).save(tmp, format='PNG')


def tile(images: list[np.ndarray], columns: int) -> np.ndarray:
    """Arrange equally sized HWC images into a grid, row by row (empty cells stay black)."""
    rows = math.ceil(len(images) / columns)
    h, w, c = images[0].shape
    canvas = np.zeros([rows * h, columns * w, c], dtype=np.uint8)
    for i, img in enumerate(images):
        y, x = divmod(i, columns)
        canvas[y * h:(y + 1) * h, x * w:(x + 1) * w] = img
    return canvas


@click.command()
@click.option('--network', 'network_path', help='Network snapshot (.pt) or official network pickle (.pkl)',
              required=True, metavar='PATH')
@click.option('--seeds', help='List of random seeds, e.g. 0-7,12', required=True, metavar='LIST')
@click.option('--trunc', 'truncation_psi', help='Truncation psi', type=float, default=1, show_default=True)
@click.option('--class', 'class_idx', help='Class label (conditional networks)', type=int)
@click.option('--noise-mode', help='Noise mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--outdir', help='Where to save the output images', required=True, metavar='DIR')
@click.option('--grid', is_flag=True, help='Write one image grid (grid.png) instead of one file per seed')
@click.option('--grid-cols', type=int, help='Grid columns [default: ceil(sqrt(#seeds))]')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--ops', type=click.Choice(['ref', 'cuda', 'auto']), default='auto', show_default=True, help='Custom ops')
def main(network_path: str, seeds: str, truncation_psi: float, class_idx: Optional[int], noise_mode: str,
         outdir: str, grid: bool, grid_cols: Optional[int], device: str, ops: str) -> None:
    """Generate images using a pretrained degan network or an official StyleGAN2(-ADA) pickle."""
    from torch_utils.ops import _impl
    _impl.set_default_impl(ops)
    seed_list = parse_seeds(seeds)
    if not seed_list:
        raise UserError('--seeds is empty')
    dev = pick_device(device)
    print(f'Loading networks from "{network_path}"...')
    G = snapshot_io.load_generator(network_path, dev, noise_mode=noise_mode, truncation_psi=truncation_psi)
    label = make_label(G, class_idx, dev)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise UserError(f'--outdir={outdir}: cannot create the folder ({e.strerror})') from None
    images = generate_images(G, seed_list, label, dev)
    if grid:
        columns = grid_cols or math.ceil(math.sqrt(len(images)))
        if columns < 1:
            raise UserError('--grid-cols must be at least 1')
        path = os.path.join(outdir, 'grid.png')
        save_png(tile(images, columns), path)
        print(f'Wrote {path} ({len(images)} images)')
    else:
        for seed, img in zip(seed_list, images):
            save_png(img, os.path.join(outdir, f'seed{seed:04d}.png'))
        print(f'Wrote {len(images)} images to {outdir}')


if __name__ == '__main__':
    util.run_cli(main)
