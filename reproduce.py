"""Reproduce the ATop-k and CHAIN papers' tables: list them, run their rows, report the results.

Examples:

\b
  # The tables, and the rows of one:
  python reproduce.py list
  python reproduce.py list atopk_fig3
\b
  # The first CPU-scale comparison (StyleGAN2 + DiffAugment, + ATop-k, + Worst-k, + Fixed Top-k),
  # 2 seeds, 100-shot Obama under data/100-shot-obama/ (about 2 h 20 min on 2 cores):
  python reproduce.py run atopk_fig3:da,da_atopk,da_worst3,da_fixed3 --scale=cpu --seeds=2 \\
      --data-root=data --outdir=runs/reproduce
  python reproduce.py report atopk_fig3 --scale=cpu --outdir=runs/reproduce
\b
  # A whole table at the papers' settings, on GPUs:
  python reproduce.py run atopk_table1 --scale=paper --gpus=4 --data-root=data --outdir=runs/reproduce
\b
  # Which datasets are present and intact; record checksums of your copies:
  python reproduce.py data --data-root=data --record=1

A killed run continues where it stopped: finished rows are skipped, an interrupted training
continues from its last snapshot. See docs/reproducing.md.
"""

from __future__ import annotations

import dnnlib.util  # imports no torch

dnnlib.util.let_idle_openmp_threads_sleep()  # as train.py; a user's setting wins

from typing import Optional  # noqa: E402

import click  # noqa: E402


_SCALE = click.option('--scale', type=click.Choice(['paper', 'cpu', 'smoke']), default='cpu', show_default=True,
                      help='paper: the papers\' settings (GPUs); cpu: the CPU-scale protocol; smoke: a few iterations')
_OUTDIR = click.option('--outdir', default='runs/reproduce', show_default=True, metavar='DIR',
                       help='Where runs, results and reports go')
_SEEDS = click.option('--seeds', type=click.IntRange(1), default=None, metavar='N',
                      help='Seeds 0..N-1 per row [default: the paper\'s runs at paper scale, 2 at cpu, 1 at smoke]')


@click.group(help=__doc__, context_settings=dict(max_content_width=110))
def main() -> None:
    pass


@main.command('list', help='List the tables, or the rows of TABLE (dataset, backbone, batch, length, paper value, '
                           'flags or why a row cannot run).')
@click.argument('table', required=False)
def list_cmd(table: Optional[str]) -> None:
    from repro import report, tables
    print(report.table_listing(tables.get(table) if table else None))


@main.command(help='Train and evaluate rows: TABLE or TABLE:ROW[,ROW...] (ids or patterns like "da*"), several '
                   'allowed. Finished rows are skipped; interrupted ones continue.')
@click.argument('selections', nargs=-1)
@_SCALE
@_SEEDS
@click.option('--data-root', default='data', show_default=True, metavar='DIR', help='Folder holding the datasets')
@_OUTDIR
@click.option('--gpus', type=click.IntRange(1), default=1, show_default=True, metavar='N', help='train.py / calc_metrics.py --gpus')
@click.option('--detector', metavar='PATH', help='Inception for the metrics (needed for IS: inception-2015-12-05.pt)')
@click.option('--lpips-vgg16', metavar='PATH', help='torchvision vgg16-397923af.pth (FastGAN rows)')
@click.option('-n', '--dry-run', is_flag=True, help='Check everything and print the commands; train nothing')
def run(selections: tuple[str, ...], scale: str, seeds: Optional[int], data_root: str, outdir: str, gpus: int,
        detector: Optional[str], lpips_vgg16: Optional[str], dry_run: bool) -> None:
    from repro import runner
    runner.run(list(selections), runner.Options(outdir=outdir, data_root=data_root, scale=scale, seeds=seeds,
                                                gpus=gpus, detector=detector, lpips_vgg16=lpips_vgg16,
                                                dry_run=dry_run))


@main.command(help='Write <outdir>/reports/<TABLE>-<scale>.md and .png from the recorded results.')
@click.argument('names', nargs=-1)
@_SCALE
@_SEEDS
@_OUTDIR
@click.option('--mixed-commits', type=bool, default=False, metavar='BOOL',
              help='Report results recorded at other commits too (marked) instead of stopping')
def report(names: tuple[str, ...], scale: str, seeds: Optional[int], outdir: str, mixed_commits: bool) -> None:
    from repro import report as report_lib
    for path in report_lib.report(list(names), scale, outdir, seeds, mixed_commits):
        print(path)


@main.command(help='Show which dataset sources are under --data-root and whether they are intact; --record=1 '
                   'writes the checksums of your copies to <data-root>/degan-checksums.json.')
@click.option('--data-root', default='data', show_default=True, metavar='DIR', help='Folder holding the datasets')
@click.option('--record', type=bool, default=False, metavar='BOOL', help='Record checksums the repository lacks')
def data(data_root: str, record: bool) -> None:
    from repro import datasets
    checks, seen = [], set()
    for ds in datasets.DATASETS.values():
        if ds.checksum_key in seen:
            continue
        seen.add(ds.checksum_key)
        check = datasets.check_source(ds, data_root, compute=True)
        checks.append(check)
        state = check.status if check.present else 'missing'
        print(f'{ds.checksum_key:<32} {state:<12} {check.message if state not in ("ok", "recorded-ok") else ""}')
    if record:
        print(datasets.record_checksums(checks, data_root))


if __name__ == '__main__':
    dnnlib.util.run_cli(main)
