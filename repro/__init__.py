"""Reproducing the papers' tables: tables as data, scales, datasets, a runner and a report.

``python reproduce.py list | run TABLE[:ROW,…] | report TABLE`` (docs/reproducing.md):

* :mod:`repro.rows` — :class:`~repro.rows.Row` and :class:`~repro.rows.Table`, plain data;
* :mod:`repro.tables` — one module per paper table (``repro/tables/atopk_table1.py`` …);
* :mod:`repro.datasets` — datasets by name, where they come from, how they are prepared, and
  their checksums (``repro/checksums.json``);
* :mod:`repro.scales` — a row's ``train.py`` and ``calc_metrics.py`` commands at
  ``--scale=paper|cpu|smoke`` (the CPU-scale protocol lives there);
* :mod:`repro.runner` — ``run``: one training at a time, resumable, a JSON record per row × seed;
* :mod:`repro.report` — ``report``: a markdown table and a PNG chart per table.
"""
