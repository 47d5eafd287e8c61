"""Test harness: every test proves that no process it started survives it.

Each test runs with a unique ``SUPERVISOR_TEST_TOKEN`` in the environment. Every process our code
starts inherits it (the guardian is exec'd with the current environment; the manager, workers and
their forked or exec'd descendants carry it on), so after each test we scan ``/proc/*/environ``
for the token. Survivors fail the test and are then killed by pid (never by name).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from supervisor._platform import is_zombie

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN_ENV = "SUPERVISOR_TEST_TOKEN"
SESSION = uuid.uuid4().hex[:10]
_counter = itertools.count()
LEAK_GRACE = 10.0  # seconds a test's processes get to be gone after it ends (generous, loaded CI)

sys.path.insert(0, os.path.join(ROOT, "tests"))


def processes_with(token: str) -> dict[int, str]:
    """pid -> command line of every live (non-zombie) process whose environment has the token."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            if is_zombie(int(entry)):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            continue
    return found


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@pytest.fixture(autouse=True)
def no_survivors(request: pytest.FixtureRequest) -> Iterator[str]:
    """Give the test a token; afterwards fail it if any process carrying the token is alive."""
    if not sys.platform.startswith("linux"):
        yield ""
        return
    token = f"{SESSION}-{next(_counter)}"
    old = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = token
    try:
        yield token
    finally:
        if old is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = old
    wait_until(lambda: not processes_with(token), LEAK_GRACE)
    survivors = processes_with(token)
    for pid in survivors:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if survivors:
        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(survivors.items()))
        pytest.fail(f"{len(survivors)} process(es) started by this test survived it:\n{lines}", pytrace=False)


@pytest.fixture
def token(no_survivors: str) -> str:
    return no_survivors


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return not is_zombie(pid)


def read_pid(path: str, timeout: float = 30.0) -> int:
    assert wait_until(lambda: os.path.exists(path), timeout), f"{path} never appeared"
    with open(path) as f:
        return int(f.read())
