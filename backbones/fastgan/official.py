"""Official FastGAN and CHAIN FastGAN-D_big checkpoints → degan snapshots (weights only).

Usage::

    python -m backbones.fastgan.official --checkpoint=all_50000.pth --dest=fastgan-50000.pt

The official ``train.py`` scripts write ``<iter>.pth`` (``{'g': averaged G, 'd': D}``),
``all_<iter>.pth`` (``g``, ``d``, ``g_ema`` — the averaged parameters as a list — and both
optimisers) and, for CHAIN, ``network.pth`` (the same keys). Their state dicts use the official
names that degan's networks keep (docs/fastgan.md §1–§3), so they load 1:1; ``module.``
prefixes of ``nn.DataParallel`` are removed. Resolution, widths, nz, D variant and CHAIN
buffers are read from the tensors' names and shapes. The file is read with
``torch.load(weights_only=True)``: no code is executed.

The snapshot holds G, D and G_ema (no training state): ``generate.py`` and ``calc_metrics.py``
read it, and ``train.py --resume`` starts from its weights with fresh optimisers.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import click
import torch

from dnnlib import util
from dnnlib.util import UserError
from torch_utils import persistence

DATA_PARALLEL_PREFIX = 'module.'


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's dict (``g``, ``d``, optionally ``g_ema``) with ``module.`` prefixes removed."""
    if not os.path.isfile(path):
        raise UserError(f'--checkpoint={path}: no such file')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unreadable file is the user's input error
        raise UserError(f'{path}: not a readable FastGAN checkpoint ({type(e).__name__}: {e})') from None
    if not isinstance(data, dict) or 'g' not in data:
        raise UserError(f'{path}: expected an official FastGAN checkpoint with a "g" state dict')
    out = dict(data)
    for key in ('g', 'd'):
        if key in out:
            out[key] = {k[len(DATA_PARALLEL_PREFIX):] if k.startswith(DATA_PARALLEL_PREFIX) else k: v
                        for k, v in out[key].items()}
    return out


def generator_kwargs(g: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Generator constructor kwargs from its state dict's names and shapes."""
    init = g['init.init.0.weight_orig']  # [nz, 2·nfc[4], 4, 4], nfc[4] = 16·ngf
    resolution = 1024 if 'feat_1024.1.weight_orig' in g else 512 if 'feat_512.1.weight_orig' in g else 256
    return dict(img_resolution=resolution, ngf=init.shape[1] // 32, z_dim=init.shape[0],
                small_output='to_128.weight_orig' in g, img_channels=g['to_big.weight_orig'].shape[0])


def discriminator_kwargs(d: dict[str, torch.Tensor], resolution: int, chain_type: str = 'chain') -> dict[str, Any]:
    """Discriminator class and kwargs from its state dict: the original D or D_big (± CHAIN)."""
    if 'down_from_small.0.weight_orig' in d:
        ndf = d['down_4.main.0.weight_orig'].shape[0] * 2  # nfc[256] = ndf / 2
        return dict(class_name='backbones.fastgan.networks.Discriminator', img_resolution=resolution, ndf=ndf)
    ndf = d['down_4.main.1.weight_orig'].shape[0] * 2
    kwargs: dict[str, Any] = dict(class_name='backbones.fastgan.d_big.DiscriminatorBig', img_resolution=resolution,
                                  ndf=ndf)
    blocks = {name: res for name, res in (('down_4', 256), ('down_8', 128), ('down_16', 64), ('down_32', 32),
                                          ('down_64', 16))}
    places = {'C1': 'main.2', 'C2': 'main.5', 'CS': 'skip.1'}
    found = [(name, place) for name in blocks for place, key in places.items()
             if f'{name}.{key}.running_var_real' in d]
    if found:  # the cumulative variant leaves buffers; chain_batch leaves none and is not detectable
        kwargs['chain_kwargs'] = dict(variant=chain_type, resolutions=sorted({blocks[n] for n, _ in found}),
                                      place=''.join(p for p in places if any(q == p for _, q in found)))
    return kwargs


def build_modules(ckpt: dict[str, Any], chain_type: str = 'chain') -> dict[str, torch.nn.Module]:
    """G, D and G_ema with the checkpoint's weights (G_ema: ``g_ema`` if present, else ``g``)."""
    from backbones.fastgan.networks import Generator
    g_kwargs = generator_kwargs(ckpt['g'])
    G = Generator(c_dim=0, **g_kwargs)
    _load(G, ckpt['g'], 'g')
    G_ema = Generator(c_dim=0, **g_kwargs)
    _load(G_ema, ckpt['g'], 'g')
    if 'g_ema' in ckpt:
        params = list(G_ema.parameters())
        if len(ckpt['g_ema']) != len(params):
            raise UserError(f'checkpoint: g_ema has {len(ckpt["g_ema"])} tensors, the generator {len(params)}')
        with torch.no_grad():
            for p, value in zip(params, ckpt['g_ema']):
                p.copy_(value)
    modules = dict(G=G, G_ema=G_ema)
    if 'd' in ckpt:
        d_kwargs = discriminator_kwargs(ckpt['d'], g_kwargs['img_resolution'], chain_type)
        D = util.construct_class_by_name(c_dim=0, img_channels=g_kwargs['img_channels'], **d_kwargs)
        _load(D, ckpt['d'], 'd')
        modules['D'] = D
    return modules


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], key: str) -> None:
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if '\n' in str(e) else str(e)
        raise UserError(f'checkpoint["{key}"] does not match FastGAN\'s official names: {first}') from None


def write_snapshot(modules: dict[str, torch.nn.Module], dest: str, source: Optional[str] = None) -> None:
    """A weights-only degan snapshot of ``modules`` (``backbone='fastgan'``)."""
    from training import snapshot_io
    data = dict(format=persistence.SNAPSHOT_FORMAT, version=snapshot_io.VERSION, backbone='fastgan',
                training_set_kwargs={},
                modules={name: persistence.module_to_record(m) for name, m in modules.items()},
                metadata=dict(kimg=0, written=time.strftime('%Y-%m-%d %H:%M:%S'), num_gpus=1,
                              converted_from=source))
    persistence.save_snapshot(data, dest)


@click.command()
@click.option('--checkpoint', required=True, metavar='PATH', help='Official FastGAN / CHAIN .pth checkpoint')
@click.option('--dest', required=True, metavar='PATH', help='degan snapshot to write (.pt)')
@click.option('--chain-type', type=click.Choice(['chain', 'chain_batch']), default='chain', show_default=True,
              help='CHAIN variant of a D_big with CHAIN layers (chain_batch leaves no buffers to detect it)')
def main(checkpoint: str, dest: str, chain_type: str) -> None:
    """Convert an official FastGAN / CHAIN FastGAN-D_big checkpoint into a degan snapshot."""
    try:
        modules = build_modules(read_checkpoint(checkpoint), chain_type)
        write_snapshot(modules, dest, source=os.path.basename(checkpoint))
    except UserError as e:
        raise click.ClickException(str(e)) from None
    G = modules['G_ema']
    print(f'{dest}: FastGAN {G.img_resolution} px, ngf {G.ngf}, D {type(modules["D"]).__name__ if "D" in modules else "none"}')


if __name__ == '__main__':
    main()
