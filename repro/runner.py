"""``reproduce.py run``: train and evaluate table rows, one process at a time, resumable.

Layout under ``--outdir`` (docs/reproducing.md, "What run writes"):

* ``data/<name>-<res>.zip`` (+ ``.json``: the source's checksum and the dataset_tool command);
* ``runs/<key>/seed<N>/`` — train.py's ``--outdir`` for one row × seed (its run directories
  ``00000-…``, snapshots, ``metric-*.jsonl``) and ``commands.jsonl``, every command run for it;
* ``results/<key>/seed<N>.json`` — the record of a finished row × seed, written atomically.

``<key>`` names what is trained — scale, dataset, train.py flags, metric plan — not the table:
rows of several tables with the same settings (a baseline that appears in three tables) are
trained once. A row × seed whose record exists is skipped; one whose run directory holds a
snapshot short of the length continues with ``train.py --resume``; one without starts afresh.
Before any training every selected row is checked: datasets present and intact, weight files
given, ``--outdir`` writable, and its train.py flags through train.py's own dry run. ``--dry-run``
does all of that (it prepares the datasets too) and prints the commands without training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Optional

from dnnlib import util
from dnnlib.util import UserError
from repro import datasets, scales, tables
from repro.rows import Row, Table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FORMAT = 'degan-reproduce-result/1'
WEIGHT_FLAGS = {'lpips_vgg16': '--lpips-vgg16'}


@dataclasses.dataclass
class Options:
    """The flags of ``reproduce.py run`` / ``report``."""
    outdir: str = 'runs/reproduce'
    data_root: str = 'data'
    scale: str = 'cpu'
    seeds: Optional[int] = None
    gpus: int = 1
    detector: Optional[str] = None
    lpips_vgg16: Optional[str] = None
    dry_run: bool = False
    python: str = sys.executable


@dataclasses.dataclass
class Plan:
    """One row × seed to run."""
    table: Table
    row: Row
    spec: scales.RunSpec
    seed: int
    key: str
    run_root: str
    result_path: str


# ---------------------------------------------------------------------------------------------
# Keys, paths, records.


def run_key(spec: scales.RunSpec) -> str:
    """``<scale>-<dataset>-<10 hex>``: a hash of what is trained and measured (no paths, no --gpus)."""
    name = spec.dataset.name if spec.dataset is not None else spec.data.replace(':', '')
    payload = dict(scale=spec.scale, dataset=name, data=spec.data, flags=list(spec.flags),
                   metric=dict(mode=spec.metric.mode, metrics=list(spec.metric.metrics), num_gen=spec.metric.num_gen,
                               fractions=list(spec.metric.fractions)))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    return f'{spec.scale}-{name}-{digest}'


def result_path(outdir: str, key: str, seed: int) -> str:
    return os.path.join(outdir, 'results', key, f'seed{seed}.json')


def read_result(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not a readable result ({e}); delete it to run that row again') from None
    fmt = record.get('format') if isinstance(record, dict) else None
    if fmt != RESULT_FORMAT:
        raise UserError(f'{path}: not a reproduce.py result (format {fmt!r}); delete it to run that row again')
    return record


def git_state() -> dict[str, Any]:
    """The commit of the repository and whether tracked files differ from it."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(['git', *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git('rev-parse', 'HEAD')
    status = git('status', '--porcelain', '--untracked-files=no')
    return dict(commit=commit or 'unknown', dirty=bool(status) if status is not None else None)


def versions() -> dict[str, Any]:
    import numpy
    import torch
    return dict(python=platform.python_version(), torch=torch.__version__, numpy=numpy.__version__,
                platform=platform.platform(), machine=platform.machine(), cpu_count=os.cpu_count(),
                cuda=torch.version.cuda if torch.cuda.is_available() else None)


# ---------------------------------------------------------------------------------------------
# Selecting and checking.


def select_rows(selections: list[str], scale: str) -> list[tuple[Table, Row, scales.RunSpec]]:
    """Rows of ``TABLE[:ROW,…]`` selections with their specs at ``scale``. A row that cannot run is
    an error when named, and skipped with a note when it came with its whole table."""
    if not selections:
        raise UserError('name a table: reproduce.py run TABLE[:ROW,...] (python reproduce.py list)')
    chosen = []
    for selection in selections:
        table, rows, named = tables.select(selection)
        for row in rows:
            try:
                chosen.append((table, row, scales.resolve(row, scale)))
            except UserError as e:
                if named:
                    raise UserError(f'{table.name}:{row.id}: {e}') from None
                print(f'skip {table.name}:{row.id}: {e}')
    if not chosen:
        raise UserError(f'nothing to run in {" ".join(selections)} at --scale={scale} (every row was skipped)')
    return chosen


def check_outdir(outdir: str) -> None:
    """``--outdir`` exists or can be made, and a file can be written in it (one-line error)."""
    try:
        os.makedirs(outdir, exist_ok=True)
        with util.atomic_path(os.path.join(outdir, '.write-test')) as tmp:
            with open(tmp, 'w', encoding='utf-8') as f:
                f.write('ok\n')
        os.remove(os.path.join(outdir, '.write-test'))
    except OSError as e:
        raise UserError(f'--outdir={outdir} is not writable ({e.strerror or e}); choose another folder') from None


def needed_datasets(chosen: list[tuple[Table, Row, scales.RunSpec]]) -> list[tuple[datasets.Dataset, int]]:
    """(dataset, resolution) pairs the specs train or evaluate on (none at smoke scale)."""
    needed: list[tuple[datasets.Dataset, int]] = []
    for _, _, spec in chosen:
        for ds, res in ((spec.dataset, spec.resolution), (spec.ref_dataset, spec.resolution)):
            if ds is not None and spec.scale != 'smoke' and (ds, res) not in needed:
                needed.append((ds, res))
    return needed


def check_sources(needed: list[tuple[datasets.Dataset, int]], data_root: str) -> dict[str, datasets.SourceCheck]:
    """Every needed source present, of the right size, and matching a known checksum."""
    checks: dict[str, datasets.SourceCheck] = {}
    missing = []
    for ds, _ in needed:
        if ds.checksum_key in checks:
            continue
        check = datasets.check_source(ds, data_root, compute=False)
        if not check.present:
            missing.append(check)
            continue
        if check.status == 'wrong-count':
            raise UserError(check.message)
        checks[ds.checksum_key] = check
    if missing:
        more = f' (also missing: {", ".join(c.dataset.name for c in missing[1:])})' if len(missing) > 1 else ''
        raise UserError(missing[0].message + more)
    for key, check in checks.items():
        checks[key] = check = datasets.check_source(check.dataset, data_root, compute=True)
        if check.status == 'mismatch':
            raise UserError(check.message)
        if check.status == 'unknown':
            print(f'note: {check.message}')
    return checks


def check_weights(chosen: list[tuple[Table, Row, scales.RunSpec]], opts: Options) -> None:
    for table, row, spec in chosen:
        if spec.scale == 'smoke':
            continue
        for weight in row.weights:
            path = getattr(opts, weight)
            if not path or not os.path.isfile(path):
                flag = WEIGHT_FLAGS[weight]
                raise UserError(f'{table.name}:{row.id} needs {flag}=PATH (torchvision\'s vgg16-397923af.pth for '
                                f'LPIPS){"" if not path else f"; {path} is not a file"}')
        if any(m.startswith('is') for m in spec.metric.metrics) and not opts.detector:
            raise UserError(f'{table.name}:{row.id} reports IS ({", ".join(spec.metric.metrics[1:])}): pass '
                            f'--detector=inception-2015-12-05.pt (NVIDIA\'s Inception with logits)')


# ---------------------------------------------------------------------------------------------
# Commands.


def _append_line(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(util.to_jsonable(record)) + '\n').encode('utf-8'))
    finally:
        os.close(fd)


def read_commands(run_root: str) -> list[dict[str, Any]]:
    path = os.path.join(run_root, 'commands.jsonl')
    if not os.path.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def run_command(argv: list[str], log_path: Optional[str], what: str) -> int:
    """Run ``argv`` in the repository root, output to this terminal; append it to ``log_path``.

    Ctrl-C reaches the child through the terminal; this waits until it has written its final
    snapshot, then stops. A SIGTERM sent to reproduce.py is passed on to the child likewise."""
    print(f'\n$ {" ".join(argv)}', flush=True)
    start = time.time()
    proc = subprocess.Popen(argv, cwd=REPO)
    terminated: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        terminated.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward) if _main_thread() else None
    interrupted = False
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                if interrupted:  # twice: stop at once
                    proc.kill()
                    proc.wait()
                    raise
                interrupted = True
                print(f'\nInterrupted: waiting for {what} to write its final snapshot (Ctrl-C again to kill it)',
                      file=sys.stderr, flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if log_path is not None:
        _append_line(log_path, dict(argv=argv, cwd=REPO, started=start, seconds=round(time.time() - start, 1),
                                    returncode=rc, what=what))
    if interrupted:
        raise KeyboardInterrupt
    if terminated:
        raise UserError(f'stopped by SIGTERM during {what}; run reproduce.py run again to continue')
    return rc


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------
# Datasets.


def prepare_datasets(needed: list[tuple[datasets.Dataset, int]], checks: dict[str, datasets.SourceCheck],
                     opts: Options) -> dict[tuple[str, int], str]:
    """The prepared file of every (dataset, resolution), made with dataset_tool.py when absent or
    made from another copy of the source; returns their paths."""
    paths = {}
    for ds, res in needed:
        check = checks[ds.checksum_key]
        dest = os.path.abspath(os.path.join(opts.outdir, 'data', ds.prepared_name(res)))
        sidecar = dest + '.json'
        source = dict(path=os.path.abspath(check.path), algorithm=check.algorithm, checksum=check.value)
        try:
            with open(sidecar, encoding='utf-8') as f:
                made = json.load(f)
        except (OSError, ValueError):
            made = None
        if not (os.path.exists(dest) and made and made.get('source', {}).get('checksum') == check.value):
            for stale in (dest, sidecar):
                if os.path.exists(stale):
                    os.remove(stale)
            argv = [opts.python, 'dataset_tool.py'] + ds.dataset_tool_args(source['path'], dest, res)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            rc = run_command(argv, None, f'dataset_tool.py for {ds.name}')
            if rc != 0:
                raise UserError(f'dataset_tool.py failed (exit {rc}) preparing {ds.name} from {check.path}')
            util.atomic_write_json(sidecar, dict(dataset=ds.name, resolution=res, source=source, command=argv,
                                                 written=time.time()))
        paths[(ds.name, res)] = dest
    return paths


# ---------------------------------------------------------------------------------------------
# Plans and train.py's dry run.


def make_plans(chosen: list[tuple[Table, Row, scales.RunSpec]], opts: Options) -> list[Plan]:
    plans: list[Plan] = []
    seen = set()
    for table, row, spec in chosen:
        key = run_key(spec)
        for seed in range(opts.seeds or scales.seeds_default(spec.scale, row)):
            if (key, seed) in seen:
                continue
            seen.add((key, seed))
            plans.append(Plan(table, row, spec, seed, key, os.path.join(opts.outdir, 'runs', key, f'seed{seed}'),
                              result_path(opts.outdir, key, seed)))
    return plans


def data_path(spec: scales.RunSpec, data_paths: dict[tuple[str, int], str]) -> str:
    return spec.data if spec.dataset is None else data_paths[(spec.dataset.name, spec.resolution)]


def train_argv(plan: Plan, opts: Options, data_paths: dict[tuple[str, int], str],
               resume: Optional[str] = None) -> list[str]:
    spec = plan.spec
    argv = ['train.py', f'--outdir={os.path.abspath(plan.run_root)}', f'--data={data_path(spec, data_paths)}',
            *spec.flags, f'--seed={plan.seed}', f'--gpus={opts.gpus}']
    argv += _metric_files(spec, opts, data_paths, inline=True)
    for weight in plan.row.weights:
        if spec.scale != 'smoke' and getattr(opts, weight):
            argv.append(f'{WEIGHT_FLAGS[weight]}={os.path.abspath(getattr(opts, weight))}')
    if resume is not None:
        argv.append(f'--resume={resume}')
    return argv


def _metric_files(spec: scales.RunSpec, opts: Options, data_paths: dict[tuple[str, int], str],
                  inline: bool) -> list[str]:
    if inline and spec.metric.mode != 'inline':
        return []
    out = []
    if opts.detector:
        out.append(f'--detector={os.path.abspath(opts.detector)}')
    ref = spec.ref_dataset
    if ref is not None:
        out.append(f'--ref-data={data_paths[(ref.name, spec.resolution)]}')
    return out


def dry_run_train(argv: list[str]) -> None:
    """train.py's own configuration and checks for ``argv`` (``train.py …`` without the
    interpreter), in this process, output swallowed; a bad row is a UserError naming the flag."""
    import click
    import train  # the repository root's train.py
    from training import config
    ctx = train.main.make_context('train.py', list(argv[1:]) + ['--dry-run'])
    with ctx:
        flags = dict(ctx.params)
        given = {name for name in flags if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
        with contextlib.redirect_stdout(io.StringIO()):
            opts = config.TrainOptions.from_flags(flags, given=given)
            config.build_training_args(opts)


def preflight(plans: list[Plan], opts: Options, data_paths: dict[tuple[str, int], str]) -> None:
    """Every distinct train.py command passes train.py's dry run before anything trains."""
    import click
    done = set()
    for plan in plans:
        argv = train_argv(plan, opts, data_paths)
        key = tuple(a for a in argv if not a.startswith(('--outdir=', '--seed=')))
        if key in done:
            continue
        done.add(key)
        try:
            dry_run_train(argv)
        except UserError as e:
            raise UserError(f'{plan.table.name}:{plan.row.id}: train.py refuses its flags: {e}') from None
        except click.ClickException as e:
            raise UserError(f'{plan.table.name}:{plan.row.id}: train.py refuses its flags: {e.format_message()}') \
                from None


# ---------------------------------------------------------------------------------------------
# Training state and metrics.


def snapshot_nimg(path: str) -> int:
    """Images shown when a snapshot was written (its counters)."""
    from torch_utils import persistence
    data = persistence.load_snapshot(path, mmap=True)
    state = data.get('training_state') or {}
    if 'cur_nimg' in state:
        return int(state['cur_nimg'])
    return int(round(float((data.get('metadata') or {}).get('kimg', 0)) * 1000))


def snapshots(run_root: str) -> list[tuple[int, str]]:
    """(images shown, path) of every snapshot of every train.py run directory, in training order."""
    found = []
    for path in glob.glob(os.path.join(run_root, '[0-9]*-*', 'network-snapshot-*.pt')):
        found.append((snapshot_nimg(path), path))
    return sorted(found, key=lambda t: (t[0], t[1]))


def training_state(run_root: str, total_kimg: float) -> tuple[str, Optional[str]]:
    """('done', last snapshot) | ('resume', last snapshot) | ('fresh', None)."""
    snaps = snapshots(run_root)
    if not snaps:
        return 'fresh', None
    nimg, path = snaps[-1]
    return ('done' if nimg >= total_kimg * 1000 else 'resume'), path


def evaluation_snapshots(snaps: list[tuple[int, str]], total_kimg: float,
                         fractions: tuple[float, ...]) -> list[tuple[int, str]]:
    """For each fraction φ, the first snapshot at or after φ × length (and before the next point):
    at most one per point, wherever an interrupted and resumed run put its ticks."""
    points = [round(f * total_kimg * 1000) for f in fractions]
    chosen = []
    for i, point in enumerate(points):
        end = points[i + 1] if i + 1 < len(points) else None
        for nimg, path in snaps:
            if nimg >= point and (end is None or nimg < end):
                chosen.append((nimg, path))
                break
    return chosen


def _metric_records(run_dir: str, name: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, f'metric-{name}.jsonl')
    if not os.path.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def _value(record: dict[str, Any]) -> float:
    from metrics import metric_main
    return metric_main.primary_value(record)[1]


def find_record(run_dir: str, name: str, snapshot: str) -> Optional[dict[str, Any]]:
    for record in _metric_records(run_dir, name):
        if record.get('snapshot_pkl') == os.path.basename(snapshot):
            return record
    return None


def evaluate(plan: Plan, opts: Options, data_paths: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    """The run's evaluations: {snapshot, kimg, values{recorded metric name: value}}."""
    spec = plan.spec
    names = [spec.metric.recorded_name(m) for m in spec.metric.metrics]
    snaps = snapshots(plan.run_root)
    if spec.metric.mode == 'inline':
        chosen = [s for s in snaps if find_record(os.path.dirname(s[1]), names[0], s[1]) is not None]
    else:
        chosen = evaluation_snapshots(snaps, spec.total_kimg, spec.metric.fractions)
        if len(chosen) < len(spec.metric.fractions):
            raise UserError(f'{plan.table.name}:{plan.row.id} seed {plan.seed}: the run has no snapshot for every '
                            f'evaluation point ({len(chosen)} of {len(spec.metric.fractions)}); delete '
                            f'{plan.run_root} to train it again')
    evaluations = []
    for nimg, snap in chosen:
        run_dir = os.path.dirname(snap)
        if any(find_record(run_dir, n, snap) is None for n in names):
            if spec.metric.mode == 'inline':
                continue
            argv = ['calc_metrics.py', f'--metrics={",".join(spec.metric.metrics)}', f'--network={snap}',
                    f'--gpus={opts.gpus}', *_metric_files(spec, opts, data_paths, inline=False)]
            if spec.metric.num_gen is not None:
                argv.append(f'--num-gen={spec.metric.num_gen}')
            rc = run_command([opts.python] + argv, os.path.join(plan.run_root, 'commands.jsonl'),
                             f'calc_metrics.py for {plan.table.name}:{plan.row.id} seed {plan.seed}')
            if rc != 0 or any(find_record(run_dir, n, snap) is None for n in names):
                raise UserError(f'calc_metrics.py failed (exit {rc}) on {snap}; run reproduce.py run again to retry')
        values = {n: _value(find_record(run_dir, n, snap)) for n in names}  # type: ignore[arg-type]
        evaluations.append(dict(snapshot=os.path.relpath(snap, opts.outdir), kimg=nimg / 1000, values=values))
    if not evaluations:
        raise UserError(f'{plan.table.name}:{plan.row.id} seed {plan.seed}: no metric was recorded in '
                        f'{plan.run_root} (train.py --metrics ran at no snapshot)')
    return evaluations


def best_of(evaluations: list[dict[str, Any]], name: str, higher: bool) -> dict[str, Any]:
    import math
    valid = [e for e in evaluations if not math.isnan(e['values'][name])]
    if not valid:
        return evaluations[-1]
    return (max if higher else min)(valid, key=lambda e: e['values'][name])


# ---------------------------------------------------------------------------------------------
# One row × seed, and the whole run.


def execute(plan: Plan, opts: Options, data_paths: dict[tuple[str, int], str],
            checks: dict[str, datasets.SourceCheck], git: dict[str, Any]) -> dict[str, Any]:
    """Train (fresh, resumed, or not at all), evaluate and record one row × seed."""
    spec = plan.spec
    where = f'{plan.table.name}:{plan.row.id} seed {plan.seed}'
    os.makedirs(plan.run_root, exist_ok=True)
    log = os.path.join(plan.run_root, 'commands.jsonl')
    state, snap = training_state(plan.run_root, spec.total_kimg)
    if state != 'done':
        print(f'\n== {where}: {"continuing from " + snap if snap else "training"} ({scales.describe_factor(spec)})')
        argv = train_argv(plan, opts, data_paths, resume=snap)
        rc = run_command([opts.python] + argv, log, f'train.py for {where}')
        state, last = training_state(plan.run_root, spec.total_kimg)
        if rc != 0:
            again = f'it continues from {last}' if last else 'it starts again'
            raise UserError(f'train.py failed (exit {rc}) for {where}; see the log.txt under {plan.run_root}; '
                            f'run reproduce.py run again ({again})')
        if state != 'done':
            raise UserError(f'train.py stopped before {spec.total_kimg:g} kimg for {where} (last snapshot {last}); '
                            f'run reproduce.py run again to continue')
    evaluations = evaluate(plan, opts, data_paths)
    names = [spec.metric.recorded_name(m) for m in spec.metric.metrics]
    best = best_of(evaluations, names[0], plan.row.higher_is_better)
    ds = spec.dataset
    check = checks.get(ds.checksum_key) if ds is not None else None
    record = dict(
        format=RESULT_FORMAT, table=plan.table.name, row=plan.row.id, label=plan.row.label, key=plan.key,
        scale=spec.scale, seed=plan.seed,
        dataset=dict(name=ds.name if ds else spec.data, source=check.path if check else None,
                     checksum=None if check is None else dict(algorithm=check.algorithm, value=check.value,
                                                              status=check.status),
                     data=data_path(spec, data_paths), resolution=spec.resolution,
                     prepared_with=_prepared_with(data_path(spec, data_paths))),
        train=dict(flags=list(spec.flags), total_kimg=spec.total_kimg, factor=spec.factor, batch=plan.row.batch,
                   run_dirs=sorted({os.path.dirname(e['snapshot']) for e in evaluations})),
        metric=dict(name=names[0], base=plan.row.metric, label=spec.metric.label, mode=spec.metric.mode,
                    num_gen=spec.metric.num_gen, fractions=list(spec.metric.fractions),
                    higher_is_better=plan.row.higher_is_better, best=best['values'][names[0]],
                    best_kimg=best['kimg'], best_snapshot=best['snapshot'],
                    secondary={n: best['values'][n] for n in names[1:]}, evaluations=evaluations),
        paper=dict(value=plan.row.paper, metric=plan.row.metric, secondary=dict(plan.row.paper_secondary)),
        commands=read_commands(plan.run_root), git=git, versions=versions(), finished=time.time())
    util.atomic_write_json(plan.result_path, record)
    print(f'== {where}: {names[0]} {record["metric"]["best"]:.2f} (best at kimg {best["kimg"]:g}) -> '
          f'{plan.result_path}')
    return record


def _prepared_with(path: str) -> Optional[list[str]]:
    """The dataset_tool.py command that made a prepared dataset (its ``.json`` next to it)."""
    try:
        with open(path + '.json', encoding='utf-8') as f:
            return json.load(f).get('command')
    except (OSError, ValueError):
        return None


def run(selections: list[str], opts: Options) -> list[Plan]:
    """``reproduce.py run``: check everything, then run every unfinished row × seed in turn."""
    chosen = select_rows(selections, opts.scale)
    check_outdir(opts.outdir)
    check_weights(chosen, opts)
    needed = needed_datasets(chosen)
    checks = check_sources(needed, opts.data_root)
    data_paths = prepare_datasets(needed, checks, opts)
    plans = make_plans(chosen, opts)
    preflight(plans, opts, data_paths)
    git = git_state()
    if opts.dry_run:
        for plan in plans:
            status = 'done' if os.path.exists(plan.result_path) else 'to run'
            print(f'{plan.table.name}:{plan.row.id} seed {plan.seed} [{status}]: '
                  f'{" ".join(train_argv(plan, opts, data_paths))}')
        return plans
    todo = [p for p in plans if not os.path.exists(p.result_path)]
    print(f'{len(plans)} row x seed runs, {len(plans) - len(todo)} already finished, {len(todo)} to run '
          f'(--scale={opts.scale}, results in {os.path.join(opts.outdir, "results")})')
    for plan in plans:
        if os.path.exists(plan.result_path):
            record = read_result(plan.result_path)
            commit = str(record.get('git', {}).get('commit'))
            note = f' (recorded at commit {commit[:10]})' if commit != git['commit'] else ''
            print(f'done {plan.table.name}:{plan.row.id} seed {plan.seed}: {record["metric"]["name"]} '
                  f'{record["metric"]["best"]:.2f}{note}')
            continue
        execute(plan, opts, data_paths, checks, git)
    return plans
