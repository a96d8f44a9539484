"""Official StyleGAN2-ADA network pickles → degan snapshots, without running their code.

Usage (the converter; ``legacy.py`` offers the same as upstream's ``--source --dest``)::

    python legacy.py --source=ffhq.pkl --dest=ffhq.pt

Every entry point that takes a network also takes the ``.pkl`` directly: ``generate.py
--network``, ``calc_metrics.py --network`` and ``train.py --resume`` (transfer learning, with
``--freezed``) read it through :func:`read_pickle` (docs/stylegan2-ada.md §16).

The file is read by ``torch_utils/safe_pickle.py``'s allow-list unpickler: the module source
that upstream embeds is never executed, any global outside the allow-list is an error naming
it. Two layouts are understood:

* PyTorch (``stylegan2-ada-pytorch`` snapshots and NVIDIA's published PyTorch pickles): a dict
  with ``G``, ``D``, ``G_ema`` (and ``augment_pipe``, ``training_set_kwargs``), each network a
  persistent object whose recorded constructor arguments and tensors carry over unchanged —
  degan's classes have the official signatures and parameter names.
* TensorFlow-era (the original StyleGAN2 and DiffAugment releases, StyleGAN2-ADA's TensorFlow
  code): a tuple (G, D, Gs) of ``dnnlib.tflib.network.Network`` states, converted by name in
  ``backbones/stylegan2/official_tf.py``.

The result — records of degan's classes — becomes a weights-only snapshot in
``training/snapshot_io.py`` (``read_official``); every network is built once here and loaded
strictly, so a mismatch is reported before anything is written or trained.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, BinaryIO, Optional

import torch

from dnnlib import util
from dnnlib.util import UserError
from torch_utils import persistence, safe_pickle

NETWORK_KEYS = ('G', 'D', 'G_ema')

#: Official top-level class (as persistence records it) → degan's class, per snapshot key.
TOP_LEVEL_CLASSES = {
    'G': ('Generator', 'training.networks.Generator'),
    'G_ema': ('Generator', 'training.networks.Generator'),
    'D': ('Discriminator', 'training.networks.Discriminator'),
    'augment_pipe': ('AugmentPipe', 'training.augment.AugmentPipe'),
}

#: Every class a StyleGAN2-ADA network is made of (anything else — StyleGAN3's SynthesisInput,
#: a user's own layer — is a network degan does not have).
STYLEGAN2_ADA_CLASSES = frozenset({
    'Generator', 'MappingNetwork', 'SynthesisNetwork', 'SynthesisBlock', 'SynthesisLayer', 'ToRGBLayer',
    'FullyConnectedLayer', 'Conv2dLayer', 'Discriminator', 'DiscriminatorBlock', 'DiscriminatorEpilogue',
    'MinibatchStdLayer', 'AugmentPipe',
})


def read_pickle(path: str) -> dict[str, Any]:
    """The networks of an official PyTorch or TensorFlow-era pickle: ``{'modules': {key: record or
    None}, 'training_set_kwargs', 'layout'}`` (``training/snapshot_io.py`` makes it a snapshot)."""
    if not os.path.isfile(path):
        raise UserError(f'network pickle not found: {path}')
    with open(path, 'rb') as f:
        return networks_from_pickle(f, path)


def networks_from_pickle(file: BinaryIO, path: str) -> dict[str, Any]:
    """:func:`read_pickle` of an open file; ``path`` names it in errors."""
    data = safe_pickle.load(file, name=path)
    if _is_tf_triple(data):
        from backbones.stylegan2 import official_tf
        modules = official_tf.convert(path, *data)
        training_set_kwargs = None
        layout = 'TensorFlow'
    elif isinstance(data, dict) and all(key in data for key in NETWORK_KEYS):
        modules = {key: record_from_persistent(path, key, data[key]) for key in NETWORK_KEYS}
        augment = data.get('augment_pipe')
        modules['augment_pipe'] = None if augment is None else record_from_persistent(path, 'augment_pipe', augment)
        training_set_kwargs = _training_set_kwargs(path, data.get('training_set_kwargs'))
        layout = 'PyTorch'
    else:
        raise UserError(f'{path}: not a StyleGAN2(-ADA) network pickle ({_describe(data)}; expected a dict with '
                        f'{", ".join(NETWORK_KEYS)} or a TensorFlow (G, D, Gs) tuple)')
    for key, record in modules.items():
        if record is not None:
            check_record(path, key, record)
    return dict(modules=modules, training_set_kwargs=training_set_kwargs, layout=layout)


def record_from_persistent(path: str, key: str, obj: Any) -> dict[str, Any]:
    """``{'class_name', 'init_kwargs', 'state_dict'}`` of one official network."""
    official_class, degan_class = TOP_LEVEL_CLASSES[key]
    if not isinstance(obj, safe_pickle.PersistentObject):
        raise UserError(f'{path}: "{key}" is a {type(obj).__name__}, not a persistent StyleGAN2-ADA network')
    if obj.class_name != official_class:
        raise UserError(f'{path}: "{key}" is a {obj.class_name}; degan reads StyleGAN2-ADA\'s {official_class} there')
    for where, name in obj.class_names():
        if name not in STYLEGAN2_ADA_CLASSES:
            raise UserError(f'{path}: "{key}" contains a {name} ({key}.{where}), which is not part of a '
                            'StyleGAN2-ADA network (StyleGAN3 and modified networks are not supported)')
    args, kwargs = obj.init_arguments()
    init_kwargs = _bind_arguments(path, key, persistence.lookup_class(degan_class), args, kwargs)
    return dict(class_name=degan_class, init_kwargs=init_kwargs, state_dict=_cpu_float_state(obj.state_dict()))


def _bind_arguments(path: str, key: str, cls: type, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The official constructor arguments as degan's keyword arguments (same signature)."""
    signature = inspect.signature(cls.__init__)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError as e:
        raise UserError(f'{path}: "{key}" was built with arguments degan\'s {cls.__name__} does not take ({e})') from None
    try:
        return util.to_jsonable({name: value for name, value in list(bound.arguments.items())[1:]})
    except TypeError as e:
        raise UserError(f'{path}: "{key}" has a constructor argument that is not plain data ({e})') from None


def _cpu_float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to('cpu').contiguous().clone() for name, tensor in state.items()}


def check_record(path: str, key: str, record: dict[str, Any]) -> None:
    """Build degan's network from the record and load its tensors strictly; a mismatch is one line
    listing the missing and unexpected names (or the first shape that differs)."""
    cls = persistence.lookup_class(record['class_name'])
    try:
        with torch.random.fork_rng(devices=[]):  # reading a file must not move the caller's random draws
            module = cls(**record['init_kwargs'])
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f'{path}: "{key}" cannot be built as degan\'s {cls.__name__} '
                        f'({type(e).__name__}: {e})') from None
    try:
        missing, unexpected = module.load_state_dict(record['state_dict'], strict=False)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if 'size mismatch' in line]
        raise UserError(f'{path}: "{key}" does not fit degan\'s {cls.__name__}: '
                        f'{lines[0] if lines else str(e).splitlines()[0]}') from None
    if missing or unexpected:
        raise UserError(f'{path}: "{key}" does not fit degan\'s {cls.__name__}: '
                        f'missing {util.format_names(missing)}; unexpected {util.format_names(unexpected)}')


def _training_set_kwargs(path: str, kwargs: Any) -> Optional[dict[str, Any]]:
    """Upstream's dataset kwargs as plain data; its ``class_name`` is dropped (degan opens datasets
    by path with its own class)."""
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict):
        raise UserError(f'{path}: "training_set_kwargs" is a {type(kwargs).__name__}, not a dict')
    try:
        out = util.to_jsonable(dict(kwargs))
    except TypeError as e:
        raise UserError(f'{path}: "training_set_kwargs" is not plain data ({e})') from None
    out.pop('class_name', None)
    return out


def _is_tf_triple(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 3
            and all(isinstance(net, safe_pickle.TFNetwork) for net in data))


def _describe(data: Any) -> str:
    if isinstance(data, dict):
        return f'a dict with keys {", ".join(map(str, list(data)[:8])) or "none"}'
    return f'a {type(data).__name__}'
