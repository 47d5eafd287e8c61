"""The real ``supervisor`` command in a subprocess: exit codes, signals, prefixes, socket, status, stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from conftest import ROOT, processes_with, wait_until

from supervisor.cli import main

BIN = os.path.join(os.path.dirname(sys.executable), "supervisor")
COMMAND = [BIN] if os.path.exists(BIN) else [sys.executable, "-m", "supervisor"]
CONFIGS = os.path.join(ROOT, "configs")
LONG = 120  # seconds: a bound no healthy run gets near


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    runtime = tempfile.mkdtemp(prefix="sv-")  # short: a Unix socket path has ~107 bytes at most
    yield {
        **os.environ,
        "XDG_RUNTIME_DIR": runtime,
        "PYTHONPATH": os.path.join(ROOT, "tests"),
        "NO_COLOR": "1",
    }
    shutil.rmtree(runtime, ignore_errors=True)


def write(tmp_path, text: str, name: str = "job.yaml") -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def cli(*args: str, env: dict[str, str], timeout: float = LONG) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    """Read stdout lines until one contains ``needle``; all lines read."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed; got {lines}")


RUNNING = """
    grace_period: {grace}
    term_timeout: {term}
    pools:
      - name: coop
        target: workers:cooperative
        replicas: 2
      - name: sleepy
        target: workers:sleeper
      - name: hello
        command: [sh, -c, "echo hello from sh; exec sleep 3600"]
"""


def test_demo_runs_to_completion_with_prefixed_output_and_report(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report_file = tmp_path / "report.json"
    done = cli("run", os.path.join(CONFIGS, "demo.yaml"), "--report", str(report_file), env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("reader.0 | read shard") for line in lines)
    assert any(line.startswith("decoder.2 | ") for line in lines)
    assert "teardown: completed, ok" in done.stdout
    report = json.loads(report_file.read_text())
    assert report["ok"] and {w["outcome"] for w in report["workers"]} == {"completed"}
    assert "\x1b[" not in done.stdout  # not a terminal: no colour


def test_escalation_config_shows_every_step(env) -> None:  # type: ignore[no-untyped-def]
    done = cli("run", os.path.join(CONFIGS, "escalation.yaml"), "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    outcomes = {w["name"]: w["outcome"] for w in report["workers"]}
    assert outcomes == {
        "cooperative.0": "stopped",
        "cooperative.1": "stopped",
        "stubborn.0": "terminated",
        "deaf.0": "killed",
        "trigger.0": "stopped",
    }


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_starts_the_ladder_and_sets_the_exit_code(env, tmp_path, sig, code) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, RUNNING.format(grace="1s", term="1s"))
    proc = start("run", config, "--json", env=env)
    wait_for_line(proc, "hello.0 | hello from sh")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=LONG)
    assert proc.returncode == code, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["reason"] == f"signal:{signal.Signals(sig).name}"
    assert {w["name"]: w["outcome"] for w in report["workers"]} == {
        "coop.0": "stopped",
        "coop.1": "stopped",
        "sleepy.0": "terminated",
        "hello.0": "stopped",
    }


def test_second_signal_goes_straight_to_sigkill(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, RUNNING.format(grace="60s", term="60s"))
    proc = start("run", config, "--json", env=env)
    wait_for_line(proc, "hello.0 | hello from sh")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=LONG)
    assert time.monotonic() - t0 < 30  # not the 60 s grace
    assert proc.returncode == 130, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["workers"][2]["outcome"] == "killed"  # sleepy, which ignores the event


def test_failure_exits_1(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(
        tmp_path,
        """
        grace_period: 1s
        pools:
          - name: bad
            target: workers:raiser
            kwargs: {message: shard 3 is corrupt}
          - name: coop
            target: workers:cooperative
        """,
    )
    done = cli("run", config, env=env)
    assert done.returncode == 1
    assert "bad.0" in done.stdout and "failed" in done.stdout
    assert "ValueError: shard 3 is corrupt" in done.stdout + done.stderr


def test_config_error_is_one_line_exit_2_and_starts_nothing(env, tmp_path, token) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, "pools:\n  - name: a\n    target: workers:cooperative\n    replica: 2\n")
    done = cli("run", config, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"{config}:4: ")
    assert not processes_with(token)


def test_status_and_stop_through_the_control_socket(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, RUNNING.format(grace="1s", term="1s"))
    proc = start("run", config, env=env)
    wait_for_line(proc, "hello.0 | hello from sh")
    sock_dir = os.path.join(env["XDG_RUNTIME_DIR"], "supervisor")
    (sock,) = os.listdir(sock_dir)
    mode = os.stat(os.path.join(sock_dir, sock)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_dir).st_mode) == 0o700

    status = cli("status", config, "--json", env=env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["name"] for r in rows] == ["coop.0", "coop.1", "sleepy.0", "hello.0"]
    assert all(r["pid"] and r["state"] == "running" and r["rss"] > 0 and r["uptime"] >= 0 for r in rows)
    table = cli("status", "--socket", os.path.join(sock_dir, sock), env=env)
    assert "cpu%" in table.stdout and "coop.1" in table.stdout

    stopped = cli("stop", config, "--grace-period", "0s", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "teardown: requested" in stopped.stdout and "sleepy.0" in stopped.stdout
    out, err = proc.communicate(timeout=LONG)
    assert proc.returncode == 0, out + err
    assert not os.listdir(sock_dir)  # the socket is removed at the end


def test_control_socket_rejects_unknown_verbs_and_garbage(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, RUNNING.format(grace="1s", term="1s"))
    proc = start("run", config, env=env)
    try:
        wait_for_line(proc, "hello.0 | hello from sh")
        sock_dir = os.path.join(env["XDG_RUNTIME_DIR"], "supervisor")
        path = os.path.join(sock_dir, os.listdir(sock_dir)[0])
        for payload, expected in [
            (b'{"verb": "exec", "code": "import os"}\n', "unknown verb"),
            (b"not json\n", "not JSON"),
        ]:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(payload)
                assert expected in s.makefile().readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=LONG)
    assert proc.returncode == 143


def test_stale_socket_is_replaced_and_live_one_is_refused(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, RUNNING.format(grace="1s", term="1s"))
    from supervisor._control import socket_for

    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]
    try:
        path = socket_for(config)
    finally:
        if old is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a SIGKILLed run leaves
    proc = start("run", config, env=env)
    wait_for_line(proc, "hello.0 | hello from sh")
    second = cli("run", config, env=env)
    assert second.returncode == 2 and "already active" in second.stderr
    assert cli("stop", config, env=env).returncode == 0
    proc.communicate(timeout=LONG)
    assert proc.returncode == 0


def test_cli_sigkilled_leaves_no_survivors(env, tmp_path, token) -> None:  # type: ignore[no-untyped-def]
    config = write(
        tmp_path,
        f"""
        grace_period: 30s
        term_timeout: 30s
        pools:
          - name: sub
            target: workers:with_subprocess
            replicas: 2
            args: [{str(tmp_path / "sub")!r}, true]
          - name: esc
            target: workers:setsid_escaper
            replicas: 2
            args: [{str(tmp_path / "esc")!r}]
            kwargs: {{then: sleep}}
          - name: hello
            command: [sh, -c, "echo hello from sh; exec sleep 3600"]
        """,
    )
    proc = start("run", config, env=env)
    wait_for_line(proc, "hello.0 | hello from sh")
    # the CLI, guardian, manager, 5 workers, 2 subprocesses and 2 setsid escapers
    assert wait_until(lambda: len(processes_with(token)) >= 1 + 2 + 5 + 4, 30), processes_with(token)
    proc.kill()
    proc.communicate(timeout=LONG)
    assert wait_until(lambda: not processes_with(token), 5), processes_with(token)


def test_status_without_a_run_fails_cleanly(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write(tmp_path, RUNNING.format(grace="1s", term="1s"))
    done = cli("status", config, env=env)
    assert done.returncode == 1 and "no running supervisor" in done.stderr


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml")))
def test_every_shipped_config_is_valid(name: str, env) -> None:  # type: ignore[no-untyped-def]
    done = cli("check", os.path.join(CONFIGS, name), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_python_dash_m_and_version(env) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run([sys.executable, "-m", "supervisor", "--version"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "supervisor, version" in done.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--help"], 0, "Example"),
        (["run", "--help"], 0, "Example"),
        (["check", "--help"], 0, "Example"),
        (["status", "--help"], 0, "Example"),
        (["stop", "--help"], 0, "Example"),
        (["run"], 2, "Missing argument 'CONFIG'"),
        (["run", "x.yaml", "--grace-period", "soon"], 2, "bad duration"),
        (["status"], 2, "give either CONFIG or --socket"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_parsing_and_help(args: list[str], code: int, needle: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert needle in result.output


def test_pipeline_demo_finishes_by_itself_and_prints_throughput(env) -> None:  # type: ignore[no-untyped-def]
    done = cli("run", os.path.join(CONFIGS, "pipeline.yaml"), env=env)
    assert done.returncode == 0, done.stderr
    assert "trainer.0 | consumed 125 batches, 32000 records" in done.stdout
    assert "7 workers: 7 completed" in done.stdout


def test_pipeline_interrupted_by_ctrl_c_ends_cleanly(env) -> None:  # type: ignore[no-untyped-def]
    proc = start("run", os.path.join(CONFIGS, "pipeline.yaml"), "--json", env=env)
    time.sleep(0.6)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=LONG)
    assert proc.returncode in (0, 130), err  # 0 if it had already finished
    report = json.loads(out.strip().splitlines()[-1])
    assert {w["outcome"] for w in report["workers"]} <= {"completed", "stopped"}


def test_prefixes_are_coloured_on_a_terminal(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pty

    config = write(tmp_path, "pools:\n  - name: hi\n    command: [sh, -c, 'echo hello; echo world']\n")
    main_fd, child_fd = pty.openpty()
    env = {k: v for k, v in env.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [*COMMAND, "run", config], env=env, stdout=child_fd, stderr=child_fd, stdin=subprocess.DEVNULL
    )
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.wait(timeout=LONG) == 0
    out = b"".join(chunks).decode()
    assert "\x1b[36mhi.0 |\x1b[0m hello" in out and "\x1b[36mhi.0 |\x1b[0m world" in out
