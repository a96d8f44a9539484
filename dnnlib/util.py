"""Small, dependency-free utilities shared by every part of degan.

The names follow the StyleGAN2-ADA `dnnlib.util` module that users know (``EasyDict``,
``Logger``, ``format_time``, ``construct_class_by_name``, ``make_cache_dir_path``) but the
code is written from scratch. There is deliberately no ``open_url``: degan never downloads.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import click


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes (``d.key``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


class UserError(Exception):
    """An error caused by user input (a bad flag, a bad file). CLIs print it as one line and exit ≠ 0."""


# ---------------------------------------------------------------------------------------------
# Process-wide switches.

class GlobalSetting:
    """A process-wide value of a module (e.g. the compute dtype of reduced-precision blocks):
    ``setting.value`` reads it, ``setting.set(value)`` changes it and returns the old value, and
    ``with setting.scope(value):`` changes it for a block."""

    def __init__(self, value: Any):
        self._value = self._convert(value)

    def _convert(self, value: Any) -> Any:
        return value

    @property
    def value(self) -> Any:
        return self._value

    def set(self, value: Any) -> Any:
        old, self._value = self._value, self._convert(value)
        return old

    @contextlib.contextmanager
    def scope(self, value: Any) -> Iterator[None]:
        old = self.set(value)
        try:
            yield
        finally:
            self.set(old)


class GlobalSwitch(GlobalSetting):
    """A process-wide on/off setting of a module (e.g. a reference-exact arithmetic path):
    ``bool(switch)`` reads it, ``switch.set(enabled)`` changes it and returns the old value, and
    ``with switch.scope(enabled):`` changes it for a block."""

    def __init__(self, enabled: bool):
        super().__init__(enabled)

    def _convert(self, value: Any) -> bool:
        return bool(value)

    def __bool__(self) -> bool:
        return self._value

    def scope(self, enabled: bool = True) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return super().scope(enabled)


# ---------------------------------------------------------------------------------------------
# CPU threads (before torch is imported).

#: What a user sets to choose how idle OpenMP threads wait; any of them means "leave it alone".
OPENMP_WAIT_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')


def let_idle_openmp_threads_sleep() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait behaviour (OPENMP_WAIT_VARIABLES).

    Called by the CLIs before torch is imported (OpenMP reads it once). Spinning idle threads
    take the cores another job needs: with a second job on 2 cores a training ran ~4x slower than
    with sleeping threads; on a quiet machine sleeping threads cost ~40 % (bench/cpu_threads.py,
    figures in the README's Performance section)."""
    if not any(os.environ.get(name) for name in OPENMP_WAIT_VARIABLES):
        os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'


# ---------------------------------------------------------------------------------------------
# Formatting and parsing.

def format_names(names: Sequence[str], limit: int = 8) -> str:
    """``a, b, c and 4 more`` (``none`` for an empty list): names in a one-line error."""
    names = list(names)
    if not names:
        return 'none'
    return ', '.join(names[:limit]) + (f' and {len(names) - limit} more' if len(names) > limit else '')


def format_time(seconds: float) -> str:
    """Format a duration like upstream's status line: ``45s``, ``3m 05s``, ``2h 07m 03s``, ``1d 04h 05m``."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


def parse_int_list(text: str | Sequence[int]) -> list[int]:
    """Parse ``'0-7,12'`` → ``[0, 1, …, 7, 12]`` (the ``--seeds`` syntax of generate.py)."""
    if not isinstance(text, str):
        return [int(v) for v in text]
    values: list[int] = []
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r'(-?\d+)-(-?\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise UserError(f'bad range "{part}": the end is smaller than the start')
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'-?\d+', part):
            values.append(int(part))
        else:
            raise UserError(f'cannot parse "{part}" as an integer or a range like 0-7')
    return values


def to_jsonable(obj: Any) -> Any:
    """Convert tuples to lists and numpy/torch scalars to Python numbers, recursively.

    Raises TypeError for anything that JSON cannot hold, so that snapshot configs stay plain data.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f'non-string key {k!r} cannot be stored as JSON')
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, 'item') and callable(obj.item) and getattr(obj, 'ndim', 1) == 0:
        return obj.item()
    raise TypeError(f'{type(obj).__name__} value {obj!r} cannot be stored as JSON')


# ---------------------------------------------------------------------------------------------
# Files.

def current_umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: ``atomic_path``'s temporary names: ``.<final name>.<8 random characters><suffix>.tmp``.
ATOMIC_TEMP_NAME = re.compile(r'^\..+\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?\.tmp$')


def remove_stale_temp_files(directory: str, min_age_s: float = 600) -> list[str]:
    """Delete ``atomic_path`` temporaries in ``directory`` untouched for ``min_age_s`` seconds —
    the leftovers of a write killed before its rename (a live writer's file is younger). Returns
    the names removed."""
    removed = []
    now = time.time()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in sorted(names):
        path = os.path.join(directory, name)
        try:
            if ATOMIC_TEMP_NAME.match(name) and os.path.isfile(path) and now - os.path.getmtime(path) >= min_age_s:
                os.remove(path)
                removed.append(name)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = '') -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched, so a crash
    never leaves a half-written file under the final name. A full disk is an ``OSError`` whose
    ``filename`` is ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path)) or '.'
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix=suffix + '.tmp', dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; final files get the usual mode
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):  # name the file the user knows, not the hidden temporary
            raise OSError(e.errno, e.strerror, path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


#: ``errno`` values of a write that failed for want of space: no space left, quota exceeded.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write refused for want of space (``ENOSPC``, ``EDQUOT``)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


@contextlib.contextmanager
def disk_full_is_a_user_error(path: str, consequence: Callable[[], str]) -> Iterator[None]:
    """Turn a disk-full ``OSError`` raised inside the block into a one-line :class:`UserError` that
    names the file (the error's ``filename``, else ``path``) and says what it means for the user
    (``consequence()``, asked when the error happens: which earlier file is intact, how to go on).
    Other errors pass through unchanged."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise UserError(f'disk full: could not write {e.filename or path} ({e.strerror}). {consequence()}') from None


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def make_cache_dir_path(*paths: str) -> str:
    """Where degan caches derived data (dataset statistics, built kernels).

    ``DEGAN_CACHE_DIR`` wins, then ``DNNLIB_CACHE_DIR`` (upstream's variable), then
    ``$XDG_CACHE_HOME/degan`` or ``~/.cache/degan``.
    """
    for var in ('DEGAN_CACHE_DIR', 'DNNLIB_CACHE_DIR'):
        if os.environ.get(var):
            return os.path.join(os.environ[var], *paths)
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'degan', *paths)


class _TeeStream:
    """One console stream (stdout or stderr) copied into the log file.

    The console may go away while the run goes on — ``python train.py | tee log`` and Ctrl-C
    kills ``tee`` first, an ssh session drops: the first failed console write (broken pipe,
    closed terminal) turns the console off for the rest of the process and points its file
    descriptor at ``os.devnull`` (so that Python's own flush at exit cannot fail either); the
    log file keeps everything."""

    def __init__(self, logger: 'Logger', console: Any):
        self.logger = logger
        self.console: Optional[Any] = console

    def write(self, text: str) -> int:
        if not text:
            return 0
        self.logger.write_file(text)
        if self.console is not None:
            try:
                self.console.write(text)
                if self.logger.should_flush:
                    self.console.flush()
            except (OSError, ValueError):  # BrokenPipeError, EIO of a closed terminal, a closed stream
                self.detach_console()
        return len(text)

    def flush(self) -> None:
        self.logger.flush_file()
        if self.console is not None:
            try:
                self.console.flush()
            except (OSError, ValueError):
                self.detach_console()

    def detach_console(self) -> None:
        console, self.console = self.console, None
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, console.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self.console is None:
            raise OSError('the console of this stream is gone')
        return self.console.fileno()


class Logger:
    """Tee stdout and stderr into a log file (``log.txt`` of a run); stderr stays stderr.

    A console that goes away (a broken pipe) never stops the program: see :class:`_TeeStream`."""

    def __init__(self, file_name: Optional[str] = None, file_mode: str = 'a', should_flush: bool = True):
        self.file = open(file_name, file_mode, encoding='utf-8') if file_name else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self.out_stream = _TeeStream(self, self.stdout)
        self.err_stream = _TeeStream(self, self.stderr)
        sys.stdout = self.out_stream  # type: ignore[assignment]
        sys.stderr = self.err_stream  # type: ignore[assignment]

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, text: str) -> None:
        """Write to the log file and stdout."""
        self.out_stream.write(text)

    def write_file(self, text: str) -> None:
        if self.file is not None:
            self.file.write(text)
            if self.should_flush:
                self.file.flush()

    def flush_file(self) -> None:
        if self.file is not None:
            self.file.flush()

    def flush(self) -> None:
        self.out_stream.flush()
        self.err_stream.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self.flush()
        if sys.stdout is self.out_stream:
            sys.stdout = self.stdout
        if sys.stderr is self.err_stream:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


# ---------------------------------------------------------------------------------------------
# Constructing objects by name (for configs stored as plain data).

#: Module prefixes from which classes/functions may be constructed by name. A snapshot or a
#: config file can only ever name code that ships with degan; nothing else is imported.
#: ``torch.optim.`` lets a config name its optimiser class (``class_name='torch.optim.Adam'``).
TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ('training.', 'backbones.', 'patches.', 'metrics.', 'torch_utils.',
                                            'dnnlib.', 'torch.optim.')


def trust_module_prefix(package: str) -> None:
    """Also allow classes of ``package`` (a registered out-of-tree backbone) to be named in configs."""
    global TRUSTED_MODULE_PREFIXES
    prefix = package.rstrip('.') + '.'
    if not prefix.startswith(TRUSTED_MODULE_PREFIXES):
        TRUSTED_MODULE_PREFIXES = TRUSTED_MODULE_PREFIXES + (prefix,)


def get_obj_by_name(name: str) -> Any:
    """Return the object ``module.attr`` named by ``name`` from degan's own packages only."""
    module_name, _, attr = name.rpartition('.')
    if not module_name or not (module_name + '.').startswith(TRUSTED_MODULE_PREFIXES):
        raise UserError(f'refusing to construct "{name}": only degan classes can be named in configs')
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f'"{name}" does not exist in this version of degan') from None


def construct_class_by_name(*args: Any, class_name: str, **kwargs: Any) -> Any:
    """Construct ``class_name(*args, **kwargs)`` where ``class_name`` is a dotted degan name."""
    cls: Callable[..., Any] = get_obj_by_name(class_name)
    return cls(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Command-line entry points.

class CommaSeparatedList(click.ParamType):
    """click type for ``--metrics=fid5k_full,kid50k_full`` (``none`` or empty → [])."""
    name = 'list'

    def convert(self, value: Any, param: Any, ctx: Any) -> list[str]:
        if isinstance(value, list):
            return value
        if value is None or value.lower() == 'none' or value == '':
            return []
        return [v.strip() for v in value.split(',') if v.strip()]


class IntList(click.ParamType):
    """click type for integer lists with ranges, e.g. ``--chain-res=16,32`` or ``0-7,12``."""
    name = 'ints'

    def convert(self, value: Any, param: Any, ctx: Any) -> Optional[list[int]]:
        if isinstance(value, list) or value is None:
            return value
        try:
            return parse_int_list(value)
        except UserError as e:
            self.fail(str(e), param, ctx)


def run_cli(command: Any, argv: Optional[list[str]] = None) -> None:
    """Run a click command so that user errors and bad flags print one line, not a traceback.

    ``UserError`` → ``error: <message>`` and exit code 1; a click usage error → exit code 2;
    Ctrl-C → exit code 130. An ``EOFError`` escaping the command (a truncated gzip file) is an
    error, exit code 1: click turns it into the ``Abort`` of an interrupted prompt (degan has no
    prompts), which once made it exit 130 with only a blank line.
    """
    try:
        command.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, EOFError):
            print(f'error: unexpected end of a file ({e.__cause__ or "EOFError"}): it is truncated or corrupt; '
                  f'replace it (e.g. download or copy it again)', file=sys.stderr)
            raise SystemExit(1) from None
        raise SystemExit(130) from None
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except click.ClickException as e:
        print(f'error: {e.format_message()} (see --help)', file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1) from None
