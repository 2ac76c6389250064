"""numpy's float32 ``mean`` of a long vector, computed from pieces held by different ranges.

``x.mean()`` of a contiguous float32 vector is numpy's pairwise summation (``pairwise_sum`` in
numpy's ``loops_utils.h.src``): a block of at most 128 values is summed with eight accumulators,
a longer one is split at half its length rounded down to a multiple of 8 and its halves' sums are
added. The blocks (the tree's leaves) depend only on the vector's length, so each range of the
vector can sum the leaves it holds whole (``leaf_parts``) and hand back the pieces of the leaves cut
by its ends; the driver then adds the leaves up the same tree (``tree_mean``) and gets the bits
``x.mean()`` gives, holding one float per leaf (about one per 100 values) instead of the vector.
tests/test_streamed_passes.py checks this against ``np.mean`` on lengths up to millions.
"""

from __future__ import annotations

import numpy as np

BLOCK = 128  # numpy's PW_BLOCKSIZE
UNROLL = 8


def _split(n: int) -> int:
    n2 = n // 2
    return n2 - n2 % UNROLL


def leaves(n: int, a: int = 0, b: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of the tree's leaves over ``[0, n)`` that overlap ``[a, b)``, in order."""
    b = n if b is None else b
    out, stack = [], [(0, n)]
    while stack:
        lo, m = stack.pop()
        if lo >= b or lo + m <= a or m == 0:
            continue
        if m <= BLOCK:
            out.append((lo, m))
            continue
        h = _split(m)
        stack += [(lo + h, m - h), (lo, h)]  # left popped first: leaves come out in order
    return out


def leaf_parts(values: np.ndarray, a: int, n: int) -> tuple[np.ndarray, np.ndarray, list]:
    """What values ``[a, a + len(values))`` of a length-``n`` vector contribute: the starts and float32
    sums of the leaves they hold whole, and (leaf start, offset, values) of each leaf cut by an end."""
    b = a + len(values)
    starts, sums, pieces = [], [], []
    for lo, m in leaves(n, a, b):
        s, e = max(lo, a), min(lo + m, b)
        if s == lo and e == lo + m:
            starts.append(lo)
            sums.append(np.add.reduce(values[lo - a : lo - a + m]))
        else:
            pieces.append((lo, s - lo, np.array(values[s - a : e - a])))
    return np.asarray(starts, np.int64), np.asarray(sums, np.float32), pieces


class TreeMean:
    """Collects ``leaf_parts`` of every range (any order) and gives ``np.mean`` of the whole vector."""

    def __init__(self, n: int, dtype=np.float32):
        self.n, self.dtype = n, dtype
        self.starts: list[np.ndarray] = []
        self.sums: list[np.ndarray] = []
        self.pieces: dict[int, list] = {}

    def add(self, parts) -> None:
        starts, sums, pieces = parts
        self.starts.append(starts)
        self.sums.append(sums)
        for lo, offset, vals in pieces:
            self.pieces.setdefault(lo, []).append((offset, vals))

    def _leaf_sums(self) -> tuple[np.ndarray, np.ndarray]:
        starts, sums = list(self.starts), list(self.sums)
        for lo, got in self.pieces.items():
            vals = np.concatenate([v for _, v in sorted(got, key=lambda p: p[0])])
            starts.append(np.array([lo], np.int64))
            sums.append(np.array([np.add.reduce(vals)], self.dtype))
        s, v = np.concatenate(starts), np.concatenate(sums)
        order = np.argsort(s, kind="stable")
        return s[order], v[order]

    def mean(self):
        """``np.mean`` of the vector: its pairwise sum divided as numpy's ``_mean`` divides it."""
        starts, sums = self._leaf_sums()
        at = iter(range(len(starts)))

        def total(lo: int, m: int):
            if m <= BLOCK:
                j = next(at)
                assert starts[j] == lo, "a leaf is missing"  # a bug, never user input
                return sums[j]
            h = _split(m)
            left = total(lo, h)
            return left + total(lo + h, m - h)

        s = total(0, self.n) if self.n else self.dtype(0)
        return s.dtype.type(s / np.intp(self.n))
