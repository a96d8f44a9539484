"""Flag groups: each command-line flag is declared once, as a field of an option dataclass.

A group (``OptionGroup`` subclass, a dataclass) holds the flags of one concern — the common
flags, one backbone, one paper method. Each field is declared with :func:`flag`, which records
the click type (ranges via ``click.IntRange`` / ``click.FloatRange``), help text and default;
from that one declaration

* :func:`click_options` builds the ``click.option`` decorators of ``train.py`` (help shows the
  default, ``--help`` prints one section per group, see :class:`GroupedCommand`);
* ``OptionGroup.__post_init__`` converts and range-checks every value with the same click type,
  so options built in Python (tests, bench scripts) are validated exactly like the CLI, with
  the same one-line error naming the flag;
* ``OptionGroup.validate`` (overridden per group) checks what a single type cannot (flags that
  need each other), in the module that defines the group.

``None`` as a default means "not given": the value then comes from a preset (e.g. ``--batch``
from ``--cfg``). Flag names are the field names with ``_`` → ``-``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, ClassVar, Iterable, Optional

import click

from dnnlib.util import UserError

__all__ = ['flag', 'OptionGroup', 'click_options', 'GroupedCommand', 'group_fields', 'flag_name']


def flag(default: Any, help: str, *, type: Any = None, metavar: Optional[str] = None,
         show_default: Any = True, is_flag: bool = False, short: Optional[str] = None, required: bool = False) -> Any:
    """A dataclass field that is also a click option (type, help and default declared once).

    ``show_default=True`` prints the default in ``--help``; pass a string (e.g. ``'from --cfg'``)
    for defaults that depend on other flags (the field's default is then None). ``required``: the
    CLI insists on the flag (the dataclass still has ``default`` for code that builds options).
    """
    meta = dict(help=help, type=type, metavar=metavar, show_default=show_default, is_flag=is_flag, short=short,
                required=required)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=dict(click=meta))
    return dataclasses.field(default=default, metadata=dict(click=meta))


def flag_name(field_name: str) -> str:
    return '--' + field_name.replace('_', '-')


def group_fields(group: type['OptionGroup']) -> list[dataclasses.Field]:
    """The flag fields of a group, in declaration order."""
    return [f for f in dataclasses.fields(group) if 'click' in f.metadata]


@dataclasses.dataclass
class OptionGroup:
    """Base of a flag group. Subclasses are dataclasses whose fields are declared with :func:`flag`."""

    #: Section title in ``--help``.
    title: ClassVar[str] = 'Options'

    def __post_init__(self) -> None:
        for field in group_fields(type(self)):
            setattr(self, field.name, _convert(field, getattr(self, field.name)))
        self.validate()

    def validate(self) -> None:
        """Checks that involve several flags of this group (raise ``UserError`` naming the flag)."""


def _default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return field.default


def _convert(field: dataclasses.Field, value: Any) -> Any:
    """Convert/range-check ``value`` with the field's click type; errors name the flag."""
    meta = field.metadata['click']
    param_type = meta['type']
    if value is None or param_type is None or meta['is_flag']:
        return value
    param_type = click.types.convert_type(param_type)
    try:
        return param_type.convert(value, None, None)
    except click.BadParameter as e:
        raise UserError(f'{flag_name(field.name)}: {e.format_message()}') from None


def click_options(groups: Iterable[type[OptionGroup]]) -> Callable[[Callable], Callable]:
    """Decorator adding one ``click.option`` per flag field of ``groups`` (names must be unique; a
    group that extends another — a subclass, e.g. InsGen's flags over StyleGAN2's — shares the
    inherited flags, which are declared once, in the group listed first)."""
    fields: list[tuple[type[OptionGroup], dataclasses.Field]] = []
    seen: dict[str, tuple[str, dataclasses.Field]] = {}
    for group in groups:
        for field in group_fields(group):
            if field.name in seen:
                if seen[field.name][1] is field:  # inherited from a group listed before (InsGen ⊃ StyleGAN2)
                    continue
                raise ValueError(f'flag {flag_name(field.name)} is declared by both {seen[field.name][0]} and '
                                 f'{group.__name__}')
            seen[field.name] = (group.__name__, field)
            fields.append((group, field))

    def decorate(fn: Callable) -> Callable:
        for group, field in reversed(fields):
            fn = _click_option(group, field)(fn)
        return fn
    return decorate


def _click_option(group: type[OptionGroup], field: dataclasses.Field) -> Callable[[Callable], Callable]:
    meta = field.metadata['click']
    names = [flag_name(field.name)] + ([meta['short']] if meta['short'] else [])
    metavar = meta['metavar'] or _METAVARS.get(type(meta['type']))
    kwargs: dict[str, Any] = dict(help=meta['help'], metavar=metavar, required=meta['required'])
    if meta['is_flag']:
        kwargs.update(is_flag=True, default=False)
    else:
        default = None if meta['required'] else _default_of(field)
        kwargs.update(type=meta['type'], default=default)
        show = meta['show_default']
        if show is True and isinstance(default, bool):
            show = str(int(default))  # boolean flags take values: --mirror=1
        kwargs['show_default'] = show if default is not None or isinstance(show, str) else False
    option = click.option(*names, field.name, **kwargs)

    def decorate(fn: Callable) -> Callable:
        fn = option(fn)
        fn.__click_params__[-1].option_group = group.title  # type: ignore[attr-defined]
        return fn
    return decorate


_METAVARS = {click.IntRange: 'INT', click.FloatRange: 'FLOAT'}


class GroupedCommand(click.Command):
    """A click command whose ``--help`` lists the options in one section per flag group."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, 'option_group', 'Other'), []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)
