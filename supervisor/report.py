"""Worker states and outcomes, and the reports built from them."""

from __future__ import annotations

import signal as _signal
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class WorkerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


class Outcome(StrEnum):
    """How a worker ended; decided by the ladder step in force when it exited."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    KILLED = "killed"
    FAILED = "failed"
    CRASHED = "crashed"


def signal_name(exitcode: int | None) -> str | None:
    """``SIGKILL`` for an exit code of -9 (the multiprocessing convention); None for normal exits."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return _signal.Signals(-exitcode).name
    except ValueError:
        return f"SIG{-exitcode}"


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    pool: str
    index: int
    pid: int | None
    state: str
    restarts: int
    exitcode: int | None
    started_at: float | None = None  # time.time() of the current incarnation's start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerReport:
    name: str
    pool: str
    index: int
    pid: int | None
    outcome: str
    exitcode: int | None
    signal: str | None
    seconds: float | None
    descendants_killed: int
    error: str | None = None  # for failed and crashed workers: "ValueError: bad shard" or "killed by SIGSEGV"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TeardownReport:
    ok: bool
    reason: str
    duration: float
    workers: list[WorkerReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "duration": self.duration,
            "workers": [w.to_dict() for w in self.workers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeardownReport:
        """The inverse of ``to_dict``."""
        return cls(
            ok=bool(data["ok"]),
            reason=str(data["reason"]),
            duration=float(data["duration"]),
            workers=[WorkerReport(**w) for w in data["workers"]],
        )

    def counts(self) -> dict[str, int]:
        """Number of workers per outcome."""
        out: dict[str, int] = {}
        for w in self.workers:
            out[w.outcome] = out.get(w.outcome, 0) + 1
        return out
