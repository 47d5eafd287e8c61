"""Runs each scenario in a harness subprocess, with timeouts enforced from outside.

A teardown (or cooperative stop) that has not returned ``hang_timeout`` seconds after it was called
is reported as hung; whatever the scenario left running is counted, then SIGKILLed by pid (found by
its environment marker), and its temporary folder removed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from . import procs

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 200.0  # the harness gives up at 180 s itself
PHASE_TIMEOUT = 60.0  # for any phase without a timeout of its own
EXIT_TIMEOUT = 15.0  # for the harness's untimed cleanup


@dataclass
class Run:
    """What one scenario run produced."""

    status: str  # ok | hung | error
    data: dict[str, Any] = field(default_factory=dict)  # merged phase payloads
    survivors: int | None = None  # marked processes that outlived the stop (hung: alive when given up)
    killed_after: int = 0  # processes SIGKILLed by pid once the run was over
    note: str = ""


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        if line.startswith("@bench "):
            lines.put(line[len("@bench ") :])
    lines.put(None)


class Scenario:
    """One harness process: launch, follow its phases, count survivors, clean up."""

    counter = 0

    def __init__(self, spec: dict[str, Any], hang_timeout: float, idle: float) -> None:
        Scenario.counter += 1
        self.marker = procs.marker(Scenario.counter)
        self.folder = tempfile.mkdtemp(prefix="ladder-bench-")
        self.spec = {**spec, "folder": self.folder, "idle": idle}
        self.hang_timeout = hang_timeout
        self.idle = idle
        self.lines: queue.Queue[str | None] = queue.Queue()

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The next phase message; None on timeout or when the harness closed its stdout."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if line is None else dict(json.loads(line))

    def run(self) -> Run:
        env = {**os.environ, procs.MARKER_ENV: self.marker}
        env.pop("PYTHONPATH", None)
        stderr = open(os.path.join(self.folder, "harness.err"), "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchkit.harness", json.dumps(self.spec)],
            cwd=SCRIPTS,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(proc.stdout, self.lines), daemon=True).start()
        result = Run("error", note="interrupted")
        try:
            result = self._follow(proc)
        finally:
            result_killed = self._cleanup(proc, graceful=result.status == "ok")
            stderr.close()
            err = self._stderr_tail()
            shutil.rmtree(self.folder, ignore_errors=True)
        result.killed_after = result_killed
        if result.status == "error" and err:
            result.note = f"{result.note} | {err}"
        return result

    def _follow(self, proc: subprocess.Popen[str]) -> Run:
        data: dict[str, Any] = {}
        timeouts = {"started": START_TIMEOUT, "idle": self.idle + PHASE_TIMEOUT, "stopping": PHASE_TIMEOUT}
        expected = ["started", *(["idle"] if self.idle and self.spec["scenario"] == "coop" else []), "stopping"]
        for phase in expected:
            msg = self._next(timeouts[phase])
            if msg is None or msg["phase"] != phase:
                return Run("error", data, note=self._describe(msg, phase))
            data.update({k: v for k, v in msg.items() if k != "phase"})
        infra = set(data.get("infra", ())) | {proc.pid}
        msg = self._next(self.hang_timeout)
        if msg is None:
            left = procs.marked(self.marker) - infra
            return Run("hung", data, survivors=len(left), note=f"no return within {self.hang_timeout:g} s")
        if msg["phase"] != "done":
            return Run("error", data, note=self._describe(msg, "done"))
        data.update({k: v for k, v in msg.items() if k != "phase"})
        if self.spec["scenario"] == "crash":
            return Run("ok", data)  # the workers are meant to be running still
        infra |= set(data.get("infra", ()))
        return Run("ok", data, survivors=len(procs.survivors(self.marker, infra)))

    @staticmethod
    def _describe(msg: dict[str, Any] | None, phase: str) -> str:
        if msg is None:
            return f"no '{phase}' from the harness in time"
        return str(msg.get("message", f"expected '{phase}', got '{msg['phase']}'"))

    def _cleanup(self, proc: subprocess.Popen[str], graceful: bool) -> int:
        """Let a harness that finished clean up, then SIGKILL by pid whatever carries the marker."""
        if graceful:
            try:
                assert proc.stdin is not None
                proc.stdin.write("exit\n")
                proc.stdin.close()
                proc.wait(EXIT_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                pass
        killed = procs.kill_marked(self.marker, keep=frozenset({proc.pid}))
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        procs.reap()
        return killed

    def _stderr_tail(self) -> str:
        try:
            with open(os.path.join(self.folder, "harness.err")) as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError:
            return ""
        return " / ".join(lines[-3:])[:300]


def run_scenario(spec: dict[str, Any], hang_timeout: float, idle: float = 0.0) -> Run:
    """Run one scenario to the end, whatever it does; never leaves a process behind."""
    started = time.monotonic()
    result = Scenario(spec, hang_timeout, idle).run()
    result.data["wall"] = time.monotonic() - started
    return result
