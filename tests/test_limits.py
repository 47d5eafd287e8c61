"""Per-pool resource limits, applied in the worker before its target runs."""

from __future__ import annotations

import os
import sys

import pytest
import workers
from conftest import wait_until

from supervisor import Supervisor, _platform, containment, limits
from supervisor.limits import parse_size

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="linux_only")


@pytest.mark.parametrize(
    ("text", "size"),
    [(4096, 4096), ("512MiB", 512 << 20), ("1.5G", 3 << 29), ("500MB", 500_000_000), ("64k", 65536), ("10", 10)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-5", "0", "1 parsec", True, 1.5, None])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("cgroups", [True, False], ids=["memory-cgroup", "rlimit"])
def test_memory_limit_ends_a_worker_that_allocates_too_much(cgroups: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not cgroups:
        monkeypatch.setattr(_platform, "USE_CGROUPS", False)
    sup = Supervisor(strategy="one_for_one", grace_period=1, term_timeout=1)
    try:
        if cgroups and sup.memory_limits == "rlimit":
            pytest.skip("no writable memory cgroup here")
        sup.spawn(workers.allocate, args=(4096,), memory_limit="256MiB")
        assert sup.pid is not None
        ours = containment.run_cgroup_name(_platform_parent(sup.pid))  # named after the guardian
        sup.spawn(workers.cooperative, name="bystander")
        assert wait_until(lambda: sup.status()[0].state == "exited", 60)
    finally:
        report = sup.stop()
    (hog, bystander) = report.workers
    assert bystander.outcome == "stopped"
    if cgroups:
        assert sup.memory_limits in ("cgroup1", "cgroup2")
        assert (hog.outcome, hog.signal) == ("crashed", "SIGKILL")
        assert hog.error == f"killed by the OOM killer (memory_limit {256 << 20} bytes)"
    else:
        assert sup.memory_limits == "rlimit"
        assert hog.outcome == "failed" and hog.error is not None and hog.error.startswith("MemoryError")
    assert not report.ok
    parent = limits._v1_memory_dir()
    if parent and os.path.isdir(parent):  # the run's memory cgroups are gone with it
        assert wait_until(lambda: ours not in os.listdir(parent), 10)


def test_cpu_affinity_and_nice_are_applied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "placement"
    with Supervisor() as sup:
        sup.spawn(workers.report_placement, args=(str(out),), cpu_affinity=[0], nice=7)
        sup.join(timeout=60)
    assert out.read_text() == "[0] 7"


def test_a_limit_that_cannot_be_applied_fails_the_worker_with_the_reason() -> None:
    cpus = os.cpu_count() or 1
    sup = Supervisor(strategy="one_for_one")
    sup.spawn(workers.done, cpu_affinity=[cpus + 64])
    report = sup.wait(timeout=60)
    (w,) = report.workers
    assert w.outcome == "failed" and w.error is not None and w.error.startswith("OSError")
    sup.stop()


def test_bad_limits_are_refused_before_anything_starts() -> None:
    with Supervisor() as sup:
        for kwargs in ({"nice": 40}, {"cpu_affinity": []}, {"memory_limit": "lots"}, {"cpu_affinity": [-1]}):
            with pytest.raises(ValueError):
                sup.spawn(workers.done, **kwargs)  # type: ignore[arg-type]
        assert sup.status() == []


def _platform_parent(pid: int) -> int:
    """The parent of ``pid`` (the guardian of a manager)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[1])
