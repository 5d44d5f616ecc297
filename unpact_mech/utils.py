"""Small helpers every room uses: one value or many (:func:`one_or_many`) and progress bars (:func:`progress_bar`).

``one_or_many`` is how every public option that takes a sequence reads its value: a string, a number or any other
non-iterable object is ONE element (``attacks="focus"`` means ``("focus",)``, ``layers=3`` means ``(3,)``), never
its letters or an error. ``progress_bar`` is the one place a tqdm bar is made: it draws only when asked AND stderr is
a terminal, so logs and pipes never receive ``\\r`` frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: Types that are iterable but stand for ONE value.
ATOMS = (str, bytes, bytearray)


def one_or_many(value: Any) -> tuple[Any, ...] | None:
    """``value`` as a tuple: None stays None (an option's "use the default"); a string, a number or any other
    non-iterable object (e.g. an attack object) is one element; any other iterable gives its elements."""
    if value is None:
        return None
    if isinstance(value, ATOMS) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any):
    """A ``tqdm`` bar that draws only when ``enabled`` and stderr is a terminal (``disable=None`` is tqdm's "off
    when not a TTY"); ``kwargs`` go to ``tqdm`` (``total``, ``desc``, ``leave``, ...)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kwargs)


def float_or_none(value: Any) -> float | None:
    """A table cell as a JSON-ready number: None / NaN / NA -> None, anything else -> ``float(value)``."""
    import pandas as pd

    return None if value is None or pd.isna(value) else float(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A GitHub-markdown table of ``header`` and ``rows`` (cells as given, ``str()``-ed; ``|`` escaped), columns
    flagged in ``right`` right-aligned; one line per row, ending in a newline."""
    rule = ["---:" if r else "---" for r in (right or [False] * len(header))]
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in [list(header), rule, *cells]) + "\n"
