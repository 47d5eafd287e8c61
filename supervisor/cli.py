"""The ``supervisor`` command: run, check, status and stop YAML-configured worker pools."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from . import __version__
from ._control import ControlError, ControlServer, request, socket_for
from ._spec import parse_signal
from .api import Supervisor
from .config import Config, load_config, parse_duration, plan, resolve_target
from .errors import ConfigError
from .report import TeardownReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A number of seconds, or a number with ms, s, m or h."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class ConfigProblem(click.ClickException):
    """A configuration error: printed as its one line, exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


def _socket(config: str | None, socket_path: str | None) -> str:
    if (config is None) == (socket_path is None):
        raise click.UsageError("give either CONFIG or --socket PATH")
    return socket_path if socket_path is not None else socket_for(config)  # type: ignore[arg-type]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supervisor")
def main() -> None:
    """Run worker pools with a guaranteed, bounded stop.

    On a stop every worker is asked to stop (a shared event), then after the grace period its whole
    process tree gets SIGTERM, then after the term timeout SIGKILL. Nothing a worker started
    survives.

    \b
    Example:
      supervisor check configs/demo.yaml
      supervisor run configs/demo.yaml --report report.json
      supervisor status configs/demo.yaml      # from another terminal
      supervisor stop configs/demo.yaml
    """


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--grace-period", type=Duration(), help="Override every pool's grace period, e.g. 2s or 500ms.")
@click.option("--term-timeout", type=Duration(), help="Override every pool's wait between SIGTERM and SIGKILL.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the teardown report as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as one JSON line instead of a table.")
@click.option("--events", "events_path", type=click.Path(dir_okay=False), help="Append lifecycle events as JSON lines.")
@click.option(
    "--stop-budget", type=Duration(), help="The whole teardown must end within this (a scheduler's kill wait)."
)
@click.option("--warning-signal", help="A signal that starts a graceful stop early, e.g. SIGUSR1 (Slurm --signal).")
@click.option(
    "--ready-file", type=click.Path(dir_okay=False), help="Written once every worker runs; removed at teardown."
)
def run(
    config: str,
    grace_period: float | None,
    term_timeout: float | None,
    report_path: str | None,
    as_json: bool,
    events_path: str | None,
    stop_budget: float | None,
    warning_signal: str | None,
    ready_file: str | None,
) -> None:
    """Run the pools of CONFIG in the foreground until they finish.

    Each worker's output is prefixed with its name (pool.index). The first SIGINT or SIGTERM starts
    the stop ladder; a second one goes straight to SIGKILL. Exit code: 0 if every worker completed
    or stopped cleanly, 1 if one failed or crashed or restarts ran out, 2 for a usage or
    configuration error, 128+N when a signal N started the teardown.

    \b
    Example:
      supervisor run configs/demo.yaml --grace-period 1s --report /tmp/report.json
    """
    cfg = _load(config)
    warning_name = warning_signal or cfg.warning_signal
    try:
        warning = parse_signal(warning_name) if warning_name else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--warning-signal") from None
    options = _RunOptions(grace_period, term_timeout, report_path, as_json, events_path, ready_file)
    options.stop_budget = stop_budget if stop_budget is not None else cfg.stop_budget
    options.warning_signal = warning
    sys.exit(_run(cfg, options))


@dataclass
class _RunOptions:
    grace: float | None
    term: float | None
    report_path: str | None
    as_json: bool
    events: str | None
    ready_file: str | None
    stop_budget: float | None = None
    warning_signal: int | None = None


def _run(cfg: Config, opts: _RunOptions) -> int:
    grace, term = opts.grace, opts.term
    sys.path.insert(0, cfg.directory)
    targets = {p.name: resolve_target(cfg, p) for p in cfg.pools if p.target is not None}
    try:
        path = socket_for(cfg.path)
    except ControlError as exc:
        raise ConfigProblem(f"supervisor: {exc}") from None
    sup = Supervisor(
        grace_period=cfg.grace_period if grace is None else grace,
        term_timeout=cfg.term_timeout if term is None else term,
        strategy=cfg.strategy,
        max_restarts=cfg.max_restarts,
        restart_window=cfg.restart_window,
        restart_backoff=cfg.restart_backoff,
        restart_backoff_max=cfg.restart_backoff_max,
        events=opts.events,
        stop_budget=opts.stop_budget,
        stop_order=cfg.stop_order,
        output="prefix",
    )
    for name, capacity in cfg.channels.items():
        sup.channel(name, capacity)
    signals = _SignalRelay(sup, opts.warning_signal)
    sup.log_event("run", config=os.path.abspath(cfg.path), pid=os.getpid(), **scheduler_info())
    server = None
    try:
        server = ControlServer(sup, path, lambda g: _stop_for_client(sup, g))
        for pool in cfg.pools:
            common: dict[str, Any] = {
                "name": pool.name,
                "replicas": pool.replicas,
                "restart": pool.restart,
                "grace_period": pool.grace_period if grace is None else grace,
                "term_timeout": pool.term_timeout if term is None else term,
                "heartbeat_timeout": pool.heartbeat_timeout,
                "env": pool.env,
                "memory_limit": pool.memory_limit,
                "cpu_affinity": pool.cpu_affinity,
                "nice": pool.nice,
            }
            if pool.command is not None:
                sup.spawn_command(list(pool.command), stop_signal=pool.stop_signal, **common)
            else:
                sup.spawn(
                    targets[pool.name],
                    args=pool.args,
                    kwargs=pool.kwargs,
                    start_method=pool.start_method,
                    inputs=pool.inputs,
                    outputs=pool.outputs,
                    **common,
                )
        if opts.ready_file:
            _announce_ready(sup, opts.ready_file)
        sup.wait()
    except ControlError as exc:
        click.echo(f"supervisor: {exc}", err=True)
        sup.stop(0, 0)
        return EXIT_USAGE
    finally:
        if opts.ready_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(opts.ready_file)
        report = sup.stop()
        signals.restore()
        if server is not None:
            server.close()
    data = {**report.to_dict(), **scheduler_info()}
    if opts.as_json:
        click.echo(json.dumps(data))
    else:
        _show(report)
    if opts.report_path:
        with open(opts.report_path, "w") as f:
            json.dump(data, f, indent=2)
    return exit_code(report)


def _announce_ready(sup: Supervisor, path: str) -> None:
    """Write ``path`` (atomically) once every worker runs: a readiness probe can test for it."""

    def wait_then_write() -> None:
        if sup.wait_running():
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, path)

    threading.Thread(target=wait_then_write, name="supervisor-ready", daemon=True).start()


def scheduler_info() -> dict[str, Any]:
    """The Slurm job and step, or the Kubernetes pod, this run belongs to (for the report)."""
    keys = {"slurm_job_id": "SLURM_JOB_ID", "slurm_step_id": "SLURM_STEP_ID", "kubernetes_pod": "HOSTNAME"}
    found = {k: os.environ[v] for k, v in keys.items() if v in os.environ}
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        found.pop("kubernetes_pod", None)
    return {"scheduler": found} if found else {}


def _stop_for_client(sup: Supervisor, grace: float | None) -> dict[str, Any]:
    sup.request_stop_for("requested", grace_period=grace)
    return sup.stop().to_dict()


def exit_code(report: TeardownReport) -> int:
    """0 clean, 1 failure, 128+N for a teardown started by signal N."""
    if report.reason.startswith("signal:"):
        return 128 + int(signal.Signals[report.reason.split(":", 1)[1]])
    return EXIT_OK if report.ok else EXIT_FAILED


class _SignalRelay:
    """SIGINT/SIGTERM/SIGHUP start the ladder; a second one skips to SIGKILL.

    Handlers run in the main thread, which may be inside a send to the manager, so they only
    hand the signal to a relay thread that does the talking.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, sup: Supervisor, warning: int | None) -> None:
        self.sup = sup
        self.pending: list[int] = []
        self.seen = 0
        self.wake = threading.Event()
        watched = (*self.SIGNALS, warning) if warning is not None else self.SIGNALS
        self.old = {s: signal.signal(s, self._handler) for s in watched}
        if os.getpid() == 1:  # a container's init: every orphan in the namespace is ours to reap
            self.old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _reap_orphans)
        threading.Thread(target=self._relay, name="supervisor-signals", daemon=True).start()

    def _handler(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)
        self.wake.set()

    def _relay(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.pending:
                signum = self.pending.pop(0)
                self.seen += 1
                reason = f"signal:{signal.Signals(signum).name}"
                try:
                    if self.seen == 1:
                        self.sup.request_stop_for(reason)
                    else:
                        self.sup.request_stop_for(reason, grace_period=0.0, term_timeout=0.0)
                except RuntimeError:
                    return

    def restore(self) -> None:
        for s, old in self.old.items():
            signal.signal(s, old)


def _reap_orphans(signum: int, frame: Any) -> None:
    """PID 1 only: reap every exited child (the guardian's status is not needed)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _show(report: TeardownReport) -> None:
    head = ("worker", "pid", "outcome", "exit", "signal", "seconds", "killed")
    rows = [
        (
            w.name,
            str(w.pid or "-"),
            w.outcome,
            "-" if w.exitcode is None else str(w.exitcode),
            w.signal or "-",
            "-" if w.seconds is None else f"{w.seconds:.3f}",
            str(w.descendants_killed),
        )
        for w in report.workers
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    click.echo("")
    click.echo(f"teardown: {report.reason}, {'ok' if report.ok else 'NOT ok'}, {report.duration:.3f} s")
    for r in [head, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for w in report.workers:
        if w.error:
            click.echo(f"{w.name} {w.outcome}: {w.error}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
    click.echo(f"{len(report.workers)} workers: {counts}" if report.workers else "no workers")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate CONFIG and print what `run` would start; starts nothing.

    \b
    Example:
      supervisor check configs/demo.yaml
    """
    click.echo(plan(_load(config)))


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--socket", "socket_path", type=click.Path(), help="The control socket, instead of CONFIG.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(config: str | None, socket_path: str | None, as_json: bool) -> None:
    """Show the live workers of a running `supervisor run`.

    \b
    Example:
      supervisor status configs/demo.yaml
    """
    rows = _ask(_socket(config, socket_path), {"verb": "status"})["workers"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    head = ("worker", "pid", "state", "uptime", "restarts", "cpu%", "rss")
    table = [
        (
            r["name"],
            str(r["pid"] or "-"),
            r["state"],
            "-" if r["uptime"] is None else f"{r['uptime']:.1f}s",
            str(r["restarts"]),
            "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}",
            "-" if r["rss"] is None else f"{r['rss'] / 2**20:.1f}M",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]
    for r in [head, *table]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--socket", "socket_path", type=click.Path(), help="The control socket, instead of CONFIG.")
@click.option("--grace-period", type=Duration(), help="Shorten the grace period of this stop, e.g. 0s.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line.")
def stop(config: str | None, socket_path: str | None, grace_period: float | None, as_json: bool) -> None:
    """Tear a running `supervisor run` down and print its report.

    \b
    Example:
      supervisor stop configs/demo.yaml --grace-period 1s
    """
    reply = _ask(_socket(config, socket_path), {"verb": "stop", "grace_period": grace_period}, timeout=None)
    if as_json:
        click.echo(json.dumps(reply["report"]))
    else:
        _show(TeardownReport.from_dict(reply["report"]))


def _ask(path: str, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    try:
        return request(path, message, timeout)
    except ControlError as exc:
        _die(str(exc))


def _die(message: str) -> NoReturn:
    click.echo(f"supervisor: {message}", err=True)
    sys.exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    main()
