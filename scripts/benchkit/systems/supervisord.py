"""supervisord, driven through its own XML-RPC interface on a private Unix socket.

It runs from its own virtualenv (its import name ``supervisor`` clashes with ours); see
``benchkit.peers_venv``. Its programs are ``python -I behaviours.py NAME``, and it is configured at
its strongest for a teardown: ``stopasgroup`` and ``killasgroup``, ``stopwaitsecs = 1``.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import xmlrpc.client
from typing import Any

from .. import behaviours
from .base import GRACE, Env, System

START_TIMEOUT = 60.0

CONFIG = """\
[unix_http_server]
file={folder}/supervisord.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}
loglevel=warn
minfds=4096

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:w]
command={python} -I {script} {behaviour}
numprocs={n}
process_name=%(program_name)s_%(process_num)03d
autostart=false
autorestart={autorestart}
startsecs=0
startretries=0
stopsignal=TERM
stopwaitsecs={grace:g}
stopasgroup=true
killasgroup=true
stdout_logfile=NONE
stderr_logfile=NONE
"""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path)


def rpc(path: str) -> Any:
    """An XML-RPC proxy to supervisord's socket (one per thread: connections are not shared)."""
    return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(path))


class Supervisord(System):
    def __init__(self, env: Env) -> None:
        super().__init__(env)
        if env.peers_bin is None:
            raise RuntimeError("supervisord's virtualenv is not available")
        self.sock = os.path.join(env.folder, "supervisord.sock")

    def _launch(self, n: int, behaviour: str, crash: bool) -> None:
        conf = os.path.join(self.env.folder, "supervisord.conf")
        script = os.path.abspath(behaviours.__file__)
        text = CONFIG.format(
            folder=self.env.folder,
            python=sys.executable,
            script=script,
            behaviour=behaviour,
            n=n,
            autorestart="true" if crash else "false",
            grace=GRACE,
        )
        with open(conf, "w") as f:
            f.write(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        assert self.env.peers_bin is not None
        self.proc = subprocess.Popen(
            [os.path.join(self.env.peers_bin, "supervisord"), "-n", "-c", conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        self.rpc = rpc(self.sock)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.rpc.supervisor.getState()["statename"] == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Error):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("supervisord did not start")
            time.sleep(0.01)

    def start(self, n: int, behaviour: str, crash: bool) -> None:
        self._launch(n, behaviour, crash)
        self.created = time.perf_counter()
        self.rpc.supervisor.startAllProcesses(False)

    def cooperative_stop(self, n: int) -> None:
        self.rpc.supervisor.stopAllProcesses(True)  # stopsignal TERM: ``coop`` programs exit on it

    def teardown(self) -> None:
        self.rpc.supervisor.stopAllProcesses(True)

    def deadline(self, behaviour: str) -> float | None:
        return GRACE if behaviour == "deaf" else 0.0  # SIGTERM at once, SIGKILL after stopwaitsecs

    def before_crash(self, victim: int) -> None:
        infos = self.rpc.supervisor.getAllProcessInfo()
        self.victim = next(f"{p['group']}:{p['name']}" for p in infos if p["pid"] == victim)

    def detect_crash(self, victim: int, timeout: float) -> float | None:
        """Poll the victim's process info until supervisord no longer reports it running."""
        name = self.victim
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.rpc.supervisor.getProcessInfo(name)
            if info["pid"] != victim or info["statename"] != "RUNNING":
                return time.time()
            time.sleep(0.001)
        return None

    def supervising_pids(self) -> list[int]:
        return [self.proc.pid]

    def infra_pids(self) -> set[int]:
        return {*super().infra_pids(), self.proc.pid}

    def close(self) -> None:
        try:
            self.rpc.supervisor.shutdown()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
