"""PDS's alignment drop, found without holding every cosine on the driver.

The drop removes the ``n_drop`` pairs with the lowest image-text cosine; among equal cosines the
earlier pair goes first (what ``np.argsort(sims, kind="stable")`` did when the driver held them
all). Each float32 cosine maps to an unsigned 32-bit key with the same order as numpy's sort
(``sort_keys``), so the cut is one key ``T``: every pair below it is dropped, and of the pairs at it
the first few in pair order. ``T`` comes from two histograms of 16 bits each, summed over the ranges
(the passes ``range_stats`` and ``range_bucket``), and each range's share of the ties at ``T`` from
the second pass's per-range counts, so each range can then say which of its pairs it keeps
(``kept_rows``) from its own cosines. ``Kept`` maps the kept pairs' ordinals (what k-means samples)
to pair indices range by range.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

HALF = 16
LOW = (1 << HALF) - 1


def sort_keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys ordered as numpy sorts float32 ``x``: -0.0 equal to 0.0, every NaN last and equal."""
    x = np.where(np.isnan(x), np.float32(np.nan), np.asarray(x, np.float32) + np.float32(0))
    u = x.view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(1 << 31)).astype(np.uint32)


def kept_rows(cos: np.ndarray, cut: tuple[int, int]) -> np.ndarray:
    """Positions of a range's kept pairs: keys above the cut's key, and those at it past the range's
    first ``ties`` (the ones the drop takes)."""
    key, ties = cut
    keys = sort_keys(cos)
    dropped = keys < np.uint32(key)
    if ties:
        dropped[np.flatnonzero(keys == np.uint32(key))[:ties]] = True
    return np.flatnonzero(~dropped)


def cuts(high: np.ndarray, n_drop: int, lengths: list[int], bucket_pass: Callable) -> tuple[list, np.ndarray]:
    """Each range's cut ``(key, ties)`` and kept count, for the ``n_drop`` lowest cosines. ``high``:
    the count of each high 16 bits over all pairs; ``bucket_pass(top)``: per range, in order, how
    many keys lie below ``top`` and the (values, counts) of the low bits of those in it."""
    if n_drop <= 0:
        return [(0, 0)] * len(lengths), np.asarray(lengths, np.int64)
    cum = np.cumsum(high)
    top = int(np.searchsorted(cum, n_drop))  # the bucket of the n_drop-th lowest key
    need = n_drop - int(cum[top] - high[top])  # how many of that bucket go
    per_range = list(bucket_pass(top))
    low = np.zeros(1 << HALF, np.int64)
    for _, (vals, counts) in per_range:
        np.add.at(low, vals, counts)
    cum_low = np.cumsum(low)
    bottom = int(np.searchsorted(cum_low, need))
    key, ties_left = (top << HALF) | bottom, need - int(cum_low[bottom] - low[bottom])
    out, kept = [], []
    for length, (below, (vals, counts)) in zip(lengths, per_range):
        take = min(ties_left, int(counts[vals == bottom].sum()))
        ties_left -= take
        out.append((key, take))
        kept.append(length - below - int(counts[vals < bottom].sum()) - take)
    return out, np.asarray(kept, np.int64)


class Kept:
    """The kept pairs as a sequence: ordinal i (the i-th kept pair in pair order) -> pair index, found
    range by range from that range's cosines (``cos_of(j)``), never as one corpus-length array."""

    def __init__(self, ranges: list[tuple[int, int]], range_cuts: list, counts: np.ndarray, cos_of: Callable):
        self.ranges, self.cuts, self.cos_of = ranges, range_cuts, cos_of
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def pairs(self, idx) -> np.ndarray:
        """Pair indices of kept ordinals ``idx`` (any order)."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        order = np.argsort(idx, kind="stable")
        sorted_idx, out = idx[order], np.empty(len(idx), np.int64)
        bounds = np.searchsorted(sorted_idx, self.starts)
        for j, (a, _) in enumerate(self.ranges):
            s, e = bounds[j], bounds[j + 1]
            if e > s:
                rows = kept_rows(self.cos_of(j), self.cuts[j])
                out[order[s:e]] = a + rows[sorted_idx[s:e] - self.starts[j]]
        return out
