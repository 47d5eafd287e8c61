"""The control socket of a running ``supervisor run``: a fixed set of JSON verbs, owner-only.

One request and one response per connection, each a single JSON line. Verbs: ``ping``,
``status``, ``stop`` (with an optional ``grace_period``). Nothing sent here is ever executed.
The socket is created with mode 0600 inside a 0700 directory owned by the user, and peers must
have our uid (``SO_PEERCRED``, where the platform has it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from ._spec import check_duration
from .api import Supervisor

MAX_REQUEST = 1 << 16
VERBS = ("ping", "status", "stop")


class ControlError(Exception):
    """No run answers at that socket, or it answered with an error."""


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/supervisor`` or a per-user folder in the temp dir; created 0700."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = (
        os.path.join(base, "supervisor") if base else os.path.join(tempfile.gettempdir(), f"supervisor-{os.getuid()}")
    )
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ControlError(f"{path} must be a directory owned by you with mode 0700")
    return path


def socket_for(config_path: str) -> str:
    """The control socket of the run of ``config_path`` (found again from the same argument)."""
    digest = hashlib.sha256(os.path.realpath(config_path).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{digest}.sock")


def _peer_is_us(conn: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # the 0600 mode and 0700 directory are the check there
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class ControlServer:
    """Serves the verbs for one ``Supervisor`` on a background thread."""

    def __init__(self, sup: Supervisor, path: str, on_stop: Callable[[float | None], dict[str, Any]]) -> None:
        self.sup = sup
        self.path = path
        self.on_stop = on_stop
        self._procs: dict[int, psutil.Process] = {}
        self._handlers: list[threading.Thread] = []
        if os.path.exists(path):
            if _alive(path):
                raise ControlError(f"a run of this config is already active (control socket {path})")
            os.unlink(path)  # stale: left by a run that died
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(8)
        self._thread = threading.Thread(target=self._serve, name="supervisor-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._handlers.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10.0)
                if not _peer_is_us(conn):
                    return
                data = b""
                while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.settimeout(None)
                try:
                    reply = self._answer(data)
                except Exception as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError):
                return

    def _answer(self, data: bytes) -> dict[str, Any]:
        try:
            request = json.loads(data)
        except ValueError:
            return {"error": "bad request: not JSON"}
        verb = request.get("verb") if isinstance(request, dict) else None
        if verb not in VERBS:
            return {"error": f"unknown verb {verb!r} (known: {', '.join(VERBS)})"}
        if verb == "ping":
            return {"ok": True, "pid": os.getpid()}
        if verb == "status":
            return {"workers": self.status()}
        grace = request.get("grace_period")
        try:
            check_duration("grace_period", grace, allow_none=True)
        except (TypeError, ValueError) as exc:
            return {"error": str(exc)}
        return {"report": self.on_stop(None if grace is None else float(grace))}

    def status(self) -> list[dict[str, Any]]:
        rows = [s.to_dict() for s in self.sup.status()]
        procs = []
        for row in rows:
            pid = row["pid"]
            proc = self._procs.get(pid) if pid else None
            if pid and row["state"] != "exited" and proc is None:
                with contextlib.suppress(psutil.Error):
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # prime: the first reading is meaningless
            procs.append(proc)
        if any(procs):
            time.sleep(0.1)
        now = time.time()
        for row, proc in zip(rows, procs, strict=True):
            row["uptime"] = now - row["started_at"] if row["started_at"] and row["state"] != "exited" else None
            row["cpu_percent"] = row["rss"] = None
            if proc is not None and row["state"] != "exited":
                with contextlib.suppress(psutil.Error):
                    row["cpu_percent"] = proc.cpu_percent(None)
                    row["rss"] = proc.memory_info().rss
        return rows

    def close(self, wait: float = 5.0) -> None:
        """Stop accepting; give in-flight answers (a ``stop`` waiting for its report) time to go out."""
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        deadline = time.monotonic() + wait
        for t in self._handlers:
            t.join(max(0.0, deadline - time.monotonic()))


def request(path: str, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one verb to a run; its JSON answer. ``ControlError`` if nothing answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no running supervisor at {path}") from exc
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ControlError(f"the supervisor at {path} closed the connection without answering")
    reply: dict[str, Any] = json.loads(data)
    if "error" in reply:
        raise ControlError(str(reply["error"]))
    return reply
