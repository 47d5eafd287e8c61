"""The stop ladder as a pure function of time: which step each worker is due, and when next.

Steps only go up. Every worker's steps are measured from the same instant (the stop request), so
a teardown takes ``grace_period + term_timeout`` at most, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class Step(IntEnum):
    NONE = 0  # no stop requested for this worker
    COOPERATIVE = 1  # stop event set: the worker may end by itself
    TERM = 2  # SIGTERM (and SIGCONT) sent to its whole tree
    KILL = 3  # SIGKILL sent to whatever of its tree is left


@dataclass
class Rung:
    """One worker on the ladder: when its stop began and its own two waits."""

    key: int
    since: float  # the stop request's time (monotonic)
    grace_period: float
    term_timeout: float
    step: Step = Step.NONE

    def due(self, now: float) -> Step:
        if now >= self.since + self.grace_period + self.term_timeout:
            return Step.KILL
        if now >= self.since + self.grace_period:
            return Step.TERM
        return Step.COOPERATIVE

    def next_time(self) -> float | None:
        """When this rung is next due to climb, or None if it is at the top."""
        if self.step < Step.TERM:
            return self.since + self.grace_period
        if self.step < Step.KILL:
            return self.since + self.grace_period + self.term_timeout
        return None

    def tighten(self, since: float, grace_period: float, term_timeout: float) -> None:
        """A later stop with shorter waits moves the deadlines earlier, never later."""
        term_at = min(self.since + self.grace_period, since + grace_period)
        kill_at = min(self.since + self.grace_period + self.term_timeout, since + grace_period + term_timeout)
        self.grace_period = term_at - self.since
        self.term_timeout = max(0.0, kill_at - term_at)


def climb(rungs: Iterable[Rung], now: float) -> tuple[list[tuple[Rung, Step]], float | None]:
    """The steps due at ``now`` (each rung jumps straight to its due step) and the next deadline.

    The caller performs each returned step and the rung's ``step`` is already updated.
    """
    actions: list[tuple[Rung, Step]] = []
    nxt: float | None = None
    for rung in rungs:
        due = rung.due(now)
        if due > rung.step:
            rung.step = due
            actions.append((rung, due))
        t = rung.next_time()
        if t is not None and (nxt is None or t < nxt):
            nxt = t
    return actions, nxt


def budget_margin(budget: float) -> float:
    """Time kept back from a stop budget for reaping, the report and exit: 10 %, at least 0.25 s."""
    return min(budget, max(0.25, 0.1 * budget))


def fit_budget(grace_period: float, term_timeout: float, budget: float | None) -> tuple[float, float]:
    """Scale (grace, term) down, keeping their ratio, so the ladder ends inside ``budget``.

    The ladder then takes at most ``budget - budget_margin(budget)``; within the budget it is
    left as it is.
    """
    if budget is None:
        return grace_period, term_timeout
    room = budget - budget_margin(budget)
    total = grace_period + term_timeout
    if total <= room:
        return grace_period, term_timeout
    if total == 0:
        return 0.0, 0.0
    return grace_period * room / total, term_timeout * room / total
