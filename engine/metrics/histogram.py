"""A fixed-size log-linear histogram for per-token latencies (ITL) over a whole run.

Why not keep every gap: a 30-minute soak at 3,000 tokens/s has 5.4 million of them, and the
summary must hold flat memory however long the run. Why not a sketch library (ddsketch,
HdrHistogram): values arrive a request at a time as a numpy array, and this adds a whole array
with one ``np.bincount``, with no Python work per token.

Layout (HDR-style): values are integer microseconds. Below 1,024 µs every value has its own
bucket (exact); above, each power of two is split into 512 buckets, so a bucket is at most
1/512 of its value wide and its middle is within 0.1% of any value in it. Values up to
2**40 µs (~12 days) fit in 16,384 buckets (128 KiB as int64); larger ones land in the last.
"""

from __future__ import annotations

import numpy as np

_K = 10  # 2**_K values are exact
_EXACT = 1 << _K
_HALF = _EXACT >> 1
_MAX_EXPONENT = 40
N_BUCKETS = _EXACT + (_MAX_EXPONENT - _K) * _HALF


def bucket_index(values_us: np.ndarray) -> np.ndarray:
    """Bucket of each non-negative integer value (vectorised)."""
    v = np.clip(np.asarray(values_us, dtype=np.int64), 0, (1 << _MAX_EXPONENT) - 1)
    _, exponent = np.frexp(v.astype(np.float64))  # v = f * 2**exponent, f in [0.5, 1)
    magnitude = exponent.astype(np.int64) - 1  # floor(log2(v)) for v >= 1
    shift = np.maximum(magnitude - _K + 1, 0)
    high = _EXACT + (magnitude - _K) * _HALF + ((v >> shift) - _HALF)
    return np.where(v < _EXACT, v, high)


def bucket_value(index: np.ndarray) -> np.ndarray:
    """A representative value (the middle) of each bucket, in microseconds."""
    i = np.asarray(index, dtype=np.int64)
    step = np.maximum(i - _EXACT, 0) // _HALF  # 0 for the first log band
    shift = np.where(i < _EXACT, 0, step + 1)
    lower = np.where(i < _EXACT, i, ((i - _EXACT) % _HALF + _HALF) << shift)
    width = np.int64(1) << shift
    return lower + (width - 1) / 2.0


class LogHistogram:
    """Counts of microsecond values within 0.1% (1 µs below 1,024 µs), exact sum and count."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = np.zeros(N_BUCKETS, dtype=np.int64)
        self.total = 0.0
        self.count = 0

    def add(self, values_us: np.ndarray, total: float | None = None) -> None:
        """Count ``values_us``. ``total``: their exact sum, where the caller knows it (a
        request's gaps add up to its last arrival less its first), so the mean is the same
        whatever order and grouping the values come in; a float sum of fractions is not."""
        raw = np.asarray(values_us)
        if raw.size == 0:
            return
        values = raw if raw.dtype.kind in "iu" else np.rint(raw)
        self.counts += np.bincount(bucket_index(values), minlength=N_BUCKETS)
        self.total += float(raw.sum() if total is None else total)
        self.count += int(raw.size)

    def merge(self, other: LogHistogram) -> None:
        self.counts += other.counts
        self.total += other.total
        self.count += other.count

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """Nearest-rank quantiles (q in 0..100): the value at rank ceil(q/100 * n)."""
        if self.count == 0:
            return [None] * len(qs)
        cumulative = np.cumsum(self.counts)
        ranks = np.maximum(np.ceil(np.asarray(qs) / 100.0 * self.count), 1)
        buckets = np.searchsorted(cumulative, ranks, side="left")
        return [float(v) for v in bucket_value(buckets)]
