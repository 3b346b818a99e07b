"""The approximate-time pairing policy of RGB, depth, mask and CameraInfo, ROS-free.

One implementation serves the node (through the thin ROS glue of ``cse_pose_ros.sync``) and offline tools
that read recorded streams, so both pair frames the same way. :class:`ApproximatePolicy`:

* one queue per input, at most ``queue_size`` messages each (the oldest is dropped on overflow);
* when a message arrives, among the queued messages of the other inputs it looks for the set of one
  message per input that contains the new one and whose stamps lie within ``slop`` of each other
  (``max - min <= slop``); the set with the smallest spread is emitted;
* after a set is emitted, its messages and every older queued message are removed (they could only form
  sets older than the one just delivered), and a message older than the last emitted set is refused
  (``late``), so sets come out in stamp order;
* time jumps: a stamp more than ``jump_threshold`` before the newest stamp seen (a clock that jumped
  back, a bag that looped, a camera that reset, or the return to real time after a message stamped far in
  the future) restarts the policy (a stamp ahead, e.g. after a pause, does not): queued messages of the
  old timeline are dropped (``time_jump``), the stamp order starts again from the new stamp, and
  :attr:`ApproximatePolicy.last_jump` records it. So a bogus stamp blocks serving for at most
  ``jump_threshold`` of stream time instead of until real stamps catch up with it.

The property every synchroniser of the node must have (the shared test suite checks it against this policy
and ``message_filters.ApproximateTimeSynchronizer``): messages whose stamps are more than ``slop`` apart are
never emitted together. Where this policy differs from message_filters' (ROS 2 Jazzy, Python):
message_filters accepts a spread strictly below the slop (``< slop``, so ``slop = 0`` never pairs), emits the
first set in stamp-distance order rather than the one of smallest spread, keeps older unpaired messages
queued (they may pair later, and sets may come out of stamp order), has no notion of time jumps and counts
nothing. Every message this policy drops is counted per input with a reason
(:attr:`ApproximatePolicy.drops`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: Reasons for a dropped message.
DROP_QUEUE_OVERFLOW = "queue_overflow"
DROP_SUPERSEDED = "superseded"  # older than a set that was emitted
DROP_LATE = "late"  # arrived after a newer set had been emitted
DROP_NO_HEADER = "no_header"  # (counted by the ROS glue)
DROP_DUPLICATE = "duplicate_stamp"  # a second message with the same stamp replaced the first
DROP_TIME_JUMP = "time_jump"  # queued on the old timeline when the stamps jumped

#: Default of ``jump_threshold_ns``: 1 s.
DEFAULT_JUMP_THRESHOLD_NS = 1_000_000_000


def stamp_ns(msg: Any) -> int:
    """``msg.header.stamp`` as integer nanoseconds (``builtin_interfaces/Time`` or rclpy ``Time``).

    Raises:
        AttributeError: the message has no header stamp.
    """
    stamp = msg.header.stamp
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(frozen=True)
class TimeJump:
    """One restart of the policy: input ``index`` brought ``stamp_ns``, ``delta_ns`` from the newest stamp
    seen before (negative: backwards); ``dropped`` queued messages of the old timeline were discarded."""

    index: int
    stamp_ns: int
    delta_ns: int
    dropped: int

    def describe(self, names: list[str] | None = None) -> str:
        """One line for a log or diagnostics: which input, how far, which way."""
        name = names[self.index] if names else f"input {self.index}"
        way = "back" if self.delta_ns < 0 else "ahead"
        return f"stamp of {name} jumped {way} {abs(self.delta_ns) / 1e9:.3f} s"


class ApproximatePolicy:
    """The matching policy, independent of ROS: ``add(index, stamp_ns, msg)`` -> emitted set or None.

    Args:
        num_inputs: number of synchronised inputs.
        queue_size: messages kept per input.
        slop_ns: largest allowed spread of the stamps in a set, nanoseconds.
        jump_threshold_ns: a stamp this far (ns) before the newest stamp seen restarts the policy
            (see the module docstring); None: never.
    """

    def __init__(self, num_inputs: int, queue_size: int, slop_ns: int,
                 jump_threshold_ns: int | None = DEFAULT_JUMP_THRESHOLD_NS) -> None:
        if num_inputs < 1:
            raise ValueError(f"need at least one input, got {num_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        if jump_threshold_ns is not None and jump_threshold_ns <= slop_ns:
            raise ValueError(f"jump threshold ({jump_threshold_ns} ns) must exceed the slop ({slop_ns} ns)")
        self.queue_size = int(queue_size)
        self.slop_ns = int(slop_ns)
        self.jump_threshold_ns = None if jump_threshold_ns is None else int(jump_threshold_ns)
        self.queues: list[dict[int, Any]] = [{} for _ in range(num_inputs)]
        self.drops: list[Counter[str]] = [Counter() for _ in range(num_inputs)]
        self.emitted = 0
        self.last_emitted_ns: int | None = None  # oldest stamp of the last emitted set
        self.newest_ns: int | None = None  # newest stamp accepted since the last restart
        self.latest_ns: list[int | None] = [None] * num_inputs  # stamp of the last message of each input
        self.jump_count = 0  # restarts so far
        self.last_jump: TimeJump | None = None

    def add(self, index: int, stamp: int, msg: Any) -> list[Any] | None:
        """Queue ``msg`` (input ``index``, stamp in ns); return the messages of a completed set, if any."""
        self.latest_ns[index] = stamp
        self._check_jump(index, stamp)
        if self.last_emitted_ns is not None and stamp < self.last_emitted_ns:
            self.drops[index][DROP_LATE] += 1
            return None
        self.newest_ns = stamp if self.newest_ns is None else max(self.newest_ns, stamp)
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

    def restart(self) -> int:
        """Forget the stamp order and every queued message (counted ``time_jump``); returns how many."""
        dropped = 0
        for i, q in enumerate(self.queues):
            if q:
                self.drops[i][DROP_TIME_JUMP] += len(q)
                dropped += len(q)
                q.clear()
        self.last_emitted_ns = None
        self.newest_ns = None
        return dropped

    def _check_jump(self, index: int, stamp: int) -> None:
        """Restart (and record a :class:`TimeJump`) when ``stamp`` is off the current timeline."""
        if self.jump_threshold_ns is None or self.newest_ns is None:
            return
        delta = stamp - self.newest_ns
        if delta >= -self.jump_threshold_ns:
            # Only a jump back restarts: stamps ahead (a pause in the stream, a clock stepped forward, one
            # frame stamped in the future) pair normally, and the return to real time after a bogus future
            # stamp is itself a jump back.
            return
        self.last_jump = TimeJump(index, stamp, delta, self.restart())
        self.jump_count += 1

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
