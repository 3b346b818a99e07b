"""Approximate-time synchronisation of RGB, depth, mask and CameraInfo (DESIGN section 3, step 1).

:func:`make_synchronizer` uses ``message_filters.ApproximateTimeSynchronizer`` when it is importable
(full ROS installs) and the in-package :class:`ApproximateTimeSynchronizer` otherwise (pip-only
installs). The in-package one has the same constructor and ``registerCallback`` API, and the same
policy as message_filters' ApproximateTime:

* one queue per input, at most ``queue_size`` messages each (the oldest is dropped on overflow);
* when a message arrives, the set of one message per input that contains it and whose stamps lie within
  ``slop`` seconds of each other (max - min <= slop) is looked for among the queued messages; the set
  with the smallest spread is emitted;
* after a set is emitted, its messages and every older queued message are removed (they could only form
  sets older than the one just delivered), and a message older than the last emitted set is refused.

Unlike message_filters, every dropped message is counted per input with a reason
(:attr:`ApproximateTimeSynchronizer.drop_counts`), so the node can report why frames were lost.
The policy (:class:`ApproximatePolicy`) is pure Python: tests feed stamped fake messages, no ROS graph.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

#: Reasons for a dropped message.
DROP_QUEUE_OVERFLOW = "queue_overflow"
DROP_SUPERSEDED = "superseded"  # older than a set that was emitted
DROP_LATE = "late"  # arrived after a newer set had been emitted
DROP_NO_HEADER = "no_header"
DROP_DUPLICATE = "duplicate_stamp"  # a second message with the same stamp replaced the first


def stamp_ns(msg: Any) -> int:
    """``msg.header.stamp`` as integer nanoseconds (``builtin_interfaces/Time`` or rclpy ``Time``).

    Raises:
        AttributeError: the message has no header stamp.
    """
    stamp = msg.header.stamp
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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


class ApproximatePolicy:
    """The matching policy, independent of ROS: ``add(index, stamp_ns, msg)`` -> emitted set or None.

    Args:
        num_inputs: number of synchronised inputs.
        queue_size: messages kept per input.
        slop_ns: largest allowed spread of the stamps in a set, nanoseconds.
    """

    def __init__(self, num_inputs: int, queue_size: int, slop_ns: int) -> None:
        if num_inputs < 1:
            raise ValueError(f"need at least one input, got {num_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        self.queue_size = int(queue_size)
        self.slop_ns = int(slop_ns)
        self.queues: list[dict[int, Any]] = [{} for _ in range(num_inputs)]
        self.drops: list[Counter[str]] = [Counter() for _ in range(num_inputs)]
        self.emitted = 0
        self.last_emitted_ns: int | None = None  # oldest stamp of the last emitted set

    def add(self, index: int, stamp: int, msg: Any) -> list[Any] | None:
        """Queue ``msg`` (input ``index``, stamp in ns); return the messages of a completed set, if any."""
        if self.last_emitted_ns is not None and stamp < self.last_emitted_ns:
            self.drops[index][DROP_LATE] += 1
            return None
        queue = self.queues[index]
        if stamp in queue:  # same stamp twice on one input: the newer message replaces the older
            self.drops[index][DROP_DUPLICATE] += 1
        queue[stamp] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self.drops[index][DROP_QUEUE_OVERFLOW] += 1
        stamps = self._best_set(index, stamp)
        if stamps is None:
            return None
        msgs = [q.pop(s) for q, s in zip(self.queues, stamps, strict=True)]
        oldest = min(stamps)
        for i, (q, s) in enumerate(zip(self.queues, stamps, strict=True)):
            for old in [t for t in q if t < s]:
                del q[old]
                self.drops[i][DROP_SUPERSEDED] += 1
        self.emitted += 1
        self.last_emitted_ns = oldest
        return msgs

    def _best_set(self, index: int, stamp: int) -> list[int] | None:
        """Stamps (one per input, ``stamp`` for input ``index``) with spread <= slop and minimal spread."""
        candidates: list[list[int]] = []
        for i, q in enumerate(self.queues):
            if i == index:
                candidates.append([stamp])
                continue
            near = sorted((t for t in q if abs(t - stamp) <= self.slop_ns), key=lambda t: abs(t - stamp))
            if not near:
                return None
            candidates.append(near)
        best, best_spread = None, None
        for combo in itertools.product(*candidates):
            spread = max(combo) - min(combo)
            if spread <= self.slop_ns and (best_spread is None or spread < best_spread):
                best, best_spread = list(combo), spread
                if spread == 0:
                    break
        return best


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
