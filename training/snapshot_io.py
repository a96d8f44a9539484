"""Network snapshots that hold the whole training state, written atomically, loaded safely.

File: ``network-snapshot-<kimg:06d>.pt``, a dict of plain data and tensors (spec README,
decision 4), loadable with ``torch.load(weights_only=True)``:

========================  =====================================================================
key                       content
========================  =====================================================================
format, version           ``'degan-snapshot'``, 1
training_set_kwargs       how the training set was opened (JSON-able)
G, D, G_ema               ``{'class_name', 'init_kwargs', 'state_dict'}`` records
augment_pipe              the same record for the augmentation pipe (holds ADA's p), or None
training_state            everything ``--resume`` needs to continue exactly: counters, both
                          optimisers, ``pl_mean``, controller states (ADA / ATop-k; CHAIN's
                          live in D's buffers), and the RNG states of every rank
metadata                  kimg, time of writing, world size, batch size
========================  =====================================================================

Only rank 0 writes; the RNG states of all ranks are gathered to it first.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.distributed as dist

from dnnlib import util
from torch_utils import distributed, misc, persistence


def _gather_rng_states(num_gpus: int) -> list[dict[str, Any]]:
    state = misc.get_rng_state()
    if num_gpus == 1 or not distributed.is_initialized():
        return [state]
    gathered: list[Any] = [None] * num_gpus
    dist.all_gather_object(gathered, state)
    return gathered


def _optimizers(phases: list) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per network: 'G' and 'D' (main and reg phases share it)."""
    return {phase.name[0]: phase.opt for phase in phases}


def save(path: str, *, training_set_kwargs: dict, G: torch.nn.Module, D: torch.nn.Module,
         G_ema: torch.nn.Module, augment_pipe: Optional[torch.nn.Module], phases: list, loss: Any,
         controllers: Any, state: dict, rank: int, num_gpus: int) -> None:
    """Write a complete snapshot (collective: every rank must call it; rank 0 writes)."""
    rng_states = _gather_rng_states(num_gpus)
    if rank != 0:
        return
    # Written during tick maintenance: a resumed run starts the *next* tick here.
    training_state = dict(
        cur_nimg=int(state['cur_nimg']), cur_tick=int(state['cur_tick']) + 1, batch_idx=int(state['batch_idx']),
        tick_start_nimg=int(state['cur_nimg']),
        optimizers={name: opt.state_dict() for name, opt in _optimizers(phases).items()},
        pl_mean=loss.pl_mean.detach().cpu().clone(),
        controllers=controllers.state_dict(),
        rng=rng_states,
    )
    data = dict(
        training_set_kwargs=util.to_jsonable(training_set_kwargs),
        G=persistence.module_to_record(G),
        D=persistence.module_to_record(D),
        G_ema=persistence.module_to_record(G_ema),
        augment_pipe=persistence.module_to_record(augment_pipe) if augment_pipe is not None else None,
        training_state=training_state,
        metadata=dict(kimg=state['cur_nimg'] / 1000, written=time.strftime('%Y-%m-%d %H:%M:%S'),
                      num_gpus=num_gpus),
    )
    persistence.save_snapshot(data, path)


def restore(path: str, *, G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module,
            augment_pipe: Optional[torch.nn.Module], phases: list, loss: Any, controllers: Any,
            rank: int, num_gpus: int) -> Optional[dict[str, Any]]:
    """Load weights (strictly) and, when present, the training state.

    Returns None for a weights-only snapshot, else the counters plus ``rng``: this rank's RNG
    states, which the caller restores at the very end of set-up (``misc.set_rng_state``).
    """
    data = persistence.load_snapshot(path)
    for name, module in (('G', G), ('D', D), ('G_ema', G_ema)):
        _load_weights(path, name, data.get(name), module)
    if augment_pipe is not None and data.get('augment_pipe') is not None:
        _load_weights(path, 'augment_pipe', data['augment_pipe'], augment_pipe)

    training_state = data.get('training_state')
    if training_state is None:
        return None
    for name, opt in _optimizers(phases).items():
        opt.load_state_dict(training_state['optimizers'][name])
    loss.pl_mean.copy_(training_state['pl_mean'])
    controllers.load_state_dict(training_state['controllers'])
    saved_world = len(training_state['rng'])
    if saved_world != num_gpus and rank == 0:
        print(f'Note: the snapshot was written by {saved_world} process(es), this run has {num_gpus}; '
              'training continues, but random draws will not repeat the original run exactly.')
    rng = training_state['rng'][rank] if rank < saved_world else None
    return dict(cur_nimg=training_state['cur_nimg'], cur_tick=training_state['cur_tick'],
                batch_idx=training_state['batch_idx'], tick_start_nimg=training_state['tick_start_nimg'], rng=rng)


def _load_weights(path: str, name: str, record: Optional[dict], module: torch.nn.Module) -> None:
    if record is None:
        raise util.UserError(f'{path}: the snapshot holds no "{name}"')
    try:
        module.load_state_dict(record['state_dict'], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise util.UserError(f'{path}: "{name}" does not match this run\'s network configuration '
                             f'({first[0] if first else e}). Use the same --cfg/--cbase/--cmax/--map and '
                             f'method flags as the run that wrote it.') from None
