"""Restart strategies, intensity and backoff as pure decisions with a fake clock."""

from __future__ import annotations

import pytest

from supervisor.strategy import Member, Plan, Restarts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def members(*spec: tuple[int, str, bool]) -> list[Member]:
    """(pool_order, policy, live) per slot, slots numbered from 0."""
    return [Member(i, order, policy, live) for i, (order, policy, live) in enumerate(spec)]


THREE_POOLS = members((1, "on-failure", False), (2, "on-failure", True), (3, "never", True), (3, "always", True))


@pytest.mark.parametrize(
    ("strategy", "ended", "plan"),
    [
        ("one_for_one", 0, Plan(restart=(0,))),
        ("one_for_all", 0, Plan(stop=(1, 2, 3), restart=(0, 1, 3))),
        ("rest_for_one", 1, Plan(stop=(2, 3), restart=(1, 3))),
        ("rest_for_one", 0, Plan(stop=(1, 2, 3), restart=(0, 1, 3))),
    ],
)
def test_strategies_choose_who_is_stopped_and_restarted(strategy: str, ended: int, plan: Plan) -> None:
    r = Restarts(strategy=strategy, clock=Clock())
    mem = [Member(m.slot, m.pool_order, m.policy, m.live and m.slot != ended) for m in THREE_POOLS]
    assert r.on_exit(mem[ended], True, mem) == plan


@pytest.mark.parametrize(
    ("strategy", "plan"),
    [
        ("one_for_one", Plan(failure=True)),
        ("one_for_all", Plan(end="failure", failure=True)),
        ("rest_for_one", Plan(stop=(3,), failure=True)),
    ],
)
def test_a_failure_that_is_not_restarted(strategy: str, plan: Plan) -> None:
    r = Restarts(strategy=strategy, clock=Clock())
    assert r.on_exit(THREE_POOLS[2], True, THREE_POOLS) == plan


@pytest.mark.parametrize(("policy", "failed", "restarted"), [
    ("never", False, False), ("never", True, False),
    ("on-failure", False, False), ("on-failure", True, True),
    ("always", False, True), ("always", True, True),
])  # fmt: skip
def test_restart_policies(policy: str, failed: bool, restarted: bool) -> None:
    m = Member(0, 1, policy, False)
    plan = Restarts(strategy="one_for_one", clock=Clock()).on_exit(m, failed, [m])
    assert (plan.restart == (0,)) is restarted
    assert plan.failure is (failed and not restarted)


def test_more_than_max_restarts_within_the_window_ends_the_run() -> None:
    clock = Clock()
    r = Restarts(strategy="one_for_one", max_restarts=3, restart_window=10.0, clock=clock)
    m = Member(0, 1, "on-failure", False)
    for _ in range(3):
        assert r.on_exit(m, True, [m]).restart == (0,)
        clock.now += 1
    assert r.on_exit(m, True, [m]) == Plan(end="restarts exhausted", failure=True)
    clock.now += 10  # the window moved past the first restarts
    assert r.on_exit(m, True, [m]).restart == (0,)


def test_backoff_doubles_up_to_the_cap_and_resets_after_stable_running() -> None:
    clock = Clock()
    r = Restarts(
        strategy="one_for_one", max_restarts=100, backoff=0.5, backoff_max=4.0, backoff_reset=30.0, clock=clock
    )
    m = Member(0, 1, "always", False)
    delays = []
    for _ in range(7):
        delays.append(r.on_exit(m, True, [m]).delay)
        clock.now += 1
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    clock.now += 30  # ran long enough: the next failure restarts at once
    assert r.on_exit(m, True, [m]).delay == 0.0
    other = Member(1, 1, "always", False)
    assert r.on_exit(other, True, [m, other]).delay == 0.0  # backoff is per slot
