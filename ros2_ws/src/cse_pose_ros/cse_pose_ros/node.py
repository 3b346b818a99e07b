"""``cse_pose_node``: category-level 6D pose and size of every masked object, as a ROS 2 node.

Subscribes (remappable, sensor-data QoS, approximate-time synchronised): ``rgb/image``, ``depth/image``
(16UC1 mm or 32FC1 m, registered to RGB), ``mask/image`` (instance ids, or class labels with
``class_map``), ``rgb/camera_info``.

Publishes (output header = input RGB header: stamp and camera optical frame):
``~/pose`` (PoseStamped, the one followed trusted instance, :mod:`cse_pose.target`), ``~/poses``
(PoseArray, all trusted instances), ``~/markers`` (MarkerArray, see :mod:`cse_pose_ros.markers`; untrusted
poses appear grey with their score), ``~/debug_image`` (optional), TF ``<frame_prefix><category>_<id>``
(where tf2_ros exists), ``~/detections`` (vision_msgs/Detection3DArray of the trusted instances with
score, size and pose covariance, where vision_msgs exists) and ``/diagnostics`` (~1 Hz: rate, per-stage p50
latency, frame counters, one counter per skip reason, synchroniser drops and time jumps, model info).

Callbacks, each thin: the synchroniser (:mod:`cse_pose_ros.sync`, always the ROS-free policy) hands each set to
:class:`~cse_pose_ros.frame_slot.FrameWorker`, whose thread runs :meth:`PoseNode._on_frame` on the newest set
(older unserved sets are dropped, ``frames_dropped_stale``; diagnostics run on that thread too), and calls
:meth:`PoseNode._on_time_jump` when the stamps jump (which only marks the temporal state for a reset at the next
frame, on the frame thread). ``_on_frame``: decode (views on the message buffers; a distorted stream is
rectified, :class:`cse_pose.core.camera.Rectifier`) -> :class:`cse_pose.pipeline.PosePipeline` (which also does
the optional ICP refinement and temporal smoothing) -> messages. The pipeline's Python ``logging`` records reach
/rosout through :mod:`cse_pose_ros.log_bridge`.
Everything else (model loading, warm-up, publishers, constants) happens once at start-up. Bad input never
raises out of the callback: each problem is a *reason*, counted in diagnostics and logged at most once per
``log_throttle_s`` per reason, and nothing is published for that frame (or instance). A missing or broken
model leaves the node up, serving nothing, with diagnostics at ERROR; ``warn_after_skipped_frames`` RGB
frames in a row not served turn them WARN with the cause.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from cse_pose.core.camera import Rectifier, decode_depth, distortion_coefficients, intrinsics_for_image
from cse_pose.core.errors import PoseError
from cse_pose.core.rotation import quaternion_from_matrix
from cse_pose.display import DisplayMeshes, draw_instances, neutral_vertices
from cse_pose.inference import InferenceBackend, ModelError, find_models, load_model
from cse_pose.instances import instance_classes
from cse_pose.pipeline import PipelineParams, PosePipeline
from cse_pose.sync import (
    DROP_DUPLICATE,
    DROP_LATE,
    DROP_NO_HEADER,
    DROP_QUEUE_OVERFLOW,
    DROP_SUPERSEDED,
    DROP_TIME_JUMP,
    TimeJump,
)
from cse_pose.target import PoseTarget

from . import diagnostics as diag
from .conversions import ConversionError, camera_info_to_K, image_to_numpy, numpy_to_image
from .frame_slot import DROPPED_KEY, FrameWorker, input_qos
from .launch_args import installed_model_dir, share_directory
from .log_bridge import forward_python_logging, stop_forwarding
from .markers import build_marker_array, detection_array, pose_array, pose_stamped, tf_child_frame
from .params import NodeParams, apply_changes, declare_parameters
from .runner import run_node, sigint_deferred
from .sync import make_subscriber, make_synchronizer

NODE_NAME = "cse_pose_node"
INPUTS = ("rgb/image", "depth/image", "mask/image", "rgb/camera_info")

# frame-level skip reasons raised by the node itself (the others come from conversions/core/pipeline)
REASON_NO_MODEL = "no_model"
REASON_SIZE_MISMATCH = "size_mismatch"
REASON_NO_VALID_DEPTH = "no_valid_depth"
REASON_EMPTY_MASK = "empty_mask"
REASON_INTERNAL = "internal_error"
REASON_TIME_JUMP = "time_jump"
REASON_UNSYNCHRONIZED = "unsynchronized"

#: Why the synchroniser drops a message, for logs and diagnostics (formatted with the node's parameters).
SYNC_DROP_CAUSES: dict[str, str] = {
    DROP_SUPERSEDED: "no partner on every input within sync_slop_s={sync_slop_s} s (stamps further apart "
                     "than the slop, or an input missing)",
    DROP_QUEUE_OVERFLOW: "sync_queue_size={sync_queue_size} filled before the partners arrived (an input "
                         "missing, much slower, or lagging)",
    DROP_LATE: "stamped before the last served frame (stamps went backwards by less than "
               "time_jump_threshold_s={time_jump_threshold_s} s)",
    DROP_TIME_JUMP: "queued when the stamps jumped by more than time_jump_threshold_s={time_jump_threshold_s} "
                    "s (synchroniser restarted)",
    DROP_DUPLICATE: "a second message with the same stamp replaced the first",
    DROP_NO_HEADER: "no header stamp",
}


@dataclass
class _Decoded:
    """One decoded frame: rgb (H, W, 3) uint8 view, depth_m (H, W) float32, mask (H, W) int, K (3, 3)."""

    rgb: np.ndarray
    depth_m: np.ndarray
    mask: np.ndarray
    K: np.ndarray


class _FrameRejected(Exception):
    """Internal: the frame is skipped for ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------------------------------
class PoseNode(Node):
    """The pose node (see the module docstring). ``kwargs`` go to ``rclpy.node.Node``.

    ``models``: {category: loaded ``InferenceBackend``} served instead of the model files that ``model_dir`` /
    ``model_paths`` name (for benchmarks and tests that wrap a backend; ``category`` / ``class_map`` still
    choose among them). None (the default): load the files.
    """

    def __init__(self, *, models: Mapping[str, InferenceBackend] | None = None, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._preloaded = None if models is None else dict(models)
        self._p: NodeParams = declare_parameters(self)
        self._log_bridge = forward_python_logging("cse_pose", self.get_logger(), self._p.log_throttle_s)
        self._stats = diag.FrameStats(self._p.stats_window)
        self._reason_loggers: dict[str, object] = {}
        self._input_counts = dict.fromkeys(INPUTS, 0)
        self._last_sync_drops: dict[str, int] = {}
        self._camera_cache: tuple | None = None  # (CameraInfo key, K, Rectifier or None)
        # what "not served" is measured from: input counts, sync drops and skips since the last served frame
        self._served_inputs = dict.fromkeys(INPUTS, 0)
        self._served_drops: dict[str, int] = {}
        self._skips_since_served: Counter[str] = Counter()
        self._skip_text: dict[str, str] = {}
        # time jumps: counted by the synchroniser's callback, applied to the temporal state by _on_frame
        self._time_jumps = 0
        self._jumps_reported = 0
        self._last_jump = ""
        self._reset_pending = False
        self._target = PoseTarget()

        self._category = self._p.category
        self._class_map = self._p.class_map_dict()
        self._models, self._model_error = self._load_models()
        self._faces = {c: np.asarray(m.info.faces) for c, m in self._models.items()}
        self._meshes = DisplayMeshes(self._faces, {c: neutral_vertices(m) for c, m in self._models.items()})
        self._meshes.faces(self._p.mesh_marker_max_faces)  # decimate now, not in the first frame callback
        self._open3d_ok = bool(self._p.refine_category_list()) and self._import_open3d()
        self._pipeline = PosePipeline(self._models, self._pipeline_params(self._p)) if self._models else None

        reliable = QoSProfile(depth=10)
        self._pub_pose = self.create_publisher(PoseStamped, "~/pose", reliable)
        self._pub_poses = self.create_publisher(PoseArray, "~/poses", reliable)
        self._pub_markers = self.create_publisher(MarkerArray, "~/markers", reliable)
        self._pub_debug = self.create_publisher(Image, "~/debug_image", QoSProfile(depth=2))
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self._tf = self._make_tf_broadcaster()
        self._detections = self._make_detections_publisher(reliable)

        types = (Image, Image, Image, CameraInfo)
        self._subs = [make_subscriber(self, t, name, input_qos()) for t, name in zip(types, INPUTS, strict=True)]
        for sub, name in zip(self._subs, INPUTS, strict=True):
            sub.registerCallback(self._count_input, name)
        self._sync = make_synchronizer(self, self._subs, self._p.sync_queue_size, self._p.sync_slop_s,
                                       jump_threshold=self._p.time_jump_threshold_s)
        self._sync.on_time_jump = self._on_time_jump
        self._worker = FrameWorker(self._on_frame)  # newest frame first, on its own thread
        self._sync.registerCallback(self._worker.submit)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_timer = self.create_timer(self._p.diagnostics_period_s,
                                             lambda: self._worker.call_soon(self._publish_diagnostics))
        served = ", ".join(f"{c} ({m.name}, {Path(m.info.path).name})" for c, m in self._models.items()) or "nothing"
        self.get_logger().info(f"ready: serving {served}; inputs {', '.join(self._resolved_inputs())}")

    # -- start-up --------------------------------------------------------------------------------------
    def _pipeline_params(self, p: NodeParams) -> PipelineParams:
        return PipelineParams(
            min_depth_m=p.min_depth_m, max_depth_m=p.max_depth_m, confidence_floor=p.confidence_floor,
            enlarge=p.enlarge, ransac_threshold_m=p.ransac_threshold_m, ransac_threshold_rel=p.ransac_threshold_rel,
            ransac_threshold_rel_by_category=p.threshold_rel_by_category_dict(),
            ransac_max_hypotheses=p.ransac_iterations,
            min_correspondences=p.min_correspondences, max_correspondences=p.max_correspondences,
            min_inliers=p.min_inliers, min_quality=p.min_quality,
            seed=None if p.ransac_seed < 0 else p.ransac_seed, depth_sampling=p.depth_sampling,
            refine_categories=p.refine_category_list() if self._open3d_ok else (),
            refine_max_distance_m=p.refine_max_distance_m, measure_size_categories=p.measure_size_category_list(),
            refine_iterations=p.refine_iterations, smoothing_alpha=p.smoothing_alpha,
            smoothing_timeout_s=p.smoothing_timeout_s, verify_categories=p.verify_category_list(),
        )

    def _model_dir(self) -> str:
        """``model_dir``, or the models installed with the package when it is empty."""
        return self._p.model_dir or installed_model_dir(share_directory())

    def _wanted_categories(self, available: Sequence[str]) -> list[str]:
        """Categories to load: those of class_map, or ``category``, or the single available model."""
        if self._class_map:
            return sorted(set(self._class_map.values()))
        if self._category:
            return [self._category]
        if len(available) == 1:
            return list(available)
        if not available:
            return []
        raise ModelError(self._model_dir(), f"several models ({', '.join(available)}): set 'category' "
                                            "(one category for every instance) or 'class_map'")

    def _load_models(self) -> tuple[dict, str]:
        """Load every needed model once; on failure log one clear error and return ({}, error text)."""
        try:
            explicit = self._p.model_path_list()
            found: dict[str, InferenceBackend] | None = None
            if self._preloaded is not None:
                found, source = self._preloaded, "(preloaded models)"
            elif explicit:
                found, source = {}, ",".join(explicit)
                for path in explicit:
                    model = load_model(path, self._p.backend, intra_op_threads=self._p.intra_op_threads,
                                       precision=self._p.precision)
                    found[model.info.category] = model
            if found is not None:
                wanted = self._wanted_categories(list(found))
                missing = [c for c in wanted if c not in found]
                if missing:
                    raise ModelError(source, f"no model for category {', '.join(missing)}")
                models = {c: found[c] for c in wanted}
            else:
                paths = find_models(self._model_dir())
                wanted = self._wanted_categories(list(paths))
                if not wanted:
                    raise ModelError(self._model_dir(), "no <category>.onnx model file in this folder")
                missing = [c for c in wanted if c not in paths]
                if missing:
                    raise ModelError(self._model_dir(), f"no model file for category {', '.join(missing)}")
                models = {c: load_model(paths[c], self._p.backend, intra_op_threads=self._p.intra_op_threads,
                                        precision=self._p.precision)
                          for c in wanted}
            for c, m in models.items():
                if m.info.category != c:
                    raise ModelError(m.info.path, f"metadata category {m.info.category!r}, expected {c!r}")
            if not self._category and not self._class_map:
                self._category = next(iter(models))
            return models, ""
        except ModelError as exc:
            text = str(exc)
        except Exception as exc:  # noqa: BLE001 - any loader failure must leave the node up
            text = f"model loading failed: {type(exc).__name__}: {exc}"
        self.get_logger().error(f"{text} -- serving nothing until restarted with a valid model")
        return {}, text

    def _import_open3d(self) -> bool:
        """Import open3d (slow, once) for ICP; False (and one error line) when it is missing."""
        try:
            with sigint_deferred():  # a Ctrl-C inside open3d's module init would break it (see there)
                import open3d  # noqa: F401
        except ImportError as exc:
            self.get_logger().error(f"refine_categories needs open3d ({exc}); poses are published unrefined")
            return False
        self._open3d_ok = True
        return True

    def _make_tf_broadcaster(self):
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            self.get_logger().info("tf2_ros not importable (pip-only install): object TF frames are not "
                                   "broadcast; use ~/poses or ~/markers")
            return None
        return TransformBroadcaster(self)

    def _make_detections_publisher(self, qos):
        try:
            from vision_msgs.msg import Detection3DArray
        except ImportError:
            self.get_logger().info("vision_msgs not importable: ~/detections is not published; id, category, "
                                   "pose, size and score ride on ~/markers (namespace <category>/..., text)")
            return None
        return self.create_publisher(Detection3DArray, "~/detections", qos)

    def _resolved_inputs(self) -> list[str]:
        return [self.resolve_topic_name(name) for name in INPUTS]

    # -- parameters --------------------------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        """Accept a runtime change only if the whole new set is valid; then apply it atomically."""
        ours = [c for c in changes if c.name != "use_sim_time"]
        if not ours:
            return SetParametersResult(successful=True)
        new, reason = apply_changes(self._p, ours)
        if new is None:
            return SetParametersResult(successful=False, reason=reason)
        if new.refine_category_list() and not self._open3d_ok and not self._import_open3d():
            return SetParametersResult(successful=False,
                                       reason="refine_categories needs open3d, which is not importable")
        self._log_bridge.throttle_s = new.log_throttle_s
        try:
            pipeline_params = self._pipeline_params(new)
        except PoseError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if self._pipeline is not None:
            self._pipeline.params = pipeline_params
        self._p = new
        return SetParametersResult(successful=True)

    # -- logging -----------------------------------------------------------------------------------------
    def _warn(self, reason: str, text: str) -> None:
        """One log line per reason per ``log_throttle_s`` (rclpy throttles per logger and call site)."""
        logger = self._reason_loggers.get(reason)
        if logger is None:
            logger = self._reason_loggers[reason] = self.get_logger().get_child(reason)
        if self._p.log_throttle_s > 0:
            logger.warning(f"[{reason}] {text}", throttle_duration_sec=self._p.log_throttle_s)
        else:
            logger.warning(f"[{reason}] {text}")

    def _reject(self, reason: str, text: str) -> None:
        self._stats.frame_rejected(reason)
        self._skips_since_served[reason] += 1
        self._skip_text[reason] = text
        self._warn(reason, f"frame skipped: {text}")

    # -- the callbacks ------------------------------------------------------------------------------------
    def _count_input(self, msg, name: str) -> None:
        self._input_counts[name] += 1

    def _on_time_jump(self, jump: TimeJump) -> None:
        """Synchroniser restarted on a stamp jump: count, log (throttled), reset the temporal state at the
        next frame (on the thread that runs the pipeline)."""
        self._time_jumps += 1
        self._last_jump = (f"{jump.describe(INPUTS)} (more than time_jump_threshold_s="
                           f"{self._p.time_jump_threshold_s} s: clock jump, bag loop or camera reset); "
                           f"synchroniser, smoothing and ~/pose target restarted, {jump.dropped} queued "
                           "message(s) dropped")
        self._reset_pending = True
        self._warn(REASON_TIME_JUMP, self._last_jump)

    def _on_frame(self, rgb_msg: Image, depth_msg: Image, mask_msg: Image, info_msg: CameraInfo) -> None:
        """Synchronised frame: decode -> pipeline (with refine/smoothing) -> publish. Never raises."""
        t0 = time.perf_counter()
        self._stats.frame_received()
        if self._reset_pending:
            self._reset_temporal_state()
        if self._pipeline is None:
            self._reject(REASON_NO_MODEL, self._model_error or "no model loaded")
            return
        try:
            frame = self._decode(rgb_msg, depth_msg, mask_msg, info_msg)
            classes = instance_classes(frame.mask, self._category, self._class_map)
            if not classes:
                raise _FrameRejected(REASON_EMPTY_MASK, "the mask holds no instance"
                                     + (" of a class_map label" if self._class_map else ""))
            t1 = time.perf_counter()
            stamp_s = rgb_msg.header.stamp.sec + 1e-9 * rgb_msg.header.stamp.nanosec
            result = self._pipeline.process(frame.rgb, frame.depth_m, frame.mask, classes, frame.K, stamp_s)
        except (_FrameRejected, ConversionError, PoseError) as exc:
            self._reject(exc.reason, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the callback must survive anything
            self._reject(REASON_INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        timings = {k: v for k, v in result.timings_ms.items() if k != "total"}
        timings["decode"] = (t1 - t0) * 1e3
        self._count_skipped(result.instances)
        try:
            t2 = time.perf_counter()
            published = self._publish(rgb_msg, frame, result.instances)
        except Exception as exc:  # noqa: BLE001
            if self._shut_down():
                return  # SIGINT shut the context down while this frame was being published
            self._reject(REASON_INTERNAL, f"publishing failed: {type(exc).__name__}: {exc}")
            return
        timings["publish"] = (time.perf_counter() - t2) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        self._stats.frame_processed(timings, published)
        self._mark_served()

    def _reset_temporal_state(self) -> None:
        """After a time jump: forget smoothing tracks and the followed ~/pose object."""
        self._reset_pending = False
        if self._pipeline is not None:
            self._pipeline.reset()
        self._target.reset()

    def _mark_served(self) -> None:
        """A frame was served: "not served" counts start again from here."""
        self._served_inputs = dict(self._input_counts)
        self._served_drops = self._sync_drops()
        self._skips_since_served.clear()

    def _decode(self, rgb_msg: Image, depth_msg: Image, mask_msg: Image, info_msg: CameraInfo) -> _Decoded:
        """Messages -> arrays (views where possible), with every consistency check."""
        rgb = image_to_numpy(rgb_msg, "rgb")
        depth_raw = image_to_numpy(depth_msg, "depth")
        mask = image_to_numpy(mask_msg, "mask")
        h, w = rgb.shape[:2]
        if depth_raw.shape != (h, w) or mask.shape != (h, w):
            raise _FrameRejected(REASON_SIZE_MISMATCH, f"rgb {w}x{h}, depth {depth_raw.shape[1]}x"
                                 f"{depth_raw.shape[0]}, mask {mask.shape[1]}x{mask.shape[0]} differ")
        K, rectifier = self._camera(info_msg, w, h)
        if rectifier is not None:
            rgb, depth_raw, mask = rectifier.linear(rgb), rectifier.nearest(depth_raw), rectifier.nearest(mask)
        depth_m = decode_depth(depth_raw, depth_msg.encoding, self._p.min_depth_m, self._p.max_depth_m)
        if not depth_m.any():
            raise _FrameRejected(REASON_NO_VALID_DEPTH, f"no depth sample within [{self._p.min_depth_m}, "
                                 f"{self._p.max_depth_m}] m (all zero, NaN, negative or out of range)")
        return _Decoded(rgb, depth_m, mask, K)

    def _camera(self, info_msg: CameraInfo, w: int, h: int) -> tuple[np.ndarray, Rectifier | None]:
        """Validated K (3, 3) for a w x h image and the rectifier of a distorted stream (None for pinhole).

        Cached while the CameraInfo (k, d, model, size) and the image size stay the same. A CameraInfo of
        another size is used only when it is an exact scale of the image (``camera_info_size_mismatch``
        otherwise); non-zero D of plumb_bob / rational_polynomial is undone by rectifying the three images
        with the same K (``unsupported_distortion`` for other models).
        """
        key = (np.asarray(info_msg.k, np.float64).tobytes(), np.asarray(info_msg.d, np.float64).tobytes(),
               str(info_msg.distortion_model), info_msg.width, info_msg.height, w, h)
        if self._camera_cache is not None and self._camera_cache[0] == key:
            return self._camera_cache[1], self._camera_cache[2]
        K_info, info_wh = camera_info_to_K(info_msg)
        K = intrinsics_for_image(K_info, info_wh, (w, h))
        D = distortion_coefficients(info_msg.distortion_model, info_msg.d)
        rectifier = None if D is None else Rectifier.create(K, D, w, h)
        if rectifier is not None:
            self.get_logger().info(f"CameraInfo has {info_msg.distortion_model} distortion D={D.tolist()}: RGB, "
                                   "depth and mask are rectified in the node (same K); publish rectified "
                                   "images (image_proc) with D = 0 to save this step")
        self._camera_cache = (key, K, rectifier)
        return K, rectifier

    def _count_skipped(self, instances: list) -> None:
        """Count and report (rate-limited) every instance that gets no published pose."""
        for inst in instances:
            if (inst.pose is None or not inst.trusted) and inst.reason:
                self._stats.instance_skipped(inst.reason)
                self._warn(inst.reason, f"{inst.category} #{inst.instance_id}: no published pose")

    def _publish(self, rgb_msg: Image, frame: _Decoded, instances: list) -> int:
        """Publish every output for one processed frame; returns the number of trusted poses."""
        header = rgb_msg.header
        trusted = [i for i in instances if i.trusted and i.pose is not None]
        stamp_s = header.stamp.sec + 1e-9 * header.stamp.nanosec
        target = self._target.select(trusted, stamp_s, self._p.pose_follow_radius_m, self._p.pose_switch_after_s)
        if target is not None:
            self._pub_pose.publish(pose_stamped(header, target.pose.R, target.pose.t_m))
        self._pub_poses.publish(pose_array(header, [i.pose for i in trusted]))
        if self._p.publish_markers and self._pub_markers.get_subscription_count() > 0:
            faces = self._meshes.faces(self._p.mesh_marker_max_faces)
            self._pub_markers.publish(build_marker_array(header, instances, faces, self._p.marker_lifetime_s,
                                                         self._p.publish_mesh_marker))
        if self._p.publish_debug_image and self._pub_debug.get_subscription_count() > 0:
            self._pub_debug.publish(numpy_to_image(draw_instances(frame.rgb, frame.K, instances), "rgb8", header))
        if self._tf is not None and self._p.publish_tf and trusted:
            self._tf.sendTransform([self._transform(header, i) for i in trusted])
        if self._detections is not None:
            self._detections.publish(detection_array(header, trusted))
        return len(trusted)

    def _transform(self, header, inst):
        from geometry_msgs.msg import TransformStamped

        q = quaternion_from_matrix(inst.pose.R)
        t = np.asarray(inst.pose.t_m, np.float64)
        msg = TransformStamped(header=header)
        msg.child_frame_id = tf_child_frame(self._p.frame_prefix, inst.category, inst.instance_id)
        msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, t)
        (msg.transform.rotation.x, msg.transform.rotation.y, msg.transform.rotation.z,
         msg.transform.rotation.w) = map(float, q)
        return msg

    # -- diagnostics -------------------------------------------------------------------------------------
    def _sync_drops(self) -> dict[str, int]:
        """Messages dropped by the synchroniser: ``sync_dropped.<input>[.<reason>]`` -> count."""
        counts = getattr(self._sync, "drop_counts", None)
        if counts is None:  # message_filters' synchroniser does not count
            return {}
        out: dict[str, int] = {}
        for name, reasons in counts.items():
            out[f"sync_dropped.{name}"] = sum(reasons.values())
            for reason, n in reasons.items():
                out[f"sync_dropped.{name}.{reason}"] = n
        return out

    def _drop_causes(self, before: dict[str, int], now: dict[str, int]) -> list[str]:
        """``'<n> on <inputs>: <cause>'`` per synchroniser drop reason grown from ``before`` to ``now``."""
        grown: dict[str, Counter[str]] = {}
        for key, n in now.items():
            name, _, reason = key.removeprefix("sync_dropped.").rpartition(".")
            if name and n > before.get(key, 0):
                grown.setdefault(reason, Counter())[name] += n - before.get(key, 0)
        p = self._p
        out = []
        for reason, names in sorted(grown.items(), key=lambda kv: -sum(kv[1].values())):
            cause = SYNC_DROP_CAUSES.get(reason, reason).format(
                sync_slop_s=p.sync_slop_s, sync_queue_size=p.sync_queue_size,
                time_jump_threshold_s=p.time_jump_threshold_s)
            out.append(f"{sum(names.values())} on {', '.join(sorted(names))} ({reason}: {cause})")
        return out

    def _stamp_offsets(self) -> str:
        """The newest stamps of the inputs relative to RGB's, when more than ``sync_slop_s`` apart ('' else)."""
        latest = self._sync.latest_stamps
        ref = latest.get(INPUTS[0])
        if ref is None:
            return ""
        offsets = {n: (v - ref) / 1e9 for n, v in latest.items() if v is not None and n != INPUTS[0]}
        if all(abs(d) <= self._p.sync_slop_s for d in offsets.values()):
            return ""
        return (f"newest stamps more than sync_slop_s={self._p.sync_slop_s} s apart: "
                + ", ".join(f"{n} {d:+.3f} s" for n, d in offsets.items()) + f" from {INPUTS[0]}")

    def _unserved_cause(self, drops: dict[str, int]) -> str:
        """Why frames were not served since the last served one: a silent input, skips, synchroniser drops
        (with the stamp offsets of the inputs)."""
        silent = [n for n in INPUTS if self._input_counts[n] == self._served_inputs[n]]
        parts = [f"nothing arrived on {', '.join(silent)} since the last served frame"] if silent else []
        parts += [f"{n} skipped for {reason} ({self._skip_text.get(reason, '')})"
                  for reason, n in self._skips_since_served.most_common(2)]
        parts += [f"synchroniser dropped {text}" for text in self._drop_causes(self._served_drops, drops)[:2]]
        offsets = self._stamp_offsets()
        if offsets:
            parts.append(offsets)
        if not parts:
            parts.append("inputs arrive but no set of RGB, depth, mask and CameraInfo synchronises within "
                         f"sync_slop_s={self._p.sync_slop_s} s yet")
        return "; ".join(parts)

    def _status(self, drops: dict[str, int]) -> tuple[int, str]:
        """Level and message of the diagnostics status (see the README's diagnostics paragraph)."""
        s = self._stats
        if self._pipeline is None:
            return diag.ERROR, f"no model: {self._model_error}"
        unserved = {n: c - self._served_inputs.get(n, 0) for n, c in self._input_counts.items()}
        limit = self._p.warn_after_skipped_frames
        if unserved[INPUTS[0]] >= limit:
            return diag.WARN, f"{unserved[INPUTS[0]]} frames in a row not served: {self._unserved_cause(drops)}"
        busiest = max(INPUTS, key=lambda n: unserved[n])
        silent = [n for n in INPUTS if unserved[n] == 0]
        if unserved[busiest] >= limit or s.processed == 0:
            if not any(self._input_counts.values()):
                return diag.WARN, "waiting for " + ", ".join(INPUTS)
            if silent:
                return diag.WARN, (f"{unserved[busiest]} {busiest} messages and no frame served: nothing "
                                   f"arrives on {', '.join(silent)}")
            return diag.WARN, f"no frame served yet: {self._unserved_cause(drops)}"
        if self._time_jumps > self._jumps_reported:
            return diag.WARN, self._last_jump
        message = f"{s.processed}/{s.received} frames served"
        return diag.OK, message + (f"; last skip: {s.last_reason}" if s.last_reason else "")

    def _publish_diagnostics(self) -> None:
        drops = self._sync_drops()
        new_drops = self._drop_causes(self._last_sync_drops, drops)
        if new_drops:
            self._warn(REASON_UNSYNCHRONIZED, "synchroniser dropped " + "; ".join(new_drops))
        self._last_sync_drops = drops
        level, message = self._status(drops)
        self._jumps_reported = self._time_jumps
        models = {c: f"{m.info.path} [{m.name}] S={m.info.crop_size} G={m.info.grid_size} "
                     f"N={m.info.num_vertices} version={m.info.version}" for c, m in self._models.items()}
        extra: dict[str, object] = {f"input_messages.{n}": c for n, c in self._input_counts.items()}
        extra["frames_not_served_in_a_row"] = self._input_counts[INPUTS[0]] - self._served_inputs[INPUTS[0]]
        extra.update(drops)
        extra["time_jumps"] = self._time_jumps
        extra[DROPPED_KEY] = self._worker.dropped
        if self._last_jump:
            extra["last_time_jump"] = self._last_jump
        if self._camera_cache is not None:
            extra["camera.rectified"] = self._camera_cache[2] is not None
        if self._model_error:
            extra["model_error"] = self._model_error
        status = diag.build_status(self._stats, name=f"{self.get_fully_qualified_name()}: pose pipeline",
                                   hardware_id="cse_pose", level=level, message=message, models=models,
                                   extra=extra)
        try:
            self._pub_diag.publish(diag.build_array(status, self.get_clock().now().to_msg()))
        except Exception:
            if not self._shut_down():
                raise
            # SIGINT shut the context down between the timer and this job on the frame thread: nothing to report

    def _shut_down(self) -> bool:
        """Whether the node's context is shut down (Ctrl-C): publishing then fails and is not an error."""
        return not self.context.ok()

    def destroy_node(self) -> None:
        """Stop the frame thread (after its frame in progress), detach the logging bridge, destroy the node."""
        self._worker.stop()
        stop_forwarding("cse_pose", self._log_bridge)
        super().destroy_node()

    # -- test hooks ----------------------------------------------------------------------------------------
    @property
    def stats(self) -> diag.FrameStats:
        """The frame statistics (read-only use)."""
        return self._stats


def limit_blas_threads() -> None:
    """One BLAS thread: the per-frame numpy work (crops, solver moments) is made of tiny products for which a
    BLAS thread pool only adds synchronisation; on a busy CPU its spinning threads cost 10-100x (measured:
    solve stage 0.4 ms with one thread vs 3-34 ms with the default pool on this 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional; requirements.txt installs it
        return
    threadpool_limits(limits=1, user_api="blas")


def main(args: list[str] | None = None) -> int:
    """Entry point of ``cse_pose_node`` / ``python -m cse_pose_ros``. Returns the exit status."""
    limit_blas_threads()
    return run_node(PoseNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
