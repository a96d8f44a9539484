"""FastGAN and CHAIN's FastGAN-D_big (backbones/fastgan): networks, losses and sampling against
docs/fastgan.md §1–§4 and §6, and the official name/shape tables (tests/data/fastgan_reference_names.json).

Tiny widths (ngf = ndf = 8) for everything that runs; width 64 only to compare names, shapes
and parameter counts with the official ones.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones.base import BuildContext
from backbones.fastgan import FastGANSampler
from backbones.fastgan.d_big import DiscriminatorBig
from backbones.fastgan.layers import GLU, NoiseInjection, SEBlock, SimpleDecoder
from backbones.fastgan.networks import Discriminator, Generator, official_logit_layout
from dnnlib.util import UserError
from patches.atopk import ATopk
from patches.chain import Chain
from training import diffaugment, losses

REF = json.load(open(os.path.join(os.path.dirname(__file__), 'data', 'fastgan_reference_names.json')))
B = 2
CHAIN_KWARGS = dict(variant='chain', resolutions=None, place='C1C2CS', tau=0.5, lambda_=20.0, p0=0.0, dp=0.001,
                    start_iter=0)
DOWN_BLOCKS = ('down_4', 'down_8', 'down_16', 'down_32', 'down_64')


def _seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


def _images(n=B, size=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _d_big(chain=None, seed=0, **overrides):
    kwargs = None if chain is None else dict(CHAIN_KWARGS, **chain)
    return _seeded(lambda: DiscriminatorBig(0, 256, 3, ndf=8, chain_kwargs=kwargs, **overrides), seed)


def _table(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def _official_to_degan(table):
    """The official CHAIN table as degan names it: per-layer context copies dropped, ema_Dreal → ema_sign."""
    return {k.replace('ema_Dreal', 'ema_sign'): v for k, v in table.items() if '.shared_context.' not in k}


# ---------------------------------------------------------------------------------------------
# 1. Shapes, tanh, logits.

def test_generator_outputs_shapes_and_tanh_only_at_1024():
    G = _seeded(lambda: Generator(0, 256, 3, ngf=8))
    out = G(torch.randn(B, 256))
    assert isinstance(out, list) and [list(o.shape) for o in out] == [[B, 3, 256, 256], [B, 3, 128, 128]]
    nosmall = _seeded(lambda: Generator(0, 256, 3, ngf=8, small_output=False))
    img = nosmall(torch.randn(B, 256))
    assert isinstance(img, torch.Tensor) and list(img.shape) == [B, 3, 256, 256]
    assert nosmall.to_128 is None and not any(k.startswith('to_128') for k in nosmall.state_dict())

    def amplify(module, args, output):  # pre-tanh values far outside [-1, 1] (SN makes scaling weight_orig moot)
        return output * 1000

    for res in (256, 512, 1024):
        G = _seeded(lambda: Generator(0, res, 3, ngf=8))
        G.to_big.register_forward_hook(amplify)
        G.to_128.register_forward_hook(amplify)
        with torch.no_grad():
            big, small = G(torch.randn(B, 256))
        assert list(big.shape) == [B, 3, res, res] and list(small.shape) == [B, 3, 128, 128]
        if res == 1024:
            assert big.abs().max() <= 1 and small.abs().max() <= 1
            assert big.abs().max() > 0.99, 'tanh saturates on the amplified output'
        else:
            assert big.abs().max() > 1 and small.abs().max() > 1, f'no tanh at {res} px'


def test_discriminator_logits_and_official_layout():
    D = _seeded(lambda: Discriminator(0, 256, 3, ndf=8)).eval()
    real = _images()
    captured = {}
    D.rf_big.register_forward_hook(lambda m, a, o: captured.__setitem__('big', o.detach().clone()))
    D.rf_small.register_forward_hook(lambda m, a, o: captured.__setitem__('small', o.detach().clone()))
    with torch.no_grad():
        logits = D(real)
        # Reals are resized nearest to 256 and 128: the same as handing over that pair.
        assert torch.equal(D([real, F.interpolate(real, size=128, mode='nearest')]), logits)
        # Fakes: G's two outputs, each used as given.
        fake_logits = D([real, torch.zeros(B, 3, 128, 128)])
    assert list(logits.shape) == [B, 50] and D.num_logits == 50
    assert not torch.equal(fake_logits[:, 25:], logits[:, 25:]) and torch.equal(fake_logits[:, :25], logits[:, :25])
    assert list(captured['big'].shape) == [B, 1, 5, 5]
    with torch.no_grad():
        D(real)
    # The official D returns cat([rf_big.view(-1), rf_small.view(-1)]): all 25·B big-head logits first.
    official = torch.cat([captured['big'].view(-1), captured['small'].view(-1)])
    assert torch.equal(official_logit_layout(logits), official)
    assert torch.equal(official_logit_layout(logits)[:25 * B], logits[:, :25].reshape(-1))

    D_big = _d_big()
    with torch.no_grad():
        big_logits = D_big(real)
        big_logits_part, recs = D_big(real, part=1)
    assert list(big_logits.shape) == [B, 1] and D_big.num_logits == 1
    assert len(recs) == 2 and all(list(r.shape) == [B, 3, 128, 128] for r in recs)


# ---------------------------------------------------------------------------------------------
# 2. Decoders and the part crop.

def _expected_quarter(x, part):
    h, w = x.shape[2] // 2, x.shape[3] // 2
    return {0: x[:, :, :h, :w], 1: x[:, :, :h, w:], 2: x[:, :, h:, :w], 3: x[:, :, h:, w:]}[part]


@pytest.mark.parametrize('which', ['orig', 'big'])
def test_decoders_and_part_crop(which):
    D = _seeded(lambda: Discriminator(0, 256, 3, ndf=8)) if which == 'orig' else _d_big()
    seen = {}
    D.se_4_32.register_forward_hook(lambda m, a, o: seen.__setitem__('feat_32', o.detach().clone()))
    D.decoder_part.register_forward_pre_hook(lambda m, a: seen.__setitem__('dec_in', a[0].detach().clone()))
    real = _images()
    for part in range(4):
        with torch.no_grad():
            logits, recs = D(real, part=part)
        assert len(recs) == (3 if which == 'orig' else 2)
        for rec in recs:
            assert list(rec.shape) == [B, 3, 128, 128]
            assert rec.abs().max() <= 1 and rec.std() > 0
        feat = seen['feat_32']
        assert list(feat.shape[2:]) == [16, 16]
        if which == 'orig':
            want = _expected_quarter(feat, part)
        else:  # the official in-place activation: D_big's decoder reads lrelu(se_4_32 output)
            want = _expected_quarter(F.leaky_relu(feat, 0.2), part)
            assert not torch.equal(seen['dec_in'], _expected_quarter(feat, part)), 'the raw map has negatives'
        assert torch.equal(seen['dec_in'], want), f'part {part}'


def test_simple_decoder_is_fixed_width_and_bounded():
    dec = _seeded(lambda: SimpleDecoder(24))
    out = dec(torch.randn(B, 24, 16, 16) * 10)
    assert list(out.shape) == [B, 3, 128, 128] and out.abs().max() <= 1
    widths = [m.out_channels for m in dec.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [256, 128, 128, 64, 3], 'in → 128 → 64 → 64 → 32 (GLU halves 2·C) → 3, independent of ndf'


# ---------------------------------------------------------------------------------------------
# 3.–4. SLE, GLU, noise injection.

def test_sle_gate_shape_range_broadcast_and_half_at_zero():
    se = _seeded(lambda: SEBlock(8, 6))
    gates = []
    se.main[-1].register_forward_hook(lambda m, a, o: gates.append(o.detach().clone()))
    low, high = torch.randn(B, 8, 8, 8), torch.randn(B, 6, 32, 32)
    out = se(low, high)
    gate = gates[-1]
    assert list(gate.shape) == [B, 6, 1, 1]
    assert (gate > 0).all() and (gate < 1).all()
    assert torch.equal(out, high * gate.expand(B, 6, 32, 32))
    assert not torch.allclose(gate[0], gate[1]), 'the gate is per sample'
    out0 = se(torch.zeros(B, 8, 8, 8), high)
    assert torch.equal(gates[-1], torch.full([B, 6, 1, 1], 0.5))
    assert torch.equal(out0, high * 0.5)


def test_glu_and_noise_injection():
    x = torch.randn(B, 6, 4, 4)
    y = GLU()(x)
    assert list(y.shape) == [B, 3, 4, 4]
    assert torch.equal(y, x[:, :3] * torch.sigmoid(x[:, 3:]))
    with pytest.raises(ValueError):
        GLU()(torch.randn(B, 5, 4, 4))

    noise = NoiseInjection()
    assert noise.weight.item() == 0 and isinstance(noise.weight, nn.Parameter)
    x = torch.randn(B, 4, 5, 5)
    assert torch.equal(noise(x), x)
    with torch.no_grad():
        noise.weight.fill_(0.5)
    torch.manual_seed(3)
    out1 = noise(x)
    out2 = noise(x)
    torch.manual_seed(3)
    n = torch.randn(B, 1, 5, 5)
    assert torch.equal(out1, x + 0.5 * n), 'n ~ N(0, 1) of shape [B, 1, H, W] from the global RNG'
    added = out1 - x
    assert torch.allclose(added, added[:, :1].expand_as(added)), 'the same noise in every channel'
    assert not torch.allclose(added[0], added[1]), 'different noise per sample'
    assert not torch.equal(out1, out2), 'fresh noise on every call'


# ---------------------------------------------------------------------------------------------
# 5. Spectral norm everywhere.

def _probe(m):
    if isinstance(m, nn.Linear):
        return torch.randn(1, m.in_features)
    if isinstance(m, nn.ConvTranspose2d):
        return torch.randn(1, m.in_channels, 1, 1)
    return torch.randn(1, m.in_channels, *m.kernel_size)


def _effective_matrix(m):
    w = m.weight
    if isinstance(m, nn.ConvTranspose2d):  # PyTorch's spectral_norm uses dim=1 for transposed convs
        return w.transpose(0, 1).reshape(w.shape[1], -1)
    return w.reshape(w.shape[0], -1)


@pytest.mark.parametrize('which', ['G', 'D', 'D_big'])
def test_every_conv_and_linear_is_spectral_normalised(which):
    net = {'G': lambda: _seeded(lambda: Generator(0, 256, 3, ngf=8)),
           'D': lambda: _seeded(lambda: Discriminator(0, 256, 3, ndf=8)),
           'D_big': lambda: _d_big(CHAIN_KWARGS)}[which]()
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    # G: init, 9 up-block convs, 3 SLE × 2, to_big, to_128; D: stem, 5 × 3, head 2, SLE 6, small branch 4 + head,
    # 3 decoders × 5; D_big: stem, 5 × 3, head block 2 + linear, SLE 6, 2 decoders × 5.
    assert len(layers) == {'G': 18, 'D': 44, 'D_big': 35}[which]
    keys = set(net.state_dict())
    n_transposed = 0
    for name, m in layers:
        assert {f'{name}.weight_orig', f'{name}.weight_u', f'{name}.weight_v'} <= keys, name
        assert f'{name}.weight' not in keys, name
        hooks = [h for h in m._forward_pre_hooks.values() if type(h).__name__ == 'SpectralNorm']
        assert len(hooks) == 1, name
        assert hooks[0].dim == (1 if isinstance(m, nn.ConvTranspose2d) else 0), name
        n_transposed += isinstance(m, nn.ConvTranspose2d)
        m.train()
        x = _probe(m)
        with torch.no_grad():
            for _ in range(100):  # power iteration: one step per training-mode forward
                m(x)
        sigma = torch.linalg.matrix_norm(_effective_matrix(m), ord=2).item()
        # u^T W v underestimates σ(W), so σ(W / estimate) ≥ 1; it converges to 1.
        assert 1 - 1e-5 <= sigma <= 1.01, f'{name}: largest singular value {sigma}'
    assert n_transposed == (1 if which == 'G' else 0)
    if which == 'D_big':
        assert any(isinstance(m, nn.Linear) for _, m in layers)
        assert any(m.bias is not None for _, m in layers), 'D_big convs have a bias'


# ---------------------------------------------------------------------------------------------
# 6. Official names, shapes, strict loading, parameter counts.

@pytest.fixture(scope='module')
def nets64():
    torch.manual_seed(0)
    return dict(G_256=Generator(0, 256, 3, ngf=64), G_nosmall_256=Generator(0, 256, 3, ngf=64, small_output=False),
                D_256=Discriminator(0, 256, 3, ndf=64), D_big_256=DiscriminatorBig(0, 256, 3, ndf=64),
                D_big_chain_256=DiscriminatorBig(0, 256, 3, ndf=64, chain_kwargs=dict(CHAIN_KWARGS)))


@pytest.mark.parametrize('name', ['G_256', 'G_nosmall_256', 'D_256', 'D_big_256', 'D_big_chain_256'])
def test_state_dict_names_and_shapes_are_the_official_ones(nets64, name):
    net = nets64[name]
    official = REF[name]
    want = _official_to_degan(official)
    assert _table(net) == want
    if name != 'D_big_chain_256':
        assert list(_table(net)) == list(want), 'same order as the official state dict'
    # Parameters in the official order (what an official optimizer state refers to).
    params = [n for n, _ in net.named_parameters()]
    assert params == [k for k in want if k in dict(net.named_parameters())]
    if name == 'D_big_chain_256':
        assert sum(k.endswith('.shared_context.p') for k in official) == 15  # the official copies, dropped

    # An official state dict (copies and ema_Dreal included) loads strictly, each value where it belongs.
    sd = {}
    for i, (key, shape) in enumerate(official.items()):
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(i, dtype=torch.long)
        elif key.endswith('shared_context.p') or key.endswith('shared_context.ema_Dreal'):
            sd[key] = torch.tensor(0.75 if key.startswith('chain_shared_context.') else 0.125)
            if key.startswith('chain_shared_context.') and key.endswith('ema_Dreal'):
                sd[key] = torch.tensor(-0.25)
        else:
            sd[key] = torch.randn(shape)
    target = copy.deepcopy(net)
    target.load_state_dict(sd, strict=True)
    loaded = target.state_dict()
    for key, value in sd.items():
        if '.shared_context.' in key:
            continue
        mapped = key.replace('ema_Dreal', 'ema_sign')
        assert torch.equal(loaded[mapped], value.to(loaded[mapped].dtype)), key
    if name.startswith('D_big'):
        assert target.chain_shared_context.p.item() == 0.75 and target.chain_shared_context.ema_sign.item() == -0.25


def test_parameter_counts(nets64):
    counts = REF['parameter_counts']
    for name in ('G_256', 'D_256', 'D_big_256'):
        assert _n_params(nets64[name]) == counts[name], name
    assert _n_params(nets64['D_big_chain_256']) == counts['D_big_256'], 'CHAIN adds buffers only'
    for res in (512, 1024):
        assert _n_params(Generator(0, res, 3, ngf=64)) == counts[f'G_{res}']
        assert _n_params(Discriminator(0, res, 3, ndf=64)) == counts[f'D_{res}']
        assert _n_params(DiscriminatorBig(0, res, 3, ndf=64)) == counts[f'D_big_{res}']


# ---------------------------------------------------------------------------------------------
# 7. Initialisation.

def test_initialisation_distribution_and_seed_determinism(nets64):
    for name in ('G_256', 'D_256', 'D_big_256'):
        net = nets64[name]
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        w = torch.cat([m.weight_orig.detach().flatten() for m in convs])
        assert abs(w.std().item() - 0.02) < 0.02 * 0.01 and abs(w.mean().item()) < 1e-4, name
        for m in convs:
            if m.weight_orig.numel() >= 4096:
                assert abs(m.weight_orig.std().item() - 0.02) < 0.002, (name, m)
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        if name == 'D_big_256':
            assert all(n.startswith('decoder_') for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)), \
                'D_big: BatchNorm only in the decoders'
        if bns:
            bw = torch.cat([m.weight.detach() for m in bns])
            assert abs(bw.mean().item() - 1) < 2e-3 and abs(bw.std().item() - 0.02) < 0.002, name
            assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    a = _seeded(lambda: Generator(0, 256, 3, ngf=8), seed=5).state_dict()
    b = _seeded(lambda: Generator(0, 256, 3, ngf=8), seed=5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# 8. Random-margin hinge.

def test_random_margin_hinge():
    logits = torch.linspace(-2, 2, 41).view(1, -1).repeat(3, 1)
    torch.manual_seed(11)
    real = losses.random_margin_hinge_real(logits)
    torch.manual_seed(11)
    r = torch.rand_like(logits) * (1.0 - 0.8) + 0.8
    torch.testing.assert_close(real, F.relu(r - logits), rtol=0, atol=1e-7)
    torch.manual_seed(12)
    fake = losses.random_margin_hinge_fake(logits)
    torch.manual_seed(12)
    r2 = torch.rand_like(logits) * (1.0 - 0.8) + 0.8
    torch.testing.assert_close(fake, F.relu(r2 + logits), rtol=0, atol=1e-7)

    assert torch.equal(losses.random_margin_hinge_real(torch.ones(50) + torch.rand(50)), torch.zeros(50))
    assert torch.equal(losses.random_margin_hinge_fake(-torch.ones(50) - torch.rand(50)), torch.zeros(50))

    big = 200_000
    d = torch.full([big], 0.3)
    torch.manual_seed(13)
    loss = losses.random_margin_hinge_real(d)
    torch.manual_seed(13)
    r = losses.random_margins(d)
    assert torch.equal(loss, r - d), 'below the margin the loss is r − D'
    assert loss.mean().item() == pytest.approx(r.mean().item() - 0.3, abs=1e-6)
    assert r.min() >= 0.8 and r.max() <= 1.0
    assert r.mean().item() == pytest.approx(0.9, abs=1e-3), 'r ~ U(0.8, 1): mean 0.9'
    assert r.std().item() == pytest.approx(0.2 / 12 ** 0.5, rel=0.02), 'uniform, std 0.2/√12'
    assert len(torch.unique(r[:1000])) > 990, 'one margin per logit'
    loss_fake = losses.random_margin_hinge_fake(-d)
    assert loss_fake.mean().item() == pytest.approx(0.9 - 0.3, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# 9.–11. CHAIN in D_big.

def _chain_names(D):
    return {n for n, m in D.named_modules() if isinstance(m, Chain)}


def test_chain_placement_in_d_big():
    D = _d_big(CHAIN_KWARGS)
    names = _chain_names(D)
    assert names == {f'{b}.{p}' for b in DOWN_BLOCKS for p in ('main.2', 'main.5', 'skip.1')}
    assert len(names) == 15
    modules = dict(D.named_modules())
    for name in names:
        conv = modules[name.rsplit('.', 1)[0] + '.' + str(int(name.rsplit('.', 1)[1]) - 1)]
        assert modules[name].num_features == conv.out_channels
        assert modules[name].context is D.chain_shared_context is D.chain_ctx
    assert not any(n.startswith(('down_from_big', 'rf_big', 'se_', 'decoder')) for n in names)
    assert _chain_names(_d_big(dict(resolutions=[256, 16]))) == {
        f'{b}.{p}' for b in ('down_4', 'down_64') for p in ('main.2', 'main.5', 'skip.1')}
    assert _chain_names(_d_big(dict(place='C2'))) == {f'{b}.main.5' for b in DOWN_BLOCKS}
    assert _chain_names(_d_big(dict(place='C1CS', resolutions=[64]))) == {'down_16.main.2', 'down_16.skip.1'}

    plain = _d_big()
    assert plain.chain_ctx is None and not _chain_names(plain)
    assert {n: p.shape for n, p in D.named_parameters()} == {n: p.shape for n, p in plain.named_parameters()}
    extra = set(D.state_dict()) - set(plain.state_dict())
    assert extra == {f'{n}.{b}' for n in names for b in ('running_var_real', 'running_var_fake', 'grad_var_dreal',
                                                         'grad_var_dfake', 'grad_var_gfake')}
    with pytest.raises(ValueError, match='not D_big down blocks'):
        _d_big(dict(resolutions=[8]))
    with pytest.raises(ValueError, match='place'):
        _d_big(dict(place='C3'))


def test_chain_at_p_zero_gives_the_same_d():
    plain = _d_big(seed=1)
    chained = _d_big(dict(lambda_=20.0, p0=0.0), seed=2)
    result = chained.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.split('.')[-1].startswith(('running_var_', 'grad_var_'))
                                       for k in result.missing_keys)
    ctx = chained.chain_ctx
    assert ctx.p_value == 0
    x1 = _images().requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    logits1, recs1 = plain(x1, part=2)
    with ctx.pass_('dreal'):
        logits2, recs2 = chained(x2, part=2)
    assert torch.equal(logits1, logits2)
    assert all(torch.equal(a, b) for a, b in zip(recs1, recs2))
    assert ctx.layer_calls['dreal'] == 15
    assert ctx.zero_mean_loss().item() == 0, 'λ(p + p0) = 0'
    logits1.sum().backward()
    logits2.sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def _chain_buffers(D):
    return {f'{n}.{b}': t.detach().clone() for n, m in D.named_modules() if isinstance(m, Chain)
            for b, t in m.named_buffers()}


@pytest.mark.parametrize('label', ['dreal', 'dfake', 'gfake'])
def test_chain_buffers_follow_the_pass_label(label):
    D = _d_big(CHAIN_KWARGS)
    ctx = D.chain_ctx
    ctx.set_p(1.0)
    before = _chain_buffers(D)
    with ctx.pass_(label):
        logits = D(_images())
    zmr = ctx.zero_mean_loss()
    after_forward = _chain_buffers(D)
    (-logits.mean() if label == 'gfake' else logits.mean() + zmr).backward()
    after_backward = _chain_buffers(D)
    var_moved = 'running_var_real' if label == 'dreal' else 'running_var_fake'
    for key in before:
        kind = key.rsplit('.', 1)[1]
        moved_forward = not torch.equal(before[key], after_forward[key])
        moved_backward = not torch.equal(after_forward[key], after_backward[key])
        assert moved_forward == (kind == var_moved), key
        assert moved_backward == (kind == f'grad_var_{label}'), key
    if label == 'gfake':
        assert zmr.item() == 0
    else:
        assert zmr.item() > 0


# ---------------------------------------------------------------------------------------------
# 12.–13. FastGANLoss.

def _setup(fastgan_d='orig', chain=False, batch=2, **flags):
    from tests.test_training_loop import loop_args
    args = loop_args(dict(outdir='unused', data='builtin:256', backbone='fastgan', fastgan_d=fastgan_d, ngf=8, ndf=8,
                          recon_loss='l1', batch=batch, metrics=[], workers=0, chain=chain, **flags))
    torch.manual_seed(0)
    setup = backbones.get('fastgan').build(BuildContext(
        kwargs=args.backbone_kwargs, device=torch.device('cpu'), c_dim=0, img_resolution=256, img_channels=3,
        batch_size=batch, batch_gpu=batch, num_gpus=1, random_seed=0, augment_kwargs=args.augment_kwargs,
        augment_p=0))
    if getattr(setup.D, 'chain_ctx', None) is not None:
        setup.loss.d_pass_context = setup.D.chain_ctx  # what the loop's controller wiring does
    return setup


def _phase(setup, name, real, z):
    module = setup.D if name == 'Dmain' else setup.G
    module.requires_grad_(True)
    module.zero_grad(set_to_none=True)
    setup.loss.accumulate_gradients(name, real, torch.zeros(real.shape[0], 0), z, torch.zeros(z.shape[0], 0), 1.0)
    module.requires_grad_(False)


@pytest.mark.parametrize('which', ['orig', 'big_chain'])
def test_fastgan_loss_iteration(which, monkeypatch):
    setup = _setup(*(('orig', False) if which == 'orig' else ('big', True)))
    G, D, loss = setup.G, setup.D, setup.loss
    assert loss.margin == ('random' if which == 'orig' else 'one')
    g_calls, d_calls, label = [], [], ['']
    G.register_forward_hook(lambda m, a, o: g_calls.append(1))
    real_pass = {}

    def d_hook(m, args, kwargs, out):
        imgs = args[0]
        sizes = [x.shape[0] for x in imgs] if isinstance(imgs, (list, tuple)) else [imgs.shape[0]]
        d_calls.append((label[0], sizes))
        inputs = [x.detach().clone() for x in imgs] if isinstance(imgs, (list, tuple)) else imgs.detach().clone()
        if label[0] == 'dreal':
            real_pass.update(real=inputs, part=kwargs['part'], recs=[r.detach() for r in out[1]],
                             logits=out[0].detach())
        else:
            real_pass.setdefault('fakes', {})[label[0]] = inputs

    D.register_forward_hook(d_hook, with_kwargs=True)
    original_pass = loss.discriminator_pass

    def labelled(name, r1_only=False):
        label[0] = name
        return original_pass(name, r1_only)

    monkeypatch.setattr(loss, 'discriminator_pass', labelled)
    recon_values, checked = [], []
    original_recon = loss.reconstruction_loss

    def recon(*a):
        value = original_recon(*a)
        recon_values.append(value.detach())
        return value

    monkeypatch.setattr(loss, 'reconstruction_loss', recon)
    import backbones.fastgan.loss as loss_module
    monkeypatch.setattr(loss_module, 'check_finite', lambda phase, name, value: checked.append((name, value.detach())))

    real, z = _images(), torch.randn(B, 256)
    _phase(setup, 'Dmain', real, z)
    assert all(p.grad is None for p in G.parameters()), 'Dmain trains D only'
    assert all(p.grad is not None for p in D.parameters())
    D.zero_grad(set_to_none=True)  # (the loop's D step happens here)
    _phase(setup, 'Gmain', real, z)
    assert all(p.grad is None for p in D.parameters()), 'Gmain trains G only'
    assert all(p.grad is not None for p in G.parameters())
    assert sum(bool(p.grad.abs().sum()) for p in G.parameters()) > 0.9 * len(list(G.parameters()))

    assert len(g_calls) == 1, 'one G forward per iteration'
    assert [c[0] for c in d_calls] == ['dreal', 'dfake', 'gfake']
    assert all(s == B for _, sizes in d_calls for s in sizes), 'D never sees a mixed batch'
    fakes = real_pass['fakes']
    if which == 'orig':
        assert len(fakes['gfake']) == 2 and all(torch.equal(a, b) for a, b in zip(fakes['dfake'], fakes['gfake']))
    else:
        assert torch.equal(fakes['dfake'], fakes['gfake']), 'Gmain reuses the Dmain fakes'
        assert dict(D.chain_ctx.layer_calls) == {'dreal': 15, 'dfake': 15, 'gfake': 15}

    # Reconstruction: Σ over the batch of the distance, per decoder; targets nearest-resized to 128.
    x, part, recs = real_pass['real'], real_pass['part'], real_pass['recs']
    assert part in (0, 1, 2, 3)
    whole = F.interpolate(x, size=128, mode='nearest')
    crop = _expected_quarter(x, part)
    targets = [whole] * (len(recs) - 1) + [F.interpolate(crop, size=128, mode='nearest')]
    want = sum((rec - t).abs().flatten(1).mean(1).sum() for rec, t in zip(recs, targets))
    assert len(recon_values) == 1
    torch.testing.assert_close(recon_values[0], want, rtol=1e-6, atol=0)
    loss.num_gpus = 2
    torch.testing.assert_close(loss.reconstruction_loss(x, recs, part), 2 * want, rtol=1e-6, atol=0)

    # The real D loss is the hinge plus the reconstruction sum (plus 0MR, 0 at p = p0 = 0).
    names = [n for n, _ in checked]
    assert names == ['Loss/D/loss (real)', 'Loss/D/loss (fake)', 'Loss/G/loss']
    total_real = checked[0][1]
    l_real = real_pass['logits']
    if which == 'orig':
        low, high = F.relu(0.8 - l_real).mean() + want, F.relu(1.0 - l_real).mean() + want
        assert low - 1e-5 <= total_real <= high + 1e-5
    else:
        torch.testing.assert_close(total_real, F.relu(1 - l_real).mean() + want, rtol=1e-6, atol=1e-6)


def test_atopk_k1_selects_by_the_mean_of_the_fifty_logits():
    setup = _setup('orig', batch=4)
    loss = setup.loss
    loss.generator_loss_reducer = ATopk(mode='fixed', batch_size=4, k=1)
    setup.D.eval()  # running-stat BN: samples independent, so only the selection couples them
    outputs = []
    setup.D.register_forward_hook(lambda m, a, o: outputs.append(o.detach()))
    fakes = [_images(4).requires_grad_(True), _images(4, 128, seed=2).requires_grad_(True)]
    loss._generator(fakes, 1.0)
    winner = int(outputs[-1].mean(1).argmax())
    for f in fakes:
        norms = f.grad.flatten(1).abs().sum(1)
        assert norms[winner] > 0
        assert all(norms[i] == 0 for i in range(4) if i != winner)

    # A stub D whose rankings disagree: only the mean over all 50 logits picks sample 2.
    pattern = torch.zeros(4, 50)
    pattern[0, 0] = 10.0           # highest single logit (mean 0.2)
    pattern[1, :25], pattern[1, 25:] = 1.0, -1.0  # highest big-head mean (mean 0)
    pattern[2] = 0.5               # highest mean of the 50
    pattern[3] = 0.3

    class Stub(nn.Module):
        def forward(self, imgs):
            return pattern + 1e-3 * (imgs[0].mean((1, 2, 3)) + imgs[1].mean((1, 2, 3)))[:, None]

    loss.D = Stub()
    fakes = [_images(4).requires_grad_(True), _images(4, 128, seed=2).requires_grad_(True)]
    loss._generator(fakes, 1.0)
    norms = fakes[0].grad.flatten(1).abs().sum(1)
    assert norms[2] > 0 and norms[[0, 1, 3]].sum() == 0


# ---------------------------------------------------------------------------------------------
# 14. DiffAugment op order.

def test_diffaugment_random_order():
    policy = [diffaugment.rand_brightness, diffaugment.rand_saturation, diffaugment.rand_contrast,
              diffaugment.rand_translation]
    assert diffaugment.policy_ops('color,translation', random_order=False) == policy
    torch.manual_seed(0)
    orders = set()
    for _ in range(40):
        ops = diffaugment.policy_ops('color,translation', random_order=True)
        assert sorted(ops, key=lambda f: f.__name__) == sorted(policy, key=lambda f: f.__name__)
        orders.add(tuple(f.__name__ for f in ops))
    assert len(orders) > 5
    torch.manual_seed(4)
    perm = torch.randperm(4).tolist()
    torch.manual_seed(4)
    assert diffaugment.policy_ops('color,translation', random_order=True) == [policy[i] for i in perm]
    state = torch.get_rng_state()
    diffaugment.policy_ops('color,translation')
    assert torch.equal(state, torch.get_rng_state()), 'policy order draws nothing'

    calls = []
    original = diffaugment.policy_ops

    def spy(policy, random_order=False, *args):
        calls.append(random_order)
        return original(policy, random_order, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffaugment, 'policy_ops', spy)
        diffaugment.DiffAugmentPipe('color,translation', random_order=True)(torch.zeros(1, 3, 8, 8))
        diffaugment.DiffAugmentPipe('color,translation')(torch.zeros(1, 3, 8, 8))
    assert calls == [True, False]


# ---------------------------------------------------------------------------------------------
# 15. Sampling.

def test_fastgan_sampler_batch_statistics_padding_and_mode():
    G = _seeded(lambda: Generator(0, 256, 3, ngf=8))
    G.eval()
    z8 = torch.randn(8, 256)
    reference = copy.deepcopy(G)
    sampler = FastGANSampler(G)
    with torch.no_grad():
        out = sampler(z8)
        want = reference.train()(z8)[0]
        eval_out = copy.deepcopy(G).eval()(z8)[0]
    assert not G.training, "the sampler restores G's mode"
    assert list(out.shape) == [8, 3, 256, 256] and torch.equal(out, want), 'train-mode BN, main output'
    assert not torch.allclose(out, eval_out, atol=1e-3), 'batch statistics differ from the running ones at init'

    G.train()
    reference = copy.deepcopy(G)
    z3 = torch.randn(3, 256)
    pad = torch.randn(5, 256, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    with torch.no_grad():
        out3 = FastGANSampler(G)(z3)
    state_sampler = torch.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        want3 = reference(torch.cat([z3, pad]))[0][:3]
    assert G.training
    assert torch.equal(state_sampler, torch.get_rng_state()), 'padding does not draw from the global RNG'
    assert list(out3.shape) == [3, 3, 256, 256] and torch.equal(out3, want3)

    with torch.no_grad():
        assert list(FastGANSampler(G)(torch.randn(9, 256)).shape) == [9, 3, 256, 256]
        G.train()
        eval_sampler = FastGANSampler(G, bn='eval')
        reference = copy.deepcopy(G).eval()
        assert torch.equal(eval_sampler(z8), reference(z8)[0])
    assert G.training

    backbone = backbones.get('fastgan')
    with pytest.raises(UserError, match='truncation'):
        backbone.sampler(G, truncation_psi=0.7)
    assert backbone.sampler(G).bn == 'train'
    assert backbone.sampler(Generator(0, 256, 3, ngf=8, sample_bn='eval')).bn == 'eval'


def test_fastgan_sampler_pads_every_call_with_the_same_latents():
    """The padding is fixed: a grid at tick 5 and at tick 1, or seed 3 of --seeds=0-3 and of --seeds=3, share
    their companions — otherwise a resumed run's grids and G_ema BN statistics differ from an uninterrupted one's."""
    G = _seeded(lambda: Generator(0, 256, 3, ngf=8))
    inputs = []
    G.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    sampler = FastGANSampler(G)
    with torch.no_grad():
        sampler(torch.randn(3, 256))
        sampler(torch.randn(3, 256))
    assert [list(x.shape) for x in inputs] == [[8, 256], [8, 256]]
    assert torch.equal(inputs[0][3:], inputs[1][3:]), 'padding latents change from call to call'


def test_fastgan_sampler_accepts_generate_py_latents():
    """generate.py hands the sampler z = torch.from_numpy(RandomState(seed).randn(1, z_dim)): float64."""
    G = _seeded(lambda: Generator(0, 256, 3, ngf=8))
    z = torch.from_numpy(np.random.RandomState(0).randn(1, 256))
    with torch.no_grad():
        img = backbones.get('fastgan').sampler(G)(z, torch.zeros(1, 0))
    assert list(img.shape) == [1, 3, 256, 256] and img.dtype == torch.float32
