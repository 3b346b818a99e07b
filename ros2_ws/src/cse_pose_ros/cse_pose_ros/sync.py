"""ROS glue of the approximate-time synchroniser: message_filters-style subscribers and synchroniser.

The pairing policy itself is ROS-free (:class:`cse_pose.sync.ApproximatePolicy`, documented there with
how it differs from message_filters'). :func:`make_synchronizer` uses ``message_filters.ApproximateTimeSynchronizer``
when it is importable and preferred (full ROS installs) and the :class:`ApproximateTimeSynchronizer` of
this module otherwise (pip-only installs); this one has the same constructor and ``registerCallback`` API
and counts every dropped message per input with a reason (:attr:`ApproximateTimeSynchronizer.drop_counts`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from cse_pose.sync import DROP_NO_HEADER, ApproximatePolicy, stamp_ns

__all__ = ["ApproximateTimeSynchronizer", "SimpleFilter", "Subscriber", "make_subscriber", "make_synchronizer",
           "stamp_ns"]

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
    """In-package stand-in for ``message_filters.ApproximateTimeSynchronizer`` (same constructor/API).

    Args:
        fs: input filters (e.g. :class:`Subscriber`), one per synchronised topic.
        queue_size: messages kept per input.
        slop: largest allowed stamp spread of a set, seconds.
        allow_headerless: accepted for API compatibility; messages without a header are dropped and
            counted (``no_header``) either way.
    """

    def __init__(
        self, fs: Sequence[Any], queue_size: int, slop: float, allow_headerless: bool = False
    ) -> None:
        super().__init__()
        self.policy = ApproximatePolicy(max(1, len(fs)), queue_size, round(float(slop) * 1e9))
        self.names = [str(getattr(f, "topic", i)) for i, f in enumerate(fs)]
        self.allow_headerless = allow_headerless
        self.lock = threading.Lock()
        self.input_connections: list[int] = []
        if fs:
            self.connectInput(fs)

    def connectInput(self, fs: Sequence[Any]) -> None:  # noqa: N802 - message_filters API
        """Register on every input filter's callbacks."""
        if len(fs) != len(self.policy.queues):
            self.policy = ApproximatePolicy(len(fs), self.policy.queue_size, self.policy.slop_ns)
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
            msgs = self.policy.add(index, stamp, msg)
        if msgs is not None:
            self.signalMessage(*msgs)

    @property
    def drop_counts(self) -> dict[str, dict[str, int]]:
        """Dropped messages so far: input name (topic) -> reason -> count."""
        with self.lock:
            return {name: dict(c) for name, c in zip(self.names, self.policy.drops, strict=True)}

    @property
    def emitted(self) -> int:
        """Number of sets delivered so far."""
        return self.policy.emitted


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
    node: Any, subscribers: Sequence[Any], queue_size: int, slop: float, prefer_message_filters: bool = True
) -> Any:
    """An approximate-time synchroniser over ``subscribers``.

    Uses ``message_filters.ApproximateTimeSynchronizer`` when importable and preferred (the subscribers
    must then be message_filters ones, see :func:`make_subscriber`), else the in-package
    :class:`ApproximateTimeSynchronizer` (which also exposes ``drop_counts``). ``node`` is kept for
    API symmetry and logging.
    """
    in_package = all(isinstance(s, SimpleFilter) for s in subscribers)
    if prefer_message_filters and have_message_filters() and not in_package:
        import message_filters

        return message_filters.ApproximateTimeSynchronizer(list(subscribers), queue_size, slop)
    sync = ApproximateTimeSynchronizer(list(subscribers), queue_size, slop)
    if node is not None and hasattr(node, "get_logger"):
        node.get_logger().debug(f"in-package ApproximateTimeSynchronizer (queue {queue_size}, slop {slop} s)")
    return sync
