"""Over-saturation of an open loop: the server no longer keeps up with the rate asked of it.

An open loop (``--rate``) sends requests at planned times whatever the server does. When the
server serves fewer a second than arrive, the difference piles up: requests in flight (queued
in the server) and, with ``--max-inflight``, requests due but not yet sent (the client's
backlog). Their sum, what the load *owes*, then grows without bound while completions stay
flat, and every latency measured from then on is the queue's, not the server's.

The judgement, over the last ``window_s`` of one phase (a new rate, a pause or the end of
warm-up starts it again, and it starts only after the phase's first completion, so the fill
of a healthy pipeline, from nothing to ``rate x latency`` in flight, is not taken for a queue):

- **owed rises**: the Mann-Kendall trend test on the sampled owed counts, z at least
  :data:`Z_RISING` (3.09, one-sided p < 0.001). A rank test: no straight line is assumed and
  one odd sample moves it little. Samples a fraction of a second apart are autocorrelated,
  which inflates z, hence the strict level and the next condition;
- **by a material amount**: the Theil-Sen slope of owed (the median of pairwise slopes,
  robust to outliers) is at least :data:`SLOPE_SHARE` (10%) of the rate asked, and the window
  owes at least :data:`MIN_GROWTH` (5) requests more at its end than at its start. Random
  fluctuation of a healthy open loop (Poisson arrivals, varying latency) moves owed by a few
  standard deviations, not by a tenth of every arrival for a whole window;
- **while throughput stays flat**: completions per sample interval show no rising trend
  (Mann-Kendall z below :data:`Z_FLAT`, 1.645, one-sided p 0.05). A server still ramping up
  (latencies spread over seconds, completions climbing to the rate) owes more for a while
  too, but its completions rise; a saturated one's do not.

Each sample is three integers, at most :data:`MAX_SAMPLES` a window (a long window is sampled
more sparsely): flat memory, and a judgement of 7,000 pairs at most, well under a millisecond.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

Z_RISING = 3.09  # one-sided p < 0.001: owed rises
Z_FLAT = 1.645  # one-sided p = 0.05: completions rise (then it is not saturation)
SLOPE_SHARE = 0.10  # owed must grow by at least this share of the rate asked
MIN_GROWTH = 5  # ... and by at least this many requests over the window
MIN_SAMPLES = 10  # a trend from fewer is not judged
MAX_SAMPLES = 120  # a window keeps at most this many (the tests are quadratic in them)


def mann_kendall_z(values: np.ndarray) -> float:
    """The Mann-Kendall trend statistic as a standard normal z (positive: rising), with the
    variance corrected for ties; 0 where fewer than 3 values or no variation."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 3:
        return 0.0
    i, j = np.triu_indices(n, k=1)
    s = float(np.sign(x[j] - x[i]).sum())
    _, counts = np.unique(x, return_counts=True)
    ties = float((counts * (counts - 1) * (2 * counts + 5)).sum())
    var = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    if var <= 0:
        return 0.0
    return (s - math.copysign(1.0, s)) / math.sqrt(var) if s else 0.0


def theil_sen_slope(t: np.ndarray, values: np.ndarray) -> float:
    """The median of the slopes between every pair of points (per unit of ``t``)."""
    i, j = np.triu_indices(t.size, k=1)
    dt = t[j] - t[i]
    keep = dt > 0
    if not keep.any():
        return 0.0
    return float(np.median((values[j] - values[i])[keep] / dt[keep]))


@dataclass(frozen=True, slots=True)
class Saturation:
    """What the judgement found: owed at the window's start and end, its slope (requests a
    second) and trend z, completions a second and their trend z, the rate asked."""

    window_s: float
    owed_first: int
    owed_last: int
    slope_per_s: float
    z_owed: float
    completions_per_s: float
    z_completions: float
    rate: float

    @property
    def explanation(self) -> str:
        """``requests owed ... rose 12 -> 85 over the last 30 s ...``: what was seen, with
        the figures that decided it (the session says ``saturated: `` before it)."""
        return (f"requests owed (in flight + due unsent) rose {self.owed_first} -> "
                f"{self.owed_last} over the last {self.window_s:g} s ({self.slope_per_s:+.1f}/s, "
                f"trend z {self.z_owed:.1f}) while completions stayed at "
                f"{self.completions_per_s:.1f}/s of {self.rate:g}/s asked")

    def detail(self) -> dict[str, Any]:
        return {"explanation": self.explanation, "condition": "saturation",
                "window_s": self.window_s, "owed_first": self.owed_first,
                "owed_last": self.owed_last, "slope_per_s": round(self.slope_per_s, 3),
                "z_owed": round(self.z_owed, 2), "completions_per_s":
                round(self.completions_per_s, 3), "z_completions": round(self.z_completions, 2),
                "rate": self.rate}


class SaturationWatch:
    """Samples of one phase of an open loop, ``window_s`` of them at most, and the judgement
    of :mod:`this module <soaktop.engine.load.saturation>` on them."""

    def __init__(self, window_s: float, every_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self.every_s = every_s
        self._gap_ns = self.window_ns // MAX_SAMPLES  # samples closer than this are skipped
        self._samples: deque[tuple[int, int, int]] = deque(
            maxlen=min(int(math.ceil(window_s / every_s)), MAX_SAMPLES) + 2)
        self._completed_at_reset = 0
        self._armed = False

    def reset(self, completed: int) -> None:
        """A new phase: its samples start after its first completion."""
        self._samples.clear()
        self._completed_at_reset = completed
        self._armed = False

    def sample(self, t_ns: int, owed: int, completed: int) -> None:
        if not self._armed:
            if completed <= self._completed_at_reset:
                return  # the pipeline is still filling: nothing has come back yet
            self._armed = True
        if self._samples and t_ns - self._samples[-1][0] < self._gap_ns:
            return
        self._samples.append((t_ns, owed, completed))

    def judge(self, rate: float | None) -> Saturation | None:
        """A :class:`Saturation` when the last window shows it; None otherwise (or too few
        samples, or a window not yet full)."""
        if not rate or len(self._samples) < MIN_SAMPLES:
            return None
        samples = np.array(self._samples, dtype=np.int64)
        t = samples[:, 0]
        inside = t >= t[-1] - self.window_ns
        if t[-1] - t[0] < self.window_ns * 0.95 or inside.sum() < MIN_SAMPLES:
            return None  # the window is not full yet
        t, owed, completed = (samples[inside, k] for k in range(3))
        seconds = (t - t[0]) / 1e9
        z_owed = mann_kendall_z(owed)
        slope = theil_sen_slope(seconds, owed.astype(np.float64))
        growth = int(owed[-1]) - int(owed[0])
        span_s = seconds[-1]
        completions_per_s = (int(completed[-1]) - int(completed[0])) / span_s
        z_done = mann_kendall_z(np.diff(completed))
        if (z_owed >= Z_RISING and slope >= SLOPE_SHARE * rate and growth >= MIN_GROWTH
                and z_done < Z_FLAT):
            return Saturation(round(span_s, 1), int(owed[0]), int(owed[-1]), slope, z_owed,
                              completions_per_s, z_done, rate)
        return None
