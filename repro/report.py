"""``reproduce.py report``: a table's results as markdown and a PNG chart (docs/reproducing.md,
"Reading a report").

Per row: ours as mean ± std over the seeds found (sample std, n − 1), the paper's value, the
difference of our mean to the row's baseline (same table) and whether it exceeds the seed
spread — |Δ| > sqrt(std_row² + std_baseline²), which needs two seeds on both sides — beside the
paper's own difference. A result recorded at another commit than the checkout's stops the
report (one line naming the file) unless ``--mixed-commits=1``; those cells are then marked †.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Optional

from dnnlib import util
from dnnlib.util import UserError
from repro import runner, scales, tables
from repro.rows import Row, Table


@dataclasses.dataclass
class RowResult:
    row: Row
    status: str                      # 'ok' | 'not run' | blocker text
    values: list[float] = dataclasses.field(default_factory=list)
    secondary: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    metric_name: str = ''
    label: str = ''
    other_commit: bool = False
    paths: list[str] = dataclasses.field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return sum(self.values) / self.n if self.n else None

    @property
    def std(self) -> Optional[float]:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))


def collect(table: Table, scale: str, outdir: str, seeds: Optional[int], mixed_commits: bool,
            commit: str) -> list[RowResult]:
    """Every row's results at ``scale`` under ``outdir`` (seeds 0..seeds−1 when given, else all)."""
    out = []
    for row in table.rows:
        try:
            spec = scales.resolve(row, scale)
        except UserError as e:
            out.append(RowResult(row, str(e)))
            continue
        key = runner.run_key(spec)
        paths = sorted(glob.glob(os.path.join(outdir, 'results', key, 'seed*.json')),
                       key=lambda p: int(os.path.basename(p)[4:-5]) if os.path.basename(p)[4:-5].isdigit() else -1)
        if seeds is not None:
            paths = [p for p in paths if os.path.basename(p)[4:-5].isdigit() and int(os.path.basename(p)[4:-5]) < seeds]
        result = RowResult(row, 'ok' if paths else 'not run', label=spec.metric.label,
                           metric_name=spec.metric.recorded_name(row.metric))
        for path in paths:
            record = runner.read_result(path)
            recorded = record.get('git', {}).get('commit')
            if recorded != commit:
                if not mixed_commits:
                    raise UserError(f'{path} was recorded at commit {str(recorded)[:12]}, the checkout is at '
                                    f'{commit[:12]}: rerun that row (delete the file) or report with '
                                    f'--mixed-commits=1 (such cells are marked)')
                result.other_commit = True
            result.values.append(float(record['metric']['best']))
            for name, value in (record['metric'].get('secondary') or {}).items():
                result.secondary.setdefault(name, []).append(float(value))
            result.paths.append(path)
        out.append(result)
    return out


def _num(x: Optional[float], digits: int = 2) -> str:
    return '—' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.{digits}f}'


def _ours(r: RowResult) -> str:
    if r.status != 'ok':
        return r.status if r.status == 'not run' else '—'
    mark = ' †' if r.other_commit else ''
    if r.n == 1:
        return f'{_num(r.mean)} (n=1){mark}'
    return f'{_num(r.mean)} ± {_num(r.std)} (n={r.n}){mark}'


def _delta(r: RowResult, base: Optional[RowResult]) -> tuple[str, str]:
    """(our difference to the baseline, whether it exceeds the seed spread)."""
    if base is None:
        return '', ''
    if r.mean is None or base.mean is None:
        return '—', '—'
    d = r.mean - base.mean
    if r.std is None or base.std is None:
        return f'{d:+.2f}', 'n/a (needs 2 seeds each)'
    spread = math.sqrt(r.std ** 2 + base.std ** 2)
    return f'{d:+.2f}', f'{"yes" if abs(d) > spread else "no"} (spread {spread:.2f})'


def _paper_delta(row: Row, base: Optional[Row]) -> str:
    if base is None:
        return ''
    if row.paper is None or base.paper is None:
        return '—'
    return f'{row.paper - base.paper:+.2f}'


def markdown(table: Table, scale: str, results: list[RowResult], commit: str) -> str:
    by_id = {r.row.id: r for r in results}
    secondary = sorted({n for r in results for n in r.row.secondary})
    labels = sorted({r.label for r in results if r.status == 'ok'})
    lines = [f'# {table.title}', '',
             f'Scale: `--scale={scale}`. Commit: `{commit[:12]}`.'
             + (f' Ours: {labels[0]}.' if len(labels) == 1 else ''),
             'Lower is better for FID, higher for IS. Δ is a row minus its baseline; "beyond spread" says whether '
             'our |Δ| exceeds sqrt(std_row² + std_baseline²) over the seeds.', '']
    if table.note:
        lines += [table.note, '']
    recorded = next((r.metric_name for r in results if r.status == 'ok'), '')
    paper_metric = results[0].row.metric if results else ''
    head = ['row', 'method', 'dataset', 'batch', f'ours ({recorded})', f'paper ({paper_metric})',
            'Δ ours', 'beyond spread', 'Δ paper']
    for name in secondary:
        head += [f'ours {name}', f'paper {name}']
    head.append('notes')
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        base_row = table.row(r.row.baseline) if r.row.baseline else None
        base = by_id.get(r.row.baseline) if r.row.baseline else None
        d, beyond = _delta(r, base)
        cells = [f'`{r.row.id}`', r.row.label, r.row.dataset, str(r.row.batch or ''), _ours(r), _num(r.row.paper),
                 d, beyond, _paper_delta(r.row, base_row)]
        for name in secondary:
            vals = [v for k, vs in r.secondary.items() if k.split('@')[0] == name for v in vs]
            m = sum(vals) / len(vals) if vals else None
            cells += [_num(m), _num(r.row.paper_secondary.get(name))]
        notes = [r.status] if r.status not in ('ok', 'not run') else []
        notes += [r.row.note] if r.row.note else []
        cells.append('; '.join(notes))
        lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
    if any(r.other_commit for r in results):
        lines += ['', '† recorded at another commit than the checkout\'s.']
    if len(labels) > 1:
        lines += ['', 'Metrics: ' + '; '.join(labels)]
    return '\n'.join(lines) + '\n'


def chart(table: Table, scale: str, results: list[RowResult], path: str) -> str:
    """Ours (mean ± std) and the paper's values, one horizontal bar per row that has a result."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = [r for r in results if r.status == 'ok']
    height = max(2.5, 0.35 * len(rows) + 1.5)
    fig = Figure(figsize=(11, height), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    ax_ours, ax_paper = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ys = list(range(len(rows)))[::-1]
    names = [r.row.id for r in rows]
    ax_ours.barh(ys, [r.mean for r in rows], xerr=[r.std or 0.0 for r in rows], color='tab:blue', capsize=3)
    ax_ours.set_yticks(ys, names, fontsize='small')
    ax_ours.set_title(f'ours (--scale={scale}): {rows[0].metric_name if rows else ""}', fontsize='medium')
    ax_ours.grid(True, axis='x', alpha=0.3)
    paper = [r.row.paper if r.row.paper is not None else math.nan for r in rows]
    ax_paper.barh(ys, paper, color='tab:gray')
    ax_paper.set_yticks(ys, names, fontsize='small')
    ax_paper.set_title(f'paper: {rows[0].row.metric if rows else ""}', fontsize='medium')
    ax_paper.grid(True, axis='x', alpha=0.3)
    fig.suptitle(table.title, fontsize='medium')
    with util.atomic_path(path, suffix='.png') as tmp:
        fig.savefig(tmp, format='png')
    return path


def report(names: list[str], scale: str, outdir: str, seeds: Optional[int] = None,
           mixed_commits: bool = False) -> list[str]:
    """Write ``<outdir>/reports/<table>-<scale>.md`` and ``.png`` for each table; returns the paths."""
    if not names:
        raise UserError('name a table: reproduce.py report TABLE (python reproduce.py list)')
    commit = runner.git_state()['commit']
    written = []
    for name in names:
        table = tables.get(name)
        results = collect(table, scale, outdir, seeds, mixed_commits, commit)
        if not any(r.status == 'ok' for r in results):
            raise UserError(f'no results for {table.name} at --scale={scale} under {outdir}/results; '
                            f'run: python reproduce.py run {table.name} --scale={scale} --outdir={outdir}')
        base = os.path.join(outdir, 'reports', f'{table.name}-{scale}')
        try:
            util.atomic_write_text(base + '.md', markdown(table, scale, results, commit))
            chart(table, scale, results, base + '.png')
        except OSError as e:
            raise UserError(f'cannot write the report under {os.path.dirname(base)} ({e.strerror or e})') from None
        written += [base + '.md', base + '.png']
    return written


def table_listing(table: Optional[Table]) -> str:
    """``reproduce.py list``: the tables, or one table's rows with what each runs and its status."""
    if table is None:
        lines = [f'{"table":<15} {"rows":>4} {"runnable":>8}  title']
        for t in tables.TABLES.values():
            runnable = sum(1 for r in t.rows if r.blocker() is None)
            lines.append(f'{t.name:<15} {len(t.rows):>4} {runnable:>8}  {t.title}')
        lines.append('\npython reproduce.py list TABLE shows its rows; run TABLE[:ROW,...] trains them.')
        return '\n'.join(lines)
    lines = [table.title, table.note, ''] if table.note else [table.title, '']
    lines.append(f'{"row":<22} {"dataset":<15} {"backbone":<10} {"batch":>5} {"kimg":>7} {"runs":>4} {"paper":>7}  '
                 f'method / status')
    for r in table.rows:
        blocker = r.blocker()
        if blocker is None:
            try:
                scales.resolve(r, 'cpu')
            except UserError as e:
                blocker = f'paper scale only: {e}'
        flags = ' '.join(scales.flag_args(dict(r.flags)))
        lines.append(f'{r.id:<22} {r.dataset:<15} {r.backbone:<10} {r.batch or "":>5} {r.kimg or "":>7} '
                     f'{r.runs or "":>4} {_num(r.paper):>7}  {r.label}' + (f' [{blocker}]' if blocker else
                                                                         f' ({flags})' if flags else ''))
    return '\n'.join(lines)

