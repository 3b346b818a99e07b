"""ROS glue of the approximate-time synchroniser: message_filters-style subscribers and synchroniser.

The node always pairs with the ROS-free policy :class:`cse_pose.sync.ApproximatePolicy` (documented there,
with how it differs from message_filters'), wrapped here as :class:`ApproximateTimeSynchronizer`: the same
constructor and ``registerCallback`` API as ``message_filters.ApproximateTimeSynchronizer``, plus what the
node needs and message_filters' Python synchroniser lacks: a drop counter per input and reason
(:attr:`ApproximateTimeSynchronizer.drop_counts`), and time-jump restarts reported to a callback
(:attr:`ApproximateTimeSynchronizer.on_time_jump`). Why not message_filters' synchroniser: it keeps unpaired
messages queued however old they are, so sets can come out of stamp order, and it counts no drops, so the
node could not say why frames are not served. Its ``Subscriber`` still feeds ours where installed
(:func:`make_subscriber`); the in-package :class:`Subscriber` stands in on pip-only installs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from cse_pose.sync import DEFAULT_JUMP_THRESHOLD_NS, DROP_NO_HEADER, ApproximatePolicy, TimeJump, stamp_ns

__all__ = ["ApproximateTimeSynchronizer", "SimpleFilter", "Subscriber", "TimeJump", "make_subscriber",
           "make_synchronizer", "stamp_ns"]


class SimpleFilter:
    """message_filters-style source: ``registerCallback(cb, *args)``, ``signalMessage(*msgs)``."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._next_id = 0

    def registerCallback(self, cb: Callable[..., Any], *args: Any) -> int:  # noqa: N802 - message_filters API
        """Call ``cb(*msgs, *args)`` for every emitted message (set). Returns a connection id."""
        conn = self._next_id
        self._next_id += 1
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802 - message_filters API
        """Deliver ``msg`` to every registered callback."""
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class ApproximateTimeSynchronizer(SimpleFilter):
    """The node's synchroniser: ``message_filters.ApproximateTimeSynchronizer``'s constructor and API over
    :class:`cse_pose.sync.ApproximatePolicy`.

    Args:
        fs: input filters (:class:`Subscriber`, ``message_filters.Subscriber``, any ``SimpleFilter``), one
            per synchronised topic.
        queue_size: messages kept per input.
        slop: largest allowed stamp spread of a set, seconds.
        allow_headerless: accepted for API compatibility; messages without a header are dropped and
            counted (``no_header``) either way.
        jump_threshold: a stamp this far (s) before the newest one restarts the policy and calls
            :attr:`on_time_jump`; None: never.
    """

    def __init__(
        self, fs: Sequence[Any], queue_size: int, slop: float, allow_headerless: bool = False,
        jump_threshold: float | None = DEFAULT_JUMP_THRESHOLD_NS / 1e9,
    ) -> None:
        super().__init__()
        jump_ns = None if jump_threshold is None else round(float(jump_threshold) * 1e9)
        self.policy = ApproximatePolicy(max(1, len(fs)), queue_size, round(float(slop) * 1e9), jump_ns)
        self.names = [str(getattr(f, "topic", i)) for i, f in enumerate(fs)]
        self.allow_headerless = allow_headerless
        self.lock = threading.Lock()
        self.input_connections: list[int] = []
        #: Called as ``on_time_jump(jump: TimeJump)`` (outside the lock, before any set of the new timeline).
        self.on_time_jump: Callable[[TimeJump], None] | None = None
        if fs:
            self.connectInput(fs)

    def connectInput(self, fs: Sequence[Any]) -> None:  # noqa: N802 - message_filters API
        """Register on every input filter's callbacks."""
        if len(fs) != len(self.policy.queues):
            p = self.policy
            self.policy = ApproximatePolicy(len(fs), p.queue_size, p.slop_ns, p.jump_threshold_ns)
            self.names = [str(getattr(f, "topic", i)) for i, f in enumerate(fs)]
        self.input_connections = [f.registerCallback(self.add, i) for i, f in enumerate(fs)]

    def add(self, msg: Any, index: int) -> None:
        """Feed one message of input ``index`` (what the input filters call; tests call it directly)."""
        try:
            stamp = stamp_ns(msg)
        except AttributeError:
            with self.lock:
                self.policy.drops[index][DROP_NO_HEADER] += 1
            return
        with self.lock:
            jumps = self.policy.jump_count
            msgs = self.policy.add(index, stamp, msg)
            jump = self.policy.last_jump if self.policy.jump_count != jumps else None
        if jump is not None and self.on_time_jump is not None:
            self.on_time_jump(jump)
        if msgs is not None:
            self.signalMessage(*msgs)

    def reset(self) -> None:
        """Drop every queued message (counted ``time_jump``) and forget the stamp order."""
        with self.lock:
            self.policy.restart()

    @property
    def drop_counts(self) -> dict[str, dict[str, int]]:
        """Dropped messages so far: input name (topic) -> reason -> count."""
        with self.lock:
            return {name: dict(c) for name, c in zip(self.names, self.policy.drops, strict=True)}

    @property
    def latest_stamps(self) -> dict[str, int | None]:
        """Stamp (ns) of the last message of each input (name), None before the first."""
        with self.lock:
            return dict(zip(self.names, self.policy.latest_ns, strict=True))

    @property
    def emitted(self) -> int:
        """Number of sets delivered so far."""
        return self.policy.emitted

    @property
    def time_jumps(self) -> int:
        """Number of time-jump restarts so far."""
        return self.policy.jump_count


class Subscriber(SimpleFilter):
    """``message_filters.Subscriber`` stand-in: an rclpy subscription that forwards to callbacks.

    Args:
        node: the rclpy node.
        msg_type: message class.
        topic: topic name.
        qos_profile: QoS profile or history depth (default 10).
        **kwargs: passed to ``node.create_subscription`` (e.g. ``callback_group``).
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, qos_profile: Any = 10, **kwargs: Any) -> None:
        super().__init__()
        self.node = node
        self.topic = topic
        self.msg_type = msg_type
        self.sub = node.create_subscription(msg_type, topic, self.callback, qos_profile, **kwargs)

    def callback(self, msg: Any) -> None:
        """Subscription callback: forward the message."""
        self.signalMessage(msg)

    def getTopic(self) -> str:  # noqa: N802 - message_filters API
        """The subscribed topic name."""
        return self.topic


def have_message_filters() -> bool:
    """True when the ROS ``message_filters`` package is importable."""
    try:
        import message_filters  # noqa: F401
    except ImportError:
        return False
    return True


def make_subscriber(node: Any, msg_type: Any, topic: str, qos_profile: Any = 10, **kwargs: Any) -> Any:
    """A ``message_filters.Subscriber`` when available, else an in-package :class:`Subscriber`."""
    if have_message_filters():
        import message_filters

        return message_filters.Subscriber(node, msg_type, topic, qos_profile=qos_profile, **kwargs)
    return Subscriber(node, msg_type, topic, qos_profile, **kwargs)


def make_synchronizer(
    node: Any, subscribers: Sequence[Any], queue_size: int, slop: float,
    jump_threshold: float | None = DEFAULT_JUMP_THRESHOLD_NS / 1e9,
) -> ApproximateTimeSynchronizer:
    """The node's approximate-time synchroniser over ``subscribers`` (any message_filters-style filters).

    Always :class:`ApproximateTimeSynchronizer` (see the module docstring for why not message_filters').
    ``node`` is used for one debug line.
    """
    sync = ApproximateTimeSynchronizer(list(subscribers), queue_size, slop, jump_threshold=jump_threshold)
    if node is not None and hasattr(node, "get_logger"):
        node.get_logger().debug(f"ApproximateTimeSynchronizer (queue {queue_size}, slop {slop} s, "
                                f"time jumps beyond {jump_threshold} s restart it)")
    return sync
