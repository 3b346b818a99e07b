"""``cse_pose_node``: category-level 6D pose and size of every masked object, as a ROS 2 node.

Subscribes (remappable, sensor-data QoS, approximate-time synchronised): ``rgb/image``, ``depth/image``
(16UC1 mm or 32FC1 m, registered to RGB), ``mask/image`` (instance ids, or class labels with
``class_map``), ``rgb/camera_info``.

Publishes (output header = input RGB header: stamp and camera optical frame):
``~/pose`` (PoseStamped, best trusted instance), ``~/poses`` (PoseArray, all trusted instances),
``~/markers`` (MarkerArray, see :mod:`cse_pose_ros.markers`; untrusted poses appear grey with their
score), ``~/debug_image`` (optional), TF ``<frame_prefix><category>_<id>`` (where tf2_ros exists),
``~/detections`` (vision_msgs/Detection3DArray, where vision_msgs exists) and ``/diagnostics`` (~1 Hz:
rate, per-stage p50 latency, frame counters, one counter per skip reason, model info).

The frame callback stays thin: decode (views on the message buffers) -> :class:`PosePipeline` ->
optional ICP refinement and temporal smoothing -> messages. Everything else (model loading, warm-up,
publishers, constants) happens once at start-up. Bad input never raises out of the callback: each
problem is a *reason*, counted in diagnostics and logged at most once per ``log_throttle_s`` per reason,
and nothing is published for that frame (or instance). A missing or broken model leaves the node up,
serving nothing, with diagnostics at ERROR.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from . import diagnostics as diag
from .conversions import ConversionError, camera_info_to_K, image_to_numpy, numpy_to_image
from .core.camera import backproject, decode_depth, scale_intrinsics
from .core.errors import PoseError
from .inference import ModelError, find_models, load_model
from .markers import (
    DisplayMeshes,
    build_marker_array,
    draw_instances,
    matrix_from_quaternion,
    pose_array,
    pose_stamped,
    quaternion_from_matrix,
    tf_child_frame,
)
from .params import NodeParams, apply_changes, declare_parameters
from .pipeline import PipelineParams, PosePipeline
from .runner import run_node
from .sync import make_subscriber, make_synchronizer

NODE_NAME = "cse_pose_node"
INPUTS = ("rgb/image", "depth/image", "mask/image", "rgb/camera_info")

# frame-level skip reasons raised by the node itself (the others come from conversions/core/pipeline)
REASON_NO_MODEL = "no_model"
REASON_SIZE_MISMATCH = "size_mismatch"
REASON_NO_VALID_DEPTH = "no_valid_depth"
REASON_EMPTY_MASK = "empty_mask"
REASON_INTERNAL = "internal_error"
MIN_ICP_FITNESS = 0.5  # ICP corrections supported by fewer observed points than this fraction are ignored


# ---------------------------------------------------------------------------------------------------
# per-instance post-processing (ROS-free, unit-tested)
# ---------------------------------------------------------------------------------------------------
def slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (x, y, z, w): ``w = 0`` -> q0, ``w = 1`` -> q1."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + w * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    return (np.sin((1.0 - w) * theta) * q0 + np.sin(w * theta) * q1) / np.sin(theta)


class PoseSmoother:
    """Exponential smoothing of each instance's pose over time (translation and rotation).

    ``new = alpha * previous + (1 - alpha) * measured`` on the translation, and the slerp with the same
    weight on the rotation; an instance unseen for more than ``timeout_s`` (message time) restarts.
    """

    def __init__(self) -> None:
        self._tracks: dict[tuple[str, int], tuple[float, np.ndarray, np.ndarray]] = {}

    def update(self, key: tuple[str, int], stamp_s: float, R: np.ndarray, t_m: np.ndarray, alpha: float,
               timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed (R (3, 3), t (3,)) of instance ``key`` given its measurement at ``stamp_s``."""
        q = quaternion_from_matrix(R)
        t = np.asarray(t_m, np.float64).reshape(3)
        prev = self._tracks.get(key)
        if alpha > 0.0 and prev is not None and 0.0 <= stamp_s - prev[0] <= timeout_s:
            q = slerp(prev[1], q, 1.0 - alpha)
            t = alpha * prev[2] + (1.0 - alpha) * t
        self._tracks[key] = (stamp_s, q, t)
        return matrix_from_quaternion(q), t

    def forget_older_than(self, stamp_s: float) -> None:
        """Drop tracks last seen before ``stamp_s`` (keeps the dict bounded)."""
        for key in [k for k, v in self._tracks.items() if v[0] < stamp_s]:
            del self._tracks[key]


def neutral_vertices(model) -> np.ndarray | None:
    """(N, 3) canonical vertices the model predicts for a black crop with a full mask (deterministic per
    model file): the geometry that chooses the mesh marker's decimation. None when the call fails."""
    info = model.info
    s, g = info.crop_size, info.grid_size
    try:
        vertices = model.run(np.zeros((1, 3, s, s), np.float32), np.ones((1, 1, g, g), np.float32))[0]
        return np.array(vertices[0], dtype=np.float64)
    except Exception:  # noqa: BLE001 - display only: the full mesh is drawn instead
        return None


def observed_points(depth_m: np.ndarray, mask: np.ndarray, instance_id: int, K: np.ndarray,
                    max_points: int = 3000) -> np.ndarray:
    """(n, 3) camera-frame points (m) of the instance's pixels with valid depth, strided to <= max_points."""
    v, u = np.nonzero((mask == instance_id) & (depth_m > 0))
    if len(u) > max_points:
        step = int(np.ceil(len(u) / max_points))
        v, u = v[::step], u[::step]
    return backproject(u, v, depth_m[v, u], K)


def icp_refine(observed_m: np.ndarray, model_points_m: np.ndarray, max_distance_m: float, iterations: int
               ) -> tuple[np.ndarray, float]:
    """Point-to-point ICP (open3d) of the observed points onto the predicted model surface.

    Partial observation -> complete model is the well-posed direction (every observed point has a true
    partner on the model). Returns (T (4, 4) rigid correction to apply to the model: ``p' = T p``,
    fitness = fraction of observed points with a partner within ``max_distance_m``).
    """
    import open3d as o3d

    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(observed_m, np.float64)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(model_points_m, np.float64)))
    result = reg.registration_icp(src, dst, float(max_distance_m), np.eye(4),
                                  reg.TransformationEstimationPointToPoint(with_scaling=False),
                                  reg.ICPConvergenceCriteria(max_iteration=int(iterations)))
    T_obs_to_model = np.asarray(result.transformation)
    return np.linalg.inv(T_obs_to_model), float(result.fitness)


def surface_points(vertices: np.ndarray, faces: np.ndarray | None, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Points on a mesh surface for ICP: the vertices plus ``n`` area-weighted samples on the triangles
    (fixed seed, so the same mesh gives the same points). vertices (N, 3), faces (F, 3) -> (N + n, 3)."""
    v = np.asarray(vertices, np.float64)
    if faces is None or len(faces) == 0:
        return v
    tri = v[np.asarray(faces)]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        return v
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    w = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)  # uniform barycentric samples
    return np.concatenate([v, np.einsum("nk,nkd->nd", w, tri[pick])], axis=0)


def instance_classes(mask: np.ndarray, category: str, class_map: Mapping[int, str]) -> dict[int, str]:
    """{mask value: category} of the instances present in ``mask`` (H, W) integer.

    Instance-id masks (empty ``class_map``): every non-zero id is one instance of ``category``.
    Per-class label masks: every label listed in ``class_map`` that is present is one instance.
    """
    if mask.dtype in (np.uint8, np.uint16):
        counts = np.bincount(mask.ravel(), minlength=1)
        present = np.flatnonzero(counts)
    else:
        present = np.unique(mask)
    present = present[present > 0]
    if class_map:
        return {int(i): class_map[int(i)] for i in present if int(i) in class_map}
    return {int(i): category for i in present}


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
    """The pose node (see the module docstring). ``kwargs`` go to ``rclpy.node.Node``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._p: NodeParams = declare_parameters(self)
        self._stats = diag.FrameStats(self._p.stats_window)
        self._reason_loggers: dict[str, object] = {}
        self._input_counts = dict.fromkeys(INPUTS, 0)
        self._smoother = PoseSmoother()
        self._last_sync_drops: dict[str, int] = {}
        self._k_cache: tuple | None = None

        self._category = self._p.category
        self._class_map = self._p.class_map_dict()
        self._models, self._model_error = self._load_models()
        self._faces = {c: np.asarray(m.info.faces) for c, m in self._models.items()}
        self._meshes = DisplayMeshes(self._faces, {c: neutral_vertices(m) for c, m in self._models.items()})
        self._meshes.faces(self._p.mesh_marker_max_faces)  # decimate now, not in the first frame callback
        self._pipeline = PosePipeline(self._models, self._pipeline_params(self._p)) if self._models else None
        self._open3d_ok = self._p.refine and self._import_open3d()

        reliable = QoSProfile(depth=10)
        self._pub_pose = self.create_publisher(PoseStamped, "~/pose", reliable)
        self._pub_poses = self.create_publisher(PoseArray, "~/poses", reliable)
        self._pub_markers = self.create_publisher(MarkerArray, "~/markers", reliable)
        self._pub_debug = self.create_publisher(Image, "~/debug_image", QoSProfile(depth=2))
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self._tf = self._make_tf_broadcaster()
        self._detections = self._make_detections_publisher(reliable)

        types = (Image, Image, Image, CameraInfo)
        self._subs = [make_subscriber(self, t, name, qos_profile_sensor_data) for t, name in zip(types, INPUTS,
                                                                                               strict=True)]
        for sub, name in zip(self._subs, INPUTS, strict=True):
            sub.registerCallback(self._count_input, name)
        self._sync = make_synchronizer(self, self._subs, self._p.sync_queue_size, self._p.sync_slop_s)
        self._sync.registerCallback(self._on_frame)

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_timer = self.create_timer(self._p.diagnostics_period_s, self._publish_diagnostics)
        served = ", ".join(f"{c} ({m.name})" for c, m in self._models.items()) or "nothing"
        self.get_logger().info(f"ready: serving {served}; inputs {', '.join(self._resolved_inputs())}")

    # -- start-up --------------------------------------------------------------------------------------
    def _pipeline_params(self, p: NodeParams) -> PipelineParams:
        return PipelineParams(
            min_depth_m=p.min_depth_m, max_depth_m=p.max_depth_m, confidence_floor=p.confidence_floor,
            enlarge=p.enlarge, ransac_threshold_m=p.ransac_threshold_m, ransac_max_hypotheses=p.ransac_iterations,
            min_correspondences=p.min_correspondences, min_inliers=p.min_inliers, min_quality=p.min_quality,
            seed=None if p.ransac_seed < 0 else p.ransac_seed, depth_sampling=p.depth_sampling,
        )

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
        raise ModelError(self._p.model_dir, f"several models ({', '.join(available)}): set 'category' "
                                            "(one category for every instance) or 'class_map'")

    def _load_models(self) -> tuple[dict, str]:
        """Load every needed model once; on failure log one clear error and return ({}, error text)."""
        try:
            explicit = self._p.model_path_list()
            if explicit:
                found: dict[str, object] = {}
                for path in explicit:
                    model = load_model(path, self._p.backend, intra_op_threads=self._p.intra_op_threads)
                    found[model.info.category] = model
                wanted = self._wanted_categories(list(found))
                missing = [c for c in wanted if c not in found]
                if missing:
                    raise ModelError(",".join(explicit), f"no model for category {', '.join(missing)}")
                models = {c: found[c] for c in wanted}
            else:
                paths = find_models(self._p.model_dir)
                wanted = self._wanted_categories(list(paths))
                if not wanted:
                    raise ModelError(self._p.model_dir, "no <category>.onnx model file in this folder")
                missing = [c for c in wanted if c not in paths]
                if missing:
                    raise ModelError(self._p.model_dir, f"no model file for category {', '.join(missing)}")
                models = {c: load_model(paths[c], self._p.backend, intra_op_threads=self._p.intra_op_threads)
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
            import open3d  # noqa: F401
        except ImportError as exc:
            self.get_logger().error(f"refine=true needs open3d ({exc}); poses are published unrefined")
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
        if new.refine and not self._open3d_ok and not self._import_open3d():
            return SetParametersResult(successful=False, reason="refine needs open3d, which is not importable")
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
        self._warn(reason, f"frame skipped: {text}")

    # -- the frame callback ---------------------------------------------------------------------------
    def _count_input(self, msg, name: str) -> None:
        self._input_counts[name] += 1

    def _on_frame(self, rgb_msg: Image, depth_msg: Image, mask_msg: Image, info_msg: CameraInfo) -> None:
        """Synchronised frame: decode -> pipeline -> refine/smooth -> publish. Never raises."""
        t0 = time.perf_counter()
        self._stats.frame_received()
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
            result = self._pipeline.process(frame.rgb, frame.depth_m, frame.mask, classes, frame.K)
        except (_FrameRejected, ConversionError, PoseError) as exc:
            self._reject(exc.reason, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the callback must survive anything
            self._reject(REASON_INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        timings = {k: v for k, v in result.timings_ms.items() if k != "total"}
        timings["decode"] = (t1 - t0) * 1e3
        try:
            timings["refine"] = self._postprocess(rgb_msg, frame, result.instances)
            t2 = time.perf_counter()
            published = self._publish(rgb_msg, frame, result.instances)
        except Exception as exc:  # noqa: BLE001
            self._reject(REASON_INTERNAL, f"publishing failed: {type(exc).__name__}: {exc}")
            return
        timings["publish"] = (time.perf_counter() - t2) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        self._stats.frame_processed(timings, published)

    def _decode(self, rgb_msg: Image, depth_msg: Image, mask_msg: Image, info_msg: CameraInfo) -> _Decoded:
        """Messages -> arrays (views where possible), with every consistency check."""
        rgb = image_to_numpy(rgb_msg, "rgb")
        depth_raw = image_to_numpy(depth_msg, "depth")
        mask = image_to_numpy(mask_msg, "mask")
        h, w = rgb.shape[:2]
        if depth_raw.shape != (h, w) or mask.shape != (h, w):
            raise _FrameRejected(REASON_SIZE_MISMATCH, f"rgb {w}x{h}, depth {depth_raw.shape[1]}x"
                                 f"{depth_raw.shape[0]}, mask {mask.shape[1]}x{mask.shape[0]} differ")
        K = self._intrinsics(info_msg, w, h)
        depth_m = decode_depth(depth_raw, depth_msg.encoding, self._p.min_depth_m, self._p.max_depth_m)
        if not depth_m.any():
            raise _FrameRejected(REASON_NO_VALID_DEPTH, f"no depth sample within [{self._p.min_depth_m}, "
                                 f"{self._p.max_depth_m}] m (all zero, NaN, negative or out of range)")
        return _Decoded(rgb, depth_m, mask, K)

    def _intrinsics(self, info_msg: CameraInfo, w: int, h: int) -> np.ndarray:
        """Validated K (3, 3) for a w x h image; cached while CameraInfo (k, size) stays the same."""
        key = (np.asarray(info_msg.k, np.float64).tobytes(), info_msg.width, info_msg.height, w, h)
        if self._k_cache is not None and self._k_cache[0] == key:
            return self._k_cache[1]
        K, info_wh = camera_info_to_K(info_msg)
        if info_wh != (w, h):
            K = scale_intrinsics(K, info_wh, (w, h))
        self._k_cache = (key, K)
        return K

    def _postprocess(self, header_msg: Image, frame: _Decoded, instances: list) -> float:
        """Optional ICP refinement and temporal smoothing of trusted poses (in place); returns ms spent."""
        p = self._p
        t0 = time.perf_counter()
        stamp_s = header_msg.header.stamp.sec + 1e-9 * header_msg.header.stamp.nanosec
        for inst in instances:
            if inst.pose is None or not inst.trusted:
                if inst.reason:
                    self._stats.instance_skipped(inst.reason)
                    self._warn(inst.reason, f"{inst.category} #{inst.instance_id}: no published pose")
                continue
            R, t = np.asarray(inst.pose.R), np.asarray(inst.pose.t_m)
            if p.refine and self._open3d_ok and inst.vertices_cam is not None:
                R, t = self._refine(frame, inst, R, t)
            if p.smoothing_alpha > 0:
                R, t = self._smoother.update((inst.category, inst.instance_id), stamp_s, R, t,
                                             p.smoothing_alpha, p.smoothing_timeout_s)
            if R is not inst.pose.R:
                inst.pose = _with_pose(inst.pose, R, t)
        if p.smoothing_alpha > 0:
            self._smoother.forget_older_than(stamp_s - max(p.smoothing_timeout_s, 1.0) * 10)
        return (time.perf_counter() - t0) * 1e3

    def _refine(self, frame: _Decoded, inst, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ICP-refined (R, t) of one instance; the input pose when ICP fails or finds too few partners."""
        p = self._p
        obs = observed_points(frame.depth_m, frame.mask, inst.instance_id, frame.K)
        if len(obs) < 10:
            return R, t
        try:
            T, fitness = icp_refine(obs, surface_points(inst.vertices_cam, self._faces.get(inst.category)),
                                    p.refine_max_distance_m, p.refine_iterations)
        except Exception as exc:  # noqa: BLE001 - refinement is optional: keep the unrefined pose
            self._warn("refine_failed", f"ICP failed ({type(exc).__name__}: {exc}); pose left unrefined")
            return R, t
        if fitness < MIN_ICP_FITNESS:
            self._warn("refine_rejected", f"ICP matched only {fitness:.0%} of the depth points; pose left unrefined")
            return R, t
        inst.vertices_cam = inst.vertices_cam @ T[:3, :3].T + T[:3, 3]
        return T[:3, :3] @ R, T[:3, :3] @ t + T[:3, 3]

    def _publish(self, rgb_msg: Image, frame: _Decoded, instances: list) -> int:
        """Publish every output for one processed frame; returns the number of trusted poses."""
        header = rgb_msg.header
        trusted = [i for i in instances if i.trusted and i.pose is not None]
        if trusted:
            best = max(trusted, key=lambda i: i.pose.quality)
            self._pub_pose.publish(pose_stamped(header, best.pose.R, best.pose.t_m))
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
            self._detections.publish(self._detection_array(header, instances))
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

    def _detection_array(self, header, instances):
        """vision_msgs/Detection3DArray of every instance with a pose (score = quality)."""
        from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

        from .markers import pose_msg

        out = Detection3DArray(header=header)
        for inst in instances:
            if inst.pose is None:
                continue
            det = Detection3D(header=header, id=f"{inst.category}_{inst.instance_id}")
            det.bbox.center = pose_msg(inst.pose.R, inst.pose.t_m)
            det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = map(float, inst.pose.size_m)
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = inst.category
            hyp.hypothesis.score = float(inst.pose.quality)
            hyp.pose.pose = det.bbox.center
            det.results = [hyp]
            out.detections.append(det)
        return out

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

    def _publish_diagnostics(self) -> None:
        drops = self._sync_drops()
        new_drops = {k: v - self._last_sync_drops.get(k, 0) for k, v in drops.items()
                     if k.count(".") == 1 and v > self._last_sync_drops.get(k, 0)}
        if new_drops:
            self._warn("unsynchronized", "synchroniser dropped " + ", ".join(
                f"{n} on {k.split('.', 1)[1]}" for k, n in new_drops.items())
                + f" (stamps more than sync_slop_s={self._p.sync_slop_s} s apart, or a missing input)")
        self._last_sync_drops = drops
        s = self._stats
        if self._pipeline is None:
            level, message = diag.ERROR, f"no model: {self._model_error}"
        elif s.received == 0:
            missing = [n for n, c in self._input_counts.items() if c == 0]
            level = diag.WARN
            message = ("waiting for " + ", ".join(missing)) if missing else "inputs arrive but never synchronise"
        elif s.rejected or s.instances_untrusted or new_drops:
            level = diag.OK if s.processed else diag.WARN
            message = f"{s.processed}/{s.received} frames served; last skip: {s.last_reason or 'sync'}"
        else:
            level, message = diag.OK, f"{s.processed}/{s.received} frames served"
        models = {c: f"{m.info.path} [{m.name}] S={m.info.crop_size} G={m.info.grid_size} "
                     f"N={m.info.num_vertices} version={m.info.version}" for c, m in self._models.items()}
        extra: dict[str, object] = {f"input_messages.{n}": c for n, c in self._input_counts.items()}
        extra.update(drops)
        if self._model_error:
            extra["model_error"] = self._model_error
        status = diag.build_status(s, name=f"{self.get_fully_qualified_name()}: pose pipeline", hardware_id="cse_pose",
                                   level=level, message=message, models=models, extra=extra)
        self._pub_diag.publish(diag.build_array(status, self.get_clock().now().to_msg()))

    # -- test hooks ----------------------------------------------------------------------------------------
    @property
    def stats(self) -> diag.FrameStats:
        """The frame statistics (read-only use)."""
        return self._stats


def _with_pose(pose, R: np.ndarray, t: np.ndarray):
    """Copy of an ``ObjectPose`` with a new rotation and translation."""
    from dataclasses import replace

    return replace(pose, R=np.asarray(R, np.float64), t_m=np.asarray(t, np.float64))


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
