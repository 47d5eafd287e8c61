"""The ladder and the outcome rule as pure functions, driven by a fake clock."""

from __future__ import annotations

import pytest

from supervisor._manager import decide_outcome
from supervisor.ladder import Rung, Step, climb
from supervisor.report import Outcome


def test_every_rung_climbs_against_one_shared_deadline() -> None:
    rungs = [Rung(i, since=100.0, grace_period=2.0, term_timeout=1.0, step=Step.COOPERATIVE) for i in range(256)]
    actions, nxt = climb(rungs, 100.5)
    assert actions == [] and nxt == 102.0
    actions, nxt = climb(rungs, 102.0)
    assert [s for _, s in actions] == [Step.TERM] * 256 and nxt == 103.0
    actions, nxt = climb(rungs, 103.0)
    assert [s for _, s in actions] == [Step.KILL] * 256 and nxt is None
    assert climb(rungs, 500.0) == ([], None)


def test_a_late_wakeup_jumps_straight_to_the_due_step() -> None:
    rung = Rung(0, since=0.0, grace_period=1.0, term_timeout=1.0, step=Step.COOPERATIVE)
    actions, nxt = climb([rung], 7.0)
    assert actions == [(rung, Step.KILL)] and nxt is None


def test_per_pool_waits_share_the_start_instant() -> None:
    fast = Rung(0, since=10.0, grace_period=0.0, term_timeout=0.5, step=Step.COOPERATIVE)
    slow = Rung(1, since=10.0, grace_period=3.0, term_timeout=3.0, step=Step.COOPERATIVE)
    actions, nxt = climb([fast, slow], 10.0)
    assert actions == [(fast, Step.TERM)] and nxt == 10.5
    actions, nxt = climb([fast, slow], 10.5)
    assert actions == [(fast, Step.KILL)] and nxt == 13.0


def test_tighten_only_moves_deadlines_earlier() -> None:
    rung = Rung(0, since=0.0, grace_period=10.0, term_timeout=10.0, step=Step.COOPERATIVE)
    rung.tighten(1.0, 0.0, 0.0)  # a second signal: kill now
    assert climb([rung], 1.0)[0] == [(rung, Step.KILL)]
    later = Rung(0, since=0.0, grace_period=1.0, term_timeout=1.0, step=Step.COOPERATIVE)
    later.tighten(0.5, 30.0, 30.0)  # a slower request never delays a running ladder
    assert (later.grace_period, later.term_timeout) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("step", "exitcode", "failed", "outcome"),
    [
        (Step.NONE, 0, False, Outcome.COMPLETED),
        (Step.NONE, 3, False, Outcome.CRASHED),
        (Step.NONE, -11, False, Outcome.CRASHED),
        (Step.NONE, 1, True, Outcome.FAILED),
        (Step.COOPERATIVE, 0, False, Outcome.STOPPED),
        (Step.COOPERATIVE, 1, True, Outcome.FAILED),
        (Step.COOPERATIVE, 3, False, Outcome.CRASHED),  # os._exit(3) during the grace period
        (Step.COOPERATIVE, -11, False, Outcome.CRASHED),
        (Step.TERM, 0, False, Outcome.TERMINATED),  # a SIGTERM handler that exits 0 still counts
        (Step.TERM, -15, False, Outcome.TERMINATED),
        (Step.TERM, 1, True, Outcome.TERMINATED),
        (Step.KILL, -9, False, Outcome.KILLED),
        (Step.KILL, 0, False, Outcome.KILLED),
    ],
)
def test_the_step_in_force_at_exit_decides_the_outcome(
    step: Step, exitcode: int, failed: bool, outcome: Outcome
) -> None:
    assert decide_outcome(step, exitcode, failed) is outcome


@pytest.mark.parametrize("exitcode", [0, 130, -2, -15])
def test_a_command_that_ends_after_its_stop_signal_stopped(exitcode: int) -> None:
    assert decide_outcome(Step.COOPERATIVE, exitcode, False, command=True) is Outcome.STOPPED
    assert decide_outcome(Step.NONE, exitcode, False, command=True) is (
        Outcome.COMPLETED if exitcode == 0 else Outcome.CRASHED
    )


@pytest.mark.parametrize(
    ("grace", "term", "budget", "expected"),
    [
        (2.0, 1.0, None, (2.0, 1.0)),
        (2.0, 1.0, 10.0, (2.0, 1.0)),  # fits: untouched
        (30.0, 30.0, 10.0, (4.5, 4.5)),  # 10 s budget keeps 1 s back
        (3.0, 1.0, 2.0, (1.3125, 0.4375)),  # keeps 0.25 s back, ratio 3:1
        (0.0, 0.0, 1.0, (0.0, 0.0)),
    ],
)
def test_a_stop_budget_scales_the_ladder_down(
    grace: float, term: float, budget: float | None, expected: tuple[float, float]
) -> None:
    from supervisor.ladder import fit_budget

    assert fit_budget(grace, term, budget) == pytest.approx(expected)
