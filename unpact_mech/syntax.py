"""Small text syntaxes shared by the command line and spec strings (one parser each)."""

from __future__ import annotations


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"0-2+5"`` -> ``(0, 1, 2, 5)``: ``a-b`` is an inclusive range, ``+`` joins parts. ValueError when malformed."""
    out: list[int] = []
    for part in text.split("+"):
        a, dash, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if dash else [int(a)])
    return tuple(out)


def layers_label(layers: tuple[int, ...] | list[int]) -> str:
    """Compact label of a layer set: ``0-29`` for a contiguous run of 3 or more, else ``0,5,10``."""
    ordered = sorted(layers)
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))
