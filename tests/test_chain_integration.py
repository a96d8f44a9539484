"""CHAIN inside the StyleGAN2 discriminator and loss (docs/methods.md §6, §9.6 R5–R6, C1, C4)."""

from __future__ import annotations

import pytest
import torch

from patches.chain import Chain
from torch_utils import persistence, training_stats
from training import networks
from training.loss import StyleGAN2Loss

RES = 16
D_KW = dict(c_dim=0, img_resolution=RES, img_channels=3, channel_base=128, channel_max=16,
            epilogue_kwargs=dict(mbstd_group_size=2))
CHAIN_KW = dict(variant='chain', resolutions=None, place='C1C2CS', tau=0.5, lambda_=20, p0=0.1, dp=0.001,
                start_iter=0)


def build_D(chain_kwargs=None, **overrides):
    torch.manual_seed(7)
    return networks.Discriminator(**dict(D_KW, **overrides), chain_kwargs=chain_kwargs)


def test_r5_chain_adds_buffers_only_and_leaves_parameters_identical():
    plain, chained = build_D(), build_D(CHAIN_KW)
    plain_params = {n: p for n, p in plain.named_parameters()}
    chained_params = {n: p for n, p in chained.named_parameters()}
    assert list(plain_params) == list(chained_params)
    for name, p in plain_params.items():
        assert torch.equal(p, chained_params[name]), name
    added = set(chained.state_dict()) - set(plain.state_dict())
    assert added and all('.post_conv.' in n or n.startswith('chain_ctx.') for n in added)
    assert set(plain.state_dict()) <= set(chained.state_dict())
    assert {'chain_ctx.p', 'chain_ctx.ema_sign'} <= added


def test_placement_after_conv0_conv1_skip_never_fromrgb_or_epilogue():
    D = build_D(CHAIN_KW)
    chained = sorted(name for name, m in D.named_modules() if isinstance(m, Chain))
    expected = sorted(f'b{res}.{layer}.post_conv' for res in (16, 8) for layer in ('conv0', 'conv1', 'skip'))
    assert chained == expected
    only_c2 = build_D(dict(CHAIN_KW, resolutions=[8], place='C2'))
    assert sorted(n for n, m in only_c2.named_modules() if isinstance(m, Chain)) == ['b8.conv1.post_conv']
    with pytest.raises(ValueError, match='not discriminator blocks'):
        build_D(dict(CHAIN_KW, resolutions=[64]))


def test_chain_d_round_trips_through_a_snapshot_record(tmp_path):
    D = build_D(CHAIN_KW)
    with torch.no_grad():
        D.chain_ctx.set_p(0.4)
        D.b16.conv0.post_conv.running_var_real.fill_(2.5)
    path = str(tmp_path / 'd.pt')
    persistence.save_snapshot({'D': persistence.module_to_record(D)}, path)
    D2 = persistence.module_from_record(persistence.load_snapshot(path)['D'])
    assert D2.chain_ctx.p_value == pytest.approx(0.4)
    assert torch.equal(D2.b16.conv0.post_conv.running_var_real, D.b16.conv0.post_conv.running_var_real)
    img = torch.randn(4, 3, RES, RES)
    D.eval(), D2.eval()
    assert torch.equal(D(img, None), D2(img, None))


class TinyG(torch.nn.Module):
    """Stand-in generator: mapping → ws, synthesis → images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=RES, img_channels=3,
                                    mapping_kwargs=dict(num_layers=1),
                                    synthesis_kwargs=dict(channel_base=64, channel_max=8))
        self.mapping = self.G.mapping
        self.synthesis = self.G.synthesis


@pytest.mark.parametrize('variant', ['chain', 'chain_batch'])
def test_r6_loss_never_feeds_a_mixed_batch_and_labels_every_pass(variant):
    torch.manual_seed(0)
    G = TinyG()
    D = build_D(dict(CHAIN_KW, variant=variant))
    D.chain_ctx.set_p(0.5)
    calls = []
    original_forward = D.forward

    def recording_forward(img, c, **kw):
        calls.append((D.chain_ctx.label, img.shape[0], D.chain_ctx.r1))
        return original_forward(img, c, **kw)

    D.forward = recording_forward
    loss = StyleGAN2Loss(torch.device('cpu'), G, D, r1_gamma=1.0, style_mixing_prob=0)
    loss.d_pass_context = D.chain_ctx
    real = torch.rand(4, 3, RES, RES) * 2 - 1
    z = torch.randn(4, 8)
    c = torch.zeros(4, 0)
    training_stats.reset()
    for phase, module in (('Gmain', G), ('Dmain', D), ('Dreg', D)):
        module.requires_grad_(True)
        loss.accumulate_gradients(phase, real, c, z, c, gain=1)
        module.requires_grad_(False)
    assert calls == [('gfake', 4, False), ('dfake', 4, False), ('dreal', 4, False), ('dreal', 4, True)]
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), 'R1 through CHAIN must be finite (C4)'
    collector = training_stats.Collector('CHAIN/.*')
    collector.update()
    # 0MR joins the Dmain real and fake losses once each (p0 > 0 makes it non-zero); the R1 pass adds none.
    assert collector.num('CHAIN/0MR/real') == 1 and collector.num('CHAIN/0MR/fake') == 1
    assert collector.mean('CHAIN/0MR/real') > 0


def test_fp16_discriminator_with_chain_is_finite():
    D = build_D(CHAIN_KW, num_fp16_res=2, conv_clamp=256)
    D.chain_ctx.set_p(1.0)
    img = torch.randn(4, 3, RES, RES, requires_grad=True)
    with networks.fp16_on_cpu(True), D.chain_ctx.pass_('dreal'):
        logits = D(img, None)
        zmr = D.chain_ctx.zero_mean_loss()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all() and torch.isfinite(zmr)
    grad, = torch.autograd.grad(logits.sum(), img, create_graph=True)
    assert torch.isfinite(grad).all()
