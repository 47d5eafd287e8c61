"""supervisor: worker processes with a guaranteed, bounded, whole-tree stop.

The public surface is exactly ``__all__``; every other module is internal.
"""

from .api import Supervisor
from .channels import Channel, EndOfStream
from .context import WorkerContext
from .errors import ConfigError, Failure, RemoteError, Stopped, WorkerFailed
from .report import Outcome, TeardownReport, WorkerReport, WorkerState, WorkerStatus

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ConfigError",
    "EndOfStream",
    "Failure",
    "Outcome",
    "RemoteError",
    "Stopped",
    "Supervisor",
    "TeardownReport",
    "WorkerContext",
    "WorkerFailed",
    "WorkerReport",
    "WorkerState",
    "WorkerStatus",
    "__version__",
]
