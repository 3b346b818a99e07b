"""The approximate-time policy (cse_pose.sync) and its ROS glue (cse_pose_ros.sync), fed with stamped fake messages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cse_pose.sync import DROP_LATE, DROP_NO_HEADER, DROP_QUEUE_OVERFLOW, DROP_SUPERSEDED
from cse_pose_ros.sync import (
    ApproximateTimeSynchronizer,
    SimpleFilter,
    Subscriber,
    make_synchronizer,
    stamp_ns,
)

TOPICS = ("rgb", "depth", "mask", "info")


def msg(t: float, tag: str = ""):
    sec = int(t)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=round((t - sec) * 1e9))), tag=tag
    )


class Source(SimpleFilter):
    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic


def make(queue_size: int = 5, slop: float = 0.01, n: int = 4):
    sources = [Source(t) for t in TOPICS[:n]]
    sync = ApproximateTimeSynchronizer(sources, queue_size, slop)
    out: list[tuple[float, ...]] = []
    sync.registerCallback(lambda *m: out.append(tuple(stamp_ns(x) / 1e9 for x in m)))
    return sources, sync, out


def feed(sources, index: int, t: float) -> None:
    sources[index].signalMessage(msg(t, TOPICS[index]))


def test_exact_match_emits_once_in_input_order():
    sources, sync, out = make()
    for i in (2, 0, 3, 1):
        feed(sources, i, 1.0)
    assert out == [(1.0, 1.0, 1.0, 1.0)]
    assert sync.emitted == 1
    assert all(not c for c in sync.drop_counts.values())


def test_zero_slop_exact_stamps():
    sources, sync, out = make(slop=0.0, n=2)
    feed(sources, 0, 3.0)
    feed(sources, 1, 3.0)
    assert out == [(3.0, 3.0)]


def test_within_slop_and_callback_args():
    sources = [Source("a"), Source("b")]
    sync = ApproximateTimeSynchronizer(sources, 5, 0.02)
    got = []
    sync.registerCallback(lambda a, b, extra: got.append((a.tag, b.tag, extra)), "x")
    sources[0].signalMessage(msg(1.000, "a1"))
    sources[1].signalMessage(msg(1.015, "b1"))
    assert got == [("a1", "b1", "x")]


def test_outside_slop_is_not_matched_and_dropped_when_superseded():
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
        feed(sources, 0, 1.0 + k)  # depth never arrives
    assert out == []
    assert sync.drop_counts["rgb"] == {DROP_QUEUE_OVERFLOW: 4}
    feed(sources, 1, 7.0)  # the newest three rgb are still queued: 5, 6, 7
    assert out == [(7.0, 7.0)]
    assert sync.drop_counts["rgb"] == {DROP_QUEUE_OVERFLOW: 4, DROP_SUPERSEDED: 2}


def test_out_of_order_arrival():
    """Streams with different latencies, messages of one topic arriving out of order."""
    sources, sync, out = make(queue_size=10, slop=0.005, n=3)
    feed(sources, 0, 2.0)
    feed(sources, 0, 1.0)  # an older rgb arrives after a newer one
    feed(sources, 1, 1.0)
    feed(sources, 2, 2.0)
    feed(sources, 1, 2.0)  # completes t=2; the older partial set (rgb 1.0, depth 1.0) is superseded
    assert out == [(2.0, 2.0, 2.0)]
    assert sync.drop_counts["rgb"] == {DROP_SUPERSEDED: 1}
    assert sync.drop_counts["depth"] == {DROP_SUPERSEDED: 1}
    feed(sources, 2, 1.0)  # mask for t=1 now: older than the emitted set -> late
    assert sync.drop_counts["mask"] == {DROP_LATE: 1}
    for i in (2, 1, 0):
        feed(sources, i, 3.0)
    assert out == [(2.0, 2.0, 2.0), (3.0, 3.0, 3.0)]


def test_interleaved_stream_emits_every_frame():
    sources, sync, out = make(queue_size=4, slop=0.004)
    for k in range(30):
        t = 10 + k / 30
        for i, jitter in ((1, 0.001), (0, 0.0), (3, 0.0), (2, -0.002)):  # depth first, mask early stamp
            feed(sources, i, t + jitter)
    assert len(out) == 30
    assert sum(sum(c.values()) for c in sync.drop_counts.values()) == 0


def test_headerless_message_counted():
    sources, sync, out = make(n=2)
    sources[0].signalMessage(SimpleNamespace(data=1))
    assert sync.drop_counts["rgb"] == {DROP_NO_HEADER: 1}
    assert out == []


def test_invalid_parameters():
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer([Source("a")], 0, 0.01)
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer([Source("a")], 5, -1.0)


def test_subscriber_wrapper_and_factory():
    created = []

    class FakeNode:
        def create_subscription(self, msg_type, topic, callback, qos, **kwargs):
            created.append((msg_type, topic, qos, kwargs))
            return SimpleNamespace(callback=callback, topic_name=topic)

        def get_logger(self):
            return SimpleNamespace(debug=lambda *_: None)

    node = FakeNode()
    subs = [Subscriber(node, object, t, qos_profile=3) for t in ("rgb/image", "depth/image")]
    assert [c[1] for c in created] == ["rgb/image", "depth/image"] and created[0][2] == 3
    assert subs[0].getTopic() == "rgb/image"
    sync = make_synchronizer(node, subs, queue_size=5, slop=0.01)
    assert isinstance(sync, ApproximateTimeSynchronizer)
    out = []
    sync.registerCallback(lambda a, b: out.append((a.tag, b.tag)))
    subs[1].sub.callback(msg(5.0, "d"))  # what rclpy calls on arrival
    subs[0].sub.callback(msg(5.001, "c"))
    assert out == [("c", "d")]
    assert set(sync.drop_counts) == {"rgb/image", "depth/image"}
