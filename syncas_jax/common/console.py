"""The command-line edge: one clear line per user error, progress bars, notes on stderr.

Only CLI modules (`__main__.py`) use these; libraries return results and take an
optional progress callable instead of printing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from syncas_jax.common.errors import InputError

T = TypeVar("T")


def guarded(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI main: an InputError becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A tqdm progress bar on stderr."""
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=description, total=total, dynamic_ncols=True, leave=False)


def note(line: str) -> None:
    """One line on stderr that does not break a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)
