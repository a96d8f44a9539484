"""Tests for training/networks.py (docs/stylegan2-arithmetic.md §4–§9, docs/stylegan2-ada.md §14–§15).

Tiny networks (8–32 px, ≤ 32 channels). Expected name/shape tables are written out by hand from
the spec; numerical properties are checked against independent float64 formulas.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils import persistence
from training import networks

# ---------------------------------------------------------------------------------------------
# Helpers.


def make_G(seed: int = 0, **kwargs) -> networks.Generator:
    cfg = dict(z_dim=8, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
               mapping_kwargs=dict(num_layers=2),
               synthesis_kwargs=dict(channel_base=256, channel_max=32, architecture='skip'))
    for key, value in kwargs.items():
        if key in ('mapping_kwargs', 'synthesis_kwargs'):
            cfg[key] = dict(cfg[key], **value)
        else:
            cfg[key] = value
    torch.manual_seed(seed)
    return networks.Generator(**cfg)


def make_D(seed: int = 0, **kwargs) -> networks.Discriminator:
    cfg = dict(c_dim=0, img_resolution=16, img_channels=3, architecture='resnet', channel_base=256,
               channel_max=32, mapping_kwargs=dict(num_layers=2))
    cfg.update(kwargs)
    torch.manual_seed(seed)
    return networks.Discriminator(**cfg)


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    """Make zero-initialised biases, noise strengths and w_avg non-trivial (filters untouched)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not name.endswith('resample_filter'):
            t.add_(torch.randn(t.shape, generator=g) * scale)


def table(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def synthesis_layer_entries(prefix: str, out_ch: int, in_ch: int, res: int, w_dim: int) -> list:
    """State of one SynthesisLayer in state-dict order (docs/stylegan2-arithmetic.md §7.1)."""
    return [(f'{prefix}.weight', (out_ch, in_ch, 3, 3)), (f'{prefix}.noise_strength', ()),
            (f'{prefix}.bias', (out_ch,)), (f'{prefix}.resample_filter', (4, 4)),
            (f'{prefix}.noise_const', (res, res)), (f'{prefix}.affine.weight', (in_ch, w_dim)),
            (f'{prefix}.affine.bias', (in_ch,))]


def torgb_entries(prefix: str, in_ch: int, w_dim: int, img_ch: int = 3) -> list:
    return [(f'{prefix}.weight', (img_ch, in_ch, 1, 1)), (f'{prefix}.bias', (img_ch,)),
            (f'{prefix}.affine.weight', (in_ch, w_dim)), (f'{prefix}.affine.bias', (in_ch,))]


# ---------------------------------------------------------------------------------------------
# Name-and-shape tables (hand-derived from docs/stylegan2-arithmetic.md §4–§8; key order matters for
# upstream state dicts).

# G skip, 32 px, z 8, c 0, w 16, mapping 2 layers, channel_base 256, channel_max 32:
# ch(4)=32, ch(8)=32, ch(16)=16, ch(32)=8.
EXPECTED_G_SKIP32 = [
    ('synthesis.b4.const', (32, 4, 4)),
    ('synthesis.b4.resample_filter', (4, 4)),
    ('synthesis.b4.conv1.weight', (32, 32, 3, 3)),
    ('synthesis.b4.conv1.noise_strength', ()),
    ('synthesis.b4.conv1.bias', (32,)),
    ('synthesis.b4.conv1.resample_filter', (4, 4)),
    ('synthesis.b4.conv1.noise_const', (4, 4)),
    ('synthesis.b4.conv1.affine.weight', (32, 16)),
    ('synthesis.b4.conv1.affine.bias', (32,)),
    ('synthesis.b4.torgb.weight', (3, 32, 1, 1)),
    ('synthesis.b4.torgb.bias', (3,)),
    ('synthesis.b4.torgb.affine.weight', (32, 16)),
    ('synthesis.b4.torgb.affine.bias', (32,)),
    ('synthesis.b8.resample_filter', (4, 4)),
    ('synthesis.b8.conv0.weight', (32, 32, 3, 3)),
    ('synthesis.b8.conv0.noise_strength', ()),
    ('synthesis.b8.conv0.bias', (32,)),
    ('synthesis.b8.conv0.resample_filter', (4, 4)),
    ('synthesis.b8.conv0.noise_const', (8, 8)),
    ('synthesis.b8.conv0.affine.weight', (32, 16)),
    ('synthesis.b8.conv0.affine.bias', (32,)),
    ('synthesis.b8.conv1.weight', (32, 32, 3, 3)),
    ('synthesis.b8.conv1.noise_strength', ()),
    ('synthesis.b8.conv1.bias', (32,)),
    ('synthesis.b8.conv1.resample_filter', (4, 4)),
    ('synthesis.b8.conv1.noise_const', (8, 8)),
    ('synthesis.b8.conv1.affine.weight', (32, 16)),
    ('synthesis.b8.conv1.affine.bias', (32,)),
    ('synthesis.b8.torgb.weight', (3, 32, 1, 1)),
    ('synthesis.b8.torgb.bias', (3,)),
    ('synthesis.b8.torgb.affine.weight', (32, 16)),
    ('synthesis.b8.torgb.affine.bias', (32,)),
    ('synthesis.b16.resample_filter', (4, 4)),
    ('synthesis.b16.conv0.weight', (16, 32, 3, 3)),
    ('synthesis.b16.conv0.noise_strength', ()),
    ('synthesis.b16.conv0.bias', (16,)),
    ('synthesis.b16.conv0.resample_filter', (4, 4)),
    ('synthesis.b16.conv0.noise_const', (16, 16)),
    ('synthesis.b16.conv0.affine.weight', (32, 16)),
    ('synthesis.b16.conv0.affine.bias', (32,)),
    ('synthesis.b16.conv1.weight', (16, 16, 3, 3)),
    ('synthesis.b16.conv1.noise_strength', ()),
    ('synthesis.b16.conv1.bias', (16,)),
    ('synthesis.b16.conv1.resample_filter', (4, 4)),
    ('synthesis.b16.conv1.noise_const', (16, 16)),
    ('synthesis.b16.conv1.affine.weight', (16, 16)),
    ('synthesis.b16.conv1.affine.bias', (16,)),
    ('synthesis.b16.torgb.weight', (3, 16, 1, 1)),
    ('synthesis.b16.torgb.bias', (3,)),
    ('synthesis.b16.torgb.affine.weight', (16, 16)),
    ('synthesis.b16.torgb.affine.bias', (16,)),
    ('synthesis.b32.resample_filter', (4, 4)),
    ('synthesis.b32.conv0.weight', (8, 16, 3, 3)),
    ('synthesis.b32.conv0.noise_strength', ()),
    ('synthesis.b32.conv0.bias', (8,)),
    ('synthesis.b32.conv0.resample_filter', (4, 4)),
    ('synthesis.b32.conv0.noise_const', (32, 32)),
    ('synthesis.b32.conv0.affine.weight', (16, 16)),
    ('synthesis.b32.conv0.affine.bias', (16,)),
    ('synthesis.b32.conv1.weight', (8, 8, 3, 3)),
    ('synthesis.b32.conv1.noise_strength', ()),
    ('synthesis.b32.conv1.bias', (8,)),
    ('synthesis.b32.conv1.resample_filter', (4, 4)),
    ('synthesis.b32.conv1.noise_const', (32, 32)),
    ('synthesis.b32.conv1.affine.weight', (8, 16)),
    ('synthesis.b32.conv1.affine.bias', (8,)),
    ('synthesis.b32.torgb.weight', (3, 8, 1, 1)),
    ('synthesis.b32.torgb.bias', (3,)),
    ('synthesis.b32.torgb.affine.weight', (8, 16)),
    ('synthesis.b32.torgb.affine.bias', (8,)),
    ('mapping.w_avg', (16,)),
    ('mapping.fc0.weight', (16, 8)),
    ('mapping.fc0.bias', (16,)),
    ('mapping.fc1.weight', (16, 16)),
    ('mapping.fc1.bias', (16,)),
]

# G resnet, 8 px, z 8, c 2 (embed → 16), w 16, mapping 2 layers: ch(4)=ch(8)=32.
# resnet: no torgb in b4 (not last), a 1×1 ↑2 skip without bias in b8.
EXPECTED_G_RESNET8_COND = [
    ('synthesis.b4.const', (32, 4, 4)),
    ('synthesis.b4.resample_filter', (4, 4)),
    ('synthesis.b4.conv1.weight', (32, 32, 3, 3)),
    ('synthesis.b4.conv1.noise_strength', ()),
    ('synthesis.b4.conv1.bias', (32,)),
    ('synthesis.b4.conv1.resample_filter', (4, 4)),
    ('synthesis.b4.conv1.noise_const', (4, 4)),
    ('synthesis.b4.conv1.affine.weight', (32, 16)),
    ('synthesis.b4.conv1.affine.bias', (32,)),
    ('synthesis.b8.resample_filter', (4, 4)),
    ('synthesis.b8.conv0.weight', (32, 32, 3, 3)),
    ('synthesis.b8.conv0.noise_strength', ()),
    ('synthesis.b8.conv0.bias', (32,)),
    ('synthesis.b8.conv0.resample_filter', (4, 4)),
    ('synthesis.b8.conv0.noise_const', (8, 8)),
    ('synthesis.b8.conv0.affine.weight', (32, 16)),
    ('synthesis.b8.conv0.affine.bias', (32,)),
    ('synthesis.b8.conv1.weight', (32, 32, 3, 3)),
    ('synthesis.b8.conv1.noise_strength', ()),
    ('synthesis.b8.conv1.bias', (32,)),
    ('synthesis.b8.conv1.resample_filter', (4, 4)),
    ('synthesis.b8.conv1.noise_const', (8, 8)),
    ('synthesis.b8.conv1.affine.weight', (32, 16)),
    ('synthesis.b8.conv1.affine.bias', (32,)),
    ('synthesis.b8.torgb.weight', (3, 32, 1, 1)),
    ('synthesis.b8.torgb.bias', (3,)),
    ('synthesis.b8.torgb.affine.weight', (32, 16)),
    ('synthesis.b8.torgb.affine.bias', (32,)),
    ('synthesis.b8.skip.weight', (32, 32, 1, 1)),
    ('synthesis.b8.skip.resample_filter', (4, 4)),
    ('mapping.w_avg', (16,)),
    ('mapping.embed.weight', (16, 2)),
    ('mapping.embed.bias', (16,)),
    ('mapping.fc0.weight', (16, 24)),
    ('mapping.fc0.bias', (16,)),
    ('mapping.fc1.weight', (16, 16)),
    ('mapping.fc1.bias', (16,)),
]

# D resnet, 16 px, c 3, cmap_dim = ch(4) = 32, mapping 2 layers, freeze_layers = 3:
# ch(16)=16, ch(8)=32, ch(4)=32. Layer indices: b16 fromrgb 0, conv0 1, conv1 2, skip 3; b8 conv0 4,
# conv1 5, skip 6. Frozen layers (0–2) hold weight/bias as buffers, registered after resample_filter.
EXPECTED_D_RESNET16_COND_FROZEN = [
    ('b16.resample_filter', (4, 4)),
    ('b16.fromrgb.resample_filter', (4, 4)),
    ('b16.fromrgb.weight', (16, 3, 1, 1)),
    ('b16.fromrgb.bias', (16,)),
    ('b16.conv0.resample_filter', (4, 4)),
    ('b16.conv0.weight', (16, 16, 3, 3)),
    ('b16.conv0.bias', (16,)),
    ('b16.conv1.resample_filter', (4, 4)),
    ('b16.conv1.weight', (32, 16, 3, 3)),
    ('b16.conv1.bias', (32,)),
    ('b16.skip.weight', (32, 16, 1, 1)),
    ('b16.skip.resample_filter', (4, 4)),
    ('b8.resample_filter', (4, 4)),
    ('b8.conv0.weight', (32, 32, 3, 3)),
    ('b8.conv0.bias', (32,)),
    ('b8.conv0.resample_filter', (4, 4)),
    ('b8.conv1.weight', (32, 32, 3, 3)),
    ('b8.conv1.bias', (32,)),
    ('b8.conv1.resample_filter', (4, 4)),
    ('b8.skip.weight', (32, 32, 1, 1)),
    ('b8.skip.resample_filter', (4, 4)),
    ('mapping.embed.weight', (32, 3)),
    ('mapping.embed.bias', (32,)),
    ('mapping.fc0.weight', (32, 32)),
    ('mapping.fc0.bias', (32,)),
    ('mapping.fc1.weight', (32, 32)),
    ('mapping.fc1.bias', (32,)),
    ('b4.conv.weight', (32, 33, 3, 3)),
    ('b4.conv.bias', (32,)),
    ('b4.conv.resample_filter', (4, 4)),
    ('b4.fc.weight', (32, 512)),
    ('b4.fc.bias', (32,)),
    ('b4.out.weight', (32, 32)),
    ('b4.out.bias', (32,)),
]

# D skip, 16 px, c 0, mbstd 2 channels: fromrgb in every block, 1-logit output, no mapping.
EXPECTED_D_SKIP16 = [
    ('b16.resample_filter', (4, 4)),
    ('b16.fromrgb.weight', (16, 3, 1, 1)),
    ('b16.fromrgb.bias', (16,)),
    ('b16.fromrgb.resample_filter', (4, 4)),
    ('b16.conv0.weight', (16, 16, 3, 3)),
    ('b16.conv0.bias', (16,)),
    ('b16.conv0.resample_filter', (4, 4)),
    ('b16.conv1.weight', (32, 16, 3, 3)),
    ('b16.conv1.bias', (32,)),
    ('b16.conv1.resample_filter', (4, 4)),
    ('b8.resample_filter', (4, 4)),
    ('b8.fromrgb.weight', (32, 3, 1, 1)),
    ('b8.fromrgb.bias', (32,)),
    ('b8.fromrgb.resample_filter', (4, 4)),
    ('b8.conv0.weight', (32, 32, 3, 3)),
    ('b8.conv0.bias', (32,)),
    ('b8.conv0.resample_filter', (4, 4)),
    ('b8.conv1.weight', (32, 32, 3, 3)),
    ('b8.conv1.bias', (32,)),
    ('b8.conv1.resample_filter', (4, 4)),
    ('b4.fromrgb.weight', (32, 3, 1, 1)),
    ('b4.fromrgb.bias', (32,)),
    ('b4.fromrgb.resample_filter', (4, 4)),
    ('b4.conv.weight', (32, 34, 3, 3)),
    ('b4.conv.bias', (32,)),
    ('b4.conv.resample_filter', (4, 4)),
    ('b4.fc.weight', (32, 512)),
    ('b4.fc.bias', (32,)),
    ('b4.out.weight', (1, 32)),
    ('b4.out.bias', (1,)),
]


def test_generator_skip_table():
    G = make_G()
    assert table(G) == EXPECTED_G_SKIP32
    assert G.num_ws == 8 and G.synthesis.num_ws == 8 == 2 * 5 - 2
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (8, 0, 16, 32, 3)
    assert G.synthesis.block_resolutions == [4, 8, 16, 32]
    assert all(v.dtype == torch.float32 for v in G.state_dict().values())
    buffers = {n for n, _ in G.named_buffers()}
    assert 'mapping.w_avg' in buffers and 'synthesis.b32.conv1.noise_const' in buffers
    assert 'synthesis.b4.const' not in buffers  # the const is a parameter


def test_generator_resnet_conditional_table():
    G = make_G(c_dim=2, img_resolution=8, synthesis_kwargs=dict(architecture='resnet'))
    assert table(G) == EXPECTED_G_RESNET8_COND
    assert G.num_ws == 4


def test_discriminator_resnet_conditional_frozen_table():
    D = make_D(c_dim=3, block_kwargs=dict(freeze_layers=3))
    assert table(D) == EXPECTED_D_RESNET16_COND_FROZEN
    frozen = ['b16.fromrgb.weight', 'b16.fromrgb.bias', 'b16.conv0.weight', 'b16.conv0.bias',
              'b16.conv1.weight', 'b16.conv1.bias']
    params = [n for n, _ in D.named_parameters()]
    buffers = [n for n, _ in D.named_buffers()]
    assert all(n in buffers and n not in params for n in frozen)
    assert params[0] == 'b16.skip.weight' and 'b8.conv0.weight' in params
    # Same names as the unfrozen network (only the key order of frozen layers differs).
    assert set(make_D(c_dim=3).state_dict()) == set(D.state_dict())


def test_discriminator_skip_table():
    D = make_D(architecture='skip', epilogue_kwargs=dict(mbstd_num_channels=2))
    assert table(D) == EXPECTED_D_SKIP16


def test_same_seed_same_initialisation():
    a, b = make_G(seed=3), make_G(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(make_G(seed=4).synthesis.b4.const, a.synthesis.b4.const)
    # FC init: weight ~ N(0,1)/lr_multiplier (stored ×100 for the mapping), affine bias = 1.
    assert a.mapping.fc0.weight.std() > 30
    assert torch.all(a.synthesis.b8.conv0.affine.bias == 1)


# ---------------------------------------------------------------------------------------------
# Generator behaviour.

@pytest.fixture(scope='module')
def G_skip() -> networks.Generator:
    G = make_G(c_dim=3)
    perturb(G)
    return G.eval()


def test_generator_output(G_skip):
    z, c = torch.randn(3, 8), torch.randn(3, 3)
    img = G_skip(z, c, noise_mode='const')
    assert img.shape == (3, 3, 32, 32) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    ws = G_skip.mapping(z, c)
    assert ws.shape == (3, 8, 16)
    assert torch.equal(ws[:, 0], ws[:, 7])  # broadcast


def test_truncation_psi_zero_gives_w_avg(G_skip):
    z, c = torch.randn(4, 8), torch.randn(4, 3)
    img = G_skip(z, c, truncation_psi=0, noise_mode='const')
    ws_avg = G_skip.mapping.w_avg.reshape(1, 1, -1).repeat(4, G_skip.num_ws, 1)
    expected = G_skip.synthesis(ws_avg, noise_mode='const')
    assert torch.equal(img, expected)
    assert torch.equal(img[0], img[3])


def test_truncation_cutoff(G_skip):
    z, c = torch.randn(2, 8), torch.randn(2, 3)
    w = G_skip.mapping(z, c).double()
    ws = G_skip.mapping(z, c, truncation_psi=0.6, truncation_cutoff=3).double()
    w_avg = G_skip.mapping.w_avg.double()
    torch.testing.assert_close(ws[:, :3], w_avg + 0.6 * (w[:, :3] - w_avg), rtol=1e-6, atol=1e-6)
    assert torch.equal(ws[:, 3:], w[:, 3:])
    ws_all = G_skip.mapping(z, c, truncation_psi=0.6).double()
    torch.testing.assert_close(ws_all, w_avg + 0.6 * (w - w_avg), rtol=1e-6, atol=1e-6)


def test_w_avg_tracking_only_in_training_mode():
    G = make_G(c_dim=3)
    perturb(G)
    mapping = G.mapping
    z, c = torch.randn(5, 8), torch.randn(5, 3)
    old = mapping.w_avg.clone()
    mapping.eval()
    x = mapping(z, c)
    assert torch.equal(mapping.w_avg, old)
    mapping.train()
    mapping(z, c, skip_w_avg_update=True)
    assert torch.equal(mapping.w_avg, old)
    ws = mapping(z, c, truncation_psi=0.5)
    beta = 0.995
    expected = beta * old.double() + (1 - beta) * x[:, 0].double().mean(0)
    torch.testing.assert_close(mapping.w_avg.double(), expected, rtol=0, atol=1e-6)
    # Truncation in the same call uses the updated w_avg.
    torch.testing.assert_close(ws.double(), mapping.w_avg.double() + 0.5 * (x.double() - mapping.w_avg.double()),
                               rtol=0, atol=1e-5)
    mapping.eval()


def test_fused_and_nonfused_agree_and_default_rule(G_skip):
    z, c = torch.randn(3, 8), torch.randn(3, 3)
    with torch.no_grad():
        fused = G_skip(z, c, noise_mode='const', fused_modconv=True)
        nonfused = G_skip(z, c, noise_mode='const', fused_modconv=False)
    scale = fused.abs().max()
    assert (fused - nonfused).abs().max() <= 1e-5 * max(1.0, float(scale))
    # docs/stylegan2-arithmetic.md §9: eval mode → fused (fp32 blocks); training mode → non-fused.
    # Bitwise, since same path.
    assert torch.equal(G_skip(z, c, noise_mode='const'), fused)
    G_skip.train()
    try:
        assert torch.equal(G_skip.synthesis(G_skip.mapping.eval()(z, c), noise_mode='const'), nonfused)
    finally:
        G_skip.eval()


def test_noise_modes(G_skip):
    z, c = torch.randn(2, 8), torch.randn(2, 3)
    const1 = G_skip(z, c, noise_mode='const')
    const2 = G_skip(z, c, noise_mode='const')
    assert torch.equal(const1, const2)
    none = G_skip(z, c, noise_mode='none')
    assert not torch.allclose(none, const1)
    rand1 = G_skip(z, c, noise_mode='random')
    rand2 = G_skip(z, c, noise_mode='random')
    assert not torch.allclose(rand1, rand2)
    torch.manual_seed(5)
    rand3 = G_skip(z, c)
    torch.manual_seed(5)
    assert torch.equal(rand3, G_skip(z, c))
    # With zero noise strength every mode gives the same image.
    G = make_G(c_dim=3).eval()
    assert torch.equal(G(z, c, noise_mode='random'), G(z, c, noise_mode='none'))
    with pytest.raises(AssertionError):
        G(z, c, noise_mode='bogus')


def test_use_noise_false_has_no_noise_state():
    G = make_G(synthesis_kwargs=dict(use_noise=False))
    names = set(G.state_dict())
    assert not any('noise' in n for n in names)
    assert G(torch.randn(1, 8), None).shape == (1, 3, 32, 32)


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_architectures(architecture):
    G = make_G(img_resolution=16, synthesis_kwargs=dict(architecture=architecture))
    perturb(G)
    G.eval()
    img = G(torch.randn(2, 8), None, noise_mode='const')
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    has_torgb = [hasattr(getattr(G.synthesis, f'b{r}'), 'torgb') for r in (4, 8, 16)]
    has_skip = [hasattr(getattr(G.synthesis, f'b{r}'), 'skip') for r in (4, 8, 16)]
    assert has_torgb == ([True] * 3 if architecture == 'skip' else [False, False, True])
    assert has_skip == ([False, True, True] if architecture == 'resnet' else [False] * 3)
    assert G.num_ws == 6
    D = make_D(architecture=architecture)
    perturb(D)
    logits = D(torch.randn(4, 3, 16, 16), None)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()


def test_ws_indexing_torgb_shares_w_with_next_conv0():
    """docs/stylegan2-arithmetic.md §7.4: block k takes ws[i_k : i_k + num_conv + num_torgb], i_k
    advancing by num_conv only."""
    G = make_G(img_resolution=16)
    perturb(G)
    G.eval()
    layers = {f'b{r}.{n}': getattr(getattr(G.synthesis, f'b{r}'), n)
              for r in (4, 8, 16) for n in ('conv0', 'conv1', 'torgb') if hasattr(getattr(G.synthesis, f'b{r}'), n)}
    seen: dict[str, torch.Tensor] = {}
    hooks = [layer.affine.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, i[0].clone()))
             for name, layer in layers.items()]
    ws = torch.randn(1, 6, 16)
    G.synthesis(ws, noise_mode='const')
    base = dict(seen)
    expected = {0: {'b4.conv1'}, 1: {'b4.torgb', 'b8.conv0'}, 2: {'b8.conv1'}, 3: {'b8.torgb', 'b16.conv0'},
                4: {'b16.conv1'}, 5: {'b16.torgb'}}
    for idx, names in expected.items():
        ws2 = ws.clone()
        ws2[:, idx] += 1
        G.synthesis(ws2, noise_mode='const')
        changed = {n for n in layers if not torch.equal(seen[n], base[n])}
        assert changed == names, (idx, changed)
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------------------------------------
# modulated_conv2d against an explicit float64 formula (docs/stylegan2-arithmetic.md §6, §3).

def _true_conv_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Valid true convolution of each sample with its own kernel stack (float64 reference)."""
    return F.conv2d(x, k.flip([-1, -2]))


def _reference_modconv(x, weight, styles, up, demodulate, noise):
    x, weight, styles = x.double(), weight.double(), styles.double()
    N, I, H, W = x.shape
    O = weight.shape[0]
    out = []
    for n in range(N):
        w = weight * styles[n].reshape(1, I, 1, 1)
        if demodulate:
            w = w / torch.sqrt((w ** 2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        xn = x[n:n + 1]
        if up == 1:
            y = F.conv2d(xn, w, padding=1)  # correlation, 'same'
        else:
            # Zero insertion (zeros follow each sample), pad (3,2,3,2), FIR [1,3,3,1]²/64 × 4,
            # then a valid *true* convolution with the modulated weight.
            u = torch.zeros(1, I, 2 * H, 2 * W, dtype=torch.float64)
            u[:, :, ::2, ::2] = xn
            u = F.pad(u, [3, 2, 3, 2])
            f1 = torch.tensor([1., 3., 3., 1.], dtype=torch.float64)
            fir = torch.outer(f1, f1) / 64 * 4
            u = _true_conv_valid(u.reshape(I, 1, *u.shape[2:]), fir.reshape(1, 1, 4, 4))
            u = u.reshape(1, I, 2 * H + 2, 2 * W + 2)
            y = _true_conv_valid(u, w)
        out.append(y)
    y = torch.cat(out)
    if noise is not None:
        y = y + noise.double()
    assert y.shape[1] == O
    return y


@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('fused,fast', [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize('demodulate', [True, False])
def test_modulated_conv2d_formula(up, fused, fast, demodulate):
    torch.manual_seed(0)
    N, I, O, H = 3, 5, 4, 6
    x = torch.randn(N, I, H, H)
    weight = torch.randn(O, I, 3, 3)  # asymmetric: a mirrored kernel would fail
    styles = torch.randn(N, I)
    noise = torch.randn(N, 1, H * up, H * up)
    f = networks.upfirdn2d.setup_filter([1, 3, 3, 1])
    with networks.fast_demod(fast):
        y = networks.modulated_conv2d(x.clone(), weight, styles, noise=noise, up=up, padding=1, resample_filter=f,
                                      demodulate=demodulate, flip_weight=(up == 1), fused_modconv=fused)
    ref = _reference_modconv(x, weight, styles, up, demodulate, noise)
    assert y.shape == ref.shape == (N, O, H * up, H * up)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_fast_demod_matches_reference_order():
    """The CPU fast dcoefs (module docstring) equal the reference order up to fp32 rounding."""
    G = make_G(c_dim=3)
    perturb(G)
    G.train()
    ws = G.mapping(torch.randn(4, 8), torch.randn(4, 3), skip_w_avg_update=True)
    with networks.fast_demod(False):
        exact = G.synthesis(ws, noise_mode='const')
    assert bool(networks._FAST_DEMOD)
    fast = G.synthesis(ws, noise_mode='const')
    assert (fast - exact).abs().max() <= 2e-6 * max(1.0, exact.abs().max().item())
    G.eval()


def test_synthesis_layer_formula():
    """docs/stylegan2-arithmetic.md §7.1: styles = affine(w); modconv; + noise·strength; + bias;
    lrelu·√2·gain; clamp(conv_clamp·gain)."""
    torch.manual_seed(1)
    layer = networks.SynthesisLayer(4, 5, w_dim=6, resolution=8, up=2, conv_clamp=0.7)
    perturb(layer)
    x, w = torch.randn(2, 4, 4, 4), torch.randn(2, 6)
    y = layer(x, w, noise_mode='const', fused_modconv=False, gain=0.5)
    styles = w.double() @ (layer.affine.weight.double().t() / math.sqrt(6)) + layer.affine.bias.double()
    noise = layer.noise_const.double() * layer.noise_strength.double()
    ref = _reference_modconv(x, layer.weight, styles, up=2, demodulate=True, noise=noise)
    ref = ref + layer.bias.double().reshape(1, -1, 1, 1)
    ref = F.leaky_relu(ref, 0.2) * math.sqrt(2) * 0.5
    ref = ref.clamp(-0.35, 0.35)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    assert y.abs().max() <= 0.35 + 1e-7


def test_torgb_formula():
    """docs/stylegan2-arithmetic.md §7.2: styles = affine(w)/√I (gain on the styles), no demodulation, + bias, clamp."""
    torch.manual_seed(5)
    layer = networks.ToRGBLayer(6, 3, w_dim=4, conv_clamp=0.5)
    perturb(layer)
    x, w = torch.randn(2, 6, 4, 4), torch.randn(2, 4)
    styles = (w.double() @ (layer.affine.weight.double().t() / 2) + layer.affine.bias.double()) / math.sqrt(6)
    for fused in (True, False):
        y = layer(x, w, fused_modconv=fused)
        ref = torch.einsum('nihw,oi,ni->nohw', x.double(), layer.weight.double()[:, :, 0, 0], styles)
        ref = (ref + layer.bias.double().reshape(1, -1, 1, 1)).clamp(-0.5, 0.5)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)


def test_resnet_blocks_combine_with_sqrt_half():
    """docs/stylegan2-arithmetic.md §7.3 / §8.1: resnet x = skip(x, gain √½) + conv1(conv0(x), gain √½)."""
    G = make_G(img_resolution=8, synthesis_kwargs=dict(architecture='resnet'))
    perturb(G)
    block = G.synthesis.b8.eval()
    x, ws = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 16)
    out, img = block(x, None, ws, noise_mode='const')
    h = block.conv0(x, ws[:, 0], noise_mode='const', fused_modconv=True)
    h = block.conv1(h, ws[:, 1], noise_mode='const', fused_modconv=True, gain=math.sqrt(0.5))
    torch.testing.assert_close(out, block.skip(x, gain=math.sqrt(0.5)) + h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(img, block.torgb(out, ws[:, 2]), rtol=1e-6, atol=1e-6)
    # The skip is a linear 1×1 conv: gain √½ scales it exactly.
    torch.testing.assert_close(block.skip(x, gain=math.sqrt(0.5)), block.skip(x) * math.sqrt(0.5), rtol=1e-6, atol=1e-6)

    D = make_D()
    perturb(D)
    blk = D.b8
    xd = torch.randn(2, 32, 8, 8)
    out_d, _ = blk(xd, None)
    ref_d = blk.skip(xd, gain=math.sqrt(0.5)) + blk.conv1(blk.conv0(xd), gain=math.sqrt(0.5))
    torch.testing.assert_close(out_d, ref_d, rtol=1e-6, atol=1e-6)
    # conv1 with gain √½: lrelu·√2·√½ = plain lrelu (gain 1 up to rounding).
    pre = blk.conv1(blk.conv0(xd), gain=math.sqrt(0.5))
    assert not torch.allclose(pre, blk.conv1(blk.conv0(xd)))


# ---------------------------------------------------------------------------------------------
# Discriminator.

def _mbstd_reference(x: torch.Tensor, group_size, num_channels: int) -> torch.Tensor:
    x = x.double()
    N, C, H, W = x.shape
    G = N if group_size is None else min(group_size, N)
    n = N // G
    c = C // num_channels
    stat = torch.zeros(N, num_channels, dtype=torch.float64)
    for s in range(N):
        members = [s % n + g * n for g in range(G)]  # strided groups: {j, j+n, j+2n, ...}
        for f in range(num_channels):
            feats = x[members, f * c:(f + 1) * c]  # [G, c, H, W]
            std = torch.sqrt(((feats - feats.mean(0)) ** 2).mean(0) + 1e-8)
            stat[s, f] = std.mean()
    return torch.cat([x, stat.reshape(N, num_channels, 1, 1).expand(N, num_channels, H, W)], dim=1)


@pytest.mark.parametrize('group_size,num_channels,N', [(4, 1, 8), (2, 2, 6), (None, 1, 3), (8, 1, 4), (3, 2, 6)])
def test_minibatch_std_formula(group_size, num_channels, N):
    torch.manual_seed(2)
    x = torch.randn(N, 6, 3, 3) * torch.arange(1, N + 1).reshape(N, 1, 1, 1)
    y = networks.MinibatchStdLayer(group_size, num_channels)(x)
    torch.testing.assert_close(y.double(), _mbstd_reference(x, group_size, num_channels), rtol=1e-5, atol=1e-6)


def test_discriminator_output_and_projection():
    D = make_D(c_dim=3, cmap_dim=5)
    perturb(D)
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, 3)
    captured = {}
    h1 = D.b4.out.register_forward_hook(lambda m, i, o: captured.__setitem__('out', o))
    h2 = D.mapping.register_forward_hook(lambda m, i, o: captured.__setitem__('cmap', o))
    logits = D(img, c)
    h1.remove()
    h2.remove()
    assert logits.shape == (4, 1) and logits.dtype == torch.float32
    assert captured['out'].shape == (4, 5) and captured['cmap'].shape == (4, 5)
    expected = (captured['out'].double() * captured['cmap'].double()).sum(1, keepdim=True) / math.sqrt(5)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(D(img, torch.randn(4, 3)), logits)
    assert 'mapping.w_avg' not in D.state_dict()


def test_discriminator_mbstd_uses_strided_groups():
    """Swapping samples within a strided group leaves the logits' group statistic unchanged."""
    D = make_D(epilogue_kwargs=dict(mbstd_group_size=2))
    perturb(D)
    img = torch.randn(4, 3, 16, 16)
    base = D(img, None)
    # Groups are {0,2} and {1,3}: permuting inside them (0↔2) only permutes the logits.
    perm = D(img[[2, 1, 0, 3]], None)
    torch.testing.assert_close(perm, base[[2, 1, 0, 3]], rtol=1e-5, atol=1e-6)
    # Swapping across groups (0↔1) changes the statistic seen by the other samples.
    cross = D(img[[1, 0, 2, 3]], None)
    assert not torch.allclose(cross[[2, 3]], base[[2, 3]], rtol=1e-5, atol=1e-6)


def test_freeze_layers_gradients():
    D = make_D(c_dim=3, block_kwargs=dict(freeze_layers=3))
    D(torch.randn(2, 3, 16, 16), torch.randn(2, 3)).sum().backward()
    assert D.b16.conv1.weight.grad is None and not D.b16.conv1.weight.requires_grad
    assert D.b16.skip.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# FP16 path (forced on the CPU) and conv_clamp.

def test_fp16_forced_on_cpu():
    G = make_G(c_dim=3, synthesis_kwargs=dict(num_fp16_res=2, conv_clamp=256))
    perturb(G)
    G.eval()
    assert [getattr(G.synthesis, f'b{r}').use_fp16 for r in (4, 8, 16, 32)] == [False, False, True, True]
    z, c = torch.randn(2, 8), torch.randn(2, 3)
    fp32 = G(z, c, noise_mode='const', force_fp32=True)
    # CPU default (docs/stylegan2-ada.md §15): fp16 blocks compute in fp32 → identical to force_fp32.
    assert torch.equal(G(z, c, noise_mode='const'), fp32)
    dtypes = []
    hook = G.synthesis.b32.conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with networks.fp16_on_cpu(True):
        fp16 = G(z, c, noise_mode='const')
    hook.remove()
    assert dtypes == [torch.float16]
    assert fp16.dtype == torch.float32 and torch.isfinite(fp16).all()
    diff = (fp16 - fp32).abs().max().item()
    assert 0 < diff < 0.05 * max(1.0, fp32.abs().max().item())
    assert not networks._FP16_ON_CPU  # the context restored the default

    D = make_D(c_dim=3, num_fp16_res=2, conv_clamp=256)
    perturb(D)
    img = fp32.detach()[:, :, ::2, ::2]
    d32 = D(img, c, force_fp32=True)
    assert torch.equal(D(img, c), d32)
    with networks.fp16_on_cpu(True):
        d16 = D(img, c)
    assert d16.dtype == torch.float32 and torch.isfinite(d16).all()
    assert 0 < (d16 - d32).abs().max().item() < 0.05 * max(1.0, d32.abs().max().item())


@pytest.mark.parametrize('fp16', [False, True])
def test_conv_clamp_bounds_activations(fp16):
    G = make_G(img_resolution=16, synthesis_kwargs=dict(conv_clamp=0.3, num_fp16_res=1))
    perturb(G)
    G.eval()
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o))
             for m in G.modules() if isinstance(m, (networks.SynthesisLayer, networks.ToRGBLayer))]
    with networks.fp16_on_cpu(fp16):
        G(torch.randn(2, 8), None, noise_mode='const')
    for h in hooks:
        h.remove()
    assert len(outs) == 8
    assert all(o.abs().max() <= 0.3 + 1e-3 for o in outs)
    assert any(o.abs().max() >= 0.3 - 1e-3 for o in outs)  # the clamp is active
    assert (torch.float16 in {o.dtype for o in outs}) == fp16

    D = make_D(conv_clamp=0.3)
    perturb(D)
    d_outs = []
    for name in ('conv0', 'conv1'):
        getattr(D.b8, name).register_forward_hook(lambda m, i, o: d_outs.append(o))
    D(torch.randn(2, 3, 16, 16), None)
    # conv0 clamps at 0.3; resnet conv1 at 0.3·√0.5.
    assert d_outs[0].abs().max() <= 0.3 + 1e-6 and d_outs[1].abs().max() <= 0.3 * math.sqrt(0.5) + 1e-6


# ---------------------------------------------------------------------------------------------
# Conv2dLayer and the post_conv hook point.

def test_conv2d_layer_formula_and_post_conv_hook():
    torch.manual_seed(3)
    layer = networks.Conv2dLayer(3, 4, kernel_size=3, activation='lrelu', conv_clamp=0.8)
    perturb(layer)
    x = torch.randn(2, 3, 5, 5)
    y = layer(x, gain=0.5)
    pre = F.conv2d(x.double(), layer.weight.double() / math.sqrt(27), padding=1)
    pre = pre + layer.bias.double().reshape(1, -1, 1, 1)
    ref = (F.leaky_relu(pre, 0.2) * math.sqrt(2) * 0.5).clamp(-0.4, 0.4)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    assert 'post_conv' not in str(list(layer.state_dict()))

    seen = []
    layer.post_conv = lambda t: (seen.append(t), t * 2)[1]
    y2 = layer(x, gain=0.5)
    torch.testing.assert_close(seen[0].double(), pre, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y2.double(), (F.leaky_relu(2 * pre, 0.2) * math.sqrt(2) * 0.5).clamp(-0.4, 0.4),
                               rtol=1e-5, atol=1e-6)
    layer.post_conv = torch.nn.Identity()
    torch.testing.assert_close(layer(x, gain=0.5), y, rtol=1e-6, atol=1e-7)
    layer.post_conv = None
    assert torch.equal(layer(x, gain=0.5), y)


def test_fully_connected_layer_equalised_lr():
    torch.manual_seed(4)
    fc = networks.FullyConnectedLayer(6, 3, activation='lrelu', lr_multiplier=0.01, bias_init=0.5)
    assert torch.all(fc.bias == 0.5)
    x = torch.randn(4, 6)
    ref = F.leaky_relu(x.double() @ (fc.weight.double() * 0.01 / math.sqrt(6)).t() + fc.bias.double() * 0.01, 0.2)
    torch.testing.assert_close(fc(x).double(), ref * math.sqrt(2), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Persistence and double backward.

def test_persistence_round_trip():
    G = make_G(c_dim=3, synthesis_kwargs=dict(architecture='resnet', num_fp16_res=2, conv_clamp=256))
    D = make_D(c_dim=3, block_kwargs=dict(freeze_layers=2), epilogue_kwargs=dict(mbstd_group_size=2))
    perturb(G)
    perturb(D)
    buf = io.BytesIO()
    torch.save(dict(G=persistence.module_to_record(G), D=persistence.module_to_record(D)), buf)
    buf.seek(0)
    data = torch.load(buf, weights_only=True)
    G2 = persistence.module_from_record(data['G']).eval()
    D2 = persistence.module_from_record(data['D'])
    assert type(G2) is networks.Generator and G2.init_kwargs == G.init_kwargs
    z, c = torch.randn(2, 8), torch.randn(2, 3)
    assert torch.equal(G2(z, c, noise_mode='const'), G.eval()(z, c, noise_mode='const'))
    img = torch.randn(2, 3, 16, 16)
    assert torch.equal(D2(img, c), D(img, c))
    assert [n for n, _ in D2.named_parameters()] == [n for n, _ in D.named_parameters()]


@pytest.mark.parametrize('architecture', ['resnet', 'skip'])
def test_discriminator_double_backward(architecture):
    D = make_D(c_dim=3, architecture=architecture, conv_clamp=256)
    perturb(D)
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = D(img, torch.randn(4, 3))
    grad, = torch.autograd.grad(logits.sum(), img, create_graph=True)
    penalty = grad.square().sum([1, 2, 3]).mean()
    (logits.sum() * 0 + penalty).backward()  # as the R1 phase: every parameter is in the graph
    grads = [p.grad for p in D.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_generator_path_length_double_backward():
    G = make_G(img_resolution=16, c_dim=3)
    perturb(G)
    G.train()
    ws = G.mapping(torch.randn(2, 8), torch.randn(2, 3)).detach().requires_grad_(True)
    img = G.synthesis(ws)
    grad, = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    (grad.square().sum() + img.sum() * 0).backward()
    grads = dict(G.synthesis.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in grads.values())
    assert grads['b8.conv0.weight'].grad.abs().sum() > 0 and grads['b4.const'].grad.abs().sum() > 0
