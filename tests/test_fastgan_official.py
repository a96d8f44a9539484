"""Official FastGAN / CHAIN checkpoints → degan snapshots (backbones/fastgan/official.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from backbones.fastgan import official
from backbones.fastgan.d_big import DiscriminatorBig
from backbones.fastgan.networks import Discriminator, Generator
from dnnlib.util import UserError
from training import snapshot_io

CHAIN = dict(variant='chain', resolutions=[128, 32], place='C1CS', tau=0.5, lambda_=20.0, p0=0.0, dp=0.001,
             start_iter=0)


def _official_style(state: dict, data_parallel: bool) -> dict:
    """A state dict as the official code saves it (optionally from nn.DataParallel)."""
    return {('module.' + k if data_parallel else k): v.clone() for k, v in state.items()}


def _checkpoint(tmp_path, D, data_parallel=True, with_ema=True):
    torch.manual_seed(0)
    G = Generator(0, 512, 3, ngf=8, small_output=isinstance(D, Discriminator))
    ema = [p.detach() + 0.01 * torch.randn_like(p) for p in G.parameters()]
    ckpt = dict(g=_official_style(G.state_dict(), data_parallel), d=_official_style(D.state_dict(), data_parallel))
    if with_ema:
        ckpt['g_ema'] = ema
    path = tmp_path / 'all_1000.pth'
    torch.save(ckpt, path)
    return path, G, ema


@pytest.mark.parametrize('d_big', [False, True])
def test_official_checkpoint_converts_to_a_snapshot_with_the_same_weights(tmp_path, d_big):
    D = DiscriminatorBig(0, 512, 3, ndf=8, chain_kwargs=CHAIN) if d_big else Discriminator(0, 512, 3, ndf=16)
    path, G, ema = _checkpoint(tmp_path, D)
    dest = tmp_path / 'snap.pt'
    official.write_snapshot(official.build_modules(official.read_checkpoint(str(path))), str(dest))

    data = snapshot_io.read(str(dest))
    assert data['backbone'] == 'fastgan' and 'training_state' not in data
    G_ema = snapshot_io.load_module(str(dest), 'G_ema')
    assert (G_ema.img_resolution, G_ema.ngf, G_ema.z_dim) == (512, 8, 256)
    for p, value in zip(G_ema.parameters(), ema):
        assert torch.equal(p, value)
    G2 = snapshot_io.load_module(str(dest), 'G')
    for (name, a), b in zip(G2.state_dict().items(), G.state_dict().values()):
        assert torch.equal(a, b), name
    D2 = snapshot_io.load_module(str(dest), 'D')
    assert type(D2) is type(D)
    for (name, a), b in zip(D2.state_dict().items(), D.state_dict().values()):
        assert torch.equal(a, b), name
    if d_big:  # the CHAIN placement is read back from the buffers
        assert D2.chain_enabled and sorted(n for n, _ in D2.named_buffers() if n.endswith('running_var_real')) == \
            sorted(n for n, _ in D.named_buffers() if n.endswith('running_var_real'))

    sampler = snapshot_io.load_generator(str(dest))
    z = torch.randn([8, 256])
    torch.manual_seed(3)
    a = sampler(z, None)
    torch.manual_seed(3)
    G_ema.train()
    b = G_ema(z)[0] if not d_big else G_ema(z)
    assert torch.equal(a, b), 'the snapshot samples the checkpoint g_ema in train-mode BN'


def test_checkpoint_without_g_ema_uses_g_and_plain_keys_load(tmp_path):
    path, G, _ = _checkpoint(tmp_path, Discriminator(0, 512, 3, ndf=16), data_parallel=False, with_ema=False)
    modules = official.build_modules(official.read_checkpoint(str(path)))
    for a, b in zip(modules['G_ema'].parameters(), G.parameters()):
        assert torch.equal(a, b)


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match='--checkpoint=.*no such file'):
        official.read_checkpoint(str(tmp_path / 'missing.pth'))
    torch.save({'weights': torch.zeros(1)}, tmp_path / 'other.pth')
    with pytest.raises(UserError, match='"g" state dict'):
        official.read_checkpoint(str(tmp_path / 'other.pth'))
    path, _, _ = _checkpoint(tmp_path, Discriminator(0, 512, 3, ndf=16))
    ckpt = official.read_checkpoint(str(path))
    ckpt['g']['feat_8.1.weight_extra'] = torch.zeros(1)
    with pytest.raises(UserError, match="official names.*weight_extra"):
        official.build_modules(ckpt)


def test_converter_cli(tmp_path):
    path, _, _ = _checkpoint(tmp_path, DiscriminatorBig(0, 512, 3, ndf=8))
    proc = subprocess.run([sys.executable, '-m', 'backbones.fastgan.official', f'--checkpoint={path}',
                           f'--dest={tmp_path / "s.pt"}'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'FastGAN 512 px, ngf 8, D DiscriminatorBig' in proc.stdout
    proc = subprocess.run([sys.executable, '-m', 'backbones.fastgan.official', f'--checkpoint={tmp_path / "x.pth"}',
                           f'--dest={tmp_path / "s2.pt"}'], capture_output=True, text=True)
    assert proc.returncode != 0 and 'no such file' in proc.stderr and 'Traceback' not in proc.stderr
