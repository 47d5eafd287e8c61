"""What to do when a worker ends on its own: restart strategies, restart intensity and backoff.

Pure decisions over plain data and an injectable clock (the manager carries them out), after
Erlang/OTP supervisors and systemd:

- ``one_for_one``: only the worker that ended is affected;
- ``one_for_all``: every worker is; the others are stopped, then all are restarted;
- ``rest_for_one``: the worker's pool and every pool started after it are.

A worker is restarted when its pool's policy says so (``always``; ``on-failure`` after a failure,
crash or hang). Affected siblings are restarted unless their policy is ``never``. When the worker
is not restarted and it failed, the affected workers are stopped for good (``one_for_all``: the
whole run ends with reason ``failure``). More than ``max_restarts`` restarts within
``restart_window`` seconds end the run (``restarts exhausted``). A slot that keeps failing waits
longer each time: no delay for its first restart, then ``backoff * 2**(k-2)`` up to
``backoff_max``; running ``backoff_reset`` seconds without a restart forgets its history.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Member:
    """A worker slot as the strategy sees it."""

    slot: int
    pool_order: int  # position of its pool in start order
    policy: str  # never | on-failure | always
    live: bool  # still running (not exited)


@dataclass(frozen=True)
class Plan:
    """The manager's orders after one worker ended."""

    stop: tuple[int, ...] = ()  # live slots to put on the ladder now
    restart: tuple[int, ...] = ()  # slots to start again once every slot in ``stop`` has ended
    delay: float = 0.0  # backoff before those restarts
    end: str | None = None  # stop the whole run, for this reason
    failure: bool = False  # report the failure to the owner: it is final, not healed by a restart


@dataclass
class Restarts:
    strategy: str = "one_for_all"
    max_restarts: int = 3
    restart_window: float = 60.0
    backoff: float = 0.5
    backoff_max: float = 30.0
    backoff_reset: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _times: deque[float] = field(default_factory=deque)  # restart operations within the window
    _streak: dict[int, int] = field(default_factory=dict)  # slot -> restarts in a row
    _last: dict[int, float] = field(default_factory=dict)  # slot -> time of its last restart

    def on_exit(self, ended: Member, failed: bool, members: Sequence[Member]) -> Plan:
        """The plan after ``ended`` exited by itself (``failed``: failed, crashed or hung)."""
        wants = ended.policy == "always" or (ended.policy == "on-failure" and failed)
        affected = self._affected(ended, members)
        others = tuple(m.slot for m in affected if m.slot != ended.slot and m.live)
        if not wants:
            if not failed:
                return Plan()
            if self.strategy == "one_for_all":
                return Plan(end="failure", failure=True)
            return Plan(stop=others, failure=True)
        if not self._allow():
            return Plan(end="restarts exhausted", failure=failed)
        again = tuple(m.slot for m in affected if m.slot == ended.slot or m.policy != "never")
        return Plan(stop=others, restart=again, delay=self._delay(ended.slot))

    def _affected(self, ended: Member, members: Sequence[Member]) -> list[Member]:
        if self.strategy == "one_for_all":
            return list(members)
        if self.strategy == "rest_for_one":
            return [m for m in members if m.pool_order >= ended.pool_order]
        return [ended]

    def _allow(self) -> bool:
        now = self.clock()
        while self._times and now - self._times[0] >= self.restart_window:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def _delay(self, slot: int) -> float:
        now = self.clock()
        if now - self._last.get(slot, -float("inf")) >= self.backoff_reset:
            self._streak[slot] = 0
        self._streak[slot] = k = self._streak.get(slot, 0) + 1
        self._last[slot] = now
        return 0.0 if k == 1 else min(self.backoff_max, self.backoff * 2 ** (k - 2))
