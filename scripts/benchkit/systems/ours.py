"""Us, through the public API only."""

from __future__ import annotations

import collections
import time

import psutil

from supervisor import Supervisor

from .. import behaviours
from .base import GRACE, TERM, System


class Ours(System):
    start_method = "fork"
    stopped = False

    def start(self, n: int, behaviour: str, crash: bool) -> None:
        self.sup = Supervisor(grace_period=GRACE, term_timeout=TERM, strategy="one_for_one")
        self.created = time.perf_counter()
        restart = "on-failure" if crash else "never"
        self.sup.spawn(
            behaviours.ours,
            name="w",
            replicas=n,
            kwargs={"name": behaviour},
            restart=restart,
            start_method=self.start_method,
        )

    def cooperative_stop(self, n: int) -> None:
        self.sup.request_stop()
        self.sup.wait()

    def teardown(self) -> None:
        self.stopped = True
        self.sup.stop()

    def deadline(self, behaviour: str) -> float | None:
        return GRACE + TERM if behaviour == "deaf" else GRACE

    def before_crash(self, victim: int) -> None:
        self.victim = next(s.name for s in self.sup.status() if s.pid == victim)

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        """The manager's own timestamp of the victim's ``exited`` event (polled via ``events()``)."""
        name = self.victim
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.sup.events():
                if event["event"] == "exited" and event.get("worker") == name:
                    return float(event["time"])
            time.sleep(0.001)
        return None

    def supervising_pids(self) -> list[int]:
        manager = self.sup.pid
        assert manager is not None
        return [psutil.Process(manager).ppid(), manager]  # guardian, manager

    def infra_pids(self) -> set[int]:
        """Guardian and manager outlive a cooperative stop (``wait()`` keeps them for more spawns),
        not ``stop()``: after a teardown they count as survivors if they are still there."""
        if self.stopped:
            return super().infra_pids()
        return {*super().infra_pids(), *self.supervising_pids()}

    def diagnose(self) -> str:
        states = collections.Counter((s.state, s.exitcode) for s in self.sup.status())
        ends = collections.Counter(str(e.get("outcome")) for e in self.sup.events() if e["event"] == "exited")
        return f"states {dict(states)}; exits {dict(ends)}"

    def close(self) -> None:
        self.sup.stop(grace_period=0, term_timeout=0)


class OursSpawn(Ours):
    start_method = "spawn"


class OursNoGrace(Ours):
    """Teardown with ``stop(grace_period=0)``: SIGTERM at once, like the peers' terminate/kill calls."""

    def teardown(self) -> None:
        self.stopped = True
        self.sup.stop(grace_period=0)

    def deadline(self, behaviour: str) -> float | None:
        return TERM if behaviour == "deaf" else 0.0
