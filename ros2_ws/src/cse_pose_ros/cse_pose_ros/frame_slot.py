"""Newest frame first: a one-slot mailbox between the synchroniser and one worker thread.

Under overload (frames arrive faster than the pipeline serves them) a FIFO serves every frame late: with a
5-deep subscription queue and 200 ms per frame, each served frame had waited about a second. Here the
synchroniser callback only stores its set in :class:`FrameWorker`'s slot, replacing (and counting, as
:attr:`FrameWorker.dropped`) a set that was not taken yet, and returns at once; the worker thread always takes
the newest set. Latency then stays near one processing time plus at most one frame period, whatever the
camera rate, and the executor thread stays free to take messages off the middleware as they arrive (so they
do not age in the subscription queue either: :func:`input_qos` keeps that queue short).

Periodic work that reads what the frame handler writes (the node's diagnostics) is handed to the same thread
with :meth:`FrameWorker.call_soon`, so the handler's state needs no lock. ROS-free except :func:`input_qos`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger(__name__)

#: History depth of each input subscription: the newest message plus one that may still pair with a
#: late partner. Deeper queues only hold stale frames (the synchroniser keeps its own, ``sync_queue_size``).
INPUT_QUEUE_DEPTH = 2

#: Diagnostics key of :attr:`FrameWorker.dropped`.
DROPPED_KEY = "frames_dropped_stale"


def input_qos(depth: int = INPUT_QUEUE_DEPTH) -> Any:
    """The sensor-data QoS profile (best effort, volatile) with history ``depth``."""
    from rclpy.qos import QoSProfile, qos_profile_sensor_data

    return QoSProfile(history=qos_profile_sensor_data.history, depth=int(depth),
                      reliability=qos_profile_sensor_data.reliability,
                      durability=qos_profile_sensor_data.durability)


class FrameWorker:
    """One worker thread that serves the newest submitted frame; older unserved frames are dropped.

    Args:
        handler: called as ``handler(*frame)`` in the worker thread, one frame at a time. Exceptions are
            caught and logged (the thread survives).
        name: thread name.

    The thread starts with the first :meth:`submit` or :meth:`call_soon` and ends in :meth:`stop`
    (it is a daemon thread as well, so an owner that never calls ``stop`` cannot keep the process alive).
    """

    def __init__(self, handler: Callable[..., Any], name: str = "cse_pose_frames") -> None:
        self._handler = handler
        self._name = name
        self._cond = threading.Condition()
        self._frame: tuple[Any, ...] | None = None
        self._jobs: dict[Callable[[], Any], None] = {}  # insertion-ordered set, coalesces repeats
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        self.submitted = 0
        self.dropped = 0
        self.served = 0

    # -- producer side (any thread) ------------------------------------------------------------------
    def submit(self, *frame: Any) -> None:
        """Offer one frame (e.g. the synchroniser's message set). Replaces, and counts as dropped, a
        frame still waiting in the slot. Ignored after :meth:`stop`. Returns at once."""
        with self._cond:
            if self._stopping:
                return
            self.submitted += 1
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._start_locked()
            self._cond.notify()

    def call_soon(self, job: Callable[[], Any]) -> None:
        """Run ``job()`` in the worker thread before its next frame (a job already pending is not queued
        twice). Ignored after :meth:`stop`."""
        with self._cond:
            if self._stopping:
                return
            self._jobs[job] = None
            self._start_locked()
            self._cond.notify()

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> bool:
        """True while a frame waits in the slot or is being handled."""
        with self._cond:
            return self._frame is not None or self._busy

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Discard the waiting frame and jobs, let the frame in progress finish, join the thread.

        Returns True when no worker thread is left running (False: the handler did not return within
        ``timeout_s``). Safe to call more than once and from the worker thread itself (then it does not join).
        """
        with self._cond:
            self._stopping = True
            self._frame = None
            self._jobs.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True  # never started, or called by the handler: the loop returns after this frame
        try:
            thread.join(timeout_s)
        except RuntimeError:  # a Ctrl-C inside Thread.start() left it unstarted: if it ever runs, it stops at once
            return True
        return not thread.is_alive()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no frame waits or is being handled (tests, shutdown). Returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: (self._frame is None and not self._busy and not self._jobs)
                                       or self._stopping, timeout_s)

    # -- the thread --------------------------------------------------------------------------------------
    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # wake wait_idle
                self._cond.wait_for(lambda: self._stopping or self._frame is not None or bool(self._jobs))
                if self._stopping:
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
                frame, self._frame = self._frame, None
                self._busy = True
            for job in jobs:
                self._call(job)
            if frame is not None:
                self._call(self._handler, *frame)
                self.served += 1

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the worker must survive any handler failure
            LOG.exception("frame worker: %s raised", getattr(fn, "__name__", fn))
