"""Plot a training run's ATop-k figures (paper Fig. 3a, 14, 15) from its logs.

Examples:

\b
  # All figures the run's logs allow, written into the run directory:
  python plot_stats.py --run=runs/00003-obama-low_shot-atopk
\b
  # Compare the D gap of a baseline and an ATop-k run; windows of k at chosen iterations:
  python plot_stats.py --run=runs/00002-obama-low_shot --run=runs/00003-obama-low_shot-atopk \\
      --outdir=figs --window-start=4000 --window-start=50000

Reads ``stats.jsonl`` and ``atopk-trace.jsonl`` (see ``patches/plots.py`` for the exact
definitions) and writes ``fig3a_d_gap.png``, ``fig14_k_window.png``, ``fig15_selected_per_4k.png``.
"""

from __future__ import annotations

from typing import Optional

import click

from dnnlib import util
from patches import plots


@click.command(help=__doc__)
@click.option('--run', 'runs', help='Training run directory (repeat to overlay runs)', metavar='DIR',
              multiple=True, required=True)
@click.option('--outdir', help='Where to write the PNGs [default: the first run directory]', metavar='DIR')
@click.option('--figs', help='Figures to draw: 3a, 14, 15 [default: all the logs allow]', metavar='LIST')
@click.option('--window-start', help='Fig. 14 window start iteration (repeat; default 4000 and 50000 '
              'when the trace reaches them, else its start and end)', type=int, multiple=True)
@click.option('--window-length', help='Fig. 14 window length in iterations [default: 50]', type=int, default=50)
@click.option('--smooth', help='Moving average over this many ticks for Fig. 3a/15 [default: 1]',
              type=click.IntRange(min=1), default=1)
def main(runs: tuple[str, ...], outdir: Optional[str], figs: Optional[str], window_start: tuple[int, ...],
         window_length: int, smooth: int) -> None:
    figures = None if figs is None else [f.strip() for f in figs.split(',') if f.strip()]
    written = plots.plot_runs(list(runs), outdir or runs[0], figures=figures, window_length=window_length,
                              window_start=list(window_start) or None, smooth=smooth)
    for path in written:
        print(path)


if __name__ == '__main__':
    util.run_cli(main)
