"""A plain-Python transcription of the reward join (``processor.join.rule`` docstring, README
"Reward join"): one outcome at a time, a dict as the log. The vectorized join must equal it."""

from __future__ import annotations

from dataclasses import dataclass, replace

NO_TIME = -(2**63)
EVICT_TO = 63 / 64


@dataclass(frozen=True)
class Out:
    """One outcome as the join sees it."""

    request: str
    campaign: str
    arm: int
    t: int
    contribution: tuple[float, bool, float, float, int, int, bool]
    propensity: float = 0.5


@dataclass(frozen=True)
class Entry:
    t: int
    t_out: int
    contribution: tuple[float, bool, float, float, int, int, bool] | None
    arm: int
    campaign: str
    foreign: bool


class ReferenceJoin:
    """The join of one partition, sequentially."""

    def __init__(
        self,
        window: int,
        grace: int,
        accept: bool = True,
        apply_late: bool = False,
        max_entries: int | None = None,
    ) -> None:
        self.window, self.grace = window, grace
        self.retention = window + grace
        self.accept, self.apply_late = accept, apply_late
        self.max_entries = max_entries
        self.log: dict[str, Entry] = {}
        self.watermark = NO_TIME
        self.pending = NO_TIME
        self.evict_below = NO_TIME
        self.evicted = 0

    def lower_bound(self) -> int:
        expiry = NO_TIME if self.watermark == NO_TIME else self.watermark - self.retention
        return max(expiry, self.evict_below)

    def settle(self) -> None:
        self.watermark = max(self.watermark, self.pending)
        self._drop()
        if self.max_entries is not None and len(self.log) > self.max_entries:
            times = sorted(e.t for e in self.log.values())
            k = len(times) - int(self.max_entries * EVICT_TO)
            self.evict_below = max(self.evict_below, times[k - 1] + 1)
            before = len(self.log)
            self._drop()
            self.evicted += before - len(self.log)

    def _drop(self) -> None:
        bound = self.lower_bound()
        self.log = {r: e for r, e in self.log.items() if e.t >= bound}

    def decide(self, decisions: list[tuple[str, str, int, int]]) -> None:
        """(request, campaign, arm, event time) per decision; the first one of a request wins."""
        for request, campaign, arm, t in decisions:
            if t >= self.lower_bound() and request not in self.log:
                self.log[request] = Entry(t, NO_TIME, None, arm, campaign, False)

    def process(self, outcomes: list[Out]) -> tuple[list[str], list[tuple[str, int, tuple]]]:
        """Statuses and the posterior changes ``(apply | retract, outcome index, contribution)``."""
        self.settle()
        w0 = self.watermark
        late_before = max(NO_TIME if w0 == NO_TIME else w0 - self.grace, self.evict_below)
        statuses: list[str] = []
        events: list[tuple[str, int, tuple]] = []
        for k, o in enumerate(outcomes):
            e = self.log.get(o.request)
            if e is None:
                if o.t < late_before:
                    statuses.append("late")
                    if self.apply_late:
                        events.append(("apply", k, o.contribution))
                    self.pending = max(self.pending, o.t)
                    continue
                if not self.accept:
                    statuses.append("unknown_rejected")
                    continue
                self.log[o.request] = Entry(o.t, o.t, o.contribution, o.arm, o.campaign, True)
                statuses.append("unknown")
                events.append(("apply", k, o.contribution))
                self.pending = max(self.pending, o.t)
                continue
            if o.arm != e.arm or o.campaign != e.campaign:
                statuses.append("arm_mismatch")
                continue
            self.pending = max(self.pending, o.t)
            late = o.t > e.t + self.window
            if late and not self.apply_late:
                statuses.append("late")
                continue
            if e.contribution is None:
                status = "joined"
                events.append(("apply", k, o.contribution))
                self.log[o.request] = replace(e, t_out=o.t, contribution=o.contribution)
            elif o.t >= e.t_out:
                if o.contribution == e.contribution:
                    status = "duplicate"
                else:
                    status = "restated"
                    events.append(("retract", k, e.contribution))
                    events.append(("apply", k, o.contribution))
                self.log[o.request] = replace(e, t_out=o.t, contribution=o.contribution)
            else:
                status = "duplicate"
            statuses.append("late" if late else status)
        return statuses, events
