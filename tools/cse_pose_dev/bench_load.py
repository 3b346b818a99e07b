"""Load test of ``make bench``: the node process fed over DDS at a camera rate it cannot keep up with.

:func:`run_load_test` starts ``python -m cse_pose_ros`` (node defaults; ``model_dir``/``category`` given) on a
private DDS domain with the large shared-memory Fast DDS profile, publishes one frame (the four input
messages, re-stamped with the wall clock at every send) at each requested rate for a fixed time, and listens
to ``~/poses``: the node publishes one PoseArray per frame it serves, stamped with the frame's stamp. Per
rate it reports the frames sent, served and dropped, the served rate, the stamp-to-pose latency (arrival of
the PoseArray in this process minus the frame stamp: queueing + processing + both DDS hops) and the node's
own counters from ``/diagnostics`` (``frames_dropped_stale``: sets the newest-frame-first slot replaced).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ros_io import large_frames_env, probe_node, ros_env, stamp_seconds, start_node, stop_process, time_msg

NODE = "cse_pose_node"
#: Input topics of the node (relative names, as it subscribes them).
INPUT_TOPICS = ("rgb/image", "depth/image", "mask/image", "rgb/camera_info")
#: Node counters read from /diagnostics at the start and end of each phase.
DIAG_KEYS = ("frames_received", "frames_processed", "frames_rejected", "frames_dropped_stale")


@dataclass
class LoadResult:
    """One phase at one camera rate. Latencies in ms; counts of frames."""

    rate_hz: float
    seconds: float
    sent: int
    served: int
    latencies_ms: list[float] = field(default_factory=list)
    node_counts: dict[str, int] = field(default_factory=dict)
    node_ms: dict[str, float] = field(default_factory=dict)
    node_cpu_s: float = float("nan")

    @property
    def dropped(self) -> int:
        return self.sent - self.served

    def row(self) -> dict[str, float]:
        p50, p95 = (np.percentile(self.latencies_ms, [50, 95]) if self.latencies_ms else (np.nan, np.nan))
        return {
            "rate_hz": self.rate_hz,
            "sent_hz": self.sent / self.seconds,
            "served_hz": self.served / self.seconds,
            "sent": self.sent,
            "served": self.served,
            "dropped_pct": 100.0 * self.dropped / max(self.sent, 1),
            "stale": self.node_counts.get("frames_dropped_stale", -1),
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "max_ms": float(max(self.latencies_ms)) if self.latencies_ms else float("nan"),
            "node_cpu_pct": 100.0 * self.node_cpu_s / self.seconds,
        }


def format_load_table(results: Sequence[LoadResult]) -> str:
    """One line per phase: requested and achieved send rate, served rate, drops, latency percentiles."""
    head = (f"{'camera':>8} {'sent Hz':>8} {'served Hz':>9} {'sent':>5} {'served':>6} {'dropped':>8} "
            f"{'stale':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'node CPU':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        v = r.row()
        stale = f"{int(v['stale']):>6}" if v["stale"] >= 0 else f"{'-':>6}"
        lines.append(f"{v['rate_hz']:>6.0f}Hz {v['sent_hz']:>8.1f} {v['served_hz']:>9.1f} {int(v['sent']):>5} "
                     f"{int(v['served']):>6} {v['dropped_pct']:>7.0f}% {stale} {v['p50_ms']:>7.0f} "
                     f"{v['p95_ms']:>7.0f} {v['max_ms']:>7.0f} {v['node_cpu_pct']:>7.0f}%")
    return "\n".join(lines)


class _Probe:
    """Publishers of the node's inputs and listeners of its poses and diagnostics, on one rclpy node."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        self.node = node
        types = (Image, Image, Image, CameraInfo)
        self.pubs = [node.create_publisher(t, f"/{name}", qos_profile_sensor_data)
                     for t, name in zip(types, INPUT_TOPICS, strict=True)]
        self.arrivals: list[tuple[float, float]] = []  # (frame stamp s, arrival s)
        self.diag: dict[str, str] = {}
        self.diag_count = 0
        node.create_subscription(PoseArray, f"/{NODE}/poses", self._on_poses, QoSProfile(depth=50))
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, QoSProfile(depth=10))
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)

    def _on_poses(self, msg: Any) -> None:
        self.arrivals.append((stamp_seconds(msg.header.stamp), time.time()))

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if NODE in status.name:
                self.diag = {kv.key: kv.value for kv in status.values}
                self.diag_count += 1

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def spin_until(self, cond: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return cond()

    def send(self, msgs: Sequence[Any], stamp_s: float) -> None:
        stamp = time_msg(stamp_s)
        for pub, msg in zip(self.pubs, msgs, strict=True):
            msg.header.stamp = stamp
            pub.publish(msg)

    def stage_ms(self) -> dict[str, float]:
        """The node's per-stage p50 latencies (ms, over its ``stats_window``) from the newest diagnostics."""
        prefix = "latency_p50_ms."
        return {k[len(prefix):]: float(v) for k, v in self.diag.items() if k.startswith(prefix)}

    def counts(self) -> dict[str, int]:
        """The node's counters of :data:`DIAG_KEYS` from the newest diagnostics (absent: not counted)."""
        return {k: int(self.diag[k]) for k in DIAG_KEYS if k in self.diag}

    def fresh_counts(self, timeout_s: float = 3.0) -> dict[str, int]:
        """Counters of a diagnostics message sent after this call (the node publishes them at ~1 Hz)."""
        n = self.diag_count
        self.spin_until(lambda: self.diag_count >= n + 2, timeout_s)  # +2: the first may predate the call
        return self.counts()

    def close(self) -> None:
        self.executor.shutdown()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _phase(probe: _Probe, msgs: Sequence[Any], rate_hz: float, seconds: float, pid: int) -> LoadResult:
    """Send at ``rate_hz`` for ``seconds`` (spinning the listeners in between), then wait for the tail."""
    before = probe.fresh_counts()
    cpu0 = cpu_seconds(pid)
    first = len(probe.arrivals)
    period = 1.0 / rate_hz
    sent: set[float] = set()
    t0 = time.monotonic()
    next_t = t0
    while next_t < t0 + seconds:
        wait = next_t - time.monotonic()
        if wait > 0:
            probe.executor.spin_once(timeout_sec=wait)
            continue
        stamp = time.time()
        probe.send(msgs, stamp)
        sent.add(round(stamp, 6))
        next_t += period
        if next_t < time.monotonic() - period:  # cannot keep up: send as fast as possible, no burst later
            next_t = time.monotonic()
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    # the tail: frames still in flight are served (or dropped) within a few processing times
    last = [len(probe.arrivals)]

    def settled() -> bool:
        done = len(probe.arrivals) == last[0]
        last[0] = len(probe.arrivals)
        return done

    probe.spin_for(0.5)
    while not settled():
        probe.spin_for(0.5)
    after = probe.fresh_counts()
    ours = [(s, a) for s, a in probe.arrivals[first:] if round(s, 6) in sent]
    result = LoadResult(rate_hz, elapsed, len(sent), len(ours), [1e3 * (a - s) for s, a in ours])
    result.node_counts = {k: after[k] - before.get(k, 0) for k in after}
    result.node_ms = probe.stage_ms()
    result.node_cpu_s = cpu
    return result


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def run_load_test(
    msgs: Sequence[Any],
    rates_hz: Sequence[float],
    seconds: float,
    models_dir: Path,
    category: str,
    work_dir: Path,
    log_path: Path | None = None,
    node_params: Sequence[str] = (),
    node_module: str = "cse_pose_ros",
    progress: Callable[[str], None] | None = None,
) -> tuple[list[LoadResult], list[str]]:
    """Start the node, warm it up, run one phase per rate. Returns (results, notes for the header).

    ``msgs``: (rgb Image, depth Image, mask Image, CameraInfo) of the frame sent every time.
    ``work_dir``: where the Fast DDS profile (and by default the node's log) is written; it must outlive
    this process's rclpy use (the profile is named in ``os.environ`` for this process's participants).
    ``node_params``: extra ``name:=value`` parameters of the node. ``node_module``: what ``python -m`` runs.
    Raises:
        RuntimeError: the node did not come up or never served the warm-up frames (its log is named).
    """
    domain = 120 + os.getpid() % 50
    work_dir.mkdir(parents=True, exist_ok=True)
    env = ros_env(domain, large_frames_env())
    # this process publishes the frames: its participants need the large shared-memory profile too (set it
    # before this process creates its first participant, as make bench does; here for direct callers)
    for key in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        if key in env and key not in os.environ:
            os.environ[key] = env[key]
    log_path = log_path or work_dir / "load_test_node.log"
    params = [f"model_dir:={models_dir}", f"category:={category}", *node_params]
    args = [x for p in params for x in ("-p", p)]
    proc = start_node(args, env, log_path, module=node_module)
    notes = [f"node: python -m {node_module}, DDS domain {domain}, parameters {' '.join(params)}; log {log_path}"]
    results: list[LoadResult] = []
    try:
        with probe_node("cse_pose_load_probe", domain) as node:
            probe = _Probe(node)
            try:
                if not probe.spin_until(lambda: all(p.get_subscription_count() > 0 for p in probe.pubs)
                                        and node.count_publishers(f"/{NODE}/poses") > 0, 60.0):
                    raise RuntimeError(f"the node did not subscribe within 60 s; its log {log_path} ends:\n"
                                       + _tail(log_path))
                if progress:
                    progress("load test: node up, warming up at 2 Hz until 3 frames are served ...")
                deadline = time.monotonic() + 30.0  # first frames: model warm-up, discovery of every endpoint
                while time.monotonic() < deadline:
                    probe.send(msgs, time.time())
                    if probe.spin_until(lambda: len(probe.arrivals) >= 3, 0.5):
                        break
                if not probe.arrivals:
                    raise RuntimeError(f"the node served no warm-up frame in 30 s (if its log shows only the small "
                                       "inputs arriving, this process made a DDS participant before the large-"
                                       "frames profile was set, and its 640x480 images went over UDP); its log "
                                       f"{log_path} ends:\n" + _tail(log_path))
                probe.spin_for(1.0)
                for rate in rates_hz:
                    if progress:
                        progress(f"load test: {rate:.0f} Hz for {seconds:.0f} s ...")
                    results.append(_phase(probe, msgs, float(rate), seconds, proc.pid))
            finally:
                probe.close()
    finally:
        code = stop_process(proc, timeout_s=15.0)
        notes.append(f"node exit status after SIGINT: {code}")
    return results, notes
