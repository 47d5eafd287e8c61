"""Per-pool resource limits, applied to each worker before its target runs.

- ``memory_limit`` (bytes): a memory cgroup per worker slot where one can be made, so that the
  kernel's OOM killer acts on the worker alone and we can tell an OOM kill from any other SIGKILL
  (``oom_kill`` in ``memory.events`` on cgroup v2, in ``memory.oom_control`` on the v1 memory
  controller); else ``RLIMIT_AS``, under which allocations fail with ``MemoryError`` instead.
- ``cpu_affinity`` (CPU numbers, Linux) and ``nice`` (absolute niceness) are set in the child.

The memory cgroup directories are named like the run cgroup (``supervisor-PID-START``), removed
when the run ends, and swept at the next start if a killed supervisor left them behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource

from . import _platform, containment

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2}
_UNITS |= {"g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4}


def parse_size(value: object) -> int:
    """``1048576``, ``"512MiB"``, ``"1.5G"`` (binary), ``"500MB"`` (decimal) -> bytes; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())) and m.group(2).lower() in _UNITS:
        size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise ValueError(f"bad size {value!r} (use bytes, or a number with KiB, MiB, GiB, KB, MB or GB)")
    if size <= 0:
        raise ValueError(f"size must be positive, not {value!r}")
    return size


def _v1_memory_dir() -> str | None:
    """This process's directory in a mounted cgroup v1 memory hierarchy, if there is one."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = right.split()
                if len(fields) >= 3 and fields[0] == "cgroup" and "memory" in fields[2].split(","):
                    mount = left.split()[4]
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if mount and "memory" in controllers.split(","):
                    return os.path.join(mount, path.lstrip("/"))
    except (OSError, ValueError):
        pass
    return None


class MemoryCgroups:
    """Memory cgroups for worker slots: ``cgroup2`` (in the run cgroup), ``cgroup1``, or ``rlimit``."""

    def __init__(self, run_dir: str | None) -> None:
        """Choose the kind; directories are made on first use (most runs set no memory limit)."""
        self.kind = "rlimit"
        self.base: str | None = None
        self._ready = False  # the base exists and, on cgroup2, has the memory controller enabled
        if not _platform.USE_CGROUPS:
            return
        if run_dir is not None and _has_memory_controller(run_dir):
            self.kind, self.base = "cgroup2", run_dir
            return
        parent = _v1_memory_dir()
        name = containment.run_cgroup_name(os.getppid())  # named after the guardian, like the run cgroup
        if parent is None or name is None or not os.access(parent, os.W_OK):
            return
        containment.sweep_stale_cgroups(parent)
        self.kind, self.base = "cgroup1", os.path.join(parent, name)

    def _setup(self) -> bool:
        if not self._ready and self.base is not None:
            try:
                if self.kind == "cgroup2":
                    _write(os.path.join(self.base, "cgroup.subtree_control"), "+memory")
                else:
                    os.makedirs(self.base, exist_ok=True)
                self._ready = True
            except OSError:
                pass
        return self._ready

    def _dir(self, slot: int) -> str:
        assert self.base is not None
        return os.path.join(self.base, f"w{slot}" if self.kind == "cgroup2" else f"m{slot}")

    def prepare(self, slot: int, limit: int) -> str | None:
        """Set the slot's limit; the ``cgroup.procs`` the child must join (None: use RLIMIT_AS)."""
        if not self._setup():
            return None
        path = self._dir(slot)
        try:
            os.makedirs(path, exist_ok=True)
            if self.kind == "cgroup2":
                _write(os.path.join(path, "memory.max"), str(limit))
                with contextlib.suppress(OSError):
                    _write(os.path.join(path, "memory.swap.max"), "0")
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
                with contextlib.suppress(OSError):  # memsw may not exist (swap accounting off)
                    _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit))
        except OSError:
            return None
        return os.path.join(path, "cgroup.procs")

    def oom_kills(self, slot: int) -> int:
        """How many times the OOM killer acted in the slot's memory cgroup."""
        if self.base is None:
            return 0
        name = "memory.events" if self.kind == "cgroup2" else "memory.oom_control"
        try:
            with open(os.path.join(self._dir(slot), name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def close(self) -> None:
        if self.kind == "cgroup1" and self._ready and self.base is not None:
            containment.remove_cgroup(self.base)


def _has_memory_controller(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, "cgroup.controllers")) as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def apply_in_child(memory_limit: int | None, memory_cgroup: str | None, cpu_affinity: tuple[int, ...] | None,
                   nice: int | None) -> None:  # fmt: skip
    """Called in the worker before its target: join the memory cgroup (or set RLIMIT_AS), pin, renice."""
    if memory_limit is not None:
        if memory_cgroup is not None:
            _write(memory_cgroup, str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    if cpu_affinity is not None:
        os.sched_setaffinity(0, cpu_affinity)
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
