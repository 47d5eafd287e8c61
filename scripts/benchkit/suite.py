"""What runs, in which order, and which table each figure lands in."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import channels, inprocess
from .orchestrate import Run, run_scenario
from .report import Cell, Table
from .systems import LABELS

PEERS = ["pool", "ppe", "pebble", "loky", "supervisord", "dataloader"]
BEHAVIOURS = ["sleeper", "deaf", "grandchild", "escaper"]
METRICS = ["startup", "cooperative", "idle", "teardown", "crash", "channels", "context"]
SPAWN_MAX_N = 64  # ours with the spawn start method: start-up only, up to this N
CRASH_N = 8
SLOW = ("loky", "supervisord")  # seconds to start 256 workers: each run of theirs costs the most
MS = 1000.0
MIB = 1 << 20


@dataclass
class Options:
    sizes: list[int]
    runs: int
    idle_window: float  # seconds of idling measured for CPU
    idle_runs: int  # how many of the runs of each start-up scenario also measure idling
    hang_timeout: float
    slow_max_n: int | None  # teardown of the slow starters (SLOW) only up to this N
    only: set[str]
    systems: list[str]
    peers_bin: str | None
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why it is skipped
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


def _label(system: str) -> str:
    return LABELS[system]


def _kind(system: str) -> str:
    return "ours" if system.startswith("ours") else "peer"


def _cols(sizes: list[int]) -> list[str]:
    return [f"N={n}" for n in sizes]


class Suite:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.tables: dict[str, Table] = {}
        self._build_tables()

    # -- tables ----------------------------------------------------------------------------------

    def _add(self, table: Table) -> None:
        self.tables[table.key] = table

    def _build_tables(self) -> None:
        cols = _cols(self.opts.sizes)
        self._add(Table("startup", "Start-up: call to N workers running their code", "ms", cols))
        self._add(Table("cooperative", "Cooperative stop: request to the last worker's exit", "ms", cols))
        for b in BEHAVIOURS:
            self._add(Table(f"teardown-{b}", f"Teardown of {_BEHAVIOUR_TEXT[b]}", "ms", cols, ratio_on="over"))
        self.tables[f"teardown-{BEHAVIOURS[0]}"].notes.append(_TEARDOWN_NOTE)
        self._add(
            Table(
                "crash",
                f"Crash of one worker (SIGKILL from outside), N = {CRASH_N}",
                "ms",
                ["detected", "replacement running"],
            )
        )
        self._add(Table("idle-cpu", "Supervisor CPU while N workers idle", "% of one core", cols))
        self._add(Table("idle-rss", "Supervisor memory (RSS) with N workers", "MiB", cols))
        self._add(Table("idle-uss", "An idle worker's own memory (USS)", "MiB", cols))
        chan_cols = ["1 KiB items (items/s)", "1 MiB items (MB/s)", "16 MiB items (MB/s)"]
        self._add(
            Table(
                "channels",
                "Channel throughput: producer processes to the parent, through one channel (capacity 64)",
                "items/s, MB/s",
                chan_cols,
            )
        )
        self._add(Table("context", "Worker context calls", "ns per call", ["per call"]))

    def ordered(self, only: set[str]) -> list[Table]:
        """The tables of the metrics asked for, in order (``teardown-deaf`` is metric ``teardown``)."""
        return [t for key, t in self.tables.items() if not only or key.split("-")[0] in only]

    def wants(self, metric: str) -> bool:
        return not self.opts.only or metric in self.opts.only

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> None:
        """In-process measurements first (they fork the benchmark process: before any thread)."""
        if self.wants("context"):
            self._context()
        if self.wants("channels"):
            self._channels()
        self._floors()
        if self.wants("startup") or self.wants("cooperative") or self.wants("idle"):
            self._coop_group()
        if self.wants("teardown"):
            for behaviour in BEHAVIOURS:
                self._teardown_group(behaviour)
        if self.wants("crash"):
            self._crash_group()

    def _repeat(self, label: str, fn: Callable[..., float], *args: Any, scale: float = 1.0) -> Cell:
        """``fn(*args) * scale`` once per run."""
        cell = Cell()
        for _ in range(self.opts.runs):
            cell.add(fn(*args) * scale)
        self.opts.log(f"  {label}: median {cell.median:.6g}")
        return cell

    def _context(self) -> None:
        t = self.tables["context"]
        for label, kind, op in [
            ("ours: ctx.heartbeat()", "ours", "heartbeat"),
            ("ours: ctx.should_stop()", "ours", "should_stop"),
            ("floor: struct.pack_into(mmap, monotonic())", "floor", "raw_beat"),
            ("floor: mmap byte read", "floor", "raw_flag"),
            ("multiprocess Event.is_set()", "peer", "event"),
        ]:
            t.row(label, kind).cells["per call"] = self._repeat(label, inprocess.context_op, op, scale=1e9)
        t.notes.append("Ratios here are against ctx.heartbeat().")

    def _channels(self) -> None:
        """One channel into the parent: ours vs a raw multiprocessing.Queue (same capacity, 64)."""
        t = self.tables["channels"]
        quick = self.opts.runs <= 3 and max(self.opts.sizes) <= 64
        counts = (20_000, 100, 12) if quick else (50_000, 300, 40)
        for label, kind, fn, producers in [
            ("ours: channel, 1 producer", "ours", channels.channel_rate, 1),
            ("ours: channel, 4 producers", "ours", channels.channel_rate, 4),
            ("multiprocessing.Queue, 1 producer", "peer", channels.queue_rate, 1),
            ("multiprocessing.Queue, 4 producers", "peer", channels.queue_rate, 4),
        ]:
            row = t.row(label, kind)
            for col, size, count in zip(t.columns, (1024, MIB, 16 * MIB), counts, strict=True):
                scale = 1.0 if size == 1024 else size / 1e6
                row.cells[col] = self._repeat(f"{label} {col}", fn, size, count, producers, scale=scale)
        t.notes.append(
            f"Items per run: {counts[0]:,} / {counts[1]} / {counts[2]}; 1 KiB items are bytes, the larger ones "
            "NumPy arrays; MB = 10^6 bytes; timed from the first item received to the last."
        )

    def _floors(self) -> None:
        """The hardware floors and raw multiprocess loops, next to the rows they bound."""
        if self.wants("startup"):
            self._startup_floors()
        if self.wants("cooperative"):
            row = self.tables["cooperative"].row("floor: multiprocess Event.set() -> all joined", "floor")
            for n in self.opts.sizes:
                row.cells[f"N={n}"] = self._repeat(f"event floor N={n}", inprocess.mp_cooperative, n, scale=MS)
        if self.wants("teardown"):
            first = self.tables[f"teardown-{BEHAVIOURS[0]}"].row("floor: SIGKILL + reap of raw children", "floor")
            for n in self.opts.sizes:
                first.cells[f"N={n}"] = self._repeat(f"kill floor N={n}", inprocess.raw_forced_stop, n, scale=MS)
            for b in BEHAVIOURS[1:]:
                self.tables[f"teardown-{b}"].rows.append(first)
        if self.wants("crash"):
            row = self.tables["crash"].row("floor: SIGKILL -> pidfd wakes the parent", "floor")
            row.cells["detected"] = self._repeat("pidfd floor", inprocess.raw_pidfd_notice, scale=MS)

    def _startup_floors(self) -> None:
        t = self.tables["startup"]
        cases: list[tuple[str, str, Callable[[int], float], int]] = [
            ("floor: raw os.fork loop", "floor", inprocess.raw_fork_startup, 1 << 30),
            ("multiprocess fork", "peer", functools.partial(inprocess.mp_startup, method="fork"), 1 << 30),
            ("multiprocess forkserver", "peer", functools.partial(inprocess.mp_startup, method="forkserver"), 64),
            ("multiprocess spawn", "peer", functools.partial(inprocess.mp_startup, method="spawn"), 8),
        ]
        for label, kind, fn, max_n in cases:
            for n in self.opts.sizes:
                if n <= max_n:
                    t.row(label, kind).cells[f"N={n}"] = self._repeat(f"{label} N={n}", fn, n, scale=MS)
        inprocess.stop_helpers()

    # -- scenarios in harness subprocesses -------------------------------------------------------

    def _systems(self, extra: list[str] | None = None) -> Iterator[str]:
        for system in ["ours", *(extra or []), *PEERS]:
            if system in self.opts.systems or (system.startswith("ours") and "ours" in self.opts.systems):
                yield system

    def _scenario(self, system: str, scenario: str, n: int, behaviour: str, idle: float = 0.0) -> Run:
        spec = {
            "system": system,
            "scenario": scenario,
            "n": n,
            "behaviour": behaviour,
            "peers_bin": self.opts.peers_bin,
        }
        run = run_scenario(spec, self.opts.hang_timeout, idle)
        extra = f" ({run.note})" if run.note else ""
        killed = f", {run.killed_after} killed by pid" if run.killed_after else ""
        wall = run.data.get("wall", 0)
        self.opts.log(f"  {scenario} {behaviour} {system} N={n}: {run.status}{extra} [{wall:.1f} s{killed}]")
        return run

    def _skip(self, system: str, cells: list[Cell], hung_at: int | None, over_budget: bool = False) -> bool:
        """Mark ``cells`` skipped (unavailable system, hung at a smaller N, time budget); True if so."""
        why = self.opts.unavailable.get(system)
        if why is None and hung_at is not None:
            why = f"hung at N={hung_at}"
        if why is None and over_budget:
            why = f"time budget: --slow-max-n {self.opts.slow_max_n}"
        for cell in cells if why else []:
            cell.status, cell.note = "skipped", f"({why})"
        return why is not None

    def _coop_group(self) -> None:
        """Start-up, idling and cooperative stop: one scenario gives all three."""
        tables = [self.tables[k] for k in ("startup", "cooperative", "idle-cpu", "idle-rss", "idle-uss")]
        for system in self._systems(["ours-spawn"] if self.wants("startup") else []):
            hung_at: int | None = None
            for n in self.opts.sizes:
                if system == "ours-spawn" and n > SPAWN_MAX_N:
                    continue
                cells = [Cell() for _ in tables]
                for table, cell in zip(tables[:1] if system == "ours-spawn" else tables, cells, strict=False):
                    table.row(_label(system), _kind(system)).cells[f"N={n}"] = cell
                if not self._skip(system, cells, hung_at) and self._coop_runs(system, n, cells) == "hung":
                    hung_at = n
        self._notes_coop()

    def _coop_runs(self, system: str, n: int, cells: list[Cell]) -> str:
        """The runs of one start-up/idle/cooperative cell; the status of the last run."""
        startup, coop, cpu, rss, uss = cells
        for r in range(self.opts.runs):
            idle = r < self.opts.idle_runs and system != "ours-spawn" and self.wants("idle")
            run = self._scenario(system, "coop", n, "coop", self.opts.idle_window if idle else 0.0)
            if run.status != "ok":
                started = "startup" in run.data  # the stop failed, not the start
                if started:
                    startup.add(run.data["startup"] * MS, **_workers_only(run))
                _fail(cells[1:] if started else cells, run, self.opts.hang_timeout)
                return run.status
            startup.add(run.data["startup"] * MS, **_workers_only(run))
            coop.add(run.data["seconds"] * MS, left=run.survivors)
            if "cpu" in run.data:
                cpu.add(run.data["cpu"] * 100)
                rss.add(run.data["rss"] / MIB)
                uss.add(run.data["uss"] / MIB)
        return "ok"

    def _teardown_group(self, behaviour: str) -> None:
        table = self.tables[f"teardown-{behaviour}"]
        limit = self.opts.slow_max_n
        for system in self._systems(["ours-now"]):
            hung_at: int | None = None
            for n in self.opts.sizes:
                cell = table.row(_label(system), _kind(system)).cells.setdefault(f"N={n}", Cell())
                over_budget = system in SLOW and limit is not None and n > limit
                if (
                    not self._skip(system, [cell], hung_at, over_budget)
                    and self._teardown_runs(system, n, behaviour, cell) == "hung"
                ):
                    hung_at = n

    def _teardown_runs(self, system: str, n: int, behaviour: str, cell: Cell) -> str:
        """The runs of one teardown cell; the status of the last run."""
        for _ in range(self.opts.runs):
            run = self._scenario(system, "teardown", n, behaviour)
            if run.status != "ok":
                _fail([cell], run, self.opts.hang_timeout)
                return run.status
            deadline = run.data.get("deadline")
            over = None if deadline is None else (run.data["seconds"] - deadline) * MS
            cell.add(run.data["seconds"] * MS, over=over, left=run.survivors)
        return "ok"

    def _crash_group(self) -> None:
        table = self.tables["crash"]
        table.notes.append(_CRASH_NOTE)
        for system in self._systems():
            row = table.row(_label(system), _kind(system))
            detect, replace = (
                row.cells.setdefault("detected", Cell()),
                row.cells.setdefault("replacement running", Cell()),
            )
            if self._skip(system, [detect, replace], None):
                continue
            for _ in range(self.opts.runs):
                run = self._scenario(system, "crash", CRASH_N, "sleeper")
                if run.status != "ok":
                    _fail([detect, replace], run, self.opts.hang_timeout)
                    break
                for cell, key in ((detect, "detect"), (replace, "replace")):
                    if run.data.get(key) is not None:
                        cell.add(run.data[key] * MS)
            for cell, none in ((detect, "(not reported)"), (replace, "(none)")):
                if cell.status == "ok" and not cell.values:
                    cell.status, cell.note = "na", none

    def _notes_coop(self) -> None:
        o = self.opts
        self.tables["startup"].notes.append(
            "Start-up includes creating the supervisor or pool (ours: starting the guardian and manager "
            "interpreters; supervisord: starting the daemon); `workers` is the share after that, where the "
            "API separates the two."
        )
        self.tables["idle-rss"].notes.append(
            "Ours: guardian + manager RSS, plus the owner's RSS growth from before Supervisor() to N workers "
            "running; pools and DataLoader: the owner's RSS growth; supervisord: the daemon's RSS plus that growth."
        )
        self.tables["idle-cpu"].notes.append(
            f"CPU (user + system) of the supervising processes over {o.idle_window:g} s of idling, in the first "
            f"{min(o.idle_runs, o.runs)} runs: ours = owner + guardian + manager; pools and DataLoader = the "
            "owning process (its handler threads); supervisord = the daemon + the owning process."
        )


_TEARDOWN_NOTE = (
    "Each cell: the teardown call's duration; `over`: past the configured deadline, i.e. the moment the "
    "system's own ladder should have ended such a worker (ours: grace 1 s for workers that die of SIGTERM, "
    "grace + term = 2 s for SIGTERM-ignoring ones; grace 0: 0 s and 1 s; Pool, loky: 0; pebble: 0, or its "
    "internal 3 s term_timeout for SIGTERM-ignoring workers; supervisord: 0, or stopwaitsecs = 1 s; "
    "ProcessPoolExecutor and DataLoader set no deadline); `left`: processes of the scenario still alive "
    "after the call returned (and 0.3 s later). The ratio (Nx) compares overshoots with ours. The same "
    "holds for the three teardown tables below."
)

_CRASH_NOTE = (
    "Detected: ours, the manager's own timestamp of the worker's `exited` event; ProcessPoolExecutor, pebble "
    "and loky, the first future that raises (BrokenProcessPool, ProcessExpired, TerminatedWorkerError); "
    "DataLoader, the blocked `next()` raising; supervisord, its process info no longer RUNNING (polled over "
    "XML-RPC every 1 ms); Pool reports nothing (the task is lost). Replacement: a new worker running user "
    "code (pools get one extra queued task for it); `none` = no replacement within 3 s."
)

_BEHAVIOUR_TEXT = {
    "sleeper": "sleeping workers (`time.sleep(3600)`)",
    "deaf": "SIGTERM-ignoring workers",
    "grandchild": "workers holding a grandchild (`subprocess` `sleep 3600`)",
    "escaper": "setsid-escaping workers (double fork + `setsid()`)",
}


def _workers_only(run: Run) -> dict[str, float | None]:
    share = run.data.get("workers_only")
    return {"workers": None if share is None else share * MS}


def _fail(cells: list[Cell], run: Run, hang_timeout: float) -> None:
    for cell in cells:
        if run.status == "hung":
            cell.status, cell.note = "hung", f"(>{hang_timeout:g} s; {run.survivors} left)"
        else:
            cell.status, cell.note = "error", f"({run.note})"


def probe_availability(systems: list[str], peers_bin: str | None, peers_note: str) -> dict[str, str]:
    """Systems that cannot run here, and why."""
    missing = {}
    for system, module in (("pebble", "pebble"), ("loky", "loky")):
        if system in systems and importlib.util.find_spec(module) is None:
            missing[system] = f"{module} not installed: pip install -e '.[bench]'"
    if "dataloader" in systems and importlib.util.find_spec("torch") is None:
        missing["dataloader"] = "torch not importable: optional, pip install torch==2.13.0"
    if "supervisord" in systems and peers_bin is None:
        missing["supervisord"] = peers_note
    return missing
