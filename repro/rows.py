"""A paper table as plain data: :class:`Row` (one line of a table) and :class:`Table`.

A row says what the paper ran — dataset, backbone, ``--cfg`` preset, method flags, batch,
length, metric, how many runs — and the value the paper reports. How it is run at each scale
is :mod:`repro.scales`' business; the row itself never changes with the scale.

Rows that are not runnable say why: ``cited`` (the paper quotes another paper's number) or
``waits_for`` (something degan does not have yet: a backbone, a regulariser, a dataset reader).
A row whose backbone is not registered in ``backbones/__init__.py`` waits for it as well
(:meth:`Row.blocker`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

#: Metrics whose headline value is better when higher (everything else: lower is better).
HIGHER_IS_BETTER = ('is10k', 'is50k')


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a paper table.

    ``flags``: the row's method flags as train.py field names (``{'diffaugment':
    'color,translation,cutout', 'atopk': True}``); ``batch`` / ``kimg``: the paper's global batch
    and length (kimg of real images shown to D); ``metric``: the registered metric the paper's
    number corresponds to (``fid5k_full`` …) and ``secondary`` further metrics reported beside it
    (IS); ``runs``: how many runs the paper averages (None: not stated); ``paper`` and
    ``paper_secondary``: its values (None: not in our copy of the paper); ``baseline``: the id of
    the row (same table) it is compared with.
    """
    id: str
    label: str
    dataset: str
    paper: Optional[float] = None
    backbone: str = 'stylegan2'
    cfg: Optional[str] = None
    flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch: Optional[int] = None
    kimg: Optional[float] = None
    mirror: bool = True
    cond: bool = False
    metric: str = 'fid5k_full'
    secondary: tuple[str, ...] = ()
    paper_secondary: Mapping[str, float] = dataclasses.field(default_factory=dict)
    runs: Optional[int] = None
    baseline: Optional[str] = None
    cited: Optional[str] = None
    waits_for: Optional[str] = None
    weights: tuple[str, ...] = ()
    paper_flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ''

    def blocker(self) -> Optional[str]:
        """Why the row cannot be trained here (None: it can). Imports the backbone registry only."""
        if self.cited:
            return f'not runnable: cited only ({self.cited})'
        import backbones
        if self.backbone not in backbones.names():
            return (f'waits for --backbone={self.backbone} (not built yet; built: {", ".join(backbones.names())})'
                    + (f' and {self.waits_for}' if self.waits_for else ''))
        if self.waits_for:
            return f'waits for {self.waits_for}'
        from repro import datasets
        blocker = datasets.get(self.dataset).blocker
        return f'waits for {blocker}' if blocker else None

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER


@dataclasses.dataclass(frozen=True)
class Table:
    """A paper table (or figure): its rows and how to read them."""
    name: str
    title: str
    paper: str
    rows: tuple[Row, ...]
    note: str = ''

    def __post_init__(self) -> None:
        ids = [r.id for r in self.rows]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        assert not dupes, f'{self.name}: duplicate row ids {dupes}'
        for row in self.rows:
            assert row.baseline is None or row.baseline in ids, f'{self.name}:{row.id}: unknown baseline'

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise KeyError(row_id)


def method_rows(dataset: str, values: Mapping[str, Optional[float]], methods: Mapping[str, Mapping[str, Any]],
                suffix: Optional[str] = None, **common: Any) -> list[Row]:
    """Rows ``<method>.<suffix or dataset>`` for one dataset from a method table.

    ``methods[m]`` holds the Row fields of method ``m`` (label, flags, backbone, baseline — a
    method id, completed with the same suffix); ``values[m]`` the paper's number on this dataset.
    ``common`` fields apply to every row (a method's own fields win)."""
    tail = suffix or dataset
    rows = []
    for method, spec in methods.items():
        fields = dict(common, **spec)
        if fields.get('baseline'):
            fields['baseline'] = f'{fields["baseline"]}.{tail}'
        rows.append(Row(id=f'{method}.{tail}', dataset=dataset, paper=values.get(method), **fields))
    return rows
