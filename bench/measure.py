"""Small measuring instruments: spreads of repeated runs, CPU and RSS of another process.

Every comparison in the report runs its sides alternately in the same run, several times, and
keeps all the values: `Spread` turns them into a median with min/max, nothing is averaged away.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass
class Spread:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self, digits: int = 4) -> dict:
        if not self.values:
            return {"median": None, "min": None, "max": None, "n": 0, "values": []}
        return {"median": round(self.median, digits), "min": round(min(self.values), digits),
                "max": round(max(self.values), digits), "n": len(self.values),
                "values": [round(v, digits) for v in self.values]}


def spread(values: list[float], digits: int = 4) -> dict:
    return Spread(list(values)).as_dict(digits)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (raises psutil.NoSuchProcess if it died)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


class RssSampler:
    """Samples a process's RSS every `interval` seconds on a thread (so a busy event loop in this
    process does not skew the sampling times). A process that exits ends the sampling quietly."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> "RssSampler":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic() - self._t0, rss_bytes(self.pid)))
            except psutil.Error:
                return
            if self._stop.wait(self.interval):
                return


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute."""
    return 60.0 * slope(samples)


def slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) samples (0.0 with fewer than 2)."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def fmt(s: dict | None, digits: int | None = None) -> str:
    """`median [min–max]` of a spread dict, with digits chosen from its size unless given."""
    if not s or s.get("median") is None:
        return "—"
    m, lo, hi = s["median"], s["min"], s["max"]
    if digits is None:
        digits = 0 if abs(m) >= 100 else 2 if abs(m) < 10 else 1
    if s.get("n", 0) <= 1 or lo == hi:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"
