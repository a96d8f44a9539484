"""Network snapshots: named modules and named states, written atomically, loaded safely.

File: ``network-snapshot-<kimg:06d>.pt``, a dict of plain data and tensors (docs/README.md
decision 4), loadable with ``torch.load(weights_only=True)``. Format version 2:

========================  =====================================================================
key                       content
========================  =====================================================================
format, version           ``'degan-snapshot'``, 2
backbone                  the ``--backbone`` that wrote it (its registry name)
training_set_kwargs       how the training set was opened (JSON-able)
modules                   ``{name: {'class_name', 'init_kwargs', 'state_dict'} or None}`` — every
                          module of the run by name: 'G', 'D', 'G_ema', 'augment_pipe' and a
                          backbone's extras (heads, D_ema, …)
training_state            everything ``--resume`` needs to continue exactly: the counters,
                          ``optimizers`` (``{name: state_dict}``), ``states`` (``{name: state}``:
                          the loss', each controller's, a backbone's extras) and the RNG states
                          of every rank
metadata                  kimg, time of writing, world size
========================  =====================================================================

Version-1 snapshots (StyleGAN2 only: G, D, G_ema, augment_pipe at the top level; ``pl_mean``
and ``controllers`` in the training state) are read through :func:`upgrade_v1` and resume
exactly. Only rank 0 writes; the RNG states of all ranks are gathered to it first. Nothing in
this module knows an architecture: what to save comes from the backbone's ``TrainingSetup``.
"""

from __future__ import annotations

import os
import time
from typing import Any, BinaryIO, Optional

import torch

import backbones
from dnnlib import util
from torch_utils import distributed, misc, persistence, safe_pickle
from torch_utils import precision as precision_lib
from training.resume_check import differ_only_in_methods

VERSION = 2
OFFICIAL_SOURCE = 'official-pickle'  # ``source`` of a snapshot converted from an official pickle
#: What upstream's resume takes from a pickle (its augment pipe, and so ADA's p, start fresh).
OFFICIAL_TRANSFER_MODULES = ('G', 'D', 'G_ema')
V1_MODULES = ('G', 'D', 'G_ema', 'augment_pipe')
COUNTERS = ('cur_nimg', 'cur_tick', 'batch_idx', 'tick_start_nimg')


def _gather_rng_states(num_gpus: int) -> list[dict[str, Any]]:
    state = misc.get_rng_state()
    if num_gpus == 1 or not distributed.is_initialized():
        return [state]
    return distributed.all_gather_object(state, what='RNG states for the snapshot')


def save(path: str, *, backbone: str, training_set_kwargs: dict, modules: dict[str, Optional[torch.nn.Module]],
         optimizers: dict[str, torch.optim.Optimizer], states: dict[str, Any], counters: dict,
         rank: int, num_gpus: int) -> None:
    """Write a complete snapshot (collective: every rank must call it; rank 0 writes)."""
    rng_states = _gather_rng_states(num_gpus)
    if rank != 0:
        return
    # Written during tick maintenance: a resumed run starts the *next* tick here.
    training_state = dict(
        cur_nimg=int(counters['cur_nimg']), cur_tick=int(counters['cur_tick']) + 1,
        batch_idx=int(counters['batch_idx']), tick_start_nimg=int(counters['cur_nimg']),
        optimizers={name: opt.state_dict() for name, opt in optimizers.items()},
        states={name: obj.state_dict() for name, obj in states.items()},
        rng=rng_states,
    )
    data = dict(
        format=persistence.SNAPSHOT_FORMAT, version=VERSION, backbone=backbone,
        training_set_kwargs=util.to_jsonable(training_set_kwargs),
        modules={name: persistence.module_to_record(m) if m is not None else None for name, m in modules.items()},
        training_state=training_state,
        metadata=dict(kimg=counters['cur_nimg'] / 1000, written=time.strftime('%Y-%m-%d %H:%M:%S'),
                      precision=precision_lib.DTYPE_NAMES.get(precision_lib.reduced_dtype()),
                      num_gpus=num_gpus),
    )
    persistence.save_snapshot(data, path)


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 snapshot in the version-2 layout (the loss state is StyleGAN2's ``pl_mean``)."""
    out = {k: v for k, v in data.items() if k not in V1_MODULES}
    out.update(version=VERSION, backbone='stylegan2', modules={name: data.get(name) for name in V1_MODULES})
    old = data.get('training_state')
    if old is not None:
        states: dict[str, Any] = {'loss': dict(pl_mean=old['pl_mean'])}
        states.update({name: state for name, state in (old.get('controllers') or {}).items() if state is not None})
        out['training_state'] = dict({k: old[k] for k in COUNTERS}, optimizers=old['optimizers'], states=states,
                                     rng=old['rng'])
    return out


def read(path: str, mmap: bool = False) -> dict[str, Any]:
    """Load a snapshot safely (no code runs) in the current layout, whatever version wrote it.

    An official StyleGAN2-ADA network pickle (PyTorch or TensorFlow-era) is read through the
    allow-list unpickler and converted to a weights-only snapshot
    (``backbones/stylegan2/official.py``). ``mmap`` leaves a degan snapshot's tensors in the file
    until touched."""
    if not os.path.isfile(path):
        raise util.UserError(f'snapshot not found: {path}')
    if path.endswith('.pkl') or safe_pickle.looks_like_pickle(path):
        return read_official(path)
    data = persistence.load_snapshot(path, mmap=mmap)
    version = data.get('version', 1)
    if version == 1:
        return upgrade_v1(data)
    if version != VERSION:
        raise util.UserError(f'{path}: snapshot format version {version} is newer than this degan ({VERSION}); '
                             'update degan to read it')
    return data


def read_official(source: str | BinaryIO, name: Optional[str] = None) -> dict[str, Any]:
    """A weights-only snapshot (``source='official-pickle'``) of an official StyleGAN2(-ADA) network
    pickle, given by path or as an open file (``backbones/stylegan2/official.py``)."""
    from backbones.stylegan2 import official
    if isinstance(source, str):
        name, networks = source, official.read_pickle(source)
    else:
        name = name or getattr(source, 'name', 'pickle')
        networks = official.networks_from_pickle(source, str(name))
    return dict(format=persistence.SNAPSHOT_FORMAT, version=VERSION, backbone='stylegan2', source=OFFICIAL_SOURCE,
                training_set_kwargs=networks['training_set_kwargs'], modules=networks['modules'],
                metadata=dict(kimg=0.0, written=time.strftime('%Y-%m-%d %H:%M:%S'), num_gpus=1,
                              converted_from=os.path.basename(str(name)), layout=networks['layout']))


def restore(path: str, *, modules: dict[str, Optional[torch.nn.Module]], optional_modules: frozenset[str],
            optimizers: dict[str, torch.optim.Optimizer], states: dict[str, Any], backbone: str,
            rank: int, num_gpus: int, fresh_methods: bool = False) -> Optional[dict[str, Any]]:
    """Load every module (strictly) and, when present, the training state.

    ``fresh_methods`` (``--fresh-methods=1``, training/resume_check.py): a network that differs
    from the snapshot's only in a method's constructor arguments (CHAIN's layers, buffers only)
    loads its weights; the method's buffers it lacks keep their initial values and those only
    the snapshot has are left out, both listed.

    Returns None for a weights-only snapshot (transfer learning: see :func:`is_transfer`), else
    the counters plus ``rng``: this rank's RNG states, which the caller restores at the very end
    of set-up (``misc.set_rng_state``).
    """
    data = read(path)
    if data.get('backbone', backbone) != backbone:
        raise util.UserError(f'{path} was written by --backbone={data["backbone"]}; this run uses --backbone={backbone}')
    transfer = is_transfer(data)
    saved_modules = data.get('modules') or {}
    for name, module in modules.items():
        if module is None:
            continue
        record = saved_modules.get(name)
        if transfer and data.get('source') == OFFICIAL_SOURCE and name not in OFFICIAL_TRANSFER_MODULES:
            if rank == 0 and record is not None:
                print(f'Note: "{name}" of the official pickle is not used: it starts fresh (as upstream\'s resume).')
            continue
        if record is None:
            if name in optional_modules:
                continue
            raise util.UserError(f'{path}: the snapshot holds no "{name}"')
        method_only = fresh_methods and _differ_only_in_methods(record, module)
        _load_weights(path, name, record, module, allow_missing_buffers=transfer or method_only,
                      allow_unexpected=method_only, verbose=rank == 0)

    training_state = data.get('training_state')
    if training_state is None:
        return None
    for name, opt in optimizers.items():
        if name not in training_state['optimizers']:
            raise util.UserError(f'{path}: the snapshot holds no "{name}" optimiser state')
        opt.load_state_dict(training_state['optimizers'][name])
    _load_states(path, states, training_state.get('states', {}))
    saved_world = len(training_state['rng'])
    if saved_world != num_gpus and rank == 0:
        print(other_world_note(saved_world, num_gpus))
    rng = training_state['rng'][rank] if rank < saved_world else None
    return dict({k: training_state[k] for k in COUNTERS}, rng=rng)


def other_world_note(saved_world: int, num_gpus: int) -> str:
    """What a resume with another number of processes (same global batch) continues exactly, and what not."""
    first, last = sorted((saved_world, num_gpus))
    ranks = f'process {first}' if last - first == 1 else f'processes {first}-{last - 1}'
    streams = f'{ranks} start new random streams' if num_gpus > saved_world else f'the random streams of {ranks} end'
    return (f'Note: the snapshot was written by {saved_world} process(es), this run has {num_gpus}. Continued exactly: '
            'the weights, the optimiser and controller states, and the real images of every iteration (the sampler '
            'is global). '
            f'Not exactly: each process\'s random draws (latents, augmentations, noise; {streams}) and the order of '
            'sums over processes, so the run does not repeat the original bit for bit.')


def _load_states(path: str, states: dict[str, Any], saved: dict[str, Any]) -> None:
    for name, obj in states.items():
        if name not in saved:
            print(f'Note: the snapshot holds no {name} state; it starts fresh.')
            continue
        try:
            obj.load_state_dict(saved[name])
        except (ValueError, KeyError) as e:
            raise util.UserError(f'{path}: cannot resume the {name} state: {e}') from None
    for name in sorted(set(saved) - set(states)):
        print(f'Note: the snapshot\'s {name} state is not used by this run.')


def is_transfer(data: dict[str, Any]) -> bool:
    """True for a weights-only snapshot (an official pickle, a converted checkpoint): ``--resume``
    starts from its weights with kimg, optimisers and controllers fresh."""
    return data.get('training_state') is None


def _differ_only_in_methods(record: dict, module: torch.nn.Module) -> bool:
    saved = util.to_jsonable(record.get('init_kwargs') or {})
    return differ_only_in_methods(saved, util.to_jsonable(getattr(module, 'init_kwargs', {})))


def _load_weights(path: str, name: str, record: dict, module: torch.nn.Module, *,
                  allow_missing_buffers: bool = False, allow_unexpected: bool = False, verbose: bool = True) -> None:
    """Load strictly; for a transfer, buffers the file lacks (e.g. CHAIN's statistics on an official
    D) keep their initial values and are listed; ``allow_unexpected`` leaves out (and lists) what
    only the file has."""
    try:
        missing, unexpected = module.load_state_dict(record['state_dict'], strict=False)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if 'size mismatch' in line] or str(e).splitlines()
        raise util.UserError(f'{path}: "{name}" does not match this run\'s network configuration '
                             f'({lines[0] if lines else e}). Use the same --backbone, --cfg and network and '
                             f'method flags as the run that wrote it.') from None
    buffers = {n for n, _ in module.named_buffers()}
    fatal_missing = [n for n in missing if not (allow_missing_buffers and n in buffers)]
    if unexpected and allow_unexpected:
        if verbose:
            print(f'Note: "{name}" state in {os.path.basename(path)} that this run does not use is left out: '
                  f'{util.format_names(unexpected)}')
        unexpected = []
    if fatal_missing or unexpected:
        raise util.UserError(f'{path}: "{name}" does not match this run\'s network configuration (missing '
                             f'{util.format_names(fatal_missing)}; unexpected {util.format_names(unexpected)}). '
                             'Use the same --backbone, --cfg and network and method flags as the run that wrote it.')
    kept = sorted(set(missing) - set(fatal_missing))
    if kept and verbose:
        print(f'Note: "{name}" buffers not in {os.path.basename(path)} keep their initial values: '
              f'{util.format_names(kept)}')


def load_module(path: str, name: str = 'G_ema', device: torch.device | str = 'cpu',
                data: Optional[dict[str, Any]] = None) -> torch.nn.Module:
    """Rebuild one module of a snapshot (eval mode, no gradients); its backbone's classes are
    imported through the registry, never from a name in the file."""
    data = read(path) if data is None else data
    backbone = backbones.get(data.get('backbone', backbones.DEFAULT))  # registers the backbone's network classes
    record = (data.get('modules') or {}).get(name)
    if record is None:
        raise util.UserError(f'{path}: the snapshot holds no "{name}" network')
    check_module_class(path, backbone, name, record)
    return persistence.module_from_record(record, device=device).eval().requires_grad_(False)


def check_module_class(path: str, backbone: Any, name: str, record: dict[str, Any]) -> None:
    """The class a module record names must be one the backbone builds in that slot
    (``Backbone.snapshot_classes``): a file never chooses which class is constructed."""
    allowed = backbone.snapshot_classes.get(name, ())
    class_name = record.get('class_name') if isinstance(record, dict) else None
    if class_name not in allowed:
        raise util.UserError(f'{path}: its "{name}" record names the class "{class_name}", which is not what a '
                             f'{backbone.name} snapshot holds there ({util.format_names(allowed)}); nothing of it '
                             'was built')


def load_generator(path: str, device: torch.device | str = 'cpu', *, noise_mode: str = 'const',
                   truncation_psi: float = 1.0) -> Any:
    """The backbone's sampler of a snapshot's G_ema (``sampler(z, c) -> images``; ``z_dim``, ``c_dim``)."""
    data = read(path)
    backbone = backbones.get(data.get('backbone', backbones.DEFAULT))
    G = load_module(path, 'G_ema', device, data=data)
    return backbone.sampler(G, noise_mode=noise_mode, truncation_psi=truncation_psi)
