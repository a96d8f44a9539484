"""Writers of official-format network pickles, for tests (no official code or file is used).

* :func:`write_pytorch_pickle` — the layout of a ``stylegan2-ada-pytorch`` snapshot: a dict
  ``G, D, G_ema, augment_pipe, training_set_kwargs`` in which every network is a call
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, ``meta`` = {type 'class',
  version, module_src, class_name, state = the module's ``__dict__`` with ``_parameters``,
  ``_buffers``, ``_modules``, hooks, ``_init_args`` / ``_init_kwargs`` (EasyDicts)}, tensors as
  ``torch._utils._rebuild_parameter`` / ``_rebuild_tensor_v2`` over ``torch.storage._load_from_bytes``.
* :func:`write_tf_pickle` — the TensorFlow-era layout: a tuple (G, D, Gs) of
  ``dnnlib.tflib.network.Network`` objects (NEWOBJ + BUILD of a state dict with numpy variables),
  with the variable names, layouts and kwargs of StyleGAN2's TensorFlow networks, derived here
  from a degan network (the inverse of what the reader does, written independently).
* :func:`write_malicious_pickle` — a pickle whose ``__reduce__`` would run code.
"""

from __future__ import annotations

import collections
import copyreg
import math
import os
import pickle
import types
from typing import Any, Optional

import numpy as np
import torch

from dnnlib.util import EasyDict

MODULE_SOURCE = '# the defining module\'s source would be here; a reader must never run it\nimport os\n'


def _stand_in(module: str, name: str) -> Any:
    """A callable that the writer pickles as the global ``module.name``."""
    def never_called(*args: Any) -> Any:
        raise AssertionError(f'{module}.{name} stand-in called')
    never_called.pickle_global = (module, name)  # type: ignore[attr-defined]
    return never_called


RECONSTRUCT = _stand_in('torch_utils.persistence', '_reconstruct_persistent_obj')


class _Writer(pickle._Pickler):  # the pure-Python pickler lets globals be renamed
    def __init__(self, file: Any, protocol: int, renames: dict[str, str]):
        super().__init__(file, protocol=protocol)
        self.renames = renames
        self.dispatch = {**pickle._Pickler.dispatch, types.FunctionType: type(self).save_global}

    def save_global(self, obj: Any, name: Optional[str] = None) -> None:
        target = getattr(obj, 'pickle_global', None)
        if target is None:
            module = getattr(obj, '__module__', None)
            qualname = getattr(obj, '__qualname__', None)
            if module in self.renames:
                target = (self.renames[module], qualname)
        if target is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f'{target[0]}\n{target[1]}\n'.encode('utf-8'))
        self.memoize(obj)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.nn.Module) and hasattr(obj, 'init_kwargs'):
            return RECONSTRUCT, (persistent_meta(obj),)
        return NotImplemented


def _easy(value: Any) -> Any:
    if isinstance(value, dict):
        return EasyDict({k: _easy(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_easy(v) for v in value]
    return value


def persistent_meta(module: torch.nn.Module, version: int = 6) -> dict[str, Any]:
    """The meta dict upstream's persistence writes for ``module``."""
    state: dict[str, Any] = dict(training=False)
    state['_parameters'] = collections.OrderedDict(
        (n, torch.nn.Parameter(p.detach().clone(), requires_grad=False)) for n, p in module._parameters.items())
    state['_buffers'] = collections.OrderedDict((n, b.detach().clone()) for n, b in module._buffers.items())
    state['_non_persistent_buffers_set'] = set()
    for hooks in ('_backward_hooks', '_forward_hooks', '_forward_pre_hooks', '_state_dict_hooks',
                  '_load_state_dict_pre_hooks'):
        state[hooks] = collections.OrderedDict()
    state['_modules'] = collections.OrderedDict(module._modules.items())
    for key, value in module.__dict__.items():
        if key not in state and not key.startswith('_') and isinstance(value, (bool, int, float, str, type(None))):
            state[key] = value
    state['_init_args'] = ()
    state['_init_kwargs'] = _easy(dict(module.init_kwargs))
    return dict(type='class', version=version, module_src=MODULE_SOURCE, class_name=type(module).__name__,
                state=state)


def dump(obj: Any, path: str, protocol: int = 4, renames: Optional[dict[str, str]] = None) -> str:
    with open(path, 'wb') as f:
        _Writer(f, protocol, renames or {}).dump(obj)
    return str(path)


def write_pytorch_pickle(path: str, G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module,
                         augment_pipe: Optional[torch.nn.Module] = None, training_set_kwargs: Optional[dict] = None,
                         protocol: int = 4) -> str:
    """A ``stylegan2-ada-pytorch`` snapshot pickle of degan's modules (official names)."""
    data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
                training_set_kwargs=None if training_set_kwargs is None else EasyDict(training_set_kwargs))
    return dump(data, path, protocol)


# ---------------------------------------------------------------------------------------------
# TensorFlow era.

class TFNetworkStandIn:
    """Pickled as ``dnnlib.tflib.network.Network`` with its ``__getstate__`` dict."""
    pickle_global = ('dnnlib.tflib.network', 'Network')

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def __reduce_ex__(self, protocol: int) -> Any:
        return copyreg.__newobj__, (type(self),), self.state


def tf_network(name: str, func: str, static_kwargs: dict, variables: dict[str, np.ndarray],
               components: Optional[dict] = None) -> TFNetworkStandIn:
    return TFNetworkStandIn(dict(version=4, name=name, static_kwargs=static_kwargs, components=components or {},
                                 build_module_src=MODULE_SOURCE, build_func_name=func,
                                 variables=list(variables.items())))


def _tf_conv(w: torch.Tensor, flip: bool = False) -> np.ndarray:
    value = w.detach().numpy().transpose(2, 3, 1, 0)  # [out, in, kh, kw] → [kh, kw, in, out]
    return np.ascontiguousarray(value[::-1, ::-1] if flip else value)


def _tf_dense(w: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(w.detach().numpy().T)


def tf_generator_variables(G: torch.nn.Module) -> tuple[dict, dict, dict]:
    """(own, mapping, synthesis) variables of TensorFlow's G_main for degan's ``G``."""
    sd = {k: v.detach() for k, v in G.state_dict().items()}
    own = {'dlatent_avg': sd['mapping.w_avg'].numpy().copy()}
    mapping = {}
    for i in range(G.mapping.num_layers):
        mapping[f'Dense{i}/weight'] = _tf_dense(sd[f'mapping.fc{i}.weight'])
        mapping[f'Dense{i}/bias'] = sd[f'mapping.fc{i}.bias'].numpy().copy()
    if G.c_dim:
        mapping['LabelEmbed/weight'] = _tf_dense(sd['mapping.embed.weight'])
        mapping['LabelEmbed/bias'] = sd['mapping.embed.bias'].numpy().copy()
    synthesis: dict[str, np.ndarray] = {'lod': np.zeros([], np.float32)}
    noise = 0
    for res in G.synthesis.block_resolutions:
        b = f'synthesis.b{res}'
        if res == 4:
            synthesis['4x4/Const/const'] = sd[f'{b}.const'].numpy()[None].copy()
            layers = [('conv1', 'Conv')]
        else:
            layers = [('conv0', 'Conv0_up'), ('conv1', 'Conv1')]
        for layer, scope in layers:
            s = f'{res}x{res}/{scope}'
            synthesis[f'{s}/weight'] = _tf_conv(sd[f'{b}.{layer}.weight'], flip=layer == 'conv0')
            synthesis[f'{s}/bias'] = sd[f'{b}.{layer}.bias'].numpy().copy()
            synthesis[f'{s}/mod_weight'] = _tf_dense(sd[f'{b}.{layer}.affine.weight'])
            synthesis[f'{s}/mod_bias'] = sd[f'{b}.{layer}.affine.bias'].numpy() - 1
            synthesis[f'{s}/noise_strength'] = sd[f'{b}.{layer}.noise_strength'].numpy().copy()
            synthesis[f'noise{noise}'] = sd[f'{b}.{layer}.noise_const'].numpy()[None, None].copy()
            noise += 1
        if not hasattr(getattr(G.synthesis, f'b{res}'), 'torgb'):
            continue
        t = f'{res}x{res}/ToRGB'
        synthesis[f'{t}/weight'] = _tf_conv(sd[f'{b}.torgb.weight'])
        synthesis[f'{t}/bias'] = sd[f'{b}.torgb.bias'].numpy().copy()
        synthesis[f'{t}/mod_weight'] = _tf_dense(sd[f'{b}.torgb.affine.weight'])
        synthesis[f'{t}/mod_bias'] = sd[f'{b}.torgb.affine.bias'].numpy() - 1
    return own, mapping, synthesis


def tf_discriminator_variables(D: torch.nn.Module, lod_names: bool = False) -> dict[str, np.ndarray]:
    """Variables of TensorFlow's D_stylegan2 for degan's unconditional ``D``; ``lod_names``: the
    input layer named by level of detail (``FromRGB_lod0``), as progressive-era pickles do."""
    sd = {k: v.detach() for k, v in D.state_dict().items()}
    out: dict[str, np.ndarray] = {}
    top = D.block_resolutions[0]
    for res in D.block_resolutions:
        b, s = f'b{res}', f'{res}x{res}'
        block = getattr(D, b)
        if hasattr(block, 'fromrgb'):
            f = f'FromRGB_lod{int(math.log2(top // res))}' if lod_names else f'{s}/FromRGB'
            out[f'{f}/weight'] = _tf_conv(sd[f'{b}.fromrgb.weight'])
            out[f'{f}/bias'] = sd[f'{b}.fromrgb.bias'].numpy().copy()
        out[f'{s}/Conv0/weight'] = _tf_conv(sd[f'{b}.conv0.weight'])
        out[f'{s}/Conv0/bias'] = sd[f'{b}.conv0.bias'].numpy().copy()
        out[f'{s}/Conv1_down/weight'] = _tf_conv(sd[f'{b}.conv1.weight'])
        out[f'{s}/Conv1_down/bias'] = sd[f'{b}.conv1.bias'].numpy().copy()
        if hasattr(block, 'skip'):
            out[f'{s}/Skip/weight'] = _tf_conv(sd[f'{b}.skip.weight'])
    out['4x4/Conv/weight'] = _tf_conv(sd['b4.conv.weight'])
    out['4x4/Conv/bias'] = sd['b4.conv.bias'].numpy().copy()
    out['4x4/Dense0/weight'] = _tf_dense(sd['b4.fc.weight'])
    out['4x4/Dense0/bias'] = sd['b4.fc.bias'].numpy().copy()
    out['Output/weight'] = _tf_dense(sd['b4.out.weight'])
    out['Output/bias'] = sd['b4.out.bias'].numpy().copy()
    return out


def tf_generator(G: torch.nn.Module, name: str = 'G', extra_kwargs: Optional[dict] = None) -> TFNetworkStandIn:
    """TensorFlow's G_main (components mapping, synthesis) holding degan's ``G``."""
    syn = G.init_kwargs['synthesis_kwargs']
    kwargs = dict(num_channels=G.img_channels, resolution=G.img_resolution, label_size=G.c_dim,
                  latent_size=G.z_dim, dlatent_size=G.w_dim, mapping_layers=G.mapping.num_layers,
                  fmap_base=syn['channel_base'] // 2, fmap_max=syn['channel_max'], **(extra_kwargs or {}))
    if syn.get('architecture', 'skip') != 'skip':
        kwargs['architecture'] = syn['architecture']
    own, mapping, synthesis = tf_generator_variables(G)
    components = dict(
        mapping=tf_network('G_mapping', 'training.networks_stylegan2.G_mapping', {}, mapping),
        synthesis=tf_network('G_synthesis', 'training.networks_stylegan2.G_synthesis_stylegan2', {}, synthesis))
    return tf_network(name, 'training.networks_stylegan2.G_main', kwargs, own, components)


def tf_discriminator(D: torch.nn.Module, channel_base: int, channel_max: int, mbstd_group_size: int,
                     lod_names: bool = False) -> TFNetworkStandIn:
    """TensorFlow's D_stylegan2 holding degan's unconditional ``D``; with ``lod_names`` its 'orig'
    architecture is told by the variable names alone."""
    kwargs = dict(num_channels=D.img_channels, resolution=D.img_resolution, label_size=0,
                  fmap_base=channel_base // 2, fmap_max=channel_max, mbstd_group_size=mbstd_group_size)
    if D.b4.architecture != 'resnet' and not lod_names:
        kwargs['architecture'] = D.b4.architecture
    return tf_network('D', 'training.networks_stylegan2.D_stylegan2', kwargs, tf_discriminator_variables(D, lod_names))


def write_tf_pickle(path: str, G: TFNetworkStandIn, D: TFNetworkStandIn, Gs: TFNetworkStandIn,
                    numpy_1_names: bool = True) -> str:
    """(G, D, Gs) as TensorFlow-era pickles hold them; ``numpy_1_names`` writes numpy's arrays
    under ``numpy.core.multiarray`` (how numpy 1.x, the TensorFlow era, named them)."""
    renames = {'numpy._core.multiarray': 'numpy.core.multiarray'} if numpy_1_names else {}
    return dump((G, D, Gs), path, protocol=3, renames=renames)


# ---------------------------------------------------------------------------------------------
# Hostile files.

class _RunsCode:
    def __init__(self, marker: str, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self) -> Any:
        if self.how == 'system':
            return os.system, (f'touch {self.marker}',)
        return exec, (f'open({self.marker!r}, "w").close()',)


class PersistentStandIn:
    """Pickled as ``_reconstruct_persistent_obj(meta)`` with a hand-made ``meta``."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    def __reduce__(self) -> Any:
        return RECONSTRUCT, (self.meta,)


def write_malicious_pickle(path: str, marker: str, how: str = 'system', nested: bool = False) -> str:
    """A network pickle that would create ``marker`` when unpickled by ``pickle.load``:
    top-level (G is the payload) or nested (inside a persistent object's init kwargs)."""
    payload = _RunsCode(marker, how)
    if nested:
        meta = dict(type='class', version=6, module_src=MODULE_SOURCE, class_name='Generator',
                    state=dict(_parameters={}, _buffers={}, _modules={}, _init_args=(),
                               _init_kwargs=EasyDict(z_dim=payload)))
        return dump(dict(G=PersistentStandIn(meta), D=None, G_ema=None), path)
    with open(path, 'wb') as f:
        pickle.dump(dict(G=payload, D=payload, G_ema=payload), f)
    return str(path)
