"""The interface every benchmarked system implements (us and each peer)."""

from __future__ import annotations

import abc
import sys
from dataclasses import dataclass

from ..fifo import Fifos

GRACE = 1.0  # grace period wherever a system lets us set one (ours, supervisord's stopwaitsecs)
TERM = 1.0  # our term_timeout: SIGTERM -> SIGKILL


@dataclass
class Env:
    """What the harness hands a system: the FIFOs, a private folder, supervisord's venv."""

    fifos: Fifos
    folder: str
    peers_bin: str | None


class System(abc.ABC):
    """One way of running N worker processes and stopping them."""

    def __init__(self, env: Env) -> None:
        self.env = env
        # perf_counter() once the supervisor/pool exists and before any worker is asked for, where
        # the two are separate steps: start-up minus this is the workers' share.
        self.created: float | None = None

    @abc.abstractmethod
    def start(self, n: int, behaviour: str, crash: bool) -> None:
        """Create the supervisor/pool and start ``n`` workers running ``behaviour``.

        ``crash``: the crash scenario: restart dead workers where the system can (pools get one
        extra queued task, for a replacement worker to pick up)."""

    @abc.abstractmethod
    def cooperative_stop(self, n: int) -> None:
        """Ask the ``coop`` workers to stop, and return once every worker has exited."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """The system's forced teardown of every worker; returns when it considers them gone."""

    @abc.abstractmethod
    def deadline(self, behaviour: str) -> float | None:
        """Seconds after the teardown call at which the configured ladder should have ended such a
        worker (the step that ends it), or None when the system sets no bound."""

    def before_crash(self, victim: int) -> None:
        """Called just before ``victim`` is SIGKILLed (look up what identifies it while it runs)."""
        return None

    @abc.abstractmethod
    def detect_crash(self, victim: int, timeout: float) -> float | None:
        """After ``victim`` was SIGKILLed: the ``time.time()`` at which the system reported it, or
        None if it reports nothing within ``timeout``."""

    def supervising_pids(self) -> list[int]:
        """Processes besides the harness (the owner) whose CPU and memory are the supervisor's."""
        return []

    def infra_pids(self) -> set[int]:
        """Marked processes that are not workers (they outlive a teardown by design)."""
        pids = set()
        tracker = sys.modules.get("multiprocessing.resource_tracker")
        pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
        if pid:
            pids.add(pid)
        return pids

    def diagnose(self) -> str:
        """What the system says of its workers, for a start that did not complete."""
        return ""

    def close(self) -> None:
        """Untimed cleanup once the survivors have been counted (whatever is left afterwards is
        SIGKILLed by pid from outside)."""
        return None
