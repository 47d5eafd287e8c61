#!/usr/bin/env python3
"""Benchmarks: us next to our peers and the hardware floors, all measured in the same run.

    python scripts/bench.py [--quick] [--only NAME[,NAME]] [--json] [--runs K] [--systems LIST]
    python scripts/bench.py --runs 3 --slow-max-n 64     # BENCHMARKS.md (26 min on 2 cores)
    python scripts/bench.py --render saved.json          # the tables of a saved --json run

Peers: multiprocessing.Pool (terminate), concurrent.futures.ProcessPoolExecutor
(shutdown(wait=True, cancel_futures=True)), pebble ProcessPool (stop + join), loky
(get_reusable_executor, shutdown(kill_workers=True)), supervisord (its XML-RPC interface on a private
Unix socket, from its own virtualenv: see benchkit/peers_venv.py) and PyTorch's DataLoader (an
iterator's worker shutdown; optional: pip install torch==2.13.0).

Every peer scenario runs in its own subprocess with a timeout enforced from outside: a peer that
hangs is reported as "hung", and every process it leaves is counted and then SIGKILLed by pid,
found by an environment marker (never by name).

Each figure is the median of the runs, with min and max, and each peer's ratio to ours. Ours use the
public API only: Supervisor(grace_period=1, term_timeout=1), spawn, request_stop, wait, stop,
status, events.

Metrics (N = 8, 64, 256; --quick: N = 8, 64 and 3 runs, 3 s idle window):
  startup      call to N workers running their code
  cooperative  stop request to the last worker's exit
  idle         supervisor CPU over 10 s of idling, supervisor RSS, an idle worker's USS
  teardown     forced teardown of sleeping, SIGTERM-ignoring, grandchild-holding and setsid-escaping
               workers: time, overshoot past the configured deadline, survivors
  crash        one worker SIGKILLed from outside (N = 8): detection, replacement running
  channels     raw multiprocessing.Queue throughput (ours: not measured yet)
  context      cost of ctx.heartbeat() and ctx.should_stop()
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's supervisor
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchkit import machine, peers_venv, procs, report
from benchkit.suite import METRICS, PEERS, SLOW, Options, Suite, probe_availability


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 8 and 64, 3 runs, 3 s idle window")
    parser.add_argument("--only", help=f"comma-separated metrics: {', '.join(METRICS)}")
    parser.add_argument("--runs", type=int, help="repetitions per figure (default 5, quick 3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--render", metavar="FILE", help="print the tables of a saved --json output; run nothing")
    parser.add_argument("--systems", help=f"comma-separated: ours, {', '.join(PEERS)} (default: all)")
    parser.add_argument("--sizes", help="comma-separated N values (default 8,64,256; quick 8,64)")
    parser.add_argument("--idle-window", type=float, help="seconds of idling measured (default 10, quick 3)")
    parser.add_argument("--hang-timeout", type=float, default=15.0, help="seconds before a stop counts as hung (15)")
    parser.add_argument(
        "--slow-max-n", type=int, help=f"teardown of {' and '.join(SLOW)} only up to this N (time budget)"
    )
    args = parser.parse_args()
    for name, allowed in (("only", METRICS), ("systems", ["ours", *PEERS])):
        value = getattr(args, name)
        if value and (bad := set(value.split(",")) - set(allowed)):
            parser.error(f"--{name}: unknown {', '.join(sorted(bad))}; choose from {', '.join(allowed)}")
    return args


def options(args: argparse.Namespace) -> tuple[Options, str]:
    systems = args.systems.split(",") if args.systems else ["ours", *PEERS]
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else ([8, 64] if args.quick else [8, 64, 256])
    runs = args.runs or (3 if args.quick else 5)
    peers_bin, peers_note = (None, "supervisord not requested")
    if "supervisord" in systems:
        peers_bin, peers_note = peers_venv.ensure_supervisord()
    opts = Options(
        sizes=sizes,
        runs=runs,
        idle_window=args.idle_window or (3.0 if args.quick else 10.0),
        idle_runs=3,
        hang_timeout=args.hang_timeout,
        slow_max_n=args.slow_max_n,
        only=set(args.only.split(",")) if args.only else set(),
        systems=systems,
        peers_bin=peers_bin,
    )
    opts.unavailable = probe_availability(systems, peers_bin, peers_note)
    return opts, peers_note


def header(meta: dict[str, Any]) -> str:
    left = meta["leftover"]
    head = (
        machine.header(meta["machine"])
        + f"\nTook {meta['seconds']} s. Processes of this run left at the end: {len(left)}"
    )
    head += " (" + "; ".join(left) + "), killed by pid." if left else "."
    if meta["skipped_systems"]:
        head += "\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped_systems"].items()) + "."
    return head


def render(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    print(report.render_all(report.from_json(data), header(data), f"{data['runs']} runs"))


def main() -> None:
    args = parse_args()
    if args.render:
        render(args.render)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # still kill what we started
    procs.become_subreaper()
    os.environ[procs.MARKER_ENV] = procs.marker(0)  # our own in-process children carry it too
    t0 = time.monotonic()
    opts, peers_note = options(args)
    info = machine.describe(peers_note, machine.containment())
    suite = Suite(opts)
    try:
        suite.run()
    finally:
        left = [procs.describe(pid) for pid in sorted(procs.marked())]
        procs.kill_marked()
    meta = {
        "machine": info,
        "runs": opts.runs,
        "sizes": opts.sizes,
        "idle_window": opts.idle_window,
        "hang_timeout": opts.hang_timeout,
        "slow_max_n": opts.slow_max_n,
        "skipped_systems": opts.unavailable,
        "seconds": round(time.monotonic() - t0),
        "leftover": left,
    }
    tables = suite.ordered(opts.only)
    if args.json:
        print(report.to_json(tables, meta))
    else:
        print(report.render_all(tables, header(meta), f"{opts.runs} runs"))


if __name__ == "__main__":
    main()
