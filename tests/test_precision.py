"""``--precision`` (torch_utils/precision.py): how names resolve, the bfloat16 path of the StyleGAN2
networks against float32, the statistics that stay float32, training runs, resume notes, and the
backbones without reduced-precision blocks.

Tolerances of the bfloat16 path (u = 2⁻⁸ ≈ 3.9e-3, the unit roundoff of bfloat16's 8 significant
bits; every rounding to bfloat16 changes a value by at most u relative):

* outputs (G's image, D's logits), normwise relative error ≤ 8u ≈ 0.031. Each layer of a reduced
  block rounds its activations about four times (input cast, convolution, bias, activation·gain;
  the clamp only bounds). Demodulation keeps the activations at unit scale, so the errors neither
  grow nor shrink from layer to layer: they add like a random walk over the ≈ 10 reduced layers
  on the way to the output, u·√(4·10) ≈ 6u, and the float32 parts (b4, the D epilogue, the
  float32 sums of the images of the skip architecture) add none.
* parameter gradients (all of G's, all of D's), normwise ≤ 32u ≈ 0.125, four times the output
  bound: a gradient is a sum over batch and pixels of activation × incoming gradient, both
  carrying the forward error, and the backward pass rounds its gradients through the same layers
  again (2×); and with conv_clamp binding, activations within a few u of the clamp may be clamped
  in one pass and not in the other, their gradient flipping between zero and full (with ≤ 2 % of
  the activations clamped, as much again: 2×).

Measured on these nets: outputs ≈ 2u, gradients ≈ 11–16u.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import backbones
import dnnlib
import patches.atopk
import patches.chain
import patches.overfit
from dnnlib.util import UserError
from tests.test_training_loop import REPO, loop_args, run
from torch_utils import precision
from torch_utils.precision import Capabilities
from training import config, networks, snapshot_io

U = 2.0 ** -8
OUTPUT_TOL = 8 * U
GRAD_TOL = 32 * U
CUDA = torch.cuda.is_available()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------------------------------------
# Resolving --precision.

def expected_dtype(name: str, kind: str, amx: bool, cuda_bf16: bool):
    """The rules of the issue, written out: None = a one-line error."""
    if name == 'fp32':
        return torch.float32
    if name == 'fp16':
        return torch.float16
    if name == 'bf16':
        return None if kind == 'cuda' and not cuda_bf16 else torch.bfloat16
    if kind == 'cuda':
        return torch.float16
    return torch.bfloat16 if amx else torch.float32


@pytest.mark.parametrize('name', precision.NAMES)
@pytest.mark.parametrize('kind', ['cpu', 'cuda'])
@pytest.mark.parametrize('amx', [False, True])
@pytest.mark.parametrize('cuda_bf16', [False, True])
def test_resolve_every_name_device_and_capability(name, kind, amx, cuda_bf16):
    caps = Capabilities(cpu_amx=amx, cuda_bf16=cuda_bf16)
    want = expected_dtype(name, kind, amx, cuda_bf16)
    if want is None:
        with pytest.raises(UserError, match='--precision=bf16') as e:
            precision.resolve(name, kind, caps)
        assert '\n' not in str(e.value)
        return
    dtype, reason = precision.resolve_with_reason(name, torch.device(kind), caps)
    assert dtype == want == precision.resolve(name, kind, caps)
    assert reason and '\n' not in reason
    if name == 'fp16' and kind == 'cpu':
        assert '75x slower' in reason
    if name == 'auto' and kind == 'cpu':
        assert ('with AMX' if amx else 'without AMX') in reason


def test_auto_on_this_cpu_and_the_probe(monkeypatch):
    has_amx = bool(torch.cpu._is_amx_tile_supported())
    assert precision.probe('cpu') == Capabilities(cpu_amx=has_amx, cuda_bf16=False)
    assert precision.resolve('auto', 'cpu') == (torch.bfloat16 if has_amx else torch.float32)
    # The probe is the one replaceable place: resolve() without caps asks it.
    monkeypatch.setattr(precision, 'probe', lambda device: Capabilities(cpu_amx=not has_amx, cuda_bf16=False))
    assert precision.resolve('auto', 'cpu') == (torch.float32 if has_amx else torch.bfloat16)
    # A torch without the AMX probe: no AMX.
    monkeypatch.delattr(torch.cpu, '_is_amx_tile_supported')
    assert precision.cpu_has_amx() is False


def test_bad_names_and_the_fp32_conflict_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r'--precision=half: must be one of fp32, fp16, bf16, auto'):
        precision.resolve('half', 'cpu')
    with pytest.raises(UserError, match='--precision'):
        config.TrainOptions.from_flags(dict(outdir=str(tmp_path), data='builtin:16', precision='half'))

    def args_of(**flags):
        return config.build_training_args(config.TrainOptions.from_flags(dict(
            dict(outdir=str(tmp_path), data='builtin:16', cfg='low_shot', metrics=[]), **flags)))[1]

    for name in ('fp16', 'bf16'):
        with pytest.raises(UserError, match=rf'--fp32=1 .*--precision={name}'):
            args_of(fp32=True, precision=name)
    for name in ('fp32', 'auto'):  # --fp32=1 keeps its meaning: no reduced blocks, no clamp
        args = args_of(fp32=True, precision=name)
        assert args.backbone_kwargs.D_kwargs.num_fp16_res == 0 and args.backbone_kwargs.D_kwargs.conv_clamp is None
        assert args.precision.blocks is None
        assert precision.start_line(args.precision).startswith('precision: float32 everywhere: --fp32=1')
    args = args_of(precision='bf16')
    assert args.precision == dict(flag='bf16', dtype='bfloat16', reason=args.precision.reason, device='cpu',
                                  blocks='the top 2 resolutions of G and D, 8-16 px, conv_clamp 256', float32_why=None)
    json.dumps(dnnlib.util.to_jsonable(args))  # training_options.json keeps it as plain data


def test_train_py_refuses_fp32_with_bf16_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, 'train.py', f'--outdir={tmp_path}', '--data=builtin:16', '--fp32=1',
                           '--precision=bf16', '--metrics=none', '-n'], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and '--fp32=1' in lines[0] and '--precision=bf16' in lines[0], proc.stderr


@pytest.mark.parametrize('resolution, span', [(16, 'the top 2 resolutions of G and D, 8-16 px'),
                                              (32, 'the top 3 resolutions of G and D, 8-32 px'),
                                              (64, 'the top 4 resolutions of G and D, 8-64 px')])
def test_stylegan2_names_exactly_the_blocks_it_builds_reduced(resolution, span):
    """The start line's blocks are the blocks the networks build with use_fp16 (built and counted here)."""
    from backbones.base import ConfigContext
    sg2 = backbones.get('stylegan2')
    ctx = ConfigContext(options=sg2.options(cbase=64, cmax=4, map=1), cfg='auto', gpus=1, resolution=resolution,
                        kimg=None, batch=4, glr=None, dlr=None, chain=None)
    kw = sg2.configure(ctx).kwargs
    use = sg2.precision_use(kw, resolution)
    G = networks.Generator(c_dim=0, img_resolution=resolution, img_channels=3, z_dim=8, w_dim=8,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=kw.G_kwargs.synthesis_kwargs)
    D = networks.Discriminator(c_dim=0, img_resolution=resolution, img_channels=3,
                               **{k: v for k, v in kw.D_kwargs.items() if k != 'class_name'})
    g_res = [r for r in G.synthesis.block_resolutions if getattr(G.synthesis, f'b{r}').use_fp16]
    d_res = [r for r in D.block_resolutions if getattr(D, f'b{r}').use_fp16]
    assert sorted(g_res) == sorted(d_res)
    assert use.blocks == (f'the top {len(g_res)} resolutions of G and D, {min(g_res)}-{max(g_res)} px, '
                          'conv_clamp 256')
    assert use.blocks.startswith(span)
    assert backbones.get('insgen').precision_use(kw, resolution) == use  # InsGen trains StyleGAN2's networks


# ---------------------------------------------------------------------------------------------
# The bfloat16 path of the StyleGAN2 networks.

@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not name.endswith('resample_filter'):
            t.add_(torch.randn(t.shape, generator=g) * scale)


CLAMP = 12.0  # binds on ~0.2 % of these nets' reduced-layer outputs (asserted below)


def tiny_G_and_D(device: torch.device) -> tuple[networks.Generator, networks.Discriminator]:
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=4, conv_clamp=CLAMP))
    D = networks.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=512, channel_max=32,
                               num_fp16_res=4, conv_clamp=CLAMP, mapping_kwargs=dict(num_layers=2))
    perturb(G)
    perturb(D)
    return G.to(device), D.to(device)


def forward_backward(G, D, z, dtype):
    """Image, logits, G's and D's parameter gradients, and per module the dtype of its output and the
    outputs of the clamped layers with gain 1 (G's layers, D's fromrgb/conv0), under ``dtype``."""
    dtypes, clamped = {}, []
    watch = dict(G_b32=G.synthesis.b32.conv1, G_b8=G.synthesis.b8.conv1, G_b4=G.synthesis.b4.conv1,
                 D_b32=D.b32.conv0, D_b8=D.b8.conv0, D_b4=D.b4.conv)
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: dtypes.__setitem__(k, o.dtype)) for k, m in watch.items()]
    gain1 = [m for m in G.modules() if isinstance(m, (networks.SynthesisLayer, networks.ToRGBLayer))]
    gain1 += [getattr(D, f'b{r}').conv0 for r in D.block_resolutions] + [D.b32.fromrgb]
    hooks += [m.register_forward_hook(lambda m, i, o: clamped.append(o.detach().float())) for m in gain1]
    G.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    with precision.reduced_dtype_scope(dtype):
        img = G(z, None, noise_mode='const')
        logits = D(img, None)
        (logits * torch.linspace(-1, 1, z.shape[0], device=z.device).view(-1, 1)).sum().backward()
    for h in hooks:
        h.remove()
    grads = [torch.cat([p.grad.flatten() for p in net.parameters()]) for net in (G, D)]
    return img.detach(), logits.detach(), grads, dtypes, torch.cat([c.flatten() for c in clamped])


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=[
    pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason='needs a CUDA device')])])
def test_bf16_blocks_agree_with_float32_within_bf16_tolerances(device):
    device = torch.device(device)
    if device.type == 'cuda' and not precision.cuda_has_native_bf16(device):
        pytest.skip('this GPU has no native bfloat16')
    G, D = tiny_G_and_D(device)
    G.train()
    D.train()
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(5)).to(device)
    img32, logits32, grads32, dtypes32, acts32 = forward_backward(G, D, z, torch.float32)
    img16, logits16, grads16, dtypes16, acts16 = forward_backward(G, D, z, torch.bfloat16)

    # The setting is really used: the top blocks compute in bfloat16, b4 and the epilogue in float32.
    assert dtypes16 == dict(G_b32=torch.bfloat16, G_b8=torch.bfloat16, G_b4=torch.float32,
                            D_b32=torch.bfloat16, D_b8=torch.bfloat16, D_b4=torch.float32)
    assert set(dtypes32.values()) == {torch.float32}
    assert img16.dtype == logits16.dtype == torch.float32
    # conv_clamp binds in both passes (on a small fraction) and bounds the bfloat16 outputs too.
    for acts in (acts32, acts16):
        fraction = (acts.abs() >= CLAMP * (1 - 2 * U)).double().mean().item()
        assert 0 < fraction < 0.02, fraction
        assert acts.abs().max().item() <= CLAMP * (1 + U)

    for t in (img16, logits16, *grads16):
        assert torch.isfinite(t).all()
    assert 0 < rel(img16, img32) < OUTPUT_TOL
    assert 0 < rel(logits16, logits32) < OUTPUT_TOL
    for g16, g32 in zip(grads16, grads32):
        assert 0 < rel(g16, g32) < GRAD_TOL
    assert all(p.dtype == torch.float32 for p in list(G.parameters()) + list(D.parameters()))

    # G_ema's path (eval mode): bfloat16 blocks take the non-fused convolution, as float16 ones.
    G.eval()
    with torch.no_grad(), precision.reduced_dtype_scope(torch.bfloat16):
        eval16 = G(z, None, noise_mode='const')
    with torch.no_grad():
        eval32 = G(z, None, noise_mode='const', force_fp32=True)
    assert torch.isfinite(eval16).all() and 0 < rel(eval16, eval32) < OUTPUT_TOL


def test_precision_fp32_is_the_cpu_default_bitwise():
    """--precision=fp32 on the CPU (and auto without AMX) computes what degan always computed there."""
    G, D = tiny_G_and_D(torch.device('cpu'))
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    default = forward_backward(G, D, z, None)
    fp32 = forward_backward(G, D, z, torch.float32)
    assert torch.equal(default[0], fp32[0]) and torch.equal(default[1], fp32[1])
    assert all(torch.equal(a, b) for a, b in zip(default[2], fp32[2]))
    assert precision.reduced_dtype() is None  # the scope restored the default


# ---------------------------------------------------------------------------------------------
# Statistics that stay float32.

@pytest.mark.parametrize('variant', ['chain', 'chain_batch'])
def test_chain_statistics_stay_float32_in_bf16_blocks(monkeypatch, variant):
    seen: list[tuple[str, torch.dtype]] = []
    for name in ('channel_mean_square', 'zero_mean_sq_norm'):
        original = getattr(patches.chain, name)
        monkeypatch.setattr(patches.chain, name,
                            lambda y, *a, _f=original, _n=name: (seen.append((_n, y.dtype)), _f(y, *a))[1])
    arms = patches.chain._MaskedCumulativeARMS

    class SpyARMS:
        @staticmethod
        def apply(y, mask, inv_std, s, grad_var, decay):
            out, mean = arms.apply(y, mask, inv_std, s, grad_var, decay)
            seen.extend([('arms y', y.dtype), ('arms inv_std', inv_std.dtype), ('0MR mean', mean.dtype)])
            return out, mean
    monkeypatch.setattr(patches.chain, '_MaskedCumulativeARMS', SpyARMS)

    torch.manual_seed(0)
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                               num_fp16_res=2, conv_clamp=256, mapping_kwargs=dict(num_layers=1),
                               chain_kwargs=dict(variant=variant, p0=0.1))
    D.chain_ctx.set_p(0.5)
    layers = patches.chain.chain_layers(D)
    io_dtypes = []
    for layer in layers:
        layer.register_forward_hook(lambda m, i, o: io_dtypes.append((i[0].dtype, o.dtype)))
    img = torch.randn(4, 3, 16, 16)
    with precision.reduced_dtype_scope(torch.bfloat16):
        for label in ('dreal', 'dfake'):
            with D.chain_ctx.pass_(label):
                logits = D(img, None)
                zmr = D.chain_ctx.zero_mean_loss()
            assert all(t.dtype == torch.float32 for t in D.chain_ctx._terms)
            assert zmr.dtype == torch.float32 and torch.isfinite(zmr) and zmr > 0
            (logits.sum() + zmr).backward()

    # CHAIN sits in bfloat16 blocks (it gets and gives their dtype) but computes its statistics in float32.
    assert io_dtypes and set(io_dtypes) == {(torch.bfloat16, torch.bfloat16)}
    assert seen and {dtype for _, dtype in seen} == {torch.float32}
    if variant == 'chain':
        assert {'arms y', '0MR mean', 'channel_mean_square'} <= {name for name, _ in seen}
    for name, buf in D.named_buffers():
        if 'running_var' in name or 'grad_var' in name:
            assert buf.dtype == torch.float32 and torch.isfinite(buf).all(), name
    if variant == 'chain':
        assert not torch.equal(layers[0].running_var_real, torch.ones_like(layers[0].running_var_real))
        assert layers[0].grad_var_dreal.abs().sum() > 0  # ARMS' custom backward ran (in float32)
    assert D.chain_ctx.p.dtype == torch.float64
    assert all(torch.isfinite(p.grad).all() and p.dtype == torch.float32 for p in D.parameters() if p.grad is not None)


def float_tensors(obj, path=''):
    """(path, tensor) of every floating-point tensor in a nested snapshot structure."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from float_tensors(value, f'{path}.{key}')
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from float_tensors(value, f'{path}[{i}]')


def bf16_args(tmp_path, **flags):
    args = loop_args(dict(dict(outdir=str(tmp_path), data='builtin:16', cfg='low_shot', cbase=256, cmax=16, batch=4,
                               kimg=0.008, metrics=[], workers=1, tick=0.004, snap=100, map=2, precision='bf16',
                               atopk=True, topk_mode='fixed', topk_k=2, chain=True, chain_start=0, chain_dp=0.05),
                          **flags))
    args.backbone_kwargs.G_kwargs.z_dim = args.backbone_kwargs.G_kwargs.w_dim = 32
    args.grid_size = [1, 1]
    return args


def test_bf16_training_run_resume_and_float32_statistics(tmp_path, monkeypatch, capsys):
    seen: dict[str, list] = dict(blocks=[], scores=[], signs=[])
    block_dtype = networks.block_dtype
    monkeypatch.setattr(networks, 'block_dtype', lambda *a: (seen['blocks'].append(block_dtype(*a)), seen['blocks'][-1])[1])
    scores = patches.atopk.per_sample_scores
    monkeypatch.setattr(patches.atopk, 'per_sample_scores',
                        lambda s: (seen['scores'].append((s.dtype, scores(s).dtype)), scores(s))[1])
    signs = patches.overfit.sign_moments
    spy_signs = lambda logits: (seen['signs'].append((logits.dtype, signs(logits).dtype)), signs(logits))[1]  # noqa: E731
    monkeypatch.setattr(patches.overfit, 'sign_moments', spy_signs)
    monkeypatch.setattr(patches.chain, 'sign_moments', spy_signs)

    args = bf16_args(tmp_path)
    first_dir = tmp_path / 'first'
    os.makedirs(first_dir)
    dnnlib.util.atomic_write_json(str(first_dir / 'training_options.json'), dnnlib.util.to_jsonable(args))  # as train.py
    result = run(args, first_dir)  # a NaN/inf loss would stop it (misc.NonFiniteError)
    assert result['stop_reason'] == 'done' and result['cur_nimg'] == 8
    assert precision.reduced_dtype() is None, 'the run applies its precision for its own duration only'
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith('precision:')]
    assert lines == ['precision: bfloat16 in the top 2 resolutions of G and D, 8-16 px, conv_clamp 256 '
                     f'({args.precision.reason})']

    assert {torch.bfloat16, torch.float32} <= set(seen['blocks'])  # reduced blocks in bf16, the rest float32
    assert seen['scores'] and set(seen['scores']) == {(torch.float32, torch.float32)}  # ATop-k: D logits, float32
    assert seen['signs'] and set(seen['signs']) == {(torch.float32, torch.float64)}    # overfitting statistics
    stats = [json.loads(line) for line in open(first_dir / 'stats.jsonl')]
    assert all(v['mean'] == v['mean'] for s in stats for k, v in s.items() if isinstance(v, dict) and 'mean' in v)

    # Snapshots stay float32 (CHAIN's p and sign EMA are float64 by design, patches/chain.py).
    data = snapshot_io.read(result['last_snapshot'])
    tensors = list(float_tensors(data['modules'])) + list(float_tensors(data['training_state']))
    assert tensors
    for path, t in tensors:
        assert t.dtype == (torch.float64 if path.endswith(('chain_ctx.p', 'chain_ctx.ema_sign')) else torch.float32), path

    # Resumed with another precision: continues, and the log says it is not bitwise.
    resumed_args = bf16_args(tmp_path, kimg=0.016, precision='fp32', resume=result['last_snapshot'])
    assert resumed_args.precision.resumed_from == 'bfloat16'
    resumed = run(resumed_args, tmp_path / 'resumed')
    assert resumed['cur_nimg'] == 16
    out = capsys.readouterr().out
    assert 'resuming a bfloat16 run with --precision=fp32 (float32): continues, not bitwise' in out
    assert out.count('precision: float32 in the top 2 resolutions of G and D') == 1
    same = bf16_args(tmp_path, kimg=0.016, resume=result['last_snapshot'])  # the same precision: no note
    assert 'resumed_from' not in same.precision or precision.resume_note(same.precision.resumed_from,
                                                                         same.precision) is None


# ---------------------------------------------------------------------------------------------
# Backbones without reduced-precision blocks say so once.

def test_backbone_without_reduced_blocks_prints_its_line_once(tmp_path, capsys):
    backbones.register('toy', 'tests.toy_backbone')
    args = loop_args(dict(outdir=str(tmp_path), data='builtin:16', backbone='toy', batch=4, kimg=0.004, metrics=[],
                          workers=1, tick=0.004, snap=100, precision='bf16'))
    args.grid_size = [1, 1]
    run(args, tmp_path / 'toy')
    lines = [line for line in capsys.readouterr().out.splitlines() if 'precision' in line.lower()
             and not line.lstrip().startswith('"')]
    assert lines == ['precision: float32 everywhere: --backbone=toy has no reduced-precision blocks; '
                     '--precision=bf16 (bfloat16) does not apply to it']

    for name, why in (('fastgan', "FastGAN's reference"), ('projected', "Projected GAN's reference")):
        use = backbones.get(name).precision_use({}, 256)
        assert use.blocks is None and why in use.why
        line = precision.start_line(precision.plan('bf16', 'cpu', use.blocks, use.why))
        assert line.startswith(f'precision: float32 everywhere: --backbone={name} computes in float32')
        assert line.endswith('--precision=bf16 (bfloat16) does not apply to it')
        fp32_line = precision.start_line(precision.plan('fp32', 'cpu', use.blocks, use.why))
        assert 'does not apply' not in fp32_line  # nothing to say beyond "float32" when float32 is asked
