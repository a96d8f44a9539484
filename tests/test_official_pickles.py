"""Official network pickles read safely: the allow-list unpickler, PyTorch and TensorFlow-era
layouts, hostile and broken files, and every entry point (legacy.py, generate.py,
calc_metrics.py, train.py --resume with --freezed). Pickles are written by
``tests/official_pickles.py`` in the official layout."""

from __future__ import annotations

import copy
import json
import os
import pickle

import numpy as np
import PIL.Image
import pytest
import torch

import calc_metrics
import generate
import legacy
from backbones.stylegan2 import official
from dnnlib import util
from tests import official_pickles as op
from tests.test_calc_metrics import _NvidiaStub, _one_thread, _script, _write_images  # noqa: F401 (autouse)
from tests.test_generate import expected_image
from tests.test_training_loop import run, tiny_args
from torch_utils import persistence, safe_pickle
from training import augment, networks, snapshot_io

RES = 16
G_KWARGS = dict(z_dim=8, w_dim=8, img_resolution=RES, img_channels=3, mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=128, channel_max=16))
D_KWARGS = dict(img_resolution=RES, img_channels=3, channel_base=128, channel_max=16)


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter and the learnt buffers away from their init, so that a tensor loaded
    into the wrong place shows. Values are multiples of 2^-12, so TensorFlow's modulation bias
    (stored minus 1) survives the round trip exactly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2).mul_(4096).round_().div_(4096)
        for name, b in module.named_buffers():
            if name.endswith(('noise_const', 'w_avg')):
                b.copy_(torch.randn(b.shape, generator=gen))
    return module.eval().requires_grad_(False)


def make_networks(c_dim: int = 0, G_kwargs: dict = G_KWARGS, D_kwargs: dict = D_KWARGS) -> util.EasyDict:
    torch.manual_seed(0)
    G = _perturb(networks.Generator(c_dim=c_dim, **G_kwargs), 1)
    G_ema = _perturb(copy.deepcopy(G), 2)
    D = _perturb(networks.Discriminator(c_dim=c_dim, **D_kwargs), 3)
    pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1,
                               contrast=1, lumaflip=1, hue=1, saturation=1).eval()
    pipe.p.fill_(0.25)
    return util.EasyDict(G=G, G_ema=G_ema, D=D, augment_pipe=pipe)


def write_pickle(path, nets: util.EasyDict, protocol: int = 4, **kwargs) -> str:
    tsk = kwargs.pop('training_set_kwargs', dict(class_name='training.dataset.ImageFolderDataset', path='x.zip',
                                                 use_labels=False, max_size=100, xflip=False, resolution=RES))
    return op.write_pytorch_pickle(str(path), nets.G, nets.D, nets.G_ema, nets.augment_pipe, tsk, protocol)


def _inputs(nets: util.EasyDict, n: int = 4):
    gen = torch.Generator().manual_seed(7)
    z = torch.randn([n, nets.G.z_dim], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % max(nets.G.c_dim, 1), max(nets.G.c_dim, 1)).float()
    c = c[:, :nets.G.c_dim]
    img = torch.randn([n, 3, RES, RES], generator=gen)
    return z, c, img


def assert_same_outputs(loaded: dict, nets: util.EasyDict) -> None:
    z, c, img = _inputs(nets)
    for key in ('G', 'G_ema'):
        for psi in (1.0, 0.6):
            want = nets[key](z, c, truncation_psi=psi, noise_mode='const')
            assert torch.equal(loaded[key](z, c, truncation_psi=psi, noise_mode='const'), want), key
    assert torch.equal(loaded['D'](img, c), nets.D(img, c))


# ---------------------------------------------------------------------------------------------
# The PyTorch layout.

@pytest.mark.parametrize('c_dim, protocol', [(0, 4), (3, 2)])
def test_pytorch_pickle_gives_the_same_images_and_logits(tmp_path, c_dim, protocol):
    nets = make_networks(c_dim)
    path = write_pickle(tmp_path / 'net.pkl', nets, protocol)
    loaded = legacy.load_network_pkl(path)
    assert isinstance(loaded['G_ema'], networks.Generator) and isinstance(loaded['D'], networks.Discriminator)
    assert_same_outputs(loaded, nets)
    assert float(loaded['augment_pipe'].p) == 0.25
    assert loaded['augment_pipe'].init_kwargs == nets.augment_pipe.init_kwargs
    assert 'class_name' not in loaded['training_set_kwargs'], 'a class name from a file is never kept'
    with open(path, 'rb') as f:  # an open file, as upstream's load_network_pkl(f)
        assert torch.equal(legacy.load_network_pkl(f)['G'].mapping.fc0.weight, nets.G.mapping.fc0.weight)


def test_the_reader_answers_only_the_allow_list(tmp_path):
    path = write_pickle(tmp_path / 'net.pkl', make_networks())
    asked = []

    class Spy(safe_pickle.RestrictedUnpickler):
        def find_class(self, module, name):
            asked.append(f'{module}.{name}')
            return super().find_class(module, name)

    with open(path, 'rb') as f:
        data = Spy(f).load()
    assert set(asked) <= set(safe_pickle.allowed_globals())
    assert 'torch_utils.persistence._reconstruct_persistent_obj' in asked
    assert isinstance(data['G'], safe_pickle.PersistentObject) and data['G'].class_name == 'Generator'
    assert data['G'].module_src_sha1, 'the embedded source is identified, not run'


def test_force_fp16_changes_the_config_not_the_weights(tmp_path):
    nets = make_networks()
    loaded = legacy.load_network_pkl(write_pickle(tmp_path / 'net.pkl', nets), force_fp16=True)
    assert loaded['G'].init_kwargs['synthesis_kwargs']['num_fp16_res'] == 4
    assert loaded['D'].init_kwargs['conv_clamp'] == 256
    assert torch.equal(loaded['D'].b16.conv0.weight, nets.D.b16.conv0.weight)


# ---------------------------------------------------------------------------------------------
# The TensorFlow-era layout.

@pytest.mark.parametrize('numpy_1_names', [True, False])
def test_tf_pickle_converts_by_name(tmp_path, numpy_1_names):
    nets = make_networks()
    tf_D = op.tf_discriminator(nets.D, channel_base=128, channel_max=16, mbstd_group_size=4)
    path = op.write_tf_pickle(str(tmp_path / 'tf.pkl'), op.tf_generator(nets.G, 'G'), tf_D,
                              op.tf_generator(nets.G_ema, 'Gs'), numpy_1_names=numpy_1_names)
    loaded = legacy.load_network_pkl(path)
    assert_same_outputs(loaded, nets)
    assert loaded['augment_pipe'] is None and loaded['training_set_kwargs'] is None
    assert loaded['G'].init_kwargs['synthesis_kwargs']['channel_base'] == 128, 'fmap_base × 2'


@pytest.mark.parametrize('lod_names', [False, True])
def test_tf_orig_architecture(tmp_path, lod_names):
    """StyleGAN2's 'orig' networks say so in their kwargs; a D may instead name its input layer by
    level of detail (FromRGB_lod0)."""
    G_kwargs = dict(G_KWARGS, synthesis_kwargs=dict(G_KWARGS['synthesis_kwargs'], architecture='orig'))
    nets = make_networks(0, G_kwargs, dict(D_KWARGS, architecture='orig'))
    G, D = op.tf_generator(nets.G), op.tf_discriminator(nets.D, 128, 16, 4, lod_names=lod_names)
    assert ('architecture' in D.state['static_kwargs']) != lod_names
    loaded = legacy.load_network_pkl(op.write_tf_pickle(str(tmp_path / 'tf.pkl'), G, D, G))
    assert loaded['G'].init_kwargs['synthesis_kwargs']['architecture'] == 'orig'
    assert loaded['D'].init_kwargs['architecture'] == 'orig'
    z, c, img = _inputs(nets)
    assert torch.equal(loaded['G'](z, c, noise_mode='const'), nets.G(z, c, noise_mode='const'))
    assert torch.equal(loaded['D'](img, c), nets.D(img, c))


def test_tf_conditional_generator(tmp_path):
    nets = make_networks(c_dim=3)
    record = official_tf_record(op.tf_generator(nets.G_ema), tmp_path)
    G = persistence.module_from_record(record).eval()
    z, c, _ = _inputs(nets)
    assert torch.equal(G(z, c, noise_mode='const'), nets.G_ema(z, c, noise_mode='const'))


def official_tf_record(stand_in: op.TFNetworkStandIn, tmp_path) -> dict:
    from backbones.stylegan2 import official_tf
    path = op.dump(stand_in, str(tmp_path / 'one.pkl'), protocol=3)
    return official_tf.generator_record(path, safe_pickle.load_path(path))


def test_tf_variable_of_the_wrong_rank_is_one_line(tmp_path):
    nets = make_networks()
    G = op.tf_generator(nets.G)
    variables = G.state['components']['synthesis'].state['variables']
    G.state['components']['synthesis'].state['variables'] = [
        (n, v.reshape(-1) if n == '8x8/Conv0_up/weight' else v) for n, v in variables]
    path = op.write_tf_pickle(str(tmp_path / 'tf.pkl'), G, op.tf_discriminator(nets.D, 128, 16, 4), G)
    with pytest.raises(util.UserError, match='synthesis.b8.conv0.weight is malformed'):
        official.read_pickle(path)


def test_tf_unknown_build_option_is_named(tmp_path):
    nets = make_networks()
    G = op.tf_generator(nets.G, extra_kwargs=dict(fancy_new_layer=True))
    path = op.write_tf_pickle(str(tmp_path / 'tf.pkl'), G, op.tf_discriminator(nets.D, 128, 16, 4), G)
    with pytest.raises(util.UserError, match='fancy_new_layer'):
        official.read_pickle(path)


# ---------------------------------------------------------------------------------------------
# Hostile and broken files: refused in one line, nothing run, nothing written.

@pytest.mark.parametrize('how, nested, offending', [('system', False, 'system'), ('exec', True, 'builtins.exec')])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys, how, nested, offending):
    marker = tmp_path / 'pwned'
    path = op.write_malicious_pickle(str(tmp_path / 'evil.pkl'), str(marker), how=how, nested=nested)
    for argv, main in ((['--source', path, '--dest', str(tmp_path / 'out.pt')], legacy.main),
                       (['--network', path, '--seeds', '0', '--outdir', str(tmp_path / 'img')], generate.main)):
        with pytest.raises(SystemExit) as info:
            util.run_cli(main, argv)
        assert info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('error: ') and '\n' not in err and offending in err and 'allow-list' in err
    assert not marker.exists(), 'the payload ran'
    assert not (tmp_path / 'out.pt').exists() and not (tmp_path / 'img').exists()
    with open(path, 'rb') as f:  # the file really is hostile: plain pickle (with upstream's persistence) runs it
        _PlainWithPersistence(f).load()
    assert marker.exists()


class _PlainWithPersistence(pickle.Unpickler):
    """``pickle.load`` as upstream runs it, with a harmless stand-in for its persistence hook."""

    def find_class(self, module, name):
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            return lambda meta: meta
        return super().find_class(module, name)


def test_train_refuses_a_hostile_resume_before_creating_the_run(tmp_path, capsys):
    import train
    marker = tmp_path / 'pwned'
    path = op.write_malicious_pickle(str(tmp_path / 'evil.pkl'), str(marker), how='exec', nested=True)
    with pytest.raises(SystemExit) as info:
        util.run_cli(train.main, [f'--outdir={tmp_path / "runs"}', '--data=builtin:16', f'--resume={path}'])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and 'builtins.exec' in err
    assert not marker.exists() and not (tmp_path / 'runs').exists()


class SynthesisInput(torch.nn.Module):  # a StyleGAN3 class name inside a StyleGAN2 generator
    init_kwargs: dict = {}


def _broken(kind: str, tmp_path) -> str:
    nets = make_networks()
    path = str(tmp_path / f'{kind}.pkl')
    if kind == 'truncated':
        good = open(write_pickle(tmp_path / 'good.pkl', nets), 'rb').read()
        open(path, 'wb').write(good[:len(good) // 2])
    elif kind == 'other':
        pickle.dump([1, 2, 3], open(path, 'wb'))
    elif kind == 'zip':
        torch.save({'G': 1}, path)
    elif kind == 'stylegan3':
        nets.G.synthesis.add_module('input', SynthesisInput())
        write_pickle(path, nets)
    elif kind == 'shape':
        nets.G.init_kwargs = copy.deepcopy(nets.G.init_kwargs)
        nets.G.init_kwargs['synthesis_kwargs']['channel_max'] = 32
        write_pickle(path, nets)
    elif kind == 'unexpected':
        nets.D.register_buffer('extra', torch.zeros(2))
        write_pickle(path, nets)
    elif kind == 'argument':
        nets.D.init_kwargs = dict(nets.D.init_kwargs, use_stylegan4=True)
        write_pickle(path, nets)
    return path


@pytest.mark.parametrize('kind, message', [
    ('truncated', 'truncated'),
    ('other', 'not a StyleGAN2(-ADA) network pickle (a list'),
    ('zip', 'not a readable pickle'),
    ('stylegan3', 'SynthesisInput (G.synthesis.input)'),
    ('shape', 'size mismatch'),
    ('unexpected', 'unexpected extra'),
    ('argument', 'use_stylegan4'),
])
def test_bad_files_are_one_line_errors(tmp_path, capsys, kind, message):
    path = _broken(kind, tmp_path)
    dest = tmp_path / 'out.pt'
    with pytest.raises(SystemExit) as info:
        util.run_cli(legacy.main, ['--source', path, '--dest', str(dest)])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and message in err, err
    assert not dest.exists() and not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_converter_refuses_a_pkl_destination(tmp_path):
    path = write_pickle(tmp_path / 'net.pkl', make_networks())
    with pytest.raises(util.UserError, match=r'\.pt'):
        legacy.convert(path, str(tmp_path / 'out.pkl'))


# ---------------------------------------------------------------------------------------------
# Entry points.

def test_converter_generate_and_metrics_agree_on_pkl_and_pt(tmp_path, monkeypatch, capsys):
    nets = make_networks()
    pkl = write_pickle(tmp_path / 'net.pkl', nets)
    pt = str(tmp_path / 'net.pt')
    util.run_cli(legacy.main, ['--source', pkl, '--dest', pt])
    data = torch.load(pt, weights_only=True)  # a plain degan snapshot
    assert data['source'] == snapshot_io.OFFICIAL_SOURCE and data.get('training_state') is None
    assert float(data['modules']['augment_pipe']['state_dict']['p']) == 0.25

    for network in (pkl, pt):
        out = tmp_path / f'images-{os.path.basename(network)}'
        util.run_cli(generate.main, ['--network', network, '--seeds', '0-2', '--outdir', str(out)])
        for seed in range(3):
            img = np.asarray(PIL.Image.open(out / f'seed{seed:04d}.png'))
            assert np.array_equal(img, expected_image(nets.G_ema, seed))

    monkeypatch.setenv('DEGAN_CACHE_DIR', str(tmp_path / 'cache'))
    reals = _write_images(tmp_path / 'reals', 12, RES, seed=0)
    detector = _script(_NvidiaStub(), tmp_path / 'nv.pt')
    capsys.readouterr()
    values = []
    for network in (pkl, pt):
        util.run_cli(calc_metrics.main, ['--metrics=fid5k_full', f'--network={network}', f'--data={reals}',
                                         f'--detector={detector}', '--verbose=0'])
        values.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])['results']['fid5k_full'])
    assert np.isfinite(values[0]) and values[0] == values[1]


def _transfer_source(tmp_path) -> tuple[util.EasyDict, str]:
    """Official-format networks of the tiny training configuration, and their pickle."""
    base = tiny_args(tmp_path)
    G_kwargs = {k: v for k, v in base.backbone_kwargs.G_kwargs.items() if k != 'class_name'}
    D_kwargs = {k: v for k, v in base.backbone_kwargs.D_kwargs.items() if k != 'class_name'}
    nets = make_networks(0, dict(G_kwargs, img_resolution=RES, img_channels=3),
                         dict(D_kwargs, img_resolution=RES, img_channels=3))
    return nets, write_pickle(tmp_path / 'source.pkl', nets)


def test_resume_from_a_pickle_is_a_transfer_with_freezed(tmp_path, capsys):
    nets, pkl = _transfer_source(tmp_path)

    args = tiny_args(tmp_path, resume=pkl, freezed=1)
    assert args.ada_kimg == 100 and args.backbone_kwargs.ema_kwargs.ema_rampup is None, "upstream's resume"
    result = run(args, tmp_path / 'run')
    out = capsys.readouterr().out
    assert 'Transfer' in out and 'augment_pipe' in out
    final = snapshot_io.read(result['last_snapshot'])
    assert final['training_state']['cur_nimg'] == result['cur_nimg'] <= 1000 * args.total_kimg + args.batch_size
    D = final['modules']['D']['state_dict']
    assert torch.equal(D['b16.fromrgb.weight'], nets.D.b16.fromrgb.weight), '--freezed=1 keeps the first layer'
    assert not torch.equal(D['b16.conv0.weight'], nets.D.b16.conv0.weight), 'the other layers train'
    start = final['modules']['G']['state_dict']['synthesis.b4.const']
    assert (start - nets.G.synthesis.b4.const).abs().max() < 0.05, 'G starts from the pickle'
    assert float(final['modules']['augment_pipe']['state_dict']['p']) < 0.25, "ADA's p starts fresh"


def test_transfer_into_a_chain_run_keeps_chain_buffers_fresh(tmp_path, capsys):
    """An official D has no CHAIN statistics: they keep their initial values and are listed."""
    nets, pkl = _transfer_source(tmp_path)
    result = run(tiny_args(tmp_path, resume=pkl, chain=True, chain_start=0, kimg=0.008), tmp_path / 'run')
    notes = [line for line in capsys.readouterr().out.splitlines() if 'keep their initial values' in line]
    assert len(notes) == 1 and '"D"' in notes[0] and 'post_conv' in notes[0] and 'more' in notes[0]
    D = snapshot_io.read(result['last_snapshot'])['modules']['D']['state_dict']
    assert any(name.startswith('b16.conv0.post_conv') for name in D), 'CHAIN acts in the transferred D'
