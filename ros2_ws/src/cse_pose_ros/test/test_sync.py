"""Synchronisers fed with stamped fake messages.

One suite (``SYNCS``) runs against both synchronisers a ROS install offers: the node's (``cse_pose_ros.sync``,
over the ROS-free policy ``cse_pose.sync``) and ``message_filters.ApproximateTimeSynchronizer`` (skipped where
message_filters is not installed). They must agree on: exact and within-slop sets are emitted, messages more
than the slop apart are never emitted together (random streams with jitter, offsets, losses and reordering),
and after a time jump (one frame 1 h or 15 s ahead, a clock that goes back 60 s and stays) frames are
served again within 1 s of stream time. The rest checks what only the node's synchroniser does: drop counts
per reason, time-jump restarts, the tightest set, the ROS glue.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cse_pose.sync import (
    DROP_LATE,
    DROP_NO_HEADER,
    DROP_QUEUE_OVERFLOW,
    DROP_SUPERSEDED,
    DROP_TIME_JUMP,
    ApproximatePolicy,
    TimeJump,
)
from cse_pose_ros.sync import (
    ApproximateTimeSynchronizer,
    SimpleFilter,
    Subscriber,
    make_synchronizer,
    stamp_ns,
)

TOPICS = ("rgb", "depth", "mask", "info")


def _stamp(t: float):
    """builtin_interfaces/Time where rclpy is installed (message_filters needs it), else a namespace."""
    sec = int(np.floor(t))
    nanosec = round((t - sec) * 1e9)
    try:
        from builtin_interfaces.msg import Time
    except ImportError:
        return SimpleNamespace(sec=sec, nanosec=nanosec)
    return Time(sec=sec, nanosec=nanosec)


def msg(t: float, tag: str = ""):
    return SimpleNamespace(header=SimpleNamespace(stamp=_stamp(t)), tag=tag)


class Source(SimpleFilter):
    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic


def _ours(n: int, queue_size: int, slop: float):
    sources = [Source(t) for t in TOPICS[:n]]
    return sources, ApproximateTimeSynchronizer(sources, queue_size, slop)


def _message_filters(n: int, queue_size: int, slop: float):
    mf = pytest.importorskip("message_filters", reason="message_filters (ROS) is not installed")

    class MfSource(mf.SimpleFilter):
        def __init__(self, topic: str) -> None:
            super().__init__()
            self.topic = topic

    sources = [MfSource(t) for t in TOPICS[:n]]
    return sources, mf.ApproximateTimeSynchronizer(sources, queue_size, slop)


SYNCS = {"ours": _ours, "message_filters": _message_filters}


def make(kind: str = "ours", queue_size: int = 5, slop: float = 0.01, n: int = 4):
    sources, sync = SYNCS[kind](n, queue_size, slop)
    out: list[tuple[float, ...]] = []
    sync.registerCallback(lambda *m: out.append(tuple(stamp_ns(x) / 1e9 for x in m)))
    return sources, sync, out


def feed(sources, index: int, t: float) -> None:
    sources[index].signalMessage(msg(t, TOPICS[index]))


def feed_frame(sources, t: float, order=(0, 1, 2, 3)) -> None:
    for i in order:
        feed(sources, i, t)


# ---------------------------------------------------------------------------------------------------
# the shared suite: both synchronisers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(params=sorted(SYNCS))
def kind(request) -> str:
    return request.param


def test_exact_match_emits_once_in_input_order(kind):
    sources, _sync, out = make(kind)
    for i in (2, 0, 3, 1):
        feed(sources, i, 1.0)
    assert out == [(1.0, 1.0, 1.0, 1.0)]


def test_within_slop_and_callback_args(kind):
    sources, sync = SYNCS[kind](2, 5, 0.02)
    got = []
    sync.registerCallback(lambda a, b, extra: got.append((a.tag, b.tag, extra)), "x")
    sources[0].signalMessage(msg(1.000, "a1"))
    sources[1].signalMessage(msg(1.015, "b1"))
    assert got == [("a1", "b1", "x")]


def test_further_apart_than_slop_is_never_paired(kind):
    sources, _sync, out = make(kind, n=2, slop=0.01)
    feed(sources, 0, 1.00)
    feed(sources, 1, 1.05)  # 50 ms apart
    feed(sources, 1, 1.03)
    feed(sources, 0, 1.10)
    assert out == []
    feed(sources, 0, 1.052)  # 2 ms from depth 1.05
    assert out == [(1.052, 1.05)]


@pytest.mark.parametrize("seed", range(6))
def test_random_streams_never_pair_beyond_the_slop(kind, seed):
    """Jitter, offsets on one input, lost messages, per-input latency (arrival out of stamp order)."""
    rng = np.random.default_rng(seed)
    slop = 0.01
    sources, _sync, out = make(kind, queue_size=6, slop=slop)
    arrivals = []
    for k in range(120):
        t = 100.0 + k / 30.0
        for i in range(4):
            if rng.random() < 0.05:
                continue  # lost
            stamp = t + rng.uniform(-0.006, 0.006)
            if rng.random() < 0.1:
                stamp += rng.choice([-1, 1]) * rng.uniform(0.012, 0.1)  # one input off by more than the slop
            arrivals.append((t + rng.uniform(0.0, 0.06), i, round(stamp, 6)))
    sent: set[tuple[int, float]] = set()
    for _, i, stamp in sorted(arrivals):
        if (i, stamp) not in sent:  # unique stamps per input
            sent.add((i, stamp))
            feed(sources, i, stamp)
    assert len(out) > 40, f"{len(out)} sets emitted"
    spreads = [max(s) - min(s) for s in out]
    assert max(spreads) <= slop + 1e-9, max(spreads)
    for i in range(4):
        used = [s[i] for s in out]
        assert len(used) == len(set(used)), "a message was emitted twice"


def _served_after(out, t_from: float, t_to: float) -> list[float]:
    return [s[0] for s in out if t_from <= s[0] <= t_to]


@pytest.mark.parametrize(("name", "bad_offset_s", "stays"), [
    ("one frame 1 h ahead", 3600.0, False),
    ("one frame 15 s ahead", 15.0, False),
    ("clock back 60 s and stays", -60.0, True),
])
def test_serving_resumes_within_a_second_after_a_time_jump(kind, name, bad_offset_s, stays):
    sources, _sync, out = make(kind, queue_size=10, slop=0.02)
    rng = np.random.default_rng(1)
    t = 1000.0
    for _ in range(10):  # a good stream at 10 Hz, inputs arriving in random order
        feed_frame(sources, t, rng.permutation(4))
        t += 0.1
    n_before = len(out)
    assert n_before == 10
    if stays:
        t += bad_offset_s
    else:
        feed_frame(sources, t + bad_offset_s, rng.permutation(4))
        t += 0.1
    t_fault = t
    for _ in range(30):
        feed_frame(sources, t, rng.permutation(4))
        t += 0.1
    served = _served_after(out, t_fault, t)
    assert served, f"{name}: nothing served after the fault"
    assert served[0] - t_fault <= 1.0, f"{name}: first frame served {served[0] - t_fault:.2f} s after the fault"
    assert len(served) >= 29, f"{name}: {len(served)} of 30 frames served after the fault"


# ---------------------------------------------------------------------------------------------------
# the node's synchroniser only: counts, restarts, tightest set, glue
# ---------------------------------------------------------------------------------------------------
def test_zero_slop_exact_stamps():
    sources, sync, out = make(slop=0.0, n=2)
    feed(sources, 0, 3.0)
    feed(sources, 1, 3.0)
    assert out == [(3.0, 3.0)]
    assert all(not c for c in sync.drop_counts.values())


def test_outside_slop_dropped_when_superseded():
    sources, sync, out = make(n=2, slop=0.01)
    feed(sources, 0, 1.00)
    feed(sources, 1, 1.05)  # 50 ms apart: no set
    assert out == []
    feed(sources, 0, 1.052)  # matches depth 1.05; rgb 1.00 is older than the set -> dropped
    assert out == [(1.052, 1.05)]
    assert sync.drop_counts["rgb"] == {DROP_SUPERSEDED: 1}
    assert sync.drop_counts["depth"] == {}


def test_best_set_is_the_tightest():
    sources, sync, out = make(n=2, slop=0.03)
    feed(sources, 0, 1.000)
    feed(sources, 0, 1.020)
    feed(sources, 1, 1.018)  # both rgb are within slop; 1.020 is closer
    assert out == [(1.020, 1.018)]
    assert sync.drop_counts["rgb"] == {DROP_SUPERSEDED: 1}


def test_queue_overflow_counted():
    sources, sync, out = make(queue_size=3, n=2)
    for k in range(7):
        feed(sources, 0, 1.0 + 0.1 * k)  # depth never arrives
    assert out == []
    assert sync.drop_counts["rgb"] == {DROP_QUEUE_OVERFLOW: 4}
    feed(sources, 1, 1.6)  # the newest three rgb are still queued: 1.4, 1.5, 1.6
    assert out == [(1.6, 1.6)]
    assert sync.drop_counts["rgb"] == {DROP_QUEUE_OVERFLOW: 4, DROP_SUPERSEDED: 2}


def test_out_of_order_arrival_and_late_message():
    """Streams with different latencies, messages of one topic arriving out of order."""
    sources, sync, out = make(queue_size=10, slop=0.005, n=3)
    feed(sources, 0, 2.0)
    feed(sources, 0, 1.8)  # an older rgb arrives after a newer one
    feed(sources, 1, 1.8)
    feed(sources, 2, 2.0)
    feed(sources, 1, 2.0)  # completes t=2; the older partial set (rgb 1.8, depth 1.8) is superseded
    assert out == [(2.0, 2.0, 2.0)]
    assert sync.drop_counts["rgb"] == {DROP_SUPERSEDED: 1}
    assert sync.drop_counts["depth"] == {DROP_SUPERSEDED: 1}
    feed(sources, 2, 1.8)  # mask for t=1.8 now: older than the emitted set -> late
    assert sync.drop_counts["mask"] == {DROP_LATE: 1}
    for i in (2, 1, 0):
        feed(sources, i, 2.1)
    assert out == [(2.0, 2.0, 2.0), (2.1, 2.1, 2.1)]
    assert sync.time_jumps == 0


def test_interleaved_stream_emits_every_frame():
    sources, sync, out = make(queue_size=4, slop=0.004)
    for k in range(30):
        t = 10 + k / 30
        for i, jitter in ((1, 0.001), (0, 0.0), (3, 0.0), (2, -0.002)):  # depth first, mask early stamp
            feed(sources, i, t + jitter)
    assert len(out) == 30
    assert sum(sum(c.values()) for c in sync.drop_counts.values()) == 0


def test_time_jump_restarts_and_reports():
    sources, sync, out = make(queue_size=10, slop=0.01)
    jumps: list[TimeJump] = []
    sync.on_time_jump = jumps.append
    feed_frame(sources, 50.0)
    feed(sources, 2, 3650.1)  # one mask an hour ahead: queued, no restart (a stamp ahead may be a pause)
    assert jumps == [] and sync.time_jumps == 0
    feed(sources, 0, 50.1)  # back on the real timeline: a jump back of an hour restarts
    assert len(jumps) == 1 and sync.time_jumps == 1
    assert jumps[0].index == 0 and jumps[0].dropped == 1 and abs(jumps[0].delta_ns / 1e9 + 3600.0) < 1e-6
    assert "rgb jumped back 3600.000 s" in jumps[0].describe(list(TOPICS))
    assert sync.drop_counts["mask"] == {DROP_TIME_JUMP: 1}
    feed(sources, 1, 50.1)
    feed(sources, 2, 50.1)
    feed(sources, 3, 50.1)
    assert out == [(50.0,) * 4, (50.1,) * 4]  # served at once after the restart


def test_a_pause_is_not_a_time_jump():
    sources, sync, out = make(queue_size=10, slop=0.01)
    feed_frame(sources, 50.0)
    feed_frame(sources, 65.0)  # 15 s without frames (camera paused), then the stream goes on
    feed_frame(sources, 65.1)
    assert sync.time_jumps == 0 and out == [(50.0,) * 4, (65.0,) * 4, (65.1,) * 4]


def test_stamp_slightly_ahead_blocks_at_most_its_offset():
    """A frame 0.9 s ahead (below the 1 s threshold) is served; real frames are late until they pass it."""
    sources, sync, out = make(queue_size=10, slop=0.01)
    feed_frame(sources, 10.0)
    feed_frame(sources, 10.9)
    for k in range(1, 16):
        feed_frame(sources, 10.05 + 0.1 * k)  # 10.15 ... 11.45
    assert sync.time_jumps == 0
    firsts = [s[0] for s in out]
    assert firsts[:2] == [10.0, 10.9] and min(firsts[2:]) > 10.9 and len(firsts) == 2 + 7
    assert sync.drop_counts["rgb"][DROP_LATE] == 8  # 10.15 ... 10.85: 0.7 s of stream time


def test_policy_validates_its_arguments():
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer([Source("a")], 0, 0.01)
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer([Source("a")], 5, -1.0)
    with pytest.raises(ValueError, match="exceed the slop"):
        ApproximatePolicy(2, 5, slop_ns=10**9, jump_threshold_ns=10**9)
    policy = ApproximatePolicy(2, 5, 0, jump_threshold_ns=None)  # no restarts at all
    policy.add(0, 10**15, "a")
    assert policy.add(0, 0, "b") is None and policy.jump_count == 0 and policy.drops[0][DROP_LATE] == 0


def test_headerless_message_counted():
    sources, sync, out = make(n=2)
    sources[0].signalMessage(SimpleNamespace(data=1))
    assert sync.drop_counts["rgb"] == {DROP_NO_HEADER: 1}
    assert out == []


class FakeNode:
    def __init__(self) -> None:
        self.created: list = []

    def create_subscription(self, msg_type, topic, callback, qos_profile=10, **kwargs):
        self.created.append((msg_type, topic, qos_profile, kwargs))
        return SimpleNamespace(callback=callback, topic_name=topic)

    def get_logger(self):
        return SimpleNamespace(debug=lambda *_: None)


def test_subscriber_wrapper_and_factory():
    node = FakeNode()
    subs = [Subscriber(node, object, t, qos_profile=3) for t in ("rgb/image", "depth/image")]
    assert [c[1] for c in node.created] == ["rgb/image", "depth/image"] and node.created[0][2] == 3
    assert subs[0].getTopic() == "rgb/image"
    sync = make_synchronizer(node, subs, queue_size=5, slop=0.01)
    assert isinstance(sync, ApproximateTimeSynchronizer)
    out = []
    sync.registerCallback(lambda a, b: out.append((a.tag, b.tag)))
    subs[1].sub.callback(msg(5.0, "d"))  # what rclpy calls on arrival
    subs[0].sub.callback(msg(5.001, "c"))
    assert out == [("c", "d")]
    assert set(sync.drop_counts) == {"rgb/image", "depth/image"}


def test_message_filters_subscribers_feed_our_synchroniser():
    mf = pytest.importorskip("message_filters", reason="message_filters (ROS) is not installed")
    node = FakeNode()
    subs = [mf.Subscriber(node, object, t, qos_profile=3) for t in ("rgb/image", "depth/image")]
    sync = make_synchronizer(node, subs, queue_size=5, slop=0.01, jump_threshold=2.0)
    assert isinstance(sync, ApproximateTimeSynchronizer) and sync.policy.jump_threshold_ns == 2 * 10**9
    out = []
    sync.registerCallback(lambda a, b: out.append((a.tag, b.tag)))
    subs[0].callback(msg(5.0, "c"))
    subs[1].callback(msg(5.5, "far"))
    subs[1].callback(msg(5.004, "d"))
    assert out == [("c", "d")] and set(sync.drop_counts) == {"rgb/image", "depth/image"}
