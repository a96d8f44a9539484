"""Flag groups: train.py's click options are generated from the option dataclasses and cannot
drift from them; ranges and defaults are declared once and hold in Python and on the CLI alike."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

import backbones
import train
from dnnlib.util import UserError
from training import config, training_loop
from training.options import OptionGroup, click_options, flag, group_fields


@pytest.fixture(autouse=True)
def _toy_registered():
    backbones.register('toy', 'tests.toy_backbone')


def _params_of(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params}


def test_train_py_options_are_exactly_the_group_fields():
    """Every click option of train.py is a field of one group, with the same default and type."""
    command = click.command()(click_options(config.option_groups())(lambda **kw: None))
    params = _params_of(command)
    fields = {f.name: (group, f) for group in config.option_groups() for f in group_fields(group)}
    assert set(params) == set(fields)
    for name, (group, field) in fields.items():
        param, meta = params[name], field.metadata['click']
        assert param.opts[0] == '--' + name.replace('_', '-')
        assert param.help == meta['help']
        if meta['is_flag']:
            assert param.is_flag
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        assert param.default == (None if meta['required'] else default), name
        if meta['type'] is not None:
            assert type(param.type) is type(click.types.convert_type(meta['type'])), name
    # train.py's own command is built the same way, from the backbones registered when it was imported.
    at_import = [config.CommonOptions, *(backbones.get(name).options for name in backbones.BUILTIN), *config.METHOD_GROUPS]
    assert set(_params_of(train.main)) == {f.name for group in at_import for f in group_fields(group)}


def test_defaults_of_the_cli_equal_the_dataclass_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr(config, 'build_training_args', lambda opts: seen.setdefault('opts', opts) and ('d', {}))
    monkeypatch.setattr(train, 'launch_training', lambda *a: None)
    result = CliRunner().invoke(train.main, ['--outdir=o', '--data=builtin'], standalone_mode=False)
    assert result.exception is None, result.output
    opts = seen['opts']
    for name, group in (('common', config.CommonOptions), ('augment', config.AugmentOptions),
                        ('atopk', config.ATopkOptions), ('chain', config.ChainOptions)):
        built = group(**({'outdir': 'o', 'data': 'builtin'} if name == 'common' else {}))
        assert getattr(opts, name) == built, name
    assert opts.backbone == backbones.get('stylegan2').options()


@pytest.mark.parametrize('flags, message', [
    (dict(atopk_target=1.5), '--atopk-target'),
    (dict(chain_dp=0), '--chain-dp'),
    (dict(gpus=0), '--gpus'),
    (dict(cbase=0), '--cbase'),
    (dict(topk_mode='sometimes'), '--topk-mode'),
])
def test_ranges_hold_for_options_built_in_python_and_on_the_cli(flags, message):
    with pytest.raises(UserError, match=message):
        config.TrainOptions.from_flags(dict(outdir='o', data='builtin', **flags))
    argv = ['--outdir=o', '--data=builtin'] + [f'--{k.replace("_", "-")}={v}' for k, v in flags.items()]
    result = CliRunner().invoke(train.main, argv, standalone_mode=False)
    assert isinstance(result.exception, click.BadParameter) and message in result.exception.format_message()


def test_a_misspelt_option_is_an_error_everywhere():
    with pytest.raises(UserError, match='--atopk-trget'):
        config.TrainOptions.from_flags(dict(outdir='o', data='builtin', atopk_trget=0.5))
    with pytest.raises(TypeError):
        training_loop.training_loop(run_dir='.', atopk_trget=0.5)  # no catch-all **kwargs


def test_flags_of_another_backbone_are_refused():
    with pytest.raises(UserError, match='--toy-width belongs to --backbone=toy'):
        config.TrainOptions.from_flags(dict(outdir='o', data='builtin', toy_width=4))
    with pytest.raises(UserError, match='--gamma belongs to --backbone=stylegan2'):
        config.TrainOptions.from_flags(dict(outdir='o', data='builtin', backbone='toy', gamma=1.0))
    opts = config.TrainOptions.from_flags(dict(outdir='o', data='builtin', backbone='toy', toy_width=4))
    assert opts.backbone.toy_width == 4


def test_a_flag_declared_by_two_groups_is_a_programming_error():
    @dataclasses.dataclass
    class Twice(OptionGroup):
        gamma: float = flag(1.0, 'again')

    with pytest.raises(ValueError, match='--gamma is declared by both'):
        click_options(config.option_groups() + [Twice])


def test_help_lists_one_section_per_group():
    text = CliRunner().invoke(train.main, ['--help']).output
    for group in [config.CommonOptions, backbones.get('stylegan2').options, *config.METHOD_GROUPS]:
        assert f'{group.title}:' in text
    assert '--atopk-target FLOAT' in text and '[default: 0.6; 0<=x<=1]' in text
