"""PyTorch's DataLoader: an iterator whose workers run the behaviour in ``__getitem__``."""

from __future__ import annotations

import time
from typing import Any

import torch.utils.data

from .. import behaviours
from .base import System


class _Items(torch.utils.data.Dataset[int]):
    def __init__(self, size: int, behaviour: str) -> None:
        self.size, self.behaviour = size, behaviour

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return behaviours.task(self.behaviour)


class DataLoader(System):
    def start(self, n: int, behaviour: str, crash: bool) -> None:
        # Worker i is sent indices i and n + i (prefetch_factor 2): each worker runs one item.
        loader = torch.utils.data.DataLoader(_Items(4 * n, behaviour), batch_size=None, num_workers=n, timeout=60)
        self.it: Any = iter(loader)

    def cooperative_stop(self, n: int) -> None:
        self.env.fifos.request_stop(n)
        self.it._shutdown_workers()  # what the iterator's __del__ runs

    def teardown(self) -> None:
        self.it._shutdown_workers()

    def deadline(self, behaviour: str) -> float | None:
        return None  # joins each worker for 5 s (MP_STATUS_CHECK_INTERVAL), then SIGTERM; not settable

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        """The blocked ``next()`` raises once the SIGCHLD handler sees the dead worker."""
        try:
            next(self.it)
        except RuntimeError as exc:
            if "exited unexpectedly" in str(exc) or "killed by signal" in str(exc):
                return time.time()
        return None
