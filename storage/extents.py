"""Extents: (start, end) byte ranges of a disk, and merging them.

An *extent* here is a half-open range ``[start, end)``; two that overlap or
touch become one. Used for the changed blocks a capture reads
(``capture.align``) and for the ranges a VHDX chain stores data for
(``vhdx_files``): written once, here.
"""

from __future__ import annotations

from collections.abc import Iterable


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with overlapping or touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
