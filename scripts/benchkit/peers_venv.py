"""supervisord's own virtualenv, created on demand.

supervisord's distribution is named ``supervisor`` and so is its import name: installed next to
ours it would overwrite our package. It therefore lives in a virtualenv of its own, outside the
checkout: ``$LADDER_BENCH_PEERS_VENV``, or ``${XDG_CACHE_HOME:-~/.cache}/ladder-supervisor-bench/
supervisord-venv``. The benchmark only ever runs its ``supervisord`` program as a subprocess and
talks to it over XML-RPC on a private Unix socket; nothing of it is imported here.
"""

from __future__ import annotations

import os
import subprocess
import sys

SUPERVISORD_VERSION = "4.3.0"


def venv_dir() -> str:
    if path := os.environ.get("LADDER_BENCH_PEERS_VENV"):
        return path
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ladder-supervisor-bench", "supervisord-venv")


def installed_version(bin_dir: str) -> str | None:
    """supervisord's version in the venv, asked of the venv's own interpreter."""
    try:
        out = subprocess.run(
            [os.path.join(bin_dir, "python"), "-c", "import importlib.metadata as m; print(m.version('supervisor'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def ensure_supervisord(log: bool = True) -> tuple[str | None, str]:
    """The venv's bin folder with ``supervisord`` (installing it the first time), and a note."""
    root = venv_dir()
    bin_dir = os.path.join(root, "bin")
    version = installed_version(bin_dir)
    if version is not None:
        return bin_dir, f"supervisord {version} from {root}"
    if log:
        print(f"  provisioning supervisord {SUPERVISORD_VERSION} into {root} ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", root], check=True, capture_output=True, timeout=300)
        pip = [os.path.join(bin_dir, "python"), "-m", "pip", "install", "-q", f"supervisor=={SUPERVISORD_VERSION}"]
        subprocess.run(pip, check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"supervisord not available: could not install it into {root} ({exc})"
    version = installed_version(bin_dir)
    if version is None:
        return None, f"supervisord not available: its install in {root} does not import"
    return bin_dir, f"supervisord {version} from {root}"
