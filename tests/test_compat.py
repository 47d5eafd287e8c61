"""supervisor.compat: TensorFlow's Coordinator semantics, and a join that ends what it waits for.

In-process tests fork their workers (``multiprocess`` fork context) and join or kill every one of
them: a forked child shows pytest's original environment, so the leak scan of ``conftest`` cannot
see it. Scenarios that need the scan (other start methods, the examples) run in a subprocess,
whose environment carries the test's token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import multiprocess
import pytest
from conftest import ROOT, pid_alive, read_pid

from supervisor import RemoteError, Stopped, compat
from supervisor.compat import CancelledError, Coordinator, Looper

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="linux_only")

FORK = multiprocess.get_context("fork")
EXAMPLES = os.path.join(ROOT, "examples", "coordinator")
BOUND = 5.0  # seconds; generous against grace 0.5 + term 0.5 on a loaded machine
STUBBORN_CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a worker would have it in its ``except`` block."""
    try:
        raise exc
    except BaseException as caught:
        return caught


@contextlib.contextmanager
def started(*procs: multiprocess.Process) -> Iterator[None]:
    """Start ``procs``; whatever the test does, SIGKILL and reap them at the end."""
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)


# -- workers (module level, so that every start method can find them) ------------------------------


def waits_then_exits(coord: Coordinator) -> None:
    coord.wait_for_stop()


def sleeps(coord: Coordinator) -> None:
    time.sleep(3600)


def ignores_term(coord: Coordinator) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)


def ignores_term_with_grandchild(coord: Coordinator, pid_file: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", STUBBORN_CHILD])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(3600)


def group_leader_with_escaped_grandchild(coord: Coordinator, pid_file: str) -> None:
    """Lead a process group; double fork a grandchild that leaves the tree but not the group."""
    os.setpgid(0, 0)
    if os.fork() == 0:
        if os.fork() == 0:
            Path(pid_file).write_text(str(os.getpid()))
            time.sleep(3600)
        os._exit(0)
    time.sleep(3600)


def spins_on_the_coordinator(coord: Coordinator) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:  # deaf: looks all the time, never obeys
        coord.should_stop()
        coord.wait_for_stop(0)


def raises_value_error(coord: Coordinator) -> None:
    with coord.stop_on_exception():
        raise ValueError("raised in the child")


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")  # pickles, but cannot be rebuilt from its args


def raises_unrebuildable(coord: Coordinator) -> None:
    with coord.stop_on_exception():
        raise NeedsTwoArgs(1, 2)


def raises_huge(coord: Coordinator) -> None:
    with coord.stop_on_exception():
        raise ValueError("x" * 400_000)


def append_line(path: str) -> None:
    with open(path, "a") as f:
        f.write("tick\n")


def fail_on_second_call(path: str) -> None:
    append_line(path)
    if len(Path(path).read_text().splitlines()) == 2:
        raise KeyError("second call")


# -- TensorFlow's semantics, one method at a time --------------------------------------------------


def test_first_request_wins_and_its_exception_is_kept() -> None:
    coord = Coordinator()
    first = raised(ValueError("first"))
    coord.request_stop(first)
    coord.request_stop(raised(KeyError("second")))
    assert coord.should_stop()
    with pytest.raises(ValueError) as info:
        coord.raise_requested_exception()
    assert info.value is first
    with pytest.raises(ValueError) as info:
        coord.join()
    assert info.value is first


def test_an_exception_after_a_plain_request_is_dropped_as_in_tf() -> None:
    coord = Coordinator()
    coord.request_stop()
    coord.request_stop(raised(ValueError("too late")))
    coord.raise_requested_exception()  # does not raise
    coord.join()


def test_request_stop_accepts_an_exc_info_tuple() -> None:
    coord = Coordinator()
    try:
        raise KeyError("from exc_info")
    except KeyError:
        info = sys.exc_info()
        coord.request_stop(info)
    with pytest.raises(KeyError) as caught:
        coord.join()
    assert caught.value is info[1]


def test_an_empty_exc_info_is_a_plain_stop() -> None:
    coord = Coordinator()
    coord.request_stop((None, None, None))
    assert coord.should_stop()
    coord.join()


def test_a_non_exception_is_recorded_as_a_value_error() -> None:
    coord = Coordinator()
    coord.request_stop("oops")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="oops"):
        coord.raise_requested_exception()


@pytest.mark.parametrize(
    ("types", "exc"),
    [(None, CancelledError("clean")), ((StopIteration,), StopIteration()), ((StopIteration,), Stopped())],
)
def test_clean_stop_exception_types_stop_without_being_raised(
    types: tuple[type[BaseException], ...] | None, exc: BaseException
) -> None:
    coord = Coordinator(types)
    coord.request_stop(raised(exc))
    assert coord.should_stop()
    coord.raise_requested_exception()
    coord.join()


def test_other_exceptions_are_not_clean_stops() -> None:
    coord = Coordinator((StopIteration,))
    coord.request_stop(raised(ValueError("bad")))
    with pytest.raises(ValueError):
        coord.join()


def test_stop_on_exception_requests_a_stop_with_the_exception_and_swallows_it() -> None:
    coord = Coordinator()
    with coord.stop_on_exception():
        pass
    assert not coord.should_stop()
    with coord.stop_on_exception():
        raise ValueError("in the block")
    assert coord.should_stop()
    with pytest.raises(ValueError, match="in the block"):
        coord.raise_requested_exception()


def test_wait_for_stop_times_out_with_false_and_wakes_with_true() -> None:
    coord = Coordinator()
    start = time.monotonic()
    assert coord.wait_for_stop(0.05) is False
    assert time.monotonic() - start >= 0.04
    assert coord.wait_for_stop(-1) is False
    timer = threading.Timer(0.2, coord.request_stop)
    timer.start()
    start = time.monotonic()
    assert coord.wait_for_stop(30) is True
    assert time.monotonic() - start < BOUND
    assert coord.wait_for_stop(0) is True
    timer.join()


def test_clear_stop_forgets_the_stop_the_exception_and_joined() -> None:
    coord = Coordinator()
    coord.request_stop(raised(ValueError("old")))
    with pytest.raises(ValueError):
        coord.join()
    assert coord.joined
    coord.clear_stop()
    assert not coord.should_stop()
    assert not coord.joined
    assert coord.wait_for_stop(0.01) is False
    coord.raise_requested_exception()
    coord.request_stop(raised(KeyError("new")))  # the next request is a first request again
    assert coord.wait_for_stop(1)
    with pytest.raises(KeyError):
        coord.raise_requested_exception()


def test_register_thread_is_joined_by_join_without_arguments() -> None:
    coord = Coordinator()
    thread = threading.Thread(target=coord.wait_for_stop, name="registered")
    coord.register_thread(thread)
    thread.start()
    coord.request_stop()
    coord.join()
    assert not thread.is_alive()
    assert coord.joined


def test_joined_then_request_stop_raises_the_exception_at_once() -> None:
    coord = Coordinator()
    assert not coord.joined
    coord.join()
    assert coord.joined
    coord.request_stop()  # no exception: nothing to raise
    with pytest.raises(ValueError, match="after join"):
        coord.request_stop(raised(ValueError("after join")))


def test_threads_alive_after_the_grace_period_raise_runtime_error_unless_ignored() -> None:
    coord = Coordinator()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="deaf-thread")
    thread.start()
    try:
        coord.request_stop()
        with pytest.raises(RuntimeError, match="deaf-thread"):
            coord.join([thread], stop_grace_period_secs=0.1)
        coord.join([thread], stop_grace_period_secs=0.1, ignore_live_threads=True)
        coord.clear_stop()
        coord.request_stop(raised(KeyError("wins")))  # the requested exception beats the RuntimeError
        with pytest.raises(KeyError):
            coord.join([thread], stop_grace_period_secs=0.1)
    finally:
        release.set()
        thread.join()


def test_join_accepts_threads_and_processes_together() -> None:
    coord = Coordinator()
    thread = threading.Thread(target=coord.wait_for_stop)
    proc = FORK.Process(target=waits_then_exits, args=(coord,))
    thread.start()
    with started(proc):
        coord.request_stop()
        coord.join([thread, proc], stop_grace_period_secs=30)
    assert not thread.is_alive() and proc.exitcode == 0


def test_cancelled_error_is_stopped_and_the_exports_are_fixed() -> None:
    assert CancelledError is Stopped
    assert sorted(compat.__all__) == ["CancelledError", "Coordinator", "Looper"]


def test_pickling_outside_a_process_start_is_refused() -> None:
    with pytest.raises(TypeError, match="Process"):
        pickle.dumps(Coordinator())


# -- real processes, real signals ------------------------------------------------------------------


def test_cooperative_workers_end_before_any_escalation(caplog: pytest.LogCaptureFixture) -> None:
    coord = Coordinator(term_timeout=0.5)
    procs = [FORK.Process(target=waits_then_exits, args=(coord,)) for _ in range(3)]
    with started(*procs):
        coord.request_stop()
        start = time.monotonic()
        coord.join(procs, stop_grace_period_secs=30)
        assert time.monotonic() - start < BOUND
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert not [r for r in caplog.records if r.name == "supervisor.compat" and r.levelno >= logging.WARNING]


def test_sigterm_ignoring_worker_and_its_grandchild_are_gone_within_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coord = Coordinator(term_timeout=0.5)
    worker = FORK.Process(target=ignores_term_with_grandchild, args=(coord, str(tmp_path / "gc")), name="stubborn")
    plain = FORK.Process(target=sleeps, args=(coord,), name="plain")
    with started(worker, plain):
        grandchild = read_pid(str(tmp_path / "gc"))
        coord.request_stop()
        start = time.monotonic()
        coord.join([worker, plain], stop_grace_period_secs=0.5)  # no RuntimeError: they are gone
        took = time.monotonic() - start
    assert took < BOUND
    assert (worker.exitcode, plain.exitcode) == (-signal.SIGKILL, -signal.SIGTERM)
    assert not pid_alive(grandchild)
    text = " ".join(r.getMessage() for r in caplog.records if r.name == "supervisor.compat")
    assert "stubborn" in text and "killed" in text and "plain" in text and "terminated" in text


def test_one_deadline_for_all_workers_never_n_times_the_grace() -> None:
    coord = Coordinator(term_timeout=0.5)
    procs = [FORK.Process(target=ignores_term, args=(coord,)) for _ in range(6)]
    with started(*procs):
        coord.request_stop()
        start = time.monotonic()
        coord.join(procs, stop_grace_period_secs=0.5)
        took = time.monotonic() - start
    assert took < 4.0  # one after the other would take 6 x (0.5 + 0.5) = 6 s
    assert all(p.exitcode == -signal.SIGKILL for p in procs)


def test_an_escaper_that_stayed_in_the_workers_process_group_is_killed(tmp_path: Path) -> None:
    coord = Coordinator(term_timeout=0.5)
    worker = FORK.Process(target=group_leader_with_escaped_grandchild, args=(coord, str(tmp_path / "esc")))
    with started(worker):
        escaper = read_pid(str(tmp_path / "esc"))
        try:
            coord.request_stop()
            coord.join([worker], stop_grace_period_secs=0.2)
            assert not pid_alive(escaper)
        finally:
            with contextlib.suppress(OSError):
                os.kill(escaper, signal.SIGKILL)


def test_workers_killed_while_using_the_coordinator_cannot_wedge_it() -> None:
    coord = Coordinator(term_timeout=0.2)
    procs = [FORK.Process(target=spins_on_the_coordinator, args=(coord,)) for _ in range(2)]
    with started(*procs):
        time.sleep(0.2)
        coord.request_stop()
        coord.join(procs, stop_grace_period_secs=0.2)
    assert all(p.exitcode == -signal.SIGKILL for p in procs)
    coord.clear_stop()  # no lock was left held by the dead: every operation still works
    assert coord.wait_for_stop(0.01) is False
    coord.request_stop(raised(KeyError("again")))
    assert coord.wait_for_stop(1)
    with pytest.raises(KeyError):
        coord.raise_requested_exception()


def test_an_exception_raised_in_a_child_reaches_join() -> None:
    coord = Coordinator()
    waiter = FORK.Process(target=waits_then_exits, args=(coord,))
    failing = FORK.Process(target=raises_value_error, args=(coord,))
    with started(waiter, failing), pytest.raises(ValueError, match="raised in the child") as info:
        coord.join([waiter, failing], stop_grace_period_secs=30)
    assert (waiter.exitcode, failing.exitcode) == (0, 0)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"process {failing.pid}" in notes and 'raise ValueError("raised in the child")' in notes


def test_an_exception_that_cannot_be_rebuilt_arrives_as_remote_error() -> None:
    coord = Coordinator()
    failing = FORK.Process(target=raises_unrebuildable, args=(coord,))
    with started(failing), pytest.raises(RemoteError) as info:
        coord.join([failing], stop_grace_period_secs=30)
    assert (info.value.type_name, info.value.message) == ("NeedsTwoArgs", "1/2")
    assert "NeedsTwoArgs" in info.value.traceback


def test_an_exception_too_big_to_carry_arrives_cut_down_as_remote_error() -> None:
    coord = Coordinator()
    failing = FORK.Process(target=raises_huge, args=(coord,))
    with started(failing), pytest.raises(RemoteError) as info:
        coord.join([failing], stop_grace_period_secs=30)
    assert info.value.type_name == "ValueError"
    assert 0 < len(info.value.message) < 400_000


CONTEXT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import multiprocess, multiprocessing
from supervisor.compat import Coordinator

def waiter(coord):
    sys.exit(0 if coord.wait_for_stop(60) else 3)

def failer(coord):
    with coord.stop_on_exception():
        raise ValueError("from a " + sys.argv[2] + " child")

if __name__ == "__main__":
    ctx = {{"multiprocess": multiprocess, "multiprocessing": multiprocessing}}[sys.argv[1]].get_context(sys.argv[2])
    coord = Coordinator(term_timeout=1.0)
    procs = [ctx.Process(target=waiter, args=(coord,)) for _ in range(2)]
    procs.append(ctx.Process(target=failer, args=(coord,)))
    for p in procs:
        p.start()
    try:
        coord.join(procs, stop_grace_period_secs=30)
    except ValueError as exc:
        print("join raised:", exc)
    print("exit codes:", [p.exitcode for p in procs])
"""


@pytest.mark.parametrize(
    ("library", "method"),
    [
        ("multiprocess", "fork"),
        pytest.param("multiprocess", "forkserver", marks=pytest.mark.slow),
        pytest.param("multiprocess", "spawn", marks=pytest.mark.slow),
        pytest.param("multiprocessing", "forkserver", marks=pytest.mark.slow),
        pytest.param("multiprocessing", "spawn", marks=pytest.mark.slow),
    ],
)
def test_the_coordinator_travels_to_children_of_every_start_method(tmp_path: Path, library: str, method: str) -> None:
    script = tmp_path / "scenario.py"
    script.write_text(CONTEXT_SCRIPT.format(root=ROOT))
    out = subprocess.run(
        [sys.executable, str(script), library, method], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert f"join raised: from a {method} child" in out.stdout
    assert "exit codes: [0, 0, 0]" in out.stdout


def test_looper_calls_its_target_until_the_stop(tmp_path: Path) -> None:
    coord = Coordinator()
    path = str(tmp_path / "ticks")
    looper = Looper(coord, 0.05, append_line, args=(path,))
    with started(looper):
        time.sleep(0.5)
        coord.request_stop()
        start = time.monotonic()
        coord.join(stop_grace_period_secs=30)  # the looper registered itself
        assert time.monotonic() - start < BOUND
    assert looper.exitcode == 0
    assert len(Path(path).read_text().splitlines()) >= 2


def test_looper_forwards_its_targets_exception(tmp_path: Path) -> None:
    coord = Coordinator()
    looper = Looper(coord, None, fail_on_second_call, args=(str(tmp_path / "ticks"),))
    looper.start()
    try:
        with pytest.raises(KeyError, match="second call"):
            coord.join(stop_grace_period_secs=30)
    finally:
        if looper.is_alive():
            looper.kill()
        looper.join(10)


# -- the examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cooperative.py", ["exit codes [0, 0, 0]", "nothing was signalled"]),
        ("blocked.py", ["sleeper: ended by SIGTERM", "stubborn: ended by SIGKILL", "): gone"]),
        ("exceptions.py", ["join re-raised ValueError('worker 2 hit bad data on unit 3')", "coord.joined = True"]),
    ],
)
def test_examples_run_and_say_what_happened(name: str, expected: list[str], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for line in expected:
        assert line in out.stdout, textwrap.indent(out.stdout, "  ")
