"""Figures of short StyleGAN2 runs, to hold the StyleGAN2 numbers fixed across refactors.

Each case is a few iterations of ``train.py`` (a subprocess, so the same code measures any
checkout of the repository, before or after a change) on the built-in 16 px set with tiny
widths. Its *figures* are the per-tick statistics of ``stats.jsonl`` (losses, scores, ATop-k
k/p, CHAIN p, ADA p — everything but timings and memory) and, for the last snapshot, a
float64 sum and sum of squares per tensor of every network and of both optimisers' states,
plus a SHA-256 of all those bytes (equal digests = bitwise equal runs).

``tests/data/stylegan2_figures.json`` holds the figures recorded with the code *before* the
backbone registry landed (commit a27fbc8), except case ``fixedaug_linear_chainbatch`` (augment
p = 0.5), re-recorded when the ADA pipe took upstream's draw order (issue 18, item 10: the same
seed now gives other augmentations; every other case is unchanged, bitwise);
``tests/test_stylegan2_figures.py`` compares the
current code against them. ``tests/data/stylegan2-v1-snapshot.pt`` is the version-1 snapshot
written by that code after the first 3 iterations of case ``ada_atopk_chain``.

Record (or compare another checkout)::

    python tests/stylegan2_figures.py --repo=/path/to/checkout --out=figures.json
    python tests/stylegan2_figures.py --compare=tests/data/stylegan2_figures.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from typing import Any, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, 'tests', 'data')
FIGURES_FILE = os.path.join(DATA, 'stylegan2_figures.json')
#: The same cases recorded on each CPU kind the suite runs on (see tests/test_stylegan2_figures.py):
#: the original recording, and the same code (commit fa6e5db, which matches the original recording
#: bitwise on its CPU kind) on a Xeon (family 6, model 207) with AVX512-BF16 but no AMX, oneDNN 3.12.
FIGURES_FILES = (FIGURES_FILE, os.path.join(DATA, 'stylegan2_figures_other_cpu.json'))
V1_SNAPSHOT = os.path.join(DATA, 'stylegan2-v1-snapshot.pt')

COMMON = ['--data=builtin:16', '--cfg=low_shot', '--cbase=256', '--cmax=16', '--batch=4', '--kimg=0.024',
          '--tick=0.008', '--snap=1', '--fp32=1', '--metrics=none', '--workers=1', '--map=2']

CASES: dict[str, list[str]] = {
    # ADA (p moves at iteration 4), ATop-k with a p that moves within the run, CHAIN from iteration 0.
    'ada_atopk_chain': ['--seed=3', '--mirror=1', '--target=0.3', '--atopk=1', '--atopk-kimg=0.05',
                        '--chain=1', '--chain-start=0', '--chain-dp=0.05'],
    # Fixed-p ADA draws, Linear Top-k ablation, chain_batch variant on two resolutions.
    'fixedaug_linear_chainbatch': ['--seed=5', '--aug=fixed', '--p=0.5', '--topk-mode=linear', '--topk-nu=0.5',
                                   '--chain=1', '--chain-type=chain_batch', '--chain-res=16,8', '--chain-start=0'],
    # DiffAugment, conditional, CIFAR preset (no path length, 'orig' D, EMA ramp-up).
    'cifar_cond_diffaugment': ['--seed=7', '--cfg=cifar', '--cond=1', '--diffaugment=color,translation,cutout',
                               '--gamma=0.5'],
}


def run_case(name: str, outdir: str, repo: str = REPO, extra: Optional[list[str]] = None,
             env: Optional[dict] = None) -> str:
    """Run one case with ``repo``'s train.py; returns the run directory."""
    args = [arg for arg in COMMON if not any(arg.split('=')[0] == e.split('=')[0] for e in CASES[name])]
    cmd = [sys.executable, 'train.py', f'--outdir={outdir}'] + args + CASES[name] + list(extra or [])
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f'{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    runs = sorted(d for d in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, d)))
    return os.path.join(outdir, runs[-1])


def _snapshot_modules(data: dict) -> dict[str, dict]:
    """Network records of a snapshot, whatever its format version."""
    if 'modules' in data:
        return {name: rec for name, rec in data['modules'].items() if rec is not None}
    return {name: data[name] for name in ('G', 'D', 'G_ema', 'augment_pipe') if data.get(name) is not None}


def _snapshot_optimizers(data: dict) -> dict[str, dict]:
    return data['training_state']['optimizers']


def _tensor_figures(prefix: str, tensors: dict[str, torch.Tensor], out: dict, digest: Any) -> None:
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        t64 = t.detach().double()
        out[f'{prefix}.{name}'] = [float(t64.sum()), float(t64.square().sum())]
        digest.update(f'{prefix}.{name}'.encode() + t.detach().cpu().contiguous().numpy().tobytes())


def figures_of(run_dir: str) -> dict[str, Any]:
    """Statistics per tick and tensor figures of the last snapshot of a run directory."""
    stats = []
    with open(os.path.join(run_dir, 'stats.jsonl'), encoding='utf-8') as f:
        for line in f:
            entry = json.loads(line)
            stats.append({k: v['mean'] for k, v in sorted(entry.items())
                          if k != 'timestamp' and not k.startswith(('Timing/', 'Resources/')) and v['num'] > 0})
    snaps = sorted(s for s in os.listdir(run_dir) if s.startswith('network-snapshot-'))
    data = torch.load(os.path.join(run_dir, snaps[-1]), map_location='cpu', weights_only=True)
    tensors: dict[str, list[float]] = {}
    digest = hashlib.sha256()
    for name, rec in sorted(_snapshot_modules(data).items()):
        _tensor_figures(name, rec['state_dict'], tensors, digest)
    for name, opt_state in sorted(_snapshot_optimizers(data).items()):
        for idx, state in sorted(opt_state['state'].items(), key=lambda kv: int(kv[0])):
            _tensor_figures(f'opt.{name}.{idx}', state, tensors, digest)
    return dict(stats=stats, tensors=tensors, sha256=digest.hexdigest(), cur_nimg=data['training_state']['cur_nimg'])


def compare(got: dict[str, Any], want: dict[str, Any], rel: float = 1e-4) -> list[str]:
    """Differences beyond ``rel`` (relative to max(|want|, 1e-3)) between two figure sets."""
    problems = []
    if got['cur_nimg'] != want['cur_nimg']:
        problems.append(f'cur_nimg {got["cur_nimg"]} != {want["cur_nimg"]}')
    if len(got['stats']) != len(want['stats']):
        problems.append(f'{len(got["stats"])} ticks != {len(want["stats"])}')
    for tick, (g, w) in enumerate(zip(got['stats'], want['stats'])):
        if set(g) != set(w):
            problems.append(f'tick {tick}: statistics differ: {sorted(set(g) ^ set(w))}')
        problems += _close(f'tick {tick}', g, w, rel)
    if set(got['tensors']) != set(want['tensors']):
        problems.append(f'tensors differ: {sorted(set(got["tensors"]) ^ set(want["tensors"]))[:10]}')
    problems += _close('tensor', got['tensors'], want['tensors'], rel)
    return problems


def _close(where: str, got: dict, want: dict, rel: float) -> list[str]:
    out = []
    for key in sorted(set(got) & set(want)):
        for g, w in zip(*(v if isinstance(v, list) else [v] for v in (got[key], want[key]))):
            if not (math.isclose(g, w, rel_tol=rel, abs_tol=rel * 1e-3) or (math.isnan(g) and math.isnan(w))):
                out.append(f'{where} {key}: {g!r} != {w!r}')
    return out


def max_relative_difference(got: dict[str, Any], want: dict[str, Any]) -> float:
    worst = 0.0
    pairs = [(g, w) for tg, tw in zip(got['stats'], want['stats']) for k in set(tg) & set(tw) for g, w in [(tg[k], tw[k])]]
    pairs += [(g, w) for k in set(got['tensors']) & set(want['tensors'])
              for g, w in zip(got['tensors'][k], want['tensors'][k])]
    for g, w in pairs:
        worst = max(worst, abs(g - w) / max(abs(w), 1e-3))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repo', default=REPO, help='checkout whose train.py runs the cases')
    parser.add_argument('--cases', default=','.join(CASES))
    parser.add_argument('--out', help='write the figures (JSON) here')
    parser.add_argument('--compare', help='compare against this figures file')
    parser.add_argument('--v1-snapshot', help="also copy case ada_atopk_chain's 3-iteration snapshot here")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    for name in args.cases.split(','):
        with tempfile.TemporaryDirectory() as tmp:
            result[name] = figures_of(run_case(name, tmp, repo=args.repo))
            print(f'{name}: sha256 {result[name]["sha256"][:16]}  ticks {len(result[name]["stats"])}')
            if args.v1_snapshot and name == 'ada_atopk_chain':
                first = run_case(name, os.path.join(tmp, 'first'), repo=args.repo, extra=['--kimg=0.012'])
                snap = sorted(s for s in os.listdir(first) if s.startswith('network-snapshot-'))[-1]
                with open(os.path.join(first, snap), 'rb') as src, open(args.v1_snapshot, 'wb') as dst:
                    dst.write(src.read())
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare, encoding='utf-8') as f:
            want = json.load(f)
        for name, got in result.items():
            problems = compare(got, want[name])
            verdict = 'bitwise equal' if got['sha256'] == want[name]['sha256'] else \
                f'max relative difference {max_relative_difference(got, want[name]):.2e}'
            print(f'{name}: {verdict}; {len(problems)} differences beyond tolerance')
            for p in problems[:20]:
                print('   ', p)


if __name__ == '__main__':
    main()
