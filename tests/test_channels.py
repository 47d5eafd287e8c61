"""Channels: stop-aware, bounded, end-of-stream, large items, and robust to killed processes."""

from __future__ import annotations

import ast
import os
import queue
import signal
import time

import numpy as np
import pytest
import workers
from conftest import wait_until

from supervisor import Stopped, Supervisor, WorkerFailed, channels


@pytest.fixture
def channel() -> channels.Channel:
    return channels.Channel(channels.create("t", 0, 4), lambda: False, None)


def test_items_keep_their_order_and_type(channel: channels.Channel) -> None:
    items = [1, "two", {"three": 3}, b"four", None]
    for item in items[:4]:
        channel.put(item)
    assert [channel.get() for _ in range(4)] == items[:4]


def test_capacity_bounds_puts_and_timeouts_raise(channel: channels.Channel) -> None:
    for n in range(4):
        channel.put(n)
    with pytest.raises(queue.Full):
        channel.put(4, timeout=0.05)
    assert [channel.get() for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(queue.Empty):
        channel.get(timeout=0.05)


def test_large_items_travel_through_a_memfd(channel: channels.Channel) -> None:
    array = np.arange(3_000_000, dtype=np.float64)
    blob = os.urandom(1 << 20)
    channel.put(array)
    channel.put(blob)
    channel.put({"nested": array[:10], "big": np.ones(200_000)})
    got = channel.get()
    assert isinstance(got, np.ndarray) and got.dtype == array.dtype and (got == array).all()
    got[0] = -1.0  # a private, writable mapping
    assert channel.get() == blob
    nested = channel.get()
    assert (nested["nested"] == array[:10]).all() and nested["big"].sum() == 200_000


def test_an_item_with_thousands_of_buffers_still_travels(channel: channels.Channel) -> None:
    arrays = [np.full(16, n, dtype=np.int32) for n in range(10_000)]
    channel.put(arrays)
    got = channel.get()
    assert len(got) == 10_000 and all((a == n).all() for n, a in enumerate(got))


def test_end_of_stream_ends_iteration(channel: channels.Channel) -> None:
    channel.put("last")
    assert channels.send_end_markers(channel.spec, 1) == 1
    assert list(channel) == ["last"]
    with pytest.raises(channels.EndOfStream):
        channel.get()


def test_a_stop_wakes_blocked_operations() -> None:
    stopped = False
    r, w = os.pipe()
    ch = channels.Channel(channels.create("s", 0, 1), lambda: stopped, r)
    ch.put(1)
    t0 = time.monotonic()
    os.close(w)  # what the manager does to ask a worker to stop
    stopped = True
    with pytest.raises(Stopped):
        ch.put(2)
    with pytest.raises(Stopped):
        ch.get()
    assert time.monotonic() - t0 < 5
    os.close(r)


def test_blocked_producer_and_consumer_end_as_stopped_not_terminated() -> None:
    with Supervisor(grace_period=30, term_timeout=30) as sup:
        sup.channel("full", capacity=2)
        sup.channel("empty", capacity=2)
        sup.spawn(workers.put_blocked, outputs=["full"])
        sup.spawn(workers.get_blocked, inputs=["empty"])
        assert sup.wait_running(60)
        time.sleep(0.5)
        t0 = time.monotonic()
        sup.request_stop()
        report = sup.join(timeout=60)
        assert time.monotonic() - t0 < 10  # not the 30 s grace period
    assert report.counts() == {"stopped": 2}


def test_end_of_stream_propagates_through_three_stages_exactly_once_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "items"
    with Supervisor(grace_period=5, term_timeout=5) as sup:
        for name in ("raw", "middle"):
            sup.channel(name, capacity=8)
        sup.spawn(workers.produce, name="source", replicas=3, args=(500,), outputs=["raw"])
        sup.spawn(workers.relay, name="relay", replicas=2, inputs=["raw"], outputs=["middle"])
        sup.spawn(workers.collect, name="sink", args=(str(out),), inputs=["middle"])
        report = sup.join(timeout=60)
    assert report.reason == "completed" and report.counts() == {"completed": 6}
    items = [ast.literal_eval(line) for line in out.read_text().splitlines()]
    assert sorted(items) == [(p, n) for p in range(3) for n in range(500)]  # each exactly once
    # one relay keeps each producer's order; with two relays, order holds within each relay's share
    for producer in range(3):
        seen = [n for p, n in items if p == producer]
        assert len(seen) == 500


def test_order_per_producer_is_kept_through_a_single_relay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "items"
    with Supervisor() as sup:
        sup.channel("raw", capacity=4)
        sup.channel("middle", capacity=4)
        sup.spawn(workers.produce, name="source", replicas=2, args=(300,), outputs=["raw"])
        sup.spawn(workers.relay, inputs=["raw"], outputs=["middle"])
        sup.spawn(workers.collect, args=(str(out),), inputs=["middle"])
        sup.join(timeout=60)
    items = [ast.literal_eval(line) for line in out.read_text().splitlines()]
    for producer in range(2):
        assert [n for p, n in items if p == producer] == list(range(300))


def test_the_owner_iterates_the_last_channel_of_a_pipeline() -> None:
    with Supervisor() as sup:
        sup.channel("numbers", capacity=16)
        sup.spawn(workers.produce, replicas=2, args=(200,), outputs=["numbers"])
        got = list(sup.channel("numbers"))
        sup.join(timeout=60)
    assert sorted(got) == [(p, n) for p in range(2) for n in range(200)]


def test_the_owner_can_feed_a_pipeline_and_close_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "items"
    with Supervisor() as sup:
        feed = sup.channel("feed", capacity=4)
        sup.spawn(workers.collect, args=(str(out),), inputs=["feed"])
        for n in range(50):
            feed.put(n)
        feed.close()
        sup.join(timeout=60)
    assert out.read_text().splitlines() == [str(n) for n in range(50)]


def test_a_killed_producer_leaves_the_channel_working(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "items"
    with pytest.raises(WorkerFailed), Supervisor(strategy="one_for_one", grace_period=2, term_timeout=2) as sup:
        sup.channel("c", capacity=2)
        sup.spawn(workers.produce, name="victim", args=(10_000, 0.001), outputs=["c"])
        sup.spawn(workers.produce, name="steady", args=(300, 0.0, 1_000_000), outputs=["c"])
        sup.spawn(workers.collect, name="sink", args=(str(out),), inputs=["c"])
        assert sup.wait_running(60)
        time.sleep(0.3)
        victim = sup.status()[0].pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        report = sup.wait(timeout=60)  # the sink finishes once both producers have ended
        assert time.monotonic() - t0 < 30
    outcomes = {w.name: w.outcome for w in report.workers}
    assert outcomes == {"victim.0": "crashed", "steady.0": "completed", "sink.0": "completed"}
    items = [ast.literal_eval(line) for line in out.read_text().splitlines()]
    steady = [n for _, n in items if n >= 1_000_000]
    assert steady == list(range(1_000_000, 1_000_300))  # every item of the other producer, in order


def test_a_killed_consumer_does_not_wedge_the_channel_for_the_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "items"
    with pytest.raises(WorkerFailed), Supervisor(strategy="one_for_one", grace_period=2, term_timeout=2) as sup:
        sup.channel("c", capacity=2)
        sup.spawn(workers.produce, name="source", args=(400, 0.001), outputs=["c"])
        sup.spawn(workers.collect, name="slow", args=(str(tmp_path / "slow"), 0.01), inputs=["c"])
        sup.spawn(workers.collect, name="sink", args=(str(out),), inputs=["c"])
        assert sup.wait_running(60)
        time.sleep(0.3)
        slow = sup.status()[1].pid
        assert slow is not None
        os.kill(slow, signal.SIGKILL)
        report = sup.wait(timeout=60)
    assert {w.name: w.outcome for w in report.workers}["sink.0"] == "completed"
    assert out.read_text()  # the other consumer kept receiving to the end


def test_credits_held_by_a_dead_worker_are_given_back() -> None:
    with pytest.raises(WorkerFailed), Supervisor(strategy="one_for_one") as sup:
        ch = sup.channel("c", capacity=2)
        sup.spawn(workers.die_holding_a_credit, outputs=["c"])
        assert wait_until(lambda: sup.status()[0].state == "exited", 60)
        ch.put(1, timeout=10)
        ch.put(2, timeout=10)  # would raise queue.Full if the dead worker's credit were lost
        assert [ch.get(timeout=10), ch.get(timeout=10)] == [1, 2]


def test_large_arrays_through_workers_leave_nothing_in_dev_shm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with Supervisor(strategy="one_for_one", grace_period=1, term_timeout=1) as sup:
        sup.channel("arrays", capacity=4)
        sup.spawn(workers.big_arrays, replicas=2, args=(20, 4), outputs=["arrays"])
        sums = [int(a[0]) for a in sup.channel("arrays")]
        sup.join(timeout=60)
    assert sorted(sums) == sorted([n % 251 for n in range(20)] * 2)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after <= before


def test_upstream_first_stop_lets_downstream_drain_what_is_in_flight(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sent, got = tmp_path / "sent", tmp_path / "got"
    with Supervisor(grace_period=20, term_timeout=5, stop_order="upstream-first") as sup:
        sup.channel("c", capacity=64)
        sup.spawn(workers.produce_forever, name="source", args=(str(sent),), outputs=["c"])
        sup.spawn(workers.collect, name="sink", args=(str(got), 0.002), inputs=["c"])
        assert sup.wait_running(60)
        time.sleep(0.5)
        t0 = time.monotonic()
        sup.request_stop()
        report = sup.wait(timeout=60)
        assert time.monotonic() - t0 < 15  # drained, not terminated at the 20 s grace
    assert report.counts() == {"stopped": 2}
    assert len(got.read_text().splitlines()) == int(sent.read_text())  # nothing in flight was lost
