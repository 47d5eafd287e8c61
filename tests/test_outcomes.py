"""Every outcome of the interface, produced on purpose by real processes and real signals."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest
import workers
from conftest import wait_until

from supervisor import Supervisor, WorkerFailed

GRACE, TERM = 0.5, 0.5


def run_one(target, *, stop_after: float | None = 0.3, **spawn):  # type: ignore[no-untyped-def]
    """Spawn one worker; stop after ``stop_after`` s (None: let it end by itself); its report."""
    sup = Supervisor(grace_period=GRACE, term_timeout=TERM, strategy="one_for_one")
    try:
        sup.spawn(target, **spawn)
        if stop_after is None:
            with contextlib.suppress(WorkerFailed):
                sup.join(timeout=60)
        else:
            assert sup.status()[0].state in ("starting", "running")
            time.sleep(stop_after)
        report = sup.stop()
    finally:
        sup.stop()
    assert len(report.workers) == 1
    return report.workers[0], report


def test_completed() -> None:
    w, report = run_one(workers.done, stop_after=None)
    assert (w.outcome, w.exitcode, w.signal, w.seconds) == ("completed", 0, None, None)
    assert report.ok and report.reason == "completed"


def test_stopped_cooperative_loop() -> None:
    w, report = run_one(workers.cooperative)
    assert (w.outcome, w.exitcode) == ("stopped", 0)
    assert w.seconds is not None and w.seconds < GRACE
    assert report.ok and report.reason == "requested"


def test_terminated_while_sleeping() -> None:
    w, _ = run_one(workers.sleeper)
    assert (w.outcome, w.signal) == ("terminated", "SIGTERM")
    assert w.seconds is not None and w.seconds >= GRACE


def test_killed_when_sigterm_ignored() -> None:
    w, _ = run_one(workers.term_ignorer)
    assert (w.outcome, w.signal) == ("killed", "SIGKILL")
    assert w.seconds is not None and w.seconds >= GRACE + TERM


def test_killed_when_sigterm_blocked_while_spinning() -> None:
    w, _ = run_one(workers.term_blocker)
    assert (w.outcome, w.signal) == ("killed", "SIGKILL")


def test_failed_carries_type_message_and_remote_traceback() -> None:
    with Supervisor(grace_period=GRACE, term_timeout=TERM) as sup:
        sup.spawn(workers.raiser, kwargs={"message": "bad shard 7"})
        with pytest.raises(WorkerFailed) as info:
            sup.join(timeout=60)
    err = info.value
    (failure,) = err.failures
    assert (failure.name, failure.type, failure.message) == ("raiser.0", "ValueError", "bad shard 7")
    assert "in inner" in failure.traceback and "workers.py" in failure.traceback
    assert "bad shard 7" in str(err) and "Remote traceback" in str(err)
    assert err.report is not None and err.report.workers[0].outcome == "failed"
    assert err.report.reason == "failure" and not err.report.ok


def test_failed_with_an_exception_that_cannot_be_pickled() -> None:
    w, _report = run_one(workers.raise_unpicklable, stop_after=None)
    assert w.outcome == "failed" and w.exitcode == 1
    sup = Supervisor()
    try:
        sup.spawn(workers.raise_unpicklable)
        with pytest.raises(WorkerFailed) as info:
            sup.join(timeout=60)
    finally:
        sup.stop()
    assert info.value.failures[0].type == "Unpicklable"
    assert "cannot travel" in info.value.failures[0].traceback


@pytest.mark.parametrize(
    ("target", "exitcode", "signal"),
    [(workers.exit3, 3, None), (workers.segfault, -11, "SIGSEGV")],
    ids=["os._exit(3)", "SIGSEGV"],
)
def test_crashed(target, exitcode, signal) -> None:  # type: ignore[no-untyped-def]
    w, report = run_one(target, stop_after=None)
    assert (w.outcome, w.exitcode, w.signal) == ("crashed", exitcode, signal)
    assert not report.ok


def test_crash_is_noticed_while_a_grandchild_holds_every_inherited_fd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A multiprocessing sentinel would stay open here; pidfds and waitpid do not care."""
    pidfile = str(tmp_path / "grandchild")
    with Supervisor(grace_period=5, term_timeout=5) as sup:
        sup.spawn(workers.crash_leaving_grandchild, args=(pidfile,))
        sup.spawn(workers.cooperative, replicas=2)
        t0 = time.monotonic()
        with pytest.raises(WorkerFailed) as info:
            sup.join(timeout=60)
        noticed = time.monotonic() - t0
    assert info.value.failures[0].name == "crash_leaving_grandchild.0"
    assert noticed < 5, "the crash must be seen at once, not when a timeout runs out"
    counts = info.value.report.counts() if info.value.report else {}
    assert counts == {"crashed": 1, "stopped": 2}
    assert info.value.report is not None and info.value.report.workers[0].descendants_killed == 1


def test_lambdas_and_closures_run_in_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    factor = 6

    def closure(ctx, x):  # type: ignore[no-untyped-def]
        out.with_name(f"closure-{ctx.index}").write_text(str(x * factor))

    with Supervisor() as sup:
        sup.spawn(lambda ctx: out.write_text(ctx.name), name="lam")
        sup.spawn(closure, args=(7,), replicas=2)
        report = sup.join(timeout=60)
    assert out.read_text() == "lam.0"
    assert [(tmp_path / f"closure-{i}").read_text() for i in range(2)] == ["42", "42"]
    assert report.counts() == {"completed": 3}


def test_mixed_64_workers_end_together_within_one_ladder() -> None:
    kinds = [workers.cooperative, workers.sleeper, workers.term_ignorer, workers.done]
    with Supervisor(grace_period=0.5, term_timeout=0.5) as sup:
        for kind in kinds:
            sup.spawn(kind, replicas=16)
        assert len(sup.status()) == 64
        time.sleep(1.0)
        t0 = time.monotonic()
        report = sup.stop()
        took = time.monotonic() - t0
    assert report.counts() == {"stopped": 16, "terminated": 16, "killed": 16, "completed": 16}
    # One shared deadline: about grace + term (1 s). 64 x grace would be 32 s.
    assert took < 5.0, took
    assert report.duration < 5.0


def test_wait_wakes_within_milliseconds_of_request_stop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stamp = tmp_path / "woke"

    def waiter(ctx):  # type: ignore[no-untyped-def]
        ctx.wait(10)
        stamp.write_text(repr(time.time()))

    with Supervisor() as sup:
        sup.spawn(waiter)
        assert sup.status()[0].state in ("starting", "running")
        time.sleep(0.5)
        asked = time.time()
        sup.request_stop()
        report = sup.join(timeout=30)
    latency = float(stamp.read_text()) - asked
    assert report.workers[0].outcome == "stopped"
    assert latency < 2.0, latency  # milliseconds in practice; generous for a loaded machine


def test_request_stop_exception_is_reraised_by_join() -> None:
    with Supervisor() as sup:
        sup.spawn(workers.cooperative, replicas=2)
        sup.request_stop(KeyError("from the owner"))
        assert sup.should_stop()
        with pytest.raises(KeyError, match="from the owner"):
            sup.join(timeout=30)


def test_worker_request_stop_stops_everyone_and_join_reraises() -> None:
    with Supervisor() as sup:
        sup.spawn(workers.cooperative, replicas=3)
        sup.spawn(workers.request_stop_with, args=("enough",))
        with pytest.raises(RuntimeError, match="enough"):
            sup.join(timeout=30)
        assert sup.should_stop()
    report = sup.stop()
    assert report.counts() == {"stopped": 4}
    assert report.reason == "requested"


def test_stop_is_idempotent_and_thread_safe() -> None:
    sup = Supervisor(grace_period=0.3, term_timeout=0.3)
    sup.spawn(workers.sleeper, replicas=4)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(sup.stop())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    reports.append(sup.stop())
    assert len(reports) == 5
    assert all(r is reports[0] for r in reports)
    assert reports[0].counts() == {"terminated": 4}
    with pytest.raises(RuntimeError):
        sup.spawn(workers.done)


@pytest.mark.parametrize("exit_with", [None, ValueError, KeyboardInterrupt])
def test_context_manager_tears_down_on_every_exit_path(exit_with) -> None:  # type: ignore[no-untyped-def]
    def body() -> Supervisor:
        with Supervisor(grace_period=0.3, term_timeout=0.3) as sup:
            sup.spawn(workers.sleeper, replicas=2)
            sup.spawn(workers.term_ignorer)
            if exit_with is not None:
                raise exit_with("leaving")
        return sup

    if exit_with is None:
        sup = body()
    else:
        with pytest.raises(exit_with):
            body()
        return
    assert sup.stop().counts() == {"terminated": 2, "killed": 1}


def test_context_manager_raises_worker_failed_when_block_did_not_raise() -> None:
    with pytest.raises(WorkerFailed), Supervisor() as sup:
        sup.spawn(workers.exit3)
        time.sleep(0.5)


def test_status_lists_every_slot() -> None:
    with Supervisor(grace_period=0.2, term_timeout=0.2) as sup:
        sup.spawn(workers.cooperative, name="decode", replicas=3)
        sup.spawn_command(workers.SLEEP, name="cmd")
        statuses = sup.status()
        assert [(s.name, s.pool, s.index) for s in statuses] == [
            ("decode.0", "decode", 0),
            ("decode.1", "decode", 1),
            ("decode.2", "decode", 2),
            ("cmd.0", "cmd", 0),
        ]
        assert all(s.pid and s.state in ("starting", "running") and s.restarts == 0 for s in statuses)
    assert {s.state for s in sup.status()} == {"exited"}


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_start_methods_run_the_same_ladder(start_method: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    with Supervisor(grace_period=0.3, term_timeout=0.3) as sup:
        sup.spawn(lambda ctx: marker.write_text(ctx.name), name="once", start_method=start_method)
        sup.spawn(workers.cooperative, replicas=2, start_method=start_method)
        sup.spawn(workers.term_ignorer, start_method=start_method)
        assert wait_until(lambda: all(s.state != "starting" for s in sup.status()), 60)
        time.sleep(0.3)
    report = sup.stop()
    assert marker.read_text() == "once.0"
    assert report.counts() == {"completed": 1, "stopped": 2, "killed": 1}


def test_workers_that_see_the_flag_before_the_manager_hears_of_it_count_as_stopped() -> None:
    """Workers read the stop flag from shared memory at once; their outcome must still be stopped."""
    for _ in range(3):
        with Supervisor(grace_period=5, term_timeout=5) as sup:
            sup.spawn(workers.cooperative, replicas=16)
            sup.spawn(workers.request_stop_with, args=("now",))
            with pytest.raises(RuntimeError, match="now"):
                sup.join(timeout=60)
        report = sup.stop()
        assert report.counts() == {"stopped": 17}, report.counts()
        assert report.reason == "requested"


def test_a_terminal_nobody_reads_does_not_stall_the_teardown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Workers' output goes through the manager; a full terminal must not freeze its loop."""
    import pty
    import subprocess
    import sys

    from conftest import ROOT

    result = tmp_path / "took"
    script = f"""
import sys, time
sys.path[:0] = [{ROOT!r}, {ROOT + "/tests"!r}]
from supervisor import Supervisor
import workers
sup = Supervisor(grace_period=1, term_timeout=1, output="prefix")
sup.spawn(workers.chatter, replicas=2)
time.sleep(1.5)  # long enough to fill the terminal's buffer
t0 = time.monotonic()
report = sup.stop()
open({str(result)!r}, "w").write(f"{{time.monotonic() - t0}} {{sorted(report.counts())}}")
"""
    main_fd, child_fd = pty.openpty()
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    try:
        assert wait_until(result.exists, 60)
        took, counts = result.read_text().split(" ", 1)
        assert counts == "['stopped']"
        assert float(took) < 10, took  # grace + term is 2 s; a stalled loop waited for a reader
    finally:
        owner.kill()
        owner.wait()
        os.close(main_fd)
