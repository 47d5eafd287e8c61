"""No survivors: grandchildren, setsid escapers, fork storms, stopped processes, dead supervisors.

Every test runs on both containment backends: cgroup v2 (where this machine allows it) and the
fallback (process groups + subreaper + descendant walks), forced through the capability flag.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import workers
from conftest import ROOT, pid_alive, processes_with, read_pid, wait_until

from supervisor import Supervisor, _platform, containment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="linux_only")


@pytest.fixture(params=["cgroup", "process-group"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "process-group":
        monkeypatch.setattr(_platform, "USE_CGROUPS", False)
    return str(request.param)


def make(backend: str, **kw) -> Supervisor:  # type: ignore[no-untyped-def]
    sup = Supervisor(**{"grace_period": 0.5, "term_timeout": 0.5, **kw})
    if sup.containment != backend:
        sup.stop()
        pytest.skip(f"{backend} containment is not available here")
    return sup


def run_cgroup_dirs() -> set[str]:
    parent = containment.own_cgroup_dir()
    if parent is None or not os.path.isdir(parent):
        return set()
    return {n for n in os.listdir(parent) if n.startswith(containment.CGROUP_PREFIX)}


@pytest.mark.parametrize("n", [1, 16])
def test_subprocess_grandchildren_are_gone_after_stop(backend: str, n: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sup = make(backend)
    for i in range(n):
        sup.spawn(workers.with_subprocess, name=f"w{i}", args=(str(tmp_path / f"gc{i}"), i % 2 == 1))
    grandchildren = [read_pid(str(tmp_path / f"gc{i}")) for i in range(n)]
    report = sup.stop()
    assert not [p for p in grandchildren if pid_alive(p)]
    assert report.counts() == {"stopped": n}
    assert all(w.descendants_killed == 1 for w in report.workers)


@pytest.mark.parametrize("n", [1, 16])
def test_setsid_double_forked_escapers_are_gone_after_stop(backend: str, n: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sup = make(backend)
    sup.spawn(workers.setsid_escaper, replicas=n, args=(str(tmp_path / "esc"),), kwargs={"then": "wait"})
    escaped = read_pid(str(tmp_path / "esc"))
    assert os.getsid(escaped) != os.getsid(0)  # it really left the session it was born in
    report = sup.stop()
    assert not pid_alive(escaped)
    assert report.ok


def test_escaper_left_by_a_worker_that_completed_is_ended(backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sup = make(backend)
    sup.spawn(workers.setsid_escaper, args=(str(tmp_path / "esc"),), kwargs={"then": "return"})
    escaped = read_pid(str(tmp_path / "esc"))
    report = sup.join(timeout=60)
    assert report.workers[0].outcome == "completed"
    assert wait_until(lambda: not pid_alive(escaped), 10)
    sup.stop()


def test_bounded_fork_storm_is_gone_after_stop(backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sup = make(backend)
    sup.spawn(workers.fork_storm, args=(200, 0.003, str(tmp_path / "storm")))
    read_pid(str(tmp_path / "storm"))
    time.sleep(0.2)
    t0 = time.monotonic()
    report = sup.stop()
    assert time.monotonic() - t0 < 10
    (w,) = report.workers
    assert w.outcome == "killed"
    assert w.descendants_killed >= 10


def test_worker_that_stops_itself_is_still_torn_down(backend: str) -> None:
    sup = make(backend)
    sup.spawn(workers.self_stop, replicas=2)
    assert wait_until(lambda: all(s.state == "running" for s in sup.status()), 30)
    time.sleep(0.3)
    t0 = time.monotonic()
    report = sup.stop()
    assert time.monotonic() - t0 < 5  # grace + term is 1 s
    assert report.counts() == {"terminated": 2}


def test_no_run_cgroup_is_left_behind(backend: str) -> None:
    before = run_cgroup_dirs()
    sup = make(backend)
    sup.spawn(workers.with_subprocess, args=("/dev/null.pid",)) if False else sup.spawn(workers.cooperative, replicas=3)
    sup.stop()
    assert wait_until(lambda: run_cgroup_dirs() <= before, 10), run_cgroup_dirs() - before


OWNER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from supervisor import Supervisor, _platform
    import workers
    if {fallback!r}:
        _platform.USE_CGROUPS = False
    sup = Supervisor(grace_period=30, term_timeout=30)
    for i in range(4):
        sup.spawn(workers.with_subprocess, name=f"sub{{i}}", args=({tmp!r} + f"/sub{{i}}", True))
        sup.spawn(workers.setsid_escaper, name=f"esc{{i}}", args=({tmp!r} + f"/esc{{i}}",), kwargs={{"then": "sleep"}})
    print(sup.pid, sup.containment, flush=True)
    time.sleep(3600)
    """
)


def start_owner(backend: str, tmp_path) -> tuple[subprocess.Popen[str], int]:  # type: ignore[no-untyped-def]
    script = OWNER_SCRIPT.format(
        root=ROOT, tests=os.path.join(ROOT, "tests"), fallback=backend == "process-group", tmp=str(tmp_path)
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    manager_pid, chosen = owner.stdout.readline().split()
    if chosen != backend:
        owner.kill()
        owner.wait()
        assert wait_until(lambda: not processes_with(os.environ["SUPERVISOR_TEST_TOKEN"]), 10)
        pytest.skip(f"{backend} containment is not available here")
    for i in range(4):
        read_pid(str(tmp_path / f"sub{i}"))
        read_pid(str(tmp_path / f"esc{i}"))
    return owner, int(manager_pid)


def test_owner_sigkilled_leaves_no_survivors(backend: str, tmp_path, token: str) -> None:  # type: ignore[no-untyped-def]
    before = run_cgroup_dirs()
    owner, _ = start_owner(backend, tmp_path)
    assert len(processes_with(token)) >= 2 + 8 + 8  # guardian, manager, 8 workers, 8 descendants
    owner.kill()
    owner.wait()
    assert wait_until(lambda: not processes_with(token), 5), processes_with(token)
    assert wait_until(lambda: run_cgroup_dirs() <= before, 5)


def test_manager_sigkilled_leaves_no_survivors(backend: str, tmp_path, token: str) -> None:  # type: ignore[no-untyped-def]
    before = run_cgroup_dirs()
    owner, manager = start_owner(backend, tmp_path)
    os.kill(manager, signal.SIGKILL)
    try:
        assert wait_until(lambda: set(processes_with(token)) <= {owner.pid}, 5), processes_with(token)
        assert wait_until(lambda: run_cgroup_dirs() <= before, 5)
    finally:
        owner.kill()
        owner.wait()


def test_guardian_and_manager_sigkilled_together_leave_no_survivors(tmp_path, token: str) -> None:  # type: ignore[no-untyped-def]
    """Killing their process group takes both; the owner then empties the run's cgroup."""
    sup = make("cgroup", grace_period=30, term_timeout=30)
    sup.spawn(workers.setsid_escaper, replicas=2, args=(str(tmp_path / "esc"),), kwargs={"then": "sleep"})
    escaped = read_pid(str(tmp_path / "esc"))
    assert sup.pid is not None
    os.killpg(os.getpgid(sup.pid), signal.SIGKILL)
    assert wait_until(lambda: not processes_with(token), 5), processes_with(token)
    assert not pid_alive(escaped)
    assert sup.stop().reason == "manager-died"


def test_a_stale_run_cgroup_is_swept_at_the_next_start(tmp_path, token: str) -> None:  # type: ignore[no-untyped-def]
    parent = containment.own_cgroup_dir()
    if parent is None or containment.create_run_cgroup() is None:
        pytest.skip("cgroup containment is not available here")
    containment.remove_cgroup(os.path.join(parent, containment.run_cgroup_name(os.getpid()) or "-"))
    stale = os.path.join(parent, f"{containment.CGROUP_PREFIX}999999999-1")  # no such owner alive
    os.mkdir(stale)
    leftover = subprocess.Popen(workers.SLEEP)
    with open(os.path.join(stale, "cgroup.procs"), "w") as f:
        f.write(str(leftover.pid))
    sup = Supervisor()
    try:
        assert wait_until(lambda: leftover.poll() is not None, 10)
        assert not os.path.exists(stale)
    finally:
        sup.stop()
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait()
