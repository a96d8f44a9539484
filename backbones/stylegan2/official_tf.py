"""TensorFlow-era StyleGAN2 pickles (G, D, Gs) → degan records, by variable name.

The TensorFlow releases (NVIDIA's StyleGAN2, the DiffAugment low-shot models, StyleGAN2-ADA's
TensorFlow code) pickle each network as a ``dnnlib.tflib.network.Network`` state: its build
kwargs (``static_kwargs``), components (``mapping``, ``synthesis``) and variables as numpy
arrays, plus the build module's source — which ``torch_utils/safe_pickle.py`` keeps as text and
never runs. Upstream's ``legacy.py`` converts these to its PyTorch networks; this module does
the same conversion for degan's (which have the same names), from these facts
(docs/stylegan2-ada.md §16.2):

* kwargs: ``latent_size``→z_dim, ``label_size``→c_dim, ``dlatent_size``→w_dim,
  ``resolution``, ``num_channels``, ``mapping_*``, ``fmap_base``→channel_base **×2**
  (TensorFlow counts channels per stage, PyTorch per resolution), ``fmap_max``; anything
  unknown is an error.
* layouts: dense weights are [in, out] (transposed), conv weights [kh, kw, in, out] (→ [out,
  in, kh, kw]); the generator's up-sampling convolutions (``Conv0_up``, ``Skip``) are stored
  for a transposed convolution and are flipped spatially; modulation biases are stored minus 1;
  ``const`` and the noise inputs carry a leading batch axis; ``dlatent_avg`` is ``w_avg``.
* the noise inputs are numbered over the generator's layers: ``noise0`` is b4's conv1,
  then two per block (conv0, conv1).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from dnnlib import util
from dnnlib.util import UserError
from torch_utils import persistence, safe_pickle

MIN_VERSION = 4
G_IGNORED = frozenset({'truncation_psi', 'truncation_cutoff', 'style_mixing_prob', 'structure', 'is_template_graph',
                       'components', 'mapping_func', 'synthesis_func'})
D_IGNORED = frozenset({'structure'})


class _Kwargs:
    """Reads a network's TensorFlow kwargs and remembers which it used (the rest are an error)."""

    def __init__(self, net: safe_pickle.TFNetwork, ignored: frozenset[str]):
        self.values, self.used = net.static_kwargs, set(ignored)

    def __call__(self, name: str, default: Any = None, none: Any = None) -> Any:
        self.used.add(name)
        value = self.values.get(name, default)
        return none if value is None else value

    def unknown(self) -> list[str]:
        return sorted(set(self.values) - self.used)


def convert(path: str, tf_G: safe_pickle.TFNetwork, tf_D: safe_pickle.TFNetwork,
            tf_Gs: safe_pickle.TFNetwork) -> dict[str, Optional[dict]]:
    """Records for G, D and G_ema (Gs); the TensorFlow pickles hold no augmentation pipe."""
    return dict(G=generator_record(path, tf_G), D=discriminator_record(path, tf_D),
                G_ema=generator_record(path, tf_Gs), augment_pipe=None)


def _check_version(path: str, net: safe_pickle.TFNetwork) -> None:
    if net.version < MIN_VERSION:
        raise UserError(f'{path}: TensorFlow network "{net.name}" has pickle version {net.version}; '
                        f'only version {MIN_VERSION} and later (StyleGAN2) are read')


def _check_unknown(path: str, net: safe_pickle.TFNetwork, kwargs: _Kwargs) -> None:
    unknown = kwargs.unknown()
    if unknown:
        raise UserError(f'{path}: TensorFlow network "{net.name}" uses build options degan cannot convert: '
                        f'{", ".join(unknown)} (only StyleGAN2 config F-style networks are read)')


# ---------------------------------------------------------------------------------------------
# Generator.

def generator_kwargs(path: str, net: safe_pickle.TFNetwork) -> dict[str, Any]:
    """degan ``Generator`` kwargs from a TensorFlow ``G_main``'s static kwargs."""
    k = _Kwargs(net, G_IGNORED)
    kwargs = dict(
        z_dim=k('latent_size', 512), c_dim=k('label_size', 0), w_dim=k('dlatent_size', 512),
        img_resolution=k('resolution', 1024), img_channels=k('num_channels', 3),
        mapping_kwargs=dict(num_layers=k('mapping_layers', 8), embed_features=k('label_fmaps'),
                            layer_features=k('mapping_fmaps'), activation=k('mapping_nonlinearity', 'lrelu'),
                            lr_multiplier=k('mapping_lrmul', 0.01), w_avg_beta=k('w_avg_beta', 0.995, none=1)),
        synthesis_kwargs=dict(channel_base=k('fmap_base', 16384) * 2, channel_max=k('fmap_max', 512),
                              num_fp16_res=k('num_fp16_res', 0), conv_clamp=k('conv_clamp'),
                              architecture=k('architecture', 'skip'), resample_filter=k('resample_kernel', [1, 3, 3, 1]),
                              use_noise=k('use_noise', True), activation=k('nonlinearity', 'lrelu')),
    )
    _check_unknown(path, net, k)
    return kwargs


def _dense(value: np.ndarray) -> np.ndarray:
    return value.transpose()


def _conv(value: np.ndarray, flip: bool = False) -> np.ndarray:
    if flip:
        value = value[::-1, ::-1]
    return value.transpose(3, 2, 0, 1)


def _noise_index(resolution: int, layer: str) -> int:
    if resolution == 4:
        return 0
    return 2 * int(math.log2(resolution)) - (5 if layer == 'conv0' else 4)


def _generator_layer_value(tf: dict[str, np.ndarray], resolution: int, layer: str, leaf: str) -> np.ndarray:
    """One tensor of ``synthesis.b<res>.<layer>`` (conv0, conv1, torgb, skip)."""
    scope = f'synthesis/{resolution}x{resolution}/' + {
        'conv0': 'Conv0_up', 'conv1': 'Conv' if resolution == 4 else 'Conv1', 'torgb': 'ToRGB', 'skip': 'Skip'}[layer]
    flip = layer in ('conv0', 'skip')
    if leaf == 'weight':
        return _conv(tf[f'{scope}/weight'], flip=flip)
    if leaf == 'bias':
        return tf[f'{scope}/bias']
    if leaf == 'noise_strength':
        return tf[f'{scope}/noise_strength']
    if leaf == 'noise_const':
        return tf[f'synthesis/noise{_noise_index(resolution, layer)}'][0, 0]
    if leaf == 'affine.weight':
        return _dense(tf[f'{scope}/mod_weight'])
    if leaf == 'affine.bias':
        return tf[f'{scope}/mod_bias'] + 1
    raise KeyError(leaf)


def generator_value(tf: dict[str, np.ndarray], name: str) -> Optional[np.ndarray]:
    """The value of degan's G tensor ``name`` from TensorFlow variables (None: keep degan's own —
    the fixed resampling filters)."""
    if name.endswith('resample_filter'):
        return None
    if name == 'mapping.w_avg':
        return tf['dlatent_avg']
    part = name.split('.')
    if part[0] == 'mapping':
        scope = 'LabelEmbed' if part[1] == 'embed' else f'Dense{part[1][2:]}'
        value = tf[f'mapping/{scope}/{part[2]}']
        return _dense(value) if part[2] == 'weight' else value
    if part[0] == 'synthesis' and part[2] == 'const':
        return tf['synthesis/4x4/Const/const'][0]
    if part[0] == 'synthesis':
        return _generator_layer_value(tf, int(part[1][1:]), part[2], '.'.join(part[3:]))
    raise KeyError(name)


def generator_record(path: str, net: safe_pickle.TFNetwork) -> dict[str, Any]:
    _check_version(path, net)
    tf = net.variables()
    kwargs = generator_kwargs(path, net)
    return _record(path, net, 'training.networks.Generator', kwargs, tf, generator_value)


# ---------------------------------------------------------------------------------------------
# Discriminator.

def discriminator_kwargs(path: str, net: safe_pickle.TFNetwork, variables: dict[str, np.ndarray]) -> dict[str, Any]:
    """degan ``Discriminator`` kwargs from a TensorFlow ``D_stylegan2``'s static kwargs."""
    k = _Kwargs(net, D_IGNORED)
    nonlinearity = k('nonlinearity', 'lrelu')
    mapping_fmaps = k('mapping_fmaps')
    kwargs = dict(
        c_dim=k('label_size', 0), img_resolution=k('resolution', 1024), img_channels=k('num_channels', 3),
        architecture=k('architecture', 'resnet'), channel_base=k('fmap_base', 16384) * 2,
        channel_max=k('fmap_max', 512), num_fp16_res=k('num_fp16_res', 0), conv_clamp=k('conv_clamp'),
        cmap_dim=mapping_fmaps,
        block_kwargs=dict(activation=nonlinearity, resample_filter=k('resample_kernel', [1, 3, 3, 1]),
                          freeze_layers=k('freeze_layers', 0)),
        mapping_kwargs=dict(num_layers=k('mapping_layers', 0), embed_features=mapping_fmaps,
                            layer_features=mapping_fmaps, activation=nonlinearity,
                            lr_multiplier=k('mapping_lrmul', 0.1)),
        epilogue_kwargs=dict(mbstd_group_size=k('mbstd_group_size'), mbstd_num_channels=k('mbstd_num_features', 1),
                             activation=nonlinearity),
    )
    _check_unknown(path, net, k)
    if any(name.startswith('FromRGB_lod') for name in variables):
        kwargs['architecture'] = 'orig'
    return kwargs


D_EPILOGUE = {'b4.conv': '4x4/Conv', 'b4.fc': '4x4/Dense0', 'b4.out': 'Output', 'mapping.embed': 'LabelEmbed'}


def discriminator_value(tf: dict[str, np.ndarray], name: str) -> Optional[np.ndarray]:
    """The value of degan's D tensor ``name`` from TensorFlow variables."""
    if name.endswith('resample_filter'):
        return None
    layer, leaf = name.rsplit('.', 1)
    part = layer.split('.')
    if layer in D_EPILOGUE:
        scope, is_conv = D_EPILOGUE[layer], layer == 'b4.conv'
    elif part[0] == 'mapping':
        scope, is_conv = f'Mapping{part[1][2:]}', False
    else:
        res = int(part[0][1:])
        scope = f'{res}x{res}/' + {'fromrgb': 'FromRGB', 'conv0': 'Conv0', 'conv1': 'Conv1_down', 'skip': 'Skip'}[part[1]]
        is_conv = True
    value = tf[f'{scope}/{leaf}']
    if leaf == 'weight':
        return _conv(value) if is_conv else _dense(value)
    return value


def discriminator_record(path: str, net: safe_pickle.TFNetwork) -> dict[str, Any]:
    _check_version(path, net)
    tf = _with_lod_aliases(net.variables(), net.static_kwargs.get('resolution', 1024))
    kwargs = discriminator_kwargs(path, net, tf)
    return _record(path, net, 'training.networks.Discriminator', kwargs, tf, discriminator_value)


# ---------------------------------------------------------------------------------------------
# Shared.

def _with_lod_aliases(tf: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Discriminators that name their RGB input by level of detail (``FromRGB_lod0``, the
    progressive-growing naming) are 'orig' networks; give those variables their per-resolution
    names as well (``{R}x{R}/FromRGB``). StyleGAN2's own 'orig' networks say so in their
    ``architecture`` kwarg and use per-resolution names."""
    out = dict(tf)
    for name, value in tf.items():
        if name.startswith('FromRGB_lod'):
            lod, rest = name[len('FromRGB_lod'):].split('/', 1)
            res = int(resolution) // 2 ** int(lod)
            out[f'{res}x{res}/FromRGB/{rest}'] = value
    return out


def _record(path: str, net: safe_pickle.TFNetwork, class_name: str, kwargs: dict[str, Any],
            tf: dict[str, np.ndarray], value_of: Callable[[dict, str], Optional[np.ndarray]]) -> dict[str, Any]:
    """Build degan's network, fill every tensor from the variables (shapes checked), return its record."""
    cls = persistence.lookup_class(class_name)
    try:
        with torch.random.fork_rng(devices=[]):  # reading a file must not move the caller's random draws
            module = cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f'{path}: TensorFlow network "{net.name}" cannot be built as degan\'s {cls.__name__} '
                        f'({type(e).__name__}: {e})') from None
    state = module.state_dict()
    for name, tensor in state.items():
        try:
            value = value_of(tf, name)
        except KeyError as e:
            raise UserError(f'{path}: TensorFlow network "{net.name}" has no variable for degan\'s {name} '
                            f'(looked for {e}); only StyleGAN2 config F-style networks are read') from None
        except (IndexError, ValueError) as e:  # a variable of the wrong rank or a malformed name
            raise UserError(f'{path}: TensorFlow network "{net.name}": the variable for degan\'s {name} is '
                            f'malformed ({e})') from None
        if value is None:
            continue
        value = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))
        if tuple(value.shape) != tuple(tensor.shape):
            raise UserError(f'{path}: TensorFlow network "{net.name}": {name} has shape {list(value.shape)}, '
                            f'degan\'s has {list(tensor.shape)}')
        state[name] = value
    return dict(class_name=class_name, init_kwargs=util.to_jsonable(kwargs),
                state_dict={k: v.clone() for k, v in state.items()})
