"""``tabletop_mask_node``: instance masks from depth alone, for users without a trained segmenter.

Wraps :mod:`cse_pose.tabletop` (the algorithm and its parameters are documented there): it subscribes
``depth/image`` (16UC1 mm or 32FC1 m, registered to the RGB image) and ``depth/camera_info`` and publishes
``mask/image`` (mono8 or mono16 instance ids, 0 = background) with the depth image's header, so the pose
node's synchroniser pairs it with the RGB/depth frame it came from. Every instance is meant to be of the
``category`` parameter's class (the pose node must be started with the same ``category``). Entry point
``tabletop_mask_node``, or ``python -m cse_pose_ros.tabletop_mask``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields

import numpy as np
from rclpy.node import Node

from cse_pose.core.categories import CATEGORIES
from cse_pose.tabletop import (
    PARAM_HELP,
    REASON_NO_OBJECTS,
    REASON_NO_PLANE,
    REASON_NO_VALID_DEPTH,
    TablePlane,
    TabletopParams,
    segment_tabletop,
)

from .runner import sigint_deferred

NODE_NAME = "tabletop_mask_node"
MASK_ENCODINGS = ("mono8", "mono16")

NODE_PARAM_HELP: dict[str, tuple[object, str]] = {
    # name: (default, description); the TabletopParams fields are declared besides these
    "category": ("", "Category of every object found (one of " + ", ".join(CATEGORIES) + ", or empty): "
                     "informational here; start the pose node with the same 'category'."),
    "mask_encoding": ("mono8", "Encoding of the published mask: mono8 (<= 255 instances) or mono16."),
    "log_throttle_s": (5.0, "An empty-mask reason is logged at most once per this period (s)."),
    "diagnostics_period_s": (1.0, "Period (s) of /diagnostics messages."),
}
_READ_ONLY = ("category", "diagnostics_period_s")


def open3d_problem() -> str:
    """Empty when open3d imports; otherwise one line: why not, and how to install it.

    The plane fit needs open3d; without this check the node would start, log that it is ready and then
    skip every frame.
    """
    try:
        with sigint_deferred():  # a Ctrl-C inside open3d's module init would break it (see there)
            import open3d  # noqa: F401
    except (ImportError, OSError) as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        return (f"open3d is not importable ({why}); the tabletop mask source needs it: pip install open3d "
                "(on Linux also apt-get install libgl1 libgomp1), or use mask_source:=external with your own "
                "segmenter")
    return ""


def params_from_values(values: dict[str, object]) -> tuple[TabletopParams, str, str]:
    """(TabletopParams, mask encoding, category) from node parameter values; raises ValueError if invalid."""
    names = {f.name for f in fields(TabletopParams)}
    params = TabletopParams(**{k: v for k, v in values.items() if k in names})
    encoding = str(values.get("mask_encoding", "mono8"))
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask_encoding={encoding!r} is not one of {'|'.join(MASK_ENCODINGS)}")
    if encoding == "mono8" and params.max_instances > 255:
        raise ValueError(f"mask_encoding=mono8 carries at most 255 instances, "
                         f"max_instances={params.max_instances}")
    category = str(values.get("category", ""))
    if category and category not in CATEGORIES:
        raise ValueError(f"category={category!r} is not one of {', '.join(CATEGORIES)} (or empty)")
    return params, encoding, category


class TabletopMaskNode(Node):
    """``tabletop_mask_node``: depth (+ CameraInfo) in, instance mask out (see the module docstring).

    Subscribes ``depth/image`` (16UC1 mm / 32FC1 m, keep-last 2, best effort: the latest frames are
    served, older ones dropped while busy) and ``depth/camera_info``; publishes ``mask/image``
    (mono8/mono16, header = the depth image's) for every depth frame it serves, empty when nothing stands
    on a table, and ``/diagnostics`` (rate, latency, one counter per empty-mask reason).
    Every :class:`TabletopParams` field is a parameter that can be changed at run time.
    """

    def __init__(self, **kwargs) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        from . import diagnostics as diag

        problem = open3d_problem()
        if problem:
            raise ValueError(problem)  # run_node: one fatal line, exit status 2
        super().__init__(NODE_NAME, **kwargs)
        specs = [(name, default, help_, name in _READ_ONLY)
                 for name, (default, help_) in NODE_PARAM_HELP.items()]
        specs += [(f.name, f.default, PARAM_HELP[f.name], False) for f in fields(TabletopParams)]
        self.declare_parameters("", [(name, default, ParameterDescriptor(description=help_, read_only=ro))
                                     for name, default, help_, ro in specs])
        self._values = {name: self.get_parameter(name).value for name, *_ in specs}
        self._params, self._encoding, self._category = params_from_values(self._values)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._diag = diag
        self._stats = diag.FrameStats(100)
        self._instances = 0
        self._info: tuple[np.ndarray, tuple[int, int]] | None = None
        self._last_plane: TablePlane | None = None
        self._loggers: dict[str, object] = {}
        self._pub_mask = self.create_publisher(Image, "mask/image", QoSProfile(depth=5))
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        latest = QoSProfile(depth=2, history=HistoryPolicy.KEEP_LAST,
                            reliability=ReliabilityPolicy.BEST_EFFORT)
        self._sub_info = self.create_subscription(CameraInfo, "depth/camera_info", self._on_info,
                                                  qos_profile_sensor_data)
        self._sub_depth = self.create_subscription(Image, "depth/image", self._on_depth, latest)
        self._timer = self.create_timer(float(self._values["diagnostics_period_s"]),
                                        self._publish_diagnostics)
        names = [self.resolve_topic_name(t) for t in ("depth/image", "depth/camera_info", "mask/image")]
        self.get_logger().info(f"tabletop masks: {names[0]} + {names[1]} -> {names[2]} ({self._encoding}); "
                               f"category {self._category or '(unset)'}")

    # -- parameters --------------------------------------------------------------------------------------
    def _on_set_parameters(self, changes):
        from rcl_interfaces.msg import SetParametersResult

        values = dict(self._values)
        for change in changes:
            if change.name in _READ_ONLY:
                return SetParametersResult(successful=False, reason=f"'{change.name}' is fixed at start-up")
            values[change.name] = change.value
        try:
            params, encoding, category = params_from_values(values)
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._values, self._params, self._encoding, self._category = values, params, encoding, category
        return SetParametersResult(successful=True)

    # -- callbacks ---------------------------------------------------------------------------------------
    def _warn(self, reason: str, text: str) -> None:
        logger = self._loggers.get(reason)
        if logger is None:
            logger = self._loggers[reason] = self.get_logger().get_child(reason)
        throttle = float(self._values["log_throttle_s"])
        if throttle > 0:
            logger.warning(f"[{reason}] {text}", throttle_duration_sec=throttle)
        else:
            logger.warning(f"[{reason}] {text}")

    def _on_info(self, msg) -> None:
        from .conversions import ConversionError, camera_info_to_K

        try:
            self._info = camera_info_to_K(msg)
        except ConversionError as exc:
            self._warn(exc.reason, str(exc))

    def _on_depth(self, msg) -> None:
        """One depth frame -> one mask message (never raises)."""
        from cse_pose.core.camera import decode_depth, intrinsics_for_image
        from cse_pose.core.errors import PoseError

        from .conversions import ConversionError, image_to_numpy, numpy_to_image

        t0 = time.perf_counter()
        self._stats.frame_received()
        if self._info is None:
            self._stats.frame_rejected("no_camera_info")
            self._warn("no_camera_info", "no CameraInfo received yet on "
                       f"{self.resolve_topic_name('depth/camera_info')}: depth frame skipped")
            return
        p = self._params
        try:
            raw = image_to_numpy(msg, "depth")
            K = intrinsics_for_image(self._info[0], self._info[1], (raw.shape[1], raw.shape[0]))
            depth_m = decode_depth(raw, msg.encoding, p.min_depth_m, p.max_depth_m)
            seg = segment_tabletop(depth_m, K, p)
        except (ConversionError, PoseError) as exc:
            self._stats.frame_rejected(exc.reason)
            self._warn(exc.reason, f"depth frame skipped: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the callback must survive anything
            self._stats.frame_rejected("internal_error")
            self._warn("internal_error", f"depth frame skipped: {type(exc).__name__}: {exc}")
            return
        mask = seg.mask.astype(np.uint8) if self._encoding == "mono8" else seg.mask
        t1 = time.perf_counter()
        self._pub_mask.publish(numpy_to_image(mask, self._encoding, msg.header))
        timings = dict(seg.timings_ms)
        timings["decode"] = timings["total"] - sum(v for k, v in seg.timings_ms.items() if k != "total")
        timings["publish"] = (time.perf_counter() - t1) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        self._stats.frame_processed(timings, 0)
        self._instances += seg.n_instances
        self._last_plane = seg.plane or self._last_plane
        if seg.reason:
            self._stats.reasons[seg.reason] += 1
            self._stats.last_reason = seg.reason
            self._warn(seg.reason, {REASON_NO_PLANE: "no dominant plane (table) in the depth image",
                                    REASON_NO_OBJECTS: "nothing stands on the table",
                                    REASON_NO_VALID_DEPTH: "no valid depth sample"}[seg.reason]
                       + ": empty mask published")

    def _publish_diagnostics(self) -> None:
        s = self._stats
        diag = self._diag
        if s.received == 0:
            level, message = diag.WARN, "waiting for " + self.resolve_topic_name("depth/image")
        elif s.processed == 0:
            level, message = diag.WARN, f"no mask published; last skip: {s.last_reason}"
        else:
            level, message = diag.OK, f"{s.processed}/{s.received} depth frames served"
            if s.last_reason:
                message += f"; last empty/skipped: {s.last_reason}"
        extra: dict[str, object] = {"instances_published": self._instances, "category": self._category,
                                    "mask_encoding": self._encoding}
        if self._last_plane is not None:
            extra["table_noise_mm_at_1m"] = f"{self._last_plane.sigma_1m * 1e3:.2f}"
            extra["table_inlier_fraction"] = f"{self._last_plane.inlier_fraction:.2f}"
        status = diag.build_status(s, name=f"{self.get_fully_qualified_name()}: tabletop masks",
                                   hardware_id="cse_pose", level=level, message=message, extra=extra)
        self._pub_diag.publish(diag.build_array(status, self.get_clock().now().to_msg()))


def main(args: list[str] | None = None) -> int:
    """Entry point of ``tabletop_mask_node`` / ``python -m cse_pose_ros.tabletop_mask``; the exit status."""
    from .runner import run_node

    return run_node(TabletopMaskNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
