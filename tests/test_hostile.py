"""Hostile conditions an independent review reproduced; each is a regression test now."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import workers
from conftest import ROOT, processes_with, wait_until

from supervisor import Supervisor, WorkerFailed, _platform


def test_non_finite_durations_are_refused() -> None:
    with Supervisor() as sup:
        for bad in (math.nan, math.inf):
            with pytest.raises(ValueError):
                sup.request_stop_for("requested", grace_period=bad)
            with pytest.raises(ValueError):
                sup.stop(grace_period=bad)
    with pytest.raises(ValueError):
        Supervisor(grace_period=math.nan)


def test_a_worker_that_left_a_child_and_failed_is_restarted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Supervisor(strategy="one_for_one", grace_period=0.5, term_timeout=0.5) as sup:
        sup.spawn(workers.leave_child_then_fail, args=(str(tmp_path / "flag"),), restart="on-failure")
        assert wait_until(lambda: sup.status()[0].restarts == 1 and sup.status()[0].state == "running", 30)
    assert sup.stop().workers[0].outcome == "stopped"


def test_overlapping_rest_for_one_restarts_merge_and_never_start_a_running_slot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sup = Supervisor(grace_period=1.0, term_timeout=1.0, strategy="rest_for_one", max_restarts=10)
    try:
        args = (str(tmp_path),)
        sup.spawn(
            workers.crash_or_wait, name="a", replicas=2, args=(*args, 1.0), restart="on-failure", grace_period=2.5
        )
        sup.spawn(workers.crash_or_wait, name="b", replicas=2, args=(*args, 0.5), restart="on-failure")
        assert wait_until(lambda: all(s.state == "running" and s.restarts >= 1 for s in sup.status()), 60), sup.status()
        pids = {s.name: s.pid for s in sup.status()}
        manager_children = set(_platform.children(sup.pid or 0))
        assert set(pids.values()) <= manager_children
        assert len(manager_children - set(pids.values())) == 0  # no orphaned old incarnation
    finally:
        report = sup.stop()
    assert report.counts() == {"stopped": 4}


def test_workers_crashing_together_are_all_crashed() -> None:
    with pytest.raises(WorkerFailed), Supervisor(grace_period=1, term_timeout=1) as sup:
        sup.spawn(workers.exit3_at, replicas=4, args=(time.time() + 1.0,))
        sup.join(timeout=60)
    report = sup.stop()
    assert [w.outcome for w in report.workers] == ["crashed"] * 4


def test_join_after_the_manager_died_raises() -> None:
    sup = Supervisor()
    sup.spawn(workers.cooperative)
    assert sup.pid is not None
    os.kill(sup.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="manager process died"):
        sup.join(timeout=30)
    assert sup.stop().reason == "manager-died"


def test_an_event_log_that_cannot_be_written_does_not_end_the_run() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with Supervisor(events="/dev/full") as sup:
        sup.spawn(workers.done, replicas=2)
        report = sup.join(timeout=30)
    assert report.counts() == {"completed": 2}


def test_commands_start_with_default_sigpipe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "sigign"
    with Supervisor() as sup:
        sup.spawn_command(["sh", "-c", f"grep SigIgn /proc/self/status > {out}"])
        sup.join(timeout=30)
    ignored = int(out.read_text().split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1))


def test_prefixed_output_held_by_an_untraceable_daemon_does_not_hang_stop(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_platform, "USE_CGROUPS", False)
    sup = Supervisor(grace_period=0.5, term_timeout=0.5, output="prefix")
    sup.spawn_command(["sh", "-c", "env -i sh -c 'exec setsid sleep 3600' & echo started; exec sleep 3600"])
    time.sleep(1.0)
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 15


OWNER_FORKS = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from supervisor import Supervisor
    import workers
    sup = Supervisor(grace_period=5, term_timeout=5)
    sup.spawn(workers.cooperative, replicas=2)
    child = os.fork()
    if child == 0:
        time.sleep(3600) if {hold!r} else None
        os._exit(0) if {hold!r} else sys.exit(0)   # sys.exit runs atexit handlers in the child
    if not {hold!r}:
        os.waitpid(child, 0)
        time.sleep(0.5)
        print(sorted(s.state for s in sup.status()), flush=True)
    print("ready", flush=True)
    time.sleep(3600)
    """
)


def test_a_forked_child_of_the_owner_does_not_stop_the_parents_run() -> None:
    script = OWNER_FORKS.format(root=ROOT, tests=os.path.join(ROOT, "tests"), hold=False)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "['running', 'running']"
    finally:
        owner.kill()
        owner.wait()


def test_owner_death_is_seen_even_while_a_fork_of_it_lives(token: str) -> None:
    script = OWNER_FORKS.format(root=ROOT, tests=os.path.join(ROOT, "tests"), hold=True)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "ready"
    forked = [p for p in _platform.children(owner.pid) if "guardian" not in _cmdline(p)]
    owner.kill()
    owner.wait()
    try:
        assert wait_until(lambda: set(processes_with(token)) <= set(forked), 5), processes_with(token)
    finally:
        for pid in forked:
            os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline") as f:
        return f.read()
