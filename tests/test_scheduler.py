"""Container entrypoint and cluster schedulers: PID 1, stop budgets, warning signals, readiness."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator

import pytest
from conftest import ROOT, wait_until

from supervisor import _platform

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="linux_only")
LONG = 120


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    runtime = tempfile.mkdtemp(prefix="sv-")
    yield {**os.environ, "XDG_RUNTIME_DIR": runtime, "PYTHONPATH": os.path.join(ROOT, "tests")}
    shutil.rmtree(runtime, ignore_errors=True)


def write(tmp_path, text: str) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(args: list[str], env: dict[str, str], prefix: list[str] | None = None) -> subprocess.Popen[str]:
    argv = [*(prefix or []), sys.executable, "-m", "supervisor", "run", *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen[str], needle: str) -> str:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} never printed: {seen}")


def unshare_works() -> bool:
    try:
        done = subprocess.run(["unshare", "-fp", "--mount-proc", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


PID1 = """
    grace_period: 1s
    term_timeout: 1s
    pools:
      - name: orphans
        command: [sh, -c, "for i in 1 2 3 4 5; do (sleep 0.2 &); done; exec sleep 3600"]
      - name: escaper
        target: workers:setsid_escaper
        args: [{pidfile}]
        kwargs: {{then: wait}}
      - name: census
        target: workers:count_zombies
"""


@pytest.fixture
def pid_namespace() -> list[str]:
    if not unshare_works():
        pytest.skip("unshare -fp --mount-proc is not available here")
    return ["unshare", "-fp", "--mount-proc"]


def init_of(unshare: subprocess.Popen[str]) -> int:
    """The pid (outside) of the namespace's PID 1: unshare's only child."""
    assert wait_until(lambda: _platform.children(unshare.pid), 30)
    return _platform.children(unshare.pid)[0]


def test_as_pid_1_orphans_are_reaped_and_sigterm_exits_143(pid_namespace, env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, PID1.format(pidfile=str(tmp_path / "esc")))
    proc = run([config, "--json"], env, pid_namespace)
    line = read_until(proc, "zombies")
    assert "census.0 | pid" in line and line.rstrip().endswith(" 0 zombies"), line
    os.kill(init_of(proc), signal.SIGTERM)
    out, err = proc.communicate(timeout=LONG)
    assert proc.returncode == 143, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["reason"] == "signal:SIGTERM"
    assert {w["name"]: w["outcome"] for w in report["workers"]} == {
        "orphans.0": "stopped",
        "escaper.0": "stopped",
        "census.0": "stopped",
    }


def test_as_pid_1_children_orphaned_to_init_are_reaped(pid_namespace, env, tmp_path, token: str) -> None:  # type: ignore[no-untyped-def]
    """Guardian and manager SIGKILLed together: what escaped lands on PID 1, which must reap it."""
    config = write(tmp_path, PID1.format(pidfile=str(tmp_path / "esc")))
    proc = run([config, "--json"], env, pid_namespace)
    read_until(proc, "zombies")
    init = init_of(proc)
    guardian = _platform.children(init)[0]
    os.killpg(os.getpgid(guardian), signal.SIGKILL)

    def zombies() -> list[int]:
        out = []
        for pid in _platform.descendants(init):
            if _platform.is_zombie(pid) and os.path.exists(f"/proc/{pid}"):
                out.append(pid)
        return out

    assert wait_until(lambda: not _platform.descendants(init) and not zombies(), 10), (
        _platform.descendants(init),
        zombies(),
    )
    out, err = proc.communicate(timeout=LONG)
    assert proc.returncode == 1, err  # the run failed: its manager died
    assert json.loads(out.strip().splitlines()[-1])["reason"] == "manager-died"


def test_stop_budget_shorter_than_the_ladder_is_kept(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(
        tmp_path,
        """
        grace_period: 30s
        term_timeout: 30s
        stop_budget: 4s
        pools:
          - name: deaf
            target: workers:term_ignorer
            replicas: 4
          - name: hello
            command: [sh, -c, "echo up; exec sleep 3600"]
        """,
    )
    proc = run([config, "--json"], env)
    read_until(proc, "hello.0 | up")
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=LONG)
    took = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert took < 4.0, took  # the budget itself; the ladder keeps 0.4 s of it back
    report = json.loads(out.strip().splitlines()[-1])
    assert [w["outcome"] for w in report["workers"]] == ["killed"] * 4 + ["stopped"]


def test_slurm_warning_signal_starts_a_graceful_stop(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(
        tmp_path,
        """
        grace_period: 5s
        warning_signal: SIGUSR1
        pools:
          - name: coop
            target: workers:cooperative
            replicas: 2
          - name: hello
            command: [sh, -c, "echo up; exec sleep 3600"]
        """,
    )
    report_file = tmp_path / "report.json"
    slurm = {**env, "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}
    proc = run([config, "--report", str(report_file), "--events", str(tmp_path / "ev.jsonl")], slurm)
    read_until(proc, "hello.0 | up")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=LONG)
    assert proc.returncode == 128 + signal.SIGUSR1, err
    report = json.loads(report_file.read_text())
    assert report["reason"] == "signal:SIGUSR1"
    assert report["scheduler"] == {"slurm_job_id": "4242", "slurm_step_id": "0"}
    assert {w["outcome"] for w in report["workers"]} == {"stopped"}
    first = json.loads((tmp_path / "ev.jsonl").read_text().splitlines()[0])
    assert first["event"] == "run" and first["scheduler"] == {"slurm_job_id": "4242", "slurm_step_id": "0"}


def test_ready_file_appears_when_every_worker_runs_and_goes_at_teardown(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(
        tmp_path,
        """
        pools:
          - name: coop
            target: workers:cooperative
            replicas: 3
        """,
    )
    ready = tmp_path / "ready"
    proc = run([config, "--ready-file", str(ready)], env)
    assert wait_until(ready.exists, 60)
    proc.send_signal(signal.SIGQUIT)
    proc.communicate(timeout=LONG)
    assert proc.returncode == 128 + signal.SIGQUIT
    assert not ready.exists()
