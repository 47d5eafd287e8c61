"""The benchmarked systems, by key; each module is imported only when its system runs."""

from __future__ import annotations

import importlib

from .base import Env, System

SYSTEMS: dict[str, tuple[str, str]] = {
    "ours": ("ours", "Ours"),
    "ours-spawn": ("ours", "OursSpawn"),
    "ours-now": ("ours", "OursNoGrace"),
    "pool": ("pools", "MpPool"),
    "ppe": ("pools", "Executor"),
    "pebble": ("pools", "Pebble"),
    "loky": ("pools", "Loky"),
    "supervisord": ("supervisord", "Supervisord"),
    "dataloader": ("dataloader", "DataLoader"),
}

LABELS = {
    "ours": "ours",
    "ours-spawn": "ours (spawn start method)",
    "ours-now": "ours, stop(grace_period=0)",
    "pool": "multiprocessing.Pool",
    "ppe": "ProcessPoolExecutor",
    "pebble": "pebble ProcessPool",
    "loky": "loky",
    "supervisord": "supervisord",
    "dataloader": "torch DataLoader",
}


def create(key: str, env: Env) -> System:
    module, cls = SYSTEMS[key]
    system: System = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(env)
    return system


__all__ = ["LABELS", "SYSTEMS", "Env", "System", "create"]
