"""Restarts, crash loops and hung workers with real processes."""

from __future__ import annotations

import json
import time

import pytest
import workers
from conftest import wait_until

from supervisor import Supervisor, WorkerFailed


def pids(sup: Supervisor) -> dict[str, int | None]:
    return {s.name: s.pid for s in sup.status()}


def settled(sup: Supervisor, restarts: dict[str, int]) -> bool:
    states = {s.name: (s.state, s.restarts) for s in sup.status()}
    return all(states[n] == ("running", r) for n, r in restarts.items())


def test_one_for_one_restarts_only_the_crashed_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Supervisor(strategy="one_for_one", grace_period=1, term_timeout=1) as sup:
        sup.spawn(workers.cooperative, name="steady", replicas=2)
        sup.spawn(workers.crash_once, name="flaky", args=(str(tmp_path / "flag"),), restart="on-failure")
        assert wait_until(lambda: settled(sup, {"flaky.0": 1, "steady.0": 0, "steady.1": 0}), 60), sup.status()
        before = pids(sup)
        time.sleep(0.3)
        assert pids(sup) == before
    report = sup.stop()
    assert report.ok and report.counts() == {"stopped": 3}


def test_one_for_all_restarts_everyone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Supervisor(strategy="one_for_all", grace_period=1, term_timeout=1) as sup:
        sup.spawn(workers.cooperative, name="steady", replicas=2, restart="on-failure")
        first = pids(sup)
        sup.spawn(workers.crash_once, name="flaky", args=(str(tmp_path / "flag"),), restart="on-failure")
        assert wait_until(lambda: settled(sup, {"flaky.0": 1, "steady.0": 1, "steady.1": 1}), 60), sup.status()
        assert all(pids(sup)[n] != first[n] for n in first)
        kinds = [e["event"] for e in sup.events()]
        assert "restarting" in kinds


def test_rest_for_one_restarts_the_pool_and_those_started_after_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Supervisor(strategy="rest_for_one", grace_period=1, term_timeout=1) as sup:
        sup.spawn(workers.cooperative, name="source", restart="always")
        # the crash waits until the pool after it exists, so that it is part of the restart
        sup.spawn(workers.crash_once, name="middle", args=(str(tmp_path / "flag"), 1.0), restart="on-failure")
        sup.spawn(workers.cooperative, name="sink", restart="on-failure")
        assert wait_until(lambda: settled(sup, {"source.0": 0, "middle.0": 1, "sink.0": 1}), 60), sup.status()


def test_crash_loop_ends_the_run_with_restarts_exhausted() -> None:
    sup = Supervisor(strategy="one_for_one", max_restarts=3, restart_window=60, restart_backoff=0.05)
    try:
        sup.spawn(workers.cooperative, name="steady")
        sup.spawn(workers.always_crash, name="loop", restart="on-failure")
        t0 = time.monotonic()
        with pytest.raises(WorkerFailed) as info:
            sup.join(timeout=60)
        assert time.monotonic() - t0 < 30  # well before any generous bound
    finally:
        report = sup.stop()
    assert report.reason == "restarts exhausted" and not report.ok
    loop = next(s for s in sup.status() if s.name == "loop.0")
    assert loop.restarts == 3
    assert info.value.failures[-1].name == "loop.0"
    assert [w.outcome for w in report.workers] == ["stopped", "crashed"]


def test_hung_worker_is_detected_escalated_and_restarted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "events.jsonl"
    with Supervisor(strategy="one_for_one", grace_period=0.3, term_timeout=0.3, events=log) as sup:
        sup.spawn(workers.cooperative, name="beating", heartbeat_timeout=5)  # beats every 50 ms
        sup.spawn(workers.silent_sleeper, name="hung", heartbeat_timeout=0.5, restart="on-failure")
        assert wait_until(lambda: any(s.restarts >= 1 and s.state == "running" for s in sup.status()), 60)
        beating = next(s for s in sup.status() if s.name == "beating.0")
        assert beating.restarts == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    hung = [e for e in events if e.get("worker") == "hung.0"]
    kinds = [e["event"] for e in hung]
    assert kinds[:5] == ["started", "hung", "escalated", "exited", "restarting"], kinds
    exited = next(e for e in hung if e["event"] == "exited")
    assert exited["outcome"] == "terminated" and exited["error"] == "hung: no heartbeat for 0.5 s"
    assert not [e for e in events if e.get("worker") == "beating.0" and e["event"] == "hung"]


def test_hung_worker_without_restart_fails_the_run() -> None:
    with Supervisor(grace_period=0.2, term_timeout=0.2) as sup:
        sup.spawn(workers.silent_sleeper, name="hung", heartbeat_timeout=0.3)
        sup.spawn(workers.cooperative, name="ok")
        with pytest.raises(WorkerFailed) as info:
            sup.join(timeout=60)
    assert info.value.failures[0].type == "WorkerHung"
    report = sup.stop()
    assert report.reason == "failure"
    assert {w.name: w.error for w in report.workers}["hung.0"] == "hung: no heartbeat for 0.3 s"
