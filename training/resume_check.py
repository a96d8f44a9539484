"""What a ``--resume`` snapshot must agree on with the flags, checked before the run directory exists.

train.py reads the snapshot at configuration (memory-mapped) and stops with one line when

* its networks were trained on images of another resolution, channel count or label count than
  ``--data`` gives (:func:`check_dataset`) — the fix is the dataset, not ``--cfg``;
* it holds a finished run: its kimg is already at or past ``--kimg`` (:func:`check_not_finished`);
* its methods — ATop-k, ADA's adaptive p, CHAIN, the D augmentation pipe — differ from the flags'
  (:func:`method_differences`): resuming would silently drop a method's state or start one from
  nothing while the log says "continuing exactly". ``--fresh-methods=1`` accepts the
  differences: methods the snapshot lacks start fresh, states the flags do not use are dropped
  (and CHAIN's buffers, which are D buffers only, start at their initial values or are left out).

Weights-only snapshots (official pickles, converted checkpoints) are transfers: kimg and every
method start fresh anyway, so only the dataset is checked.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from dnnlib.util import UserError

#: Constructor arguments of a network that a paper method adds (CHAIN's layers in D): networks
#: that differ only in these differ only in buffers (patches/chain.py: "Buffers only").
METHOD_INIT_KWARGS = ('chain_kwargs',)


class DataFacts(NamedTuple):
    """What the networks' shapes depend on in ``--data``."""
    path: str
    resolution: int
    channels: int
    label_dim: int   # 0 without --cond


def network_facts(data: dict[str, Any]) -> Optional[tuple[int, int, int]]:
    """(resolution, channels, label dim) of the snapshot's generator, None where it does not say."""
    record = (data.get('modules') or {}).get('G') or (data.get('modules') or {}).get('G_ema')
    kwargs = (record or {}).get('init_kwargs') or {}
    if kwargs.get('img_resolution') is None:
        return None
    return int(kwargs['img_resolution']), int(kwargs.get('img_channels', 3)), int(kwargs.get('c_dim', 0))


def check_dataset(path: str, data: dict[str, Any], facts: DataFacts) -> None:
    """The snapshot's networks and ``--data`` agree on resolution, channels and labels."""
    found = network_facts(data)
    if found is None:
        return
    resolution, channels, label_dim = found
    if resolution != facts.resolution or channels != facts.channels:
        raise UserError(f'--resume={path}: its networks were trained on {resolution}x{resolution} images with '
                        f'{channels} channel(s), but --data={facts.path} has {facts.resolution}x{facts.resolution} '
                        f'images with {facts.channels}; resume with the dataset it was trained on (or make one of '
                        f'that resolution: dataset_tool.py --resolution={resolution}x{resolution})')
    if label_dim != facts.label_dim:
        want = f'--cond=1 and a dataset with {label_dim} classes' if label_dim else '--cond=0'
        raise UserError(f'--resume={path}: its networks take {label_dim} label dimension(s), this run gives '
                        f'{facts.label_dim}; resume with {want}')


def check_not_finished(path: str, data: dict[str, Any], total_kimg: float) -> None:
    """A snapshot at or past ``--kimg`` has nothing left to train."""
    state = data.get('training_state')
    if state is None:
        return
    kimg = int(state['cur_nimg']) / 1000
    if kimg >= total_kimg:
        raise UserError(f'--resume={path}: the run is already at kimg {kimg:g}, which is not below --kimg='
                        f'{total_kimg:g}; give a larger --kimg to train further')


def snapshot_methods(data: dict[str, Any]) -> dict[str, str]:
    """The paper methods and augmentation a full snapshot was trained with: ``{method: detail}``."""
    states = (data.get('training_state') or {}).get('states') or {}
    modules = data.get('modules') or {}
    methods: dict[str, str] = {}
    if 'atopk' in states:
        controller = (states['atopk'] or {}).get('controller') or {}
        methods['ATop-k'] = f'k={controller["k"]}' if 'k' in controller else 'on'
    if 'ada' in states:
        methods["ADA's adaptive p"] = 'on'
    if any(((record or {}).get('init_kwargs') or {}).get('chain_kwargs') is not None for record in modules.values()):
        methods['CHAIN'] = 'on'
    pipe = modules.get('augment_pipe')
    if pipe is not None:
        methods['D augmentation'] = _short_class(pipe.get('class_name', '?'))
    return methods


def flag_methods(args: dict[str, Any]) -> dict[str, str]:
    """The same, for train.py's configured ``training_loop`` kwargs."""
    methods: dict[str, str] = {}
    if args.get('atopk_kwargs') is not None:
        methods['ATop-k'] = 'on'
    if args.get('augment_kwargs') is not None and args.get('ada_target') is not None:
        methods["ADA's adaptive p"] = 'on'
    if args.get('chain_kwargs') is not None:
        methods['CHAIN'] = 'on'
    if args.get('augment_kwargs') is not None:
        methods['D augmentation'] = _short_class(args['augment_kwargs'].get('class_name', '?'))
    return methods


def _short_class(class_name: str) -> str:
    return class_name.rsplit('.', 1)[-1]


def method_differences(data: dict[str, Any], args: dict[str, Any]) -> list[str]:
    """One phrase per method on which the snapshot and the flags disagree (empty: they agree)."""
    saved, wanted = snapshot_methods(data), flag_methods(args)
    differences = []
    for method in sorted(set(saved) | set(wanted)):
        if method not in wanted:
            differences.append(f'{method} is in the snapshot ({saved[method]}) but off in the flags')
        elif method not in saved:
            differences.append(f'{method} is on in the flags but not in the snapshot')
        elif method == 'D augmentation' and saved[method] != wanted[method]:
            differences.append(f'the D augmentation is {saved[method]} in the snapshot, {wanted[method]} in the flags')
    return differences


def check_methods(path: str, data: dict[str, Any], args: dict[str, Any], fresh_methods: bool) -> list[str]:
    """Stop on a disagreement unless ``fresh_methods``; returns the accepted differences."""
    differences = method_differences(data, args)
    if differences and not fresh_methods:
        raise UserError(f'--resume={path}: the flags and the snapshot disagree on the methods: '
                        f'{"; ".join(differences)}. Give the flags the run was started with (training_options.json '
                        'next to the snapshot), or add --fresh-methods=1 to start those methods fresh')
    return differences


def differ_only_in_methods(saved_kwargs: dict[str, Any], run_kwargs: dict[str, Any]) -> bool:
    """Whether two networks' constructor arguments differ only in what paper methods add."""
    def strip(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if k not in METHOD_INIT_KWARGS}
    return strip(saved_kwargs) == strip(run_kwargs)
