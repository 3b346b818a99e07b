"""Frame statistics of the node and their ``diagnostic_msgs/DiagnosticArray`` form.

:class:`FrameStats` is plain Python: counters (frames received / processed / rejected, poses published,
one counter per skip reason), a sliding window of per-stage latencies (milliseconds; the p50 is
reported) and of processing times (for the rate). :func:`build_status` turns a snapshot into one
``DiagnosticStatus`` whose key/value pairs are stable names a test or a dashboard can read:

``rate_hz``, ``frames_received``, ``frames_processed``, ``frames_rejected``, ``poses_published``,
``instances_untrusted``, ``skip.<reason>`` (frames or instances skipped for that reason),
``latency_p50_ms.<stage>`` (stages decode, crop, model, select, solve, pose, refine, publish, total),
``model.<category>`` and anything passed as ``extra``. The pose node's extras: ``input_messages.<input>``,
``frames_not_served_in_a_row`` (RGB messages since the last served frame; ``warn_after_skipped_frames`` of
them turn the level WARN), ``sync_dropped.<input>[.<reason>]`` (reasons in :mod:`cse_pose.sync`),
``time_jumps`` and ``last_time_jump``, ``camera.rectified`` (the CameraInfo has lens distortion that the node
undoes) and ``model_error``.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

STAGES = ("decode", "crop", "model", "select", "lift", "solve", "pose", "refine", "publish", "total")
"""Latency stages reported (in this order); unknown stage names from the pipeline are appended."""

OK, WARN, ERROR = 0, 1, 2
"""Status levels as ints (the message constants are one-byte ``bytes``)."""


class FrameStats:
    """Counters and sliding windows of the node (all times in seconds, latencies in ms).

    ``window``: number of recent frames kept for the rate and the latency medians.
    """

    def __init__(self, window: int = 100) -> None:
        self.window = int(window)
        self.received = 0
        self.processed = 0
        self.rejected = 0
        self.poses_published = 0
        self.instances_untrusted = 0
        self.reasons: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {s: deque(maxlen=self.window) for s in STAGES}
        self._done_at: deque[float] = deque(maxlen=self.window)
        self.last_reason = ""
        #: the per-stage timings (ms) of the last processed frame
        self.last_ms: dict[str, float] = {}

    def frame_received(self) -> None:
        """A synchronised frame entered the callback."""
        self.received += 1

    def frame_rejected(self, reason: str) -> None:
        """The whole frame was skipped for ``reason`` (nothing published for it)."""
        self.rejected += 1
        self.reasons[reason] += 1
        self.last_reason = reason

    def instance_skipped(self, reason: str) -> None:
        """One instance of a served frame got no published pose, for ``reason``."""
        self.instances_untrusted += 1
        self.reasons[reason] += 1
        self.last_reason = reason

    def frame_processed(self, timings_ms: Mapping[str, float], poses: int, now_s: float | None = None) -> None:
        """A frame went through the pipeline; ``timings_ms`` per stage, ``poses`` trusted poses published."""
        self.processed += 1
        self.poses_published += int(poses)
        self.last_ms = dict(timings_ms)
        for stage, ms in timings_ms.items():
            if stage not in self._latency:
                self._latency[stage] = deque(maxlen=self.window)
            self._latency[stage].append(float(ms))
        self._done_at.append(time.monotonic() if now_s is None else now_s)

    def rate_hz(self, now_s: float | None = None, horizon_s: float = 5.0) -> float:
        """Processed frames per second over the last ``horizon_s`` seconds (0 when idle)."""
        now = time.monotonic() if now_s is None else now_s
        recent = [t for t in self._done_at if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        span = now - recent[0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def latency_p50_ms(self) -> dict[str, float]:
        """Median latency (ms) per stage over the window, for stages with at least one sample."""
        return {s: float(np.median(v)) for s, v in self._latency.items() if len(v)}


def build_status(stats: FrameStats, *, name: str, hardware_id: str, level: int | bytes, message: str,
                 models: Mapping[str, str] | None = None, extra: Mapping[str, object] | None = None,
                 now_s: float | None = None) -> DiagnosticStatus:
    """One ``DiagnosticStatus`` with the key/value pairs listed in the module docstring."""
    values = [
        KeyValue(key="rate_hz", value=f"{stats.rate_hz(now_s):.2f}"),
        KeyValue(key="frames_received", value=str(stats.received)),
        KeyValue(key="frames_processed", value=str(stats.processed)),
        KeyValue(key="frames_rejected", value=str(stats.rejected)),
        KeyValue(key="poses_published", value=str(stats.poses_published)),
        KeyValue(key="instances_untrusted", value=str(stats.instances_untrusted)),
    ]
    values += [KeyValue(key=f"skip.{r}", value=str(n)) for r, n in sorted(stats.reasons.items())]
    values += [KeyValue(key=f"latency_p50_ms.{s}", value=f"{ms:.2f}")
               for s, ms in stats.latency_p50_ms().items()]
    values += [KeyValue(key=f"model.{c}", value=str(v)) for c, v in sorted((models or {}).items())]
    values += [KeyValue(key=str(k), value=str(v)) for k, v in (extra or {}).items()]
    return DiagnosticStatus(level=level if isinstance(level, bytes) else bytes([level]), name=name,
                            message=message, hardware_id=hardware_id, values=values)


def build_array(status: DiagnosticStatus, stamp) -> DiagnosticArray:
    """``DiagnosticArray`` holding ``status``, stamped ``stamp`` (builtin_interfaces/Time)."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [status]
    return msg


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """{key: value} of a status (convenience for tests and the demo)."""
    return {kv.key: kv.value for kv in status.values}


def level_of(status: DiagnosticStatus) -> int:
    """The status level as an int (the message field is a one-byte ``bytes``)."""
    lv = status.level
    return lv[0] if isinstance(lv, bytes | bytearray) else int(lv)
