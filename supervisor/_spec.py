"""What the owner sends the manager to start a pool: plain data, picklable without dill."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field

RESTART_POLICIES = ("never", "on-failure", "always")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
START_METHODS = ("fork", "spawn")
STOP_ORDERS = ("together", "upstream-first")


@dataclass(frozen=True)
class PoolSpec:
    """A pool of ``replicas`` identical workers.

    Exactly one of ``payload`` (dill bytes of ``(target, args, kwargs)``) and ``argv`` is set.
    Timeouts are resolved against the supervisor's defaults before the spec is sent.
    """

    name: str
    replicas: int
    grace_period: float
    term_timeout: float
    restart: str = "never"
    payload: bytes | None = None
    argv: tuple[str, ...] | None = None
    stop_signal: int = int(signal.SIGTERM)
    heartbeat_timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    sys_path: tuple[str, ...] = ()
    start_method: str = "fork"
    memory_limit: int | None = None  # bytes
    cpu_affinity: tuple[int, ...] | None = None
    nice: int | None = None
    inputs: tuple[str, ...] = ()  # channels it consumes
    outputs: tuple[str, ...] = ()  # channels it produces into (their end-of-stream waits for it)


def check_duration(name: str, value: float | None, *, allow_none: bool = False, positive: bool = False) -> None:
    """Raise ValueError unless ``value`` is a usable number of seconds."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "zero or more"
        raise ValueError(f"{name} must be a finite number of seconds, {kind}, not {value!r}")


def parse_signal(value: str | int) -> int:
    """``"SIGINT"``, ``"INT"`` or ``2`` -> 2; ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(signal.Signals(value))
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise ValueError(f"unknown signal {value!r}")
