"""Figures of the ATop-k paper from a run's logs: Fig. 3a, Fig. 14 and Fig. 15.

Inputs (written by the training loop into the run directory):

* ``stats.jsonl`` — one line per tick, ``{name: {num, mean, std}, ..., "timestamp": t}``, with
  ``Progress/kimg``, ``Loss/scores/real``, ``Loss/scores/fake`` and, for ATop-k runs,
  ``ATopk/k``, ``ATopk/p``, ``ATopk/selected_fraction`` and ``ATopk/D_gap``;
* ``atopk-trace.jsonl`` — one line per iteration, ``{"batch_idx": t, "k": k_t, "p": p_t}``:
  the k used by iteration t's G step and p after iteration t's tracker update (the p that
  drew k_{t+1}; ``patches.atopk``).

Figures (docs/methods.md §1.1, Appendix B.6 of the paper):

* **Fig. 3a** ``fig3a_d_gap.png`` — discriminator gap mean D(x) − mean D(G(z)) (raw logits) per
  tick against kimg; ``ATopk/D_gap`` when logged, else ``Loss/scores/real − Loss/scores/fake``.
* **Fig. 14** ``fig14_k_window.png`` — k over windows of consecutive iterations (the paper:
  iterations 4000–4050 and 50000–50050, batch 4).
* **Fig. 15** ``fig15_selected_per_4k.png`` — average number of selected fakes per 4k fakes:
  per tick, 4000 · Σ_t k_t / Σ_t B = 4000 · mean(``ATopk/selected_fraction``) (the fraction is
  reported once per G step, so its tick mean is Σk/(B·iterations)); 4000 means "all selected".
  With the default 4 kimg ticks each point is one block of ≈ 4k fakes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from dnnlib.util import UserError, atomic_path
from patches.atopk import TRACE_FILE

STATS_FILE = 'stats.jsonl'
FIG3A = 'fig3a_d_gap.png'
FIG14 = 'fig14_k_window.png'
FIG15 = 'fig15_selected_per_4k.png'
PAPER_WINDOW_STARTS = (4000, 50000)
FAKES_PER_BLOCK = 4000


# ---------------------------------------------------------------------------------------------
# Reading.


def _read_jsonl(path: str, what: str) -> list[dict[str, Any]]:
    """JSON lines; a truncated last line (a run still writing) is skipped, others are errors."""
    if not os.path.isfile(path):
        raise UserError(f'{what} not found: {path} (is --run a training run directory?)')
    with open(path, encoding='utf-8') as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f'{path}, line {i + 1}: not valid JSON') from None
    return rows


def load_stats(run_dir: str) -> list[dict[str, Any]]:
    """Rows of ``<run_dir>/stats.jsonl``."""
    rows = _read_jsonl(os.path.join(run_dir, STATS_FILE), STATS_FILE)
    if not rows:
        raise UserError(f'{os.path.join(run_dir, STATS_FILE)} is empty: no tick has finished yet')
    return rows


def load_trace(run_dir: str) -> dict[str, np.ndarray]:
    """``<run_dir>/atopk-trace.jsonl`` as arrays sorted by iteration; on repeats the last wins.

    A resumed run re-records the iterations after its snapshot; the later lines are kept.
    """
    rows = _read_jsonl(os.path.join(run_dir, TRACE_FILE), TRACE_FILE + ' (written by ATop-k runs)')
    if not rows:
        raise UserError(f'{os.path.join(run_dir, TRACE_FILE)} is empty')
    try:
        batch_idx = np.array([int(r['batch_idx']) for r in rows], dtype=np.int64)
        k = np.array([int(r['k']) for r in rows], dtype=np.int64)
        p = np.array([float(r.get('p', math.nan)) for r in rows], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f'{os.path.join(run_dir, TRACE_FILE)}: every line needs batch_idx and k ({e})') from None
    _, last = np.unique(batch_idx[::-1], return_index=True)  # sorted unique; index of last occurrence
    keep = len(batch_idx) - 1 - last
    return dict(batch_idx=batch_idx[keep], k=k[keep], p=p[keep])


def stat_series(rows: Sequence[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(kimg, mean of ``name``) over the ticks where both are logged and finite."""
    xs, ys = [], []
    for row in rows:
        x, y = row.get('Progress/kimg'), row.get(name)
        if not isinstance(x, dict) or not isinstance(y, dict):
            continue
        xv, yv = _as_float(x.get('mean')), _as_float(y.get('mean'))
        if math.isfinite(xv) and math.isfinite(yv):
            xs.append(xv)
            ys.append(yv)
    return np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def d_gap_series(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 3a: ``ATopk/D_gap`` if logged, else mean D(x) − mean D(G(z)) from the score stats."""
    x, y = stat_series(rows, 'ATopk/D_gap')
    if len(x):
        return x, y
    xr, real = stat_series(rows, 'Loss/scores/real')
    xf, fake = stat_series(rows, 'Loss/scores/fake')
    common, ir, jf = np.intersect1d(xr, xf, return_indices=True)
    return common, real[ir] - fake[jf]


def selected_per_4k_series(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 15: 4000 · mean(``ATopk/selected_fraction``) per tick (= 4000·Σk / Σ B)."""
    x, fraction = stat_series(rows, 'ATopk/selected_fraction')
    return x, FAKES_PER_BLOCK * fraction


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (window 1 = unchanged)."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(np.asarray(y, dtype=np.float64), 0, 0.0))
    out = np.empty(len(y))
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def window_starts(trace: dict[str, np.ndarray], length: int,
                  starts: Optional[Sequence[int]] = None) -> list[int]:
    """Start iterations of the Fig. 14 windows.

    Explicit ``starts`` must lie inside the trace. By default the paper's (4000, 50000) where the
    trace covers them; a window the trace does not reach is replaced by the first (early) or the
    last (late) ``length`` iterations of the trace.
    """
    idx = trace['batch_idx']
    first, last = int(idx[0]), int(idx[-1])
    if starts:
        for s in starts:
            if s < first or s + length - 1 > last:
                raise UserError(f'--window-start={s}: the trace covers iterations {first}..{last}, '
                                f'a window of {length} must fit inside')
        return [int(s) for s in starts]
    early, late = PAPER_WINDOW_STARTS
    chosen = [early if first <= early and early + length - 1 <= last else first,
              late if first <= late and late + length - 1 <= last else max(first, last - length + 1)]
    return sorted(set(chosen))


# ---------------------------------------------------------------------------------------------
# Drawing (matplotlib's object API: no global pyplot state, no display needed).


def _new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Any, path: str) -> str:
    with atomic_path(path, suffix='.png') as tmp:
        fig.savefig(tmp, format='png')
    return path


def _plot_series(ax: Any, runs: Sequence[tuple[str, Sequence[dict[str, Any]]]],
                 series: Callable[[Sequence[dict[str, Any]]], tuple[np.ndarray, np.ndarray]],
                 smooth: int, missing: str) -> None:
    """One smoothed line per run of ``series(rows)``; ``missing`` is the error when no run has data."""
    drawn = 0
    for label, rows in runs:
        x, y = series(rows)
        if len(x):
            ax.plot(x, moving_average(y, smooth), label=label, linewidth=1.2)
            drawn += 1
    if not drawn:
        raise UserError(missing)


def plot_d_gap(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str, smooth: int = 1) -> str:
    """Fig. 3a for one or more runs (label, stats rows)."""
    fig, (ax,) = _new_figure()
    _plot_series(ax, runs, d_gap_series, smooth,
                 'Fig. 3a: no run logs Progress/kimg with Loss/scores/real and Loss/scores/fake')
    ax.axhline(0.0, color='0.6', linewidth=0.8, linestyle=':')
    ax.set_xlabel('kimg (real images shown to D, thousands)')
    ax.set_ylabel('mean D(x) − mean D(G(z))  (logits)')
    ax.set_title('Discriminator gap over training (Fig. 3a)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


def plot_k_windows(runs: Sequence[tuple[str, dict[str, np.ndarray]]], path: str, length: int = 50,
                   starts: Optional[Sequence[int]] = None, batch_size: Optional[int] = None) -> str:
    """Fig. 14: k over windows of ``length`` consecutive iterations (windows chosen from the first run)."""
    if not runs:
        raise UserError('Fig. 14: no run has an atopk-trace.jsonl')
    if length < 2:
        raise UserError('--window-length must be at least 2')
    chosen = window_starts(runs[0][1], length, starts)
    fig, axes = _new_figure(ncols=len(chosen), width=5.5, height=3.6)
    k_max = batch_size or max(int(trace['k'].max()) for _, trace in runs)
    for ax, start in zip(axes, chosen):
        for label, trace in runs:
            sel = (trace['batch_idx'] >= start) & (trace['batch_idx'] < start + length)
            ax.step(trace['batch_idx'][sel], trace['k'][sel], where='post', marker='o', markersize=3,
                    linewidth=1.0, label=label)
        ax.set_xlim(start - 0.5, start + length - 0.5)
        ax.set_ylim(0.5, k_max + 0.5)
        ax.set_yticks(range(1, k_max + 1) if k_max <= 16 else np.linspace(1, k_max, 9).round().astype(int))
        ax.set_xlabel('iteration')
        ax.set_ylabel('k (fakes used for the G update)')
        ax.set_title(f'iterations {start}–{start + length}')
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize='small')
    fig.suptitle('k over consecutive iterations (Fig. 14)')
    return _save(fig, path)


def plot_selected_per_4k(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str, smooth: int = 1) -> str:
    """Fig. 15: average number of selected fakes per 4k fakes against kimg."""
    fig, (ax,) = _new_figure()
    _plot_series(ax, runs, selected_per_4k_series, smooth,
                 'Fig. 15: no run logs ATopk/selected_fraction (was it trained with --atopk=1?)')
    ax.axhline(FAKES_PER_BLOCK, color='0.6', linewidth=0.8, linestyle='--', label='all fakes (baseline)')
    ax.set_ylim(0, FAKES_PER_BLOCK * 1.05)
    ax.set_xlabel('kimg')
    ax.set_ylabel(f'selected fakes per {FAKES_PER_BLOCK // 1000}k fakes')
    ax.set_title('Average number of selected fakes (Fig. 15)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Whole runs.


FIGURES = ('3a', '14', '15')


def _batch_size_of(run_dir: str) -> Optional[int]:
    path = os.path.join(run_dir, 'training_options.json')
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f).get('batch_size')
        return int(value) if value else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def plot_runs(run_dirs: Iterable[str], outdir: str, figures: Optional[Sequence[str]] = None,
              window_length: int = 50, window_start: Optional[Sequence[int]] = None,
              smooth: int = 1) -> list[str]:
    """Write the figures for one or more runs into ``outdir``; returns the written paths.

    ``figures=None`` draws every figure the logs allow (Fig. 14/15 need ATop-k data and are
    skipped otherwise); naming a figure whose data is missing is an error.
    """
    run_dirs = [os.path.normpath(d) for d in run_dirs]
    if not run_dirs:
        raise UserError('give at least one --run directory')
    for d in run_dirs:
        if not os.path.isdir(d):
            raise UserError(f'--run={d}: not a directory')
    explicit = figures is not None
    figures = list(FIGURES if figures is None else figures)
    for fig_name in figures:
        if fig_name not in FIGURES:
            raise UserError(f'unknown figure {fig_name!r}; choose from {", ".join(FIGURES)}')
    labels = [os.path.basename(d) or d for d in run_dirs]
    stats = [(label, load_stats(d)) for label, d in zip(labels, run_dirs)]
    os.makedirs(outdir, exist_ok=True)
    written = []
    if '3a' in figures:
        written.append(plot_d_gap(stats, os.path.join(outdir, FIG3A), smooth=smooth))
    if '14' in figures:
        traces = [(label, load_trace(d)) for label, d in zip(labels, run_dirs)
                  if explicit or os.path.isfile(os.path.join(d, TRACE_FILE))]
        if traces:
            written.append(plot_k_windows(traces, os.path.join(outdir, FIG14), length=window_length,
                                          starts=window_start, batch_size=_batch_size_of(run_dirs[0])))
    if '15' in figures:
        have = [(label, rows) for label, rows in stats if len(selected_per_4k_series(rows)[0])]
        if have or explicit:
            written.append(plot_selected_per_4k(have, os.path.join(outdir, FIG15), smooth=smooth))
    return written
