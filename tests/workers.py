"""Worker targets with every behaviour the tests need, importable by the workers themselves."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from supervisor import WorkerContext

SLEEP = [sys.executable, "-c", "import time; time.sleep(3600)"]
SLEEP_IGNORING_TERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
]


def done(ctx: WorkerContext) -> None:
    return


def cooperative(ctx: WorkerContext) -> None:
    while not ctx.wait(0.05):
        ctx.heartbeat()


def sleeper(ctx: WorkerContext) -> None:
    time.sleep(3600)


def term_ignorer(ctx: WorkerContext) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)


def term_blocker(ctx: WorkerContext) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    while True:
        pass


def raiser(ctx: WorkerContext, message: str = "boom") -> None:
    def inner() -> None:
        raise ValueError(message)

    inner()


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = __import__("threading").Lock()

    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("no pickling for you")


def raise_unpicklable(ctx: WorkerContext) -> None:
    raise Unpicklable("cannot travel")


def exit3(ctx: WorkerContext) -> None:
    os._exit(3)


def segfault(ctx: WorkerContext) -> None:
    ctypes.string_at(0)


def exit_after(ctx: WorkerContext, seconds: float, code: int) -> None:
    time.sleep(seconds)
    os._exit(code)


def write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def crash_leaving_grandchild(ctx: WorkerContext, pidfile: str) -> None:
    """Fork a grandchild that inherits every fd (a multiprocessing sentinel would stay open), then crash."""
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    write_pid(pidfile, pid)
    os._exit(4)


def with_subprocess(ctx: WorkerContext, pidfile: str, ignore_term: bool = False) -> None:
    proc = subprocess.Popen(SLEEP_IGNORING_TERM if ignore_term else SLEEP)
    write_pid(pidfile, proc.pid)
    while not ctx.wait(0.05):
        pass


def setsid_escaper(ctx: WorkerContext, pidfile: str, then: str = "wait") -> None:
    """Double fork; the grandchild calls setsid() and ignores SIGTERM (a daemon gone astray)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(w, str(os.getpid()).encode())
        while True:
            time.sleep(3600)
    os.waitpid(pid, 0)
    escaped = int(os.read(r, 64))
    write_pid(pidfile, escaped)
    if then == "wait":
        while not ctx.wait(0.05):
            pass
    elif then == "sleep":
        time.sleep(3600)


def fork_storm(ctx: WorkerContext, count: int, interval: float, pidfile: str) -> None:
    """Fork a new sleeping child every ``interval`` s, ``count`` at most, ignoring the stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = 0
    while started < count:
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
            os._exit(0)
        started += 1
        if started == 10:
            write_pid(pidfile, os.getpid())
        time.sleep(interval)
    time.sleep(3600)


def self_stop(ctx: WorkerContext) -> None:
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(3600)


def request_stop_with(ctx: WorkerContext, message: str) -> None:
    ctx.request_stop(RuntimeError(message))
    ctx.wait()


def env_reporter(ctx: WorkerContext, path: str, key: str) -> None:
    with open(path, "w") as f:
        f.write(f"{ctx.name} {ctx.pool} {ctx.index} {os.environ.get(key)}")


def crash_once(ctx: WorkerContext, flag: str, delay: float = 0.0) -> None:
    """The first incarnation crashes (after ``delay`` s); later ones run cooperatively."""
    if not os.path.exists(flag):
        open(flag, "w").close()
        time.sleep(delay)
        os._exit(3)
    cooperative(ctx)


def always_crash(ctx: WorkerContext) -> None:
    os._exit(7)


def silent_sleeper(ctx: WorkerContext) -> None:
    """Never beats, never looks at the context: a hung worker."""
    time.sleep(3600)


def allocate(ctx: WorkerContext, megabytes: int) -> None:
    """Touch ``megabytes`` MiB, 16 MiB at a time (to meet a memory limit)."""
    blocks = [b"\x01" * (16 << 20) for _ in range(megabytes // 16)]
    print(f"allocated {len(blocks) * 16} MiB")


def report_placement(ctx: WorkerContext, path: str) -> None:
    with open(path, "w") as f:
        f.write(f"{sorted(os.sched_getaffinity(0))} {os.getpriority(os.PRIO_PROCESS, 0)}")


def count_zombies(ctx: WorkerContext, settle: float = 5.0) -> None:
    """Print how many zombies this PID namespace holds once things settle (0 expected)."""
    deadline = time.monotonic() + settle
    while True:
        zombies = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z":
                    zombies.append(entry)
        if not zombies or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(f"pid {os.getpid()} sees {len(zombies)} zombies", flush=True)
    ctx.wait()


def produce(ctx: WorkerContext, count: int, pause: float = 0.0, offset: int = 0) -> None:
    """Put (index, offset + n) for n in range(count) into the first output channel."""
    out = ctx.outputs[0]
    for n in range(offset, offset + count):
        out.put((ctx.index, n))
        if pause:
            time.sleep(pause)


def produce_forever(ctx: WorkerContext, path: str) -> None:
    """Put until asked to stop; then record how many items went out."""
    from supervisor import Stopped

    out, sent = ctx.outputs[0], 0
    try:
        while not ctx.should_stop():
            out.put(sent)
            sent += 1
    except Stopped:
        pass
    with open(path, "w") as f:
        f.write(str(sent))


def relay(ctx: WorkerContext) -> None:
    out = ctx.outputs[0]
    for item in ctx.inputs[0]:
        out.put(item)


def collect(ctx: WorkerContext, path: str, pause: float = 0.0) -> None:
    """Write every item of the first input, one repr per line, at end-of-stream."""
    items = []
    for item in ctx.inputs[0]:
        items.append(item)
        if pause:
            time.sleep(pause)
    with open(path, "w") as f:
        f.write("\n".join(repr(i) for i in items))


def put_blocked(ctx: WorkerContext) -> None:
    """Fill the output channel, then block on one more put (until the stop raises Stopped)."""
    out = ctx.outputs[0]
    for n in range(out.capacity + 1):
        out.put(n)


def get_blocked(ctx: WorkerContext) -> None:
    ctx.inputs[0].get()


def die_holding_a_credit(ctx: WorkerContext) -> None:
    """Take a credit and die before sending: what a SIGKILL between two system calls leaves."""
    ctx.outputs[0]._take_credit(None)
    os._exit(9)


def big_arrays(ctx: WorkerContext, count: int, megabytes: int) -> None:
    import numpy as np

    out = ctx.outputs[0]
    for n in range(count):
        out.put(np.full(megabytes << 20, n % 251, dtype=np.uint8))


def chatter(ctx: WorkerContext) -> None:
    """Print lines as fast as possible until asked to stop (blocks when nobody reads them)."""
    line = "x" * 200
    while not ctx.should_stop():
        print(line, flush=True)


def leave_child_then_fail(ctx: WorkerContext, flag: str) -> None:
    """First incarnation: start a long child, then raise; later ones run cooperatively."""
    if not os.path.exists(flag):
        open(flag, "w").close()
        subprocess.Popen(SLEEP)
        raise ValueError("failed, leaving a child behind")
    cooperative(ctx)


def crash_or_wait(ctx: WorkerContext, folder: str, crash_after: float) -> None:
    """First incarnation of index 0 crashes after a while; other first incarnations ignore the
    stop event (ended by SIGTERM); every later incarnation waits cooperatively."""
    mark = os.path.join(folder, ctx.name)
    if not os.path.exists(mark):
        open(mark, "w").close()
        if ctx.index == 0:
            time.sleep(crash_after)
            raise ValueError(f"{ctx.name} crash")
        while True:
            time.sleep(0.05)
    ctx.wait()


def exit3_at(ctx: WorkerContext, when: float) -> None:
    """Exit with code 3 at the wall-clock time ``when`` (workers dying together)."""
    time.sleep(max(0.0, when - time.time()))
    os._exit(3)
