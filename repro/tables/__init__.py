"""The paper tables, one plain-data module each; :data:`TABLES` by name, in listing order."""

from __future__ import annotations

import fnmatch
import importlib

from dnnlib.util import UserError
from repro.rows import Row, Table

MODULES = ('atopk_table1', 'atopk_table3', 'atopk_table5', 'atopk_table6', 'atopk_fig3', 'atopk_table8',
           'atopk_table9', 'chain_lowshot', 'chain_fewshot', 'chain_cifar10', 'chain_cifar100')

TABLES: dict[str, Table] = {}
for _name in MODULES:
    _table = importlib.import_module(f'repro.tables.{_name}').TABLE
    assert _table.name == _name, _name
    TABLES[_name] = _table


def get(name: str) -> Table:
    if name not in TABLES:
        raise UserError(f'unknown table "{name}"; tables: {", ".join(TABLES)} (python reproduce.py list)')
    return TABLES[name]


def select(spec: str) -> tuple[Table, list[Row], bool]:
    """``TABLE`` or ``TABLE:ROW,ROW`` (ids or shell patterns such as ``da*.obama``) → (table,
    rows, whether rows were named). An unknown table or a name that matches no row is an error."""
    name, sep, rest = spec.partition(':')
    table = get(name.strip())
    if not sep:
        return table, list(table.rows), False
    chosen: list[Row] = []
    for pattern in filter(None, (p.strip() for p in rest.split(','))):
        matches = [r for r in table.rows if fnmatch.fnmatchcase(r.id, pattern)]
        if not matches:
            raise UserError(f'table {table.name} has no row "{pattern}"; rows: '
                            f'{", ".join(r.id for r in table.rows[:12])}{" ..." if len(table.rows) > 12 else ""} '
                            f'(python reproduce.py list {table.name})')
        chosen += [r for r in matches if r not in chosen]
    if not chosen:
        raise UserError(f'"{spec}" names no row; write TABLE or TABLE:ROW[,ROW...]')
    return table, chosen, True
