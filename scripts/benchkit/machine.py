"""A description of the machine and software the figures were measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

PACKAGES = ["ladder-supervisor", "multiprocess", "dill", "psutil", "pebble", "loky", "cloudpickle", "torch"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return f"{kib / (1 << 20):.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def checkout() -> str:
    """The commit benchmarked, and whether the work tree differed from it (scripts excluded)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "supervisor"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "not a git checkout"
    return head.stdout.strip() + (" with uncommitted changes in supervisor/" if dirty.stdout.strip() else "")


def describe(peers_note: str, containment: str) -> dict[str, Any]:
    return {
        "commit": checkout(),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "supervisord": peers_note,
        "containment": containment,
    }


def header(info: dict[str, Any]) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    return (
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} memory, Linux {info['kernel']}, "
        f"Python {info['python']}; our containment: {info['containment']}; commit {info['commit']}.\n"
        f"Packages: {pkgs}; {info['supervisord']}."
    )


def containment() -> str:
    """Which containment backend our supervisor picks here (cgroup or process-group)."""
    from supervisor import Supervisor

    sup = Supervisor(grace_period=0, term_timeout=0)
    try:
        return sup.containment
    finally:
        sup.stop()
