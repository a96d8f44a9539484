"""Official StyleGAN2(-ADA) network pickles, read without running their code (upstream's ``legacy.py``).

Convert a pickle into a degan snapshot (``.pt``: plain tensors, loadable with
``torch.load(weights_only=True)``)::

    python legacy.py --source=stylegan2-ada-ffhq.pkl --dest=ffhq.pt

or use it directly — ``generate.py --network``, ``calc_metrics.py --network`` and ``train.py
--resume`` accept the ``.pkl``. In Python, :func:`load_network_pkl` returns the networks as
upstream's does::

    with open('ffhq.pkl', 'rb') as f:
        G = legacy.load_network_pkl(f)['G_ema']   # degan's training.networks.Generator

Both PyTorch pickles (``stylegan2-ada-pytorch``) and TensorFlow-era ones (StyleGAN2,
DiffAugment, StyleGAN2-ADA TF) are read by ``backbones/stylegan2/official.py`` through the
allow-list unpickler of ``torch_utils/safe_pickle.py``; the source code they embed is never
executed.
"""

from __future__ import annotations

import copy
import os
from typing import Any, BinaryIO

import click

from backbones.stylegan2 import official
from dnnlib import util
from dnnlib.util import UserError
from torch_utils import persistence
from training import snapshot_io

FP16_RES, FP16_CONV_CLAMP = 4, 256  # upstream's --force-fp16 settings


def with_fp16(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot with G, D and G_ema set to compute their top 4 resolutions in FP16 with
    ``conv_clamp=256`` (upstream's ``--force-fp16``; shapes and weights are unchanged)."""
    out = copy.deepcopy(snapshot)
    for key, record in out['modules'].items():
        if record is None or key not in official.NETWORK_KEYS:
            continue
        kwargs = record['init_kwargs']
        target = kwargs.setdefault('synthesis_kwargs', {}) if key.startswith('G') else kwargs
        target.update(num_fp16_res=FP16_RES, conv_clamp=FP16_CONV_CLAMP)
    return out


def load_network_pkl(f: BinaryIO | str, force_fp16: bool = False) -> dict[str, Any]:
    """``G``, ``D``, ``G_ema`` (eval mode, no gradients), ``augment_pipe`` (or None) and
    ``training_set_kwargs`` (or None) of an official pickle, as degan modules."""
    snapshot = snapshot_io.read_official(f)
    if force_fp16:
        snapshot = with_fp16(snapshot)
    out: dict[str, Any] = dict(training_set_kwargs=snapshot['training_set_kwargs'])
    for key, record in snapshot['modules'].items():
        out[key] = None if record is None else persistence.module_from_record(record).eval().requires_grad_(False)
    return out


def convert(source: str, dest: str, fp16: bool = False) -> dict[str, Any]:
    """Read ``source`` completely, then write ``dest`` atomically (nothing is written on an error)."""
    if not dest.endswith('.pt'):
        raise UserError(f'--dest={dest}: degan snapshots are .pt files (plain tensors, no code); name it *.pt')
    if os.path.abspath(source) == os.path.abspath(dest):
        raise UserError('--dest must differ from --source')
    snapshot = snapshot_io.read_official(source)
    if fp16:
        snapshot = with_fp16(snapshot)
    persistence.save_snapshot(snapshot, dest)
    return snapshot


@click.command(context_settings=dict(max_content_width=110))
@click.option('--source', help='Official network pickle (.pkl)', required=True, metavar='PATH')
@click.option('--dest', help='degan snapshot to write (.pt)', required=True, metavar='PATH')
@click.option('--force-fp16', help='Compute the top 4 resolutions in FP16 (conv_clamp 256)', type=bool, default=False,
              show_default=True, metavar='BOOL')
def main(source: str, dest: str, force_fp16: bool) -> None:
    """Convert an official StyleGAN2-ADA (PyTorch) or StyleGAN2 (TensorFlow) network pickle into a
    degan snapshot, without executing the code stored in the pickle.

    \b
    python legacy.py --source=network-snapshot-001000.pkl --dest=converted.pt
    """
    if source.startswith(('http://', 'https://')):
        raise UserError(f'--source={source}: degan never downloads; download the pickle and pass its path')
    print(f'Loading "{source}"...')
    snapshot = convert(source, dest, force_fp16)
    nets = ', '.join(f'{key}={record["class_name"].rsplit(".", 1)[-1]}'
                     for key, record in snapshot['modules'].items() if record is not None)
    print(f'Read a {snapshot["metadata"]["layout"]} pickle ({nets}); wrote "{dest}".')


if __name__ == '__main__':
    util.run_cli(main)
