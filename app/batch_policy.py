"""SLO-aware adaptive batching (``max_queue_delay_ms: "auto"`` with ``latency_target_ms``): how long a
batch may wait for more rows, decided from what the batcher has measured instead of a fixed delay.

The batcher asks where a fixed delay would apply: it holds an idle instance while other batches run.
An idle pool dispatches at once (a lone request never waits for company) unless the process keeps
its CPUs busy (``CpuLoad``, default 80%): then an idle instance is no spare capacity, since the
requests' HTTP work needs the same cores, and fewer, larger batches leave more of them to it; the
batcher asks then too. A request's latency
is its queue wait plus its batch's run, so the question for the oldest queued request is: if the batch
leaves at time t, does it still finish within the target, and do the rows that arrive meanwhile make
each row cheaper? Three measured quantities answer it:

- ``BatchCostModel``: seconds a batch takes as a function of its rows, ``fixed + per_row * rows``,
  fitted online by exponentially weighted least squares over the batches that ran, one fit per number
  of batches running at once (on shared cores two concurrent batches each take longer).
- ``ArrivalRate``: rows per second arriving, an exponentially decayed count (time constant 0.2 s).
- the target, of which the batcher plans with ``1 - margin`` (default half): the other half absorbs
  what it cannot see or predict (HTTP parsing and answering, the event loop's lag, the fit's error).

``AdaptiveDelay.decide`` then says "dispatch now" or "wait until t", in this order:

1. full (the batch holds ``max_rows``): now.
2. no fit yet (cold start): now; the batches that run teach the model.
3. overload: the oldest request would miss the target even if its batch left now. Its latency is
   lost; what is left to optimise is throughput, so wait for a full batch (the largest batches cost
   the least per row), but never longer than one full batch's run from now.
4. the latest release that keeps the oldest's predicted completion within the budget (``target *
   (1 - margin)``: its wait so far + the wait + the run of the batch it will then have), or the moment
   the batch is expected full if that comes first. When that moment has passed: now.
5. waiting must pay: when the rows expected by then lower the predicted cost per row by less than
   ``min_gain`` (default 10%), now. Compute-bound graphs (cost per row flat in the batch size) never
   wait; light ones (a large fixed cost per batch) wait while the budget allows.

The batcher asks again whenever a request arrives or a batch finishes (then the pool may be idle,
which dispatches at once), so a wrong guess of the arrival rate costs one arrival at most. Everything
here is plain arithmetic on numbers passed in: no clock, no I/O, deterministic for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Observations of batches with fewer distinct row counts than this spread cannot separate the fixed
# cost from the per-row cost: such a fit predicts conservatively (see _Fit.lines).
_MIN_ROW_VARIANCE = 0.25


@dataclass
class _Fit:
    """Exponentially weighted sums for the least-squares line seconds = fixed + per_row * rows."""

    weight: float = 0.0
    rows: float = 0.0
    seconds: float = 0.0
    rows_sq: float = 0.0
    rows_seconds: float = 0.0
    count: int = 0

    def add(self, rows: float, seconds: float, decay: float) -> None:
        self.weight = self.weight * decay + 1.0
        self.rows = self.rows * decay + rows
        self.seconds = self.seconds * decay + seconds
        self.rows_sq = self.rows_sq * decay + rows * rows
        self.rows_seconds = self.rows_seconds * decay + rows * seconds
        self.count += 1

    def terms(self) -> tuple[float, float] | None:
        """(fixed seconds per batch, seconds per row), both >= 0; None when the rows seen do not
        separate them (all batches about one size)."""
        mean_rows, mean_seconds = self.rows / self.weight, self.seconds / self.weight
        variance = self.rows_sq / self.weight - mean_rows**2
        if variance < _MIN_ROW_VARIANCE:
            return None
        per_row = (self.rows_seconds / self.weight - mean_rows * mean_seconds) / variance
        fixed = mean_seconds - per_row * mean_rows
        if per_row < 0:  # bigger batches measured faster (noise): call the cost flat
            return mean_seconds, 0.0
        if fixed < 0:  # the line crosses below zero: fit a line through the origin instead
            return 0.0, self.rows_seconds / self.rows_sq
        return fixed, per_row

    def lines(self) -> list[tuple[float, float]]:
        """The cost as the largest of these (fixed, per_row) lines: the fit; or, with one batch size
        seen, a cost no smaller batch undercuts and no larger one beats per row (both err towards a
        longer run, the safe side for a deadline)."""
        terms = self.terms()
        if terms is not None:
            return [terms]
        mean_rows, mean_seconds = self.rows / self.weight, self.seconds / self.weight
        return [(mean_seconds, 0.0), (0.0, mean_seconds / mean_rows)]


class BatchCostModel:
    """Seconds a batch of ``rows`` takes, learned online from the batches that ran.

    One fit per concurrency (batches running at once, this one included), each an exponentially
    weighted least-squares line with a half-life of ``half_life`` batches: recent batches count most,
    so the model follows a machine whose speed changes (other work on the cores)."""

    def __init__(self, half_life: float = 256.0, min_batches: int = 8) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.min_batches = min_batches  # observations before a fit is trusted
        self._fits: dict[int, _Fit] = {}

    def observe(self, rows: float, seconds: float, concurrent: int = 1) -> None:
        self._fits.setdefault(concurrent, _Fit()).add(float(rows), seconds, self.decay)

    def _fit(self, concurrent: int) -> _Fit | None:
        """The fit for ``concurrent``, else the nearest trusted one (ties: the higher, slower one)."""
        trusted = [c for c, fit in self._fits.items() if fit.count >= self.min_batches]
        if not trusted:
            return None
        nearest = min(trusted, key=lambda c: (abs(c - concurrent), -c))
        return self._fits[nearest]

    def lines(self, concurrent: int = 1) -> list[tuple[float, float]] | None:
        """The predicted cost as the largest of (fixed, per_row) lines; None before ``min_batches``
        batches were observed."""
        fit = self._fit(concurrent)
        return None if fit is None else fit.lines()

    def predict(self, rows: float, concurrent: int = 1) -> float | None:
        """Predicted seconds, or None before ``min_batches`` batches were observed."""
        lines = self.lines(concurrent)
        return None if lines is None else max(fixed + per_row * rows for fixed, per_row in lines)

    def terms(self, concurrent: int = 1) -> tuple[float, float] | None:
        """(fixed seconds per batch, seconds per row) of the fit used for ``concurrent``."""
        fit = self._fit(concurrent)
        return None if fit is None else fit.terms()


class ArrivalRate:
    """Rows per second arriving: a count that decays with ``time_constant_s``. For a steady rate r
    the count settles at r * time_constant_s; a change shows within about one time constant."""

    def __init__(self, time_constant_s: float = 0.2) -> None:
        self.time_constant_s = time_constant_s
        self._count = 0.0
        self._last = -math.inf

    def _decayed(self, now: float) -> float:
        if self._last == -math.inf:
            return 0.0
        return self._count * math.exp(-max(0.0, now - self._last) / self.time_constant_s)

    def add(self, now: float, rows: int) -> None:
        self._count = self._decayed(now) + rows
        self._last = now

    def rows_per_s(self, now: float) -> float:
        return self._decayed(now) / self.time_constant_s


class CpuLoad:
    """The share of its cores the process keeps busy, from readings of the wall clock and the process's
    CPU clock, smoothed with ``time_constant_s`` (updated at most every ``min_interval_s``)."""

    def __init__(self, cores: int, time_constant_s: float = 0.5, min_interval_s: float = 0.05) -> None:
        self.cores = cores
        self.time_constant_s = time_constant_s
        self.min_interval_s = min_interval_s
        self.busy = 0.0
        self._last: tuple[float, float] | None = None

    def update(self, wall: float, cpu: float) -> float:
        if self._last is None:
            self._last = (wall, cpu)
            return self.busy
        elapsed = wall - self._last[0]
        if elapsed >= self.min_interval_s:
            share = (cpu - self._last[1]) / (elapsed * self.cores)
            self.busy += (share - self.busy) * (1 - math.exp(-elapsed / self.time_constant_s))
            self._last = (wall, cpu)
        return self.busy


@dataclass(frozen=True)
class Decision:
    release_at: float  # the time (same clock as the inputs) the batch should leave; <= now: at once
    # now: full | cold (no fit yet) | late (the budget is spent) | no_gain; wait: wait_full |
    # wait_budget (until the budget's end) | overload (for a full batch)
    reason: str


class AdaptiveDelay:
    """The hold/release decision for one batcher (see the module docstring for the rules)."""

    def __init__(
        self,
        target_s: float,
        margin: float = 0.5,
        min_gain: float = 0.1,
        cost: BatchCostModel | None = None,
        arrivals: ArrivalRate | None = None,
        cpu: CpuLoad | None = None,
        saturated: float = 0.8,
    ) -> None:
        if target_s <= 0 or not 0 <= margin < 1 or not 0 <= min_gain < 1:
            raise ValueError("target_s > 0, 0 <= margin < 1 and 0 <= min_gain < 1 are required")
        self.target_s = target_s
        self.budget_s = target_s * (1 - margin)
        self.min_gain = min_gain
        self.cost = cost or BatchCostModel()
        self.arrivals = arrivals or ArrivalRate()
        self.cpu = cpu or CpuLoad(cores=1)
        self.saturated = saturated  # CpuLoad.busy from which an idle pool waits for company too

    def idle_pool_waits(self, wall: float, cpu: float) -> bool:
        """Whether an idle pool should ask ``decide`` instead of dispatching at once, given readings of
        the wall clock and the process's CPU clock: only while the process keeps its cores busy."""
        return self.cpu.update(wall, cpu) >= self.saturated

    def arrived(self, now: float, rows: int) -> None:
        self.arrivals.add(now, rows)

    def observe(self, rows: int, seconds: float, concurrent: int = 1) -> None:
        self.cost.observe(rows, seconds, concurrent)

    def decide(self, now: float, oldest: float, rows: int, max_rows: int, concurrent: int = 1) -> Decision:
        """When the batch holding ``rows`` (its oldest request queued at ``oldest``) should leave, if
        it may grow to ``max_rows`` and would run alongside ``concurrent - 1`` other batches."""
        if rows >= max_rows:
            return Decision(now, "full")
        run_now = self.cost.predict(rows, concurrent)
        if run_now is None:
            return Decision(now, "cold")
        rate = self.arrivals.rows_per_s(now)
        full_at = now + (max_rows - rows) / rate if rate > 0 else math.inf
        if now - oldest + run_now > self.target_s:
            return Decision(min(full_at, now + self.cost.predict(max_rows, concurrent)), "overload")

        # The latest release t that keeps t - oldest + fixed + per_row * (rows + rate * (t - now)) within
        # the budget, for every line of the cost (until full; the batch leaves when full anyway).
        deadline = oldest + self.budget_s
        latest = min(
            (deadline - fixed - per_row * rows + per_row * rate * now) / (1 + per_row * rate)
            for fixed, per_row in self.cost.lines(concurrent)
        )
        release_at = min(full_at, latest)
        if release_at <= now:
            return Decision(now, "late")
        grown = min(max_rows, rows + rate * (release_at - now))
        per_row_now = run_now / rows
        per_row_then = self.cost.predict(grown, concurrent) / grown
        if per_row_then > per_row_now * (1 - self.min_gain):
            return Decision(now, "no_gain")
        return Decision(release_at, "wait_full" if release_at == full_at else "wait_budget")
