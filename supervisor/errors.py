"""The exceptions of the public API; each carries the data of its condition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import TeardownReport


class Stopped(Exception):
    """Raised by stop-aware blocking operations once a stop has been requested."""


@dataclass(frozen=True)
class Failure:
    """One failed worker: who, what was raised, and the traceback formatted in the worker."""

    name: str
    type: str
    message: str
    traceback: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "message": self.message, "traceback": self.traceback}


class WorkerFailed(Exception):
    """One or more workers failed or crashed. ``str()`` shows the first remote traceback."""

    def __init__(self, failures: list[Failure], report: TeardownReport | None = None) -> None:
        self.failures = failures
        self.report = report
        super().__init__(self._describe())

    def _describe(self) -> str:
        if not self.failures:
            return "a worker failed"
        first = self.failures[0]
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        text = f"worker {first.name} failed: {first.type}: {first.message}{more}"
        if first.traceback:
            text += "\n\nRemote traceback (in the worker):\n" + first.traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerFailed, (self.failures, self.report))


class ConfigError(Exception):
    """A configuration error. ``str()`` reads ``PATH:LINE: FIELD: what is wrong``."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        super().__init__(f"{path}:{line if line is not None else '?'}: {field}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigError, (self.path, self.line, self.field, self.message))


class RemoteError(Exception):
    """Stands for an exception raised in a worker that could not be carried back as itself."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.type_name, self.message, self.traceback))
