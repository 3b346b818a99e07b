"""Output messages built from pose results: Pose/PoseArray, Detection3DArray, TF frame names, MarkerArray.

All geometry is in the camera optical frame of the input image (x right, y down, z forward); object
poses are ``p_cam = R @ p_obj + t_m`` with ``p_obj`` in the published object frame (origin at the 3D box
centre, y up along the object's upright axis). Functions take any object with the attributes of
:class:`~cse_pose.pipeline.InstanceResult` (``instance_id``, ``category``, ``pose`` (an
``ObjectPose`` or None), ``trusted``, ``reason``, ``vertices_cam`` ((N, 3) metres or None)). Colours,
the mesh decimation and the debug-image drawing are ROS-free (:mod:`cse_pose.display`).

MarkerArray layout (vision_msgs is not required: the same facts ride on the markers): the first marker
is a ``DELETEALL`` (so markers of objects that left the view vanish), then per instance with a pose,
namespaces ``<category>/box`` (LINE_LIST, 12 edges of the box, pose = object pose, so the points
carry the size), ``<category>/axes`` (LINE_LIST, x red, y green, z blue), ``<category>/mesh``
(TRIANGLE_LIST, the deformed mesh in the camera frame) and ``<category>/label`` (TEXT_VIEW_FACING:
category, instance id, score, size, and the reason when untrusted); the marker id is the instance id.

Cost: a TRIANGLE_LIST carries 3 ``Point`` messages per triangle, and both building them in Python and
rclpy's Python->C conversion at ``publish`` are per-point work (about 0.8 us + 0.5 us per point here).
So the mesh marker draws a display decimation (:func:`cse_pose.display.decimate_faces`), and points are
created without the generated per-field setters (:func:`_points`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from cse_pose.core.rotation import quaternion_from_matrix
from cse_pose.display import AXIS_COLORS, BOX_EDGES, CATEGORY_COLORS, UNTRUSTED_COLOR, box_corners_obj, label_text


def pose_msg(R: np.ndarray, t_m: np.ndarray) -> Pose:
    """geometry_msgs/Pose of the object frame in the camera frame (R (3,3) object→camera, t (3,) m)."""
    q = quaternion_from_matrix(R)
    t = np.asarray(t_m, dtype=np.float64).reshape(3)
    return Pose(position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def pose_stamped(header: Header, R: np.ndarray, t_m: np.ndarray) -> PoseStamped:
    """PoseStamped with the input image's header (stamp and camera frame)."""
    return PoseStamped(header=header, pose=pose_msg(R, t_m))


def pose_array(header: Header, poses: Iterable) -> PoseArray:
    """PoseArray of ``ObjectPose``-like objects (attributes ``R``, ``t_m``)."""
    return PoseArray(header=header, poses=[pose_msg(p.R, p.t_m) for p in poses])


def detection_array(header: Header, instances: Iterable) -> object:
    """vision_msgs/Detection3DArray: one Detection3D per instance (the node passes the trusted ones).

    Per detection: ``id`` ``<category>_<instance id>``, ``bbox`` (centre = object pose, ``size`` = box
    extents in m along the object axes) and one result: ``class_id`` = category, ``score`` = quality (0..1),
    ``pose`` = object pose with ``covariance`` = :meth:`cse_pose.core.pose.ObjectPose.covariance` (6x6 row
    major, x y z in m^2 then rotation about x y z in rad^2; diagonal and isotropic, so the same in any
    frame). Imports vision_msgs (raises ImportError where it is not installed).
    """
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray(header=header)
    for inst in instances:
        pose = inst.pose
        det = Detection3D(header=header, id=f"{inst.category}_{int(inst.instance_id)}")
        det.bbox.center = pose_msg(pose.R, pose.t_m)
        det.bbox.size = Vector3(**dict(zip("xyz", map(float, np.asarray(pose.size_m).reshape(3)), strict=True)))
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = inst.category
        hyp.hypothesis.score = float(pose.quality)
        hyp.pose.pose = det.bbox.center
        hyp.pose.covariance = np.asarray(pose.covariance(), np.float64).reshape(36)
        det.results = [hyp]
        out.detections.append(det)
    return out


def tf_child_frame(prefix: str, category: str, instance_id: int) -> str:
    """TF frame name of one object: ``<prefix><category>_<id>`` (e.g. ``cse/mug_3``)."""
    return f"{prefix}{category}_{int(instance_id)}"


# ---------------------------------------------------------------------------------------------------
# markers
# ---------------------------------------------------------------------------------------------------
#: ``Point`` objects can be made without its constructor when the generated class has the known layout
#: (slots ``_x``, ``_y``, ``_z``, ``_check_fields``) and field checks are off (``ROS_PYTHON_CHECK_FIELDS``
#: unset, the default): 3x faster than ``Point(x=, y=, z=)`` (kwargs parsing and three property setters).
_FAST_POINTS = (
    list(getattr(Point, "__slots__", ())) == ["_x", "_y", "_z", "_check_fields"]
    and os.environ.get("ROS_PYTHON_CHECK_FIELDS", "") != "1"
)


def _points(arr: np.ndarray) -> list[Point]:
    """(n, 3) array -> list of geometry_msgs/Point (float64 coordinates)."""
    rows = np.asarray(arr, dtype=np.float64).reshape(-1, 3).tolist()
    if not _FAST_POINTS:
        return [Point(x=x, y=y, z=z) for x, y, z in rows]
    new = Point.__new__
    out: list[Point] = []
    append = out.append
    for x, y, z in rows:
        p = new(Point)
        p._x = x
        p._y = y
        p._z = z
        p._check_fields = False
        append(p)
    return out


def _color(rgb: Sequence[float], alpha: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=float(alpha))


def _duration(seconds: float) -> Duration:
    sec = int(seconds)
    return Duration(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


def _base_marker(header: Header, ns: str, marker_id: int, kind: int, lifetime_s: float) -> Marker:
    m = Marker(header=header, ns=ns, id=int(marker_id), type=kind, action=Marker.ADD)
    m.lifetime = _duration(lifetime_s)
    m.pose.orientation.w = 1.0
    return m


def box_marker(header: Header, category: str, instance_id: int, R: np.ndarray, t_m: np.ndarray,
               size_m: np.ndarray, color: Sequence[float], lifetime_s: float, line_width_m: float = 0.004
               ) -> Marker:
    """LINE_LIST of the 12 box edges in the object frame; ``pose`` = object pose in the camera frame."""
    m = _base_marker(header, f"{category}/box", instance_id, Marker.LINE_LIST, lifetime_s)
    m.pose = pose_msg(R, t_m)
    m.scale.x = float(line_width_m)
    m.color = _color(color)
    m.points = _points(box_corners_obj(size_m)[BOX_EDGES.reshape(-1)])
    return m


def axes_marker(header: Header, category: str, instance_id: int, R: np.ndarray, t_m: np.ndarray,
                length_m: float, lifetime_s: float, line_width_m: float = 0.005) -> Marker:
    """LINE_LIST of the object axes (x red, y green, z blue) of length ``length_m``."""
    m = _base_marker(header, f"{category}/axes", instance_id, Marker.LINE_LIST, lifetime_s)
    m.pose = pose_msg(R, t_m)
    m.scale.x = float(line_width_m)
    m.color = _color((1.0, 1.0, 1.0))
    ends = np.zeros((6, 3))
    ends[1::2] = np.eye(3) * float(length_m)
    m.points = _points(ends)
    m.colors = [_color(c) for c in AXIS_COLORS for _ in range(2)]
    return m


def mesh_marker(header: Header, category: str, instance_id: int, vertices_cam: np.ndarray,
                faces: np.ndarray, color: Sequence[float], lifetime_s: float, alpha: float = 0.5) -> Marker:
    """TRIANGLE_LIST of the deformed mesh: ``vertices_cam`` (N, 3) metres in the camera frame,
    ``faces`` (F, 3) vertex indices → 3F points."""
    m = _base_marker(header, f"{category}/mesh", instance_id, Marker.TRIANGLE_LIST, lifetime_s)
    m.scale = Vector3(x=1.0, y=1.0, z=1.0)
    m.color = _color(color, alpha)
    m.points = _points(np.asarray(vertices_cam)[np.asarray(faces).reshape(-1)])
    return m


def label_marker(header: Header, category: str, instance_id: int, position_m: np.ndarray, text: str,
                 color: Sequence[float], lifetime_s: float, height_m: float = 0.025) -> Marker:
    """TEXT_VIEW_FACING label at ``position_m`` (3,) in the camera frame."""
    m = _base_marker(header, f"{category}/label", instance_id, Marker.TEXT_VIEW_FACING, lifetime_s)
    p = np.asarray(position_m, dtype=np.float64).reshape(3)
    m.pose.position = Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))
    m.scale.z = float(height_m)
    m.color = _color(color)
    m.text = text
    return m


def build_marker_array(header: Header, instances: Iterable, faces: Mapping[str, np.ndarray],
                       lifetime_s: float = 0.5, with_mesh: bool = True) -> MarkerArray:
    """DELETEALL + box, axes, mesh and label markers for every instance that has a pose.

    ``faces``: category → (F, 3) triangles of the model's prior mesh (mesh skipped when absent or when
    ``vertices_cam`` is None). Untrusted poses (quality below ``min_quality``) are drawn grey with the
    reason in their label, so a low score is visible but never mistaken for a published pose.
    """
    out = MarkerArray()
    clear = Marker(header=header, action=Marker.DELETEALL)
    out.markers.append(clear)
    for inst in instances:
        pose = inst.pose
        if pose is None:
            continue
        color = CATEGORY_COLORS.get(inst.category, (1.0, 1.0, 1.0)) if inst.trusted else UNTRUSTED_COLOR
        size = np.asarray(pose.size_m, dtype=np.float64)
        R, t = np.asarray(pose.R), np.asarray(pose.t_m)
        out.markers.append(box_marker(header, inst.category, inst.instance_id, R, t, size, color, lifetime_s))
        out.markers.append(axes_marker(header, inst.category, inst.instance_id, R, t,
                                       0.6 * float(size.max()), lifetime_s))
        tri = faces.get(inst.category)
        if with_mesh and tri is not None and getattr(inst, "vertices_cam", None) is not None and len(tri):
            out.markers.append(mesh_marker(header, inst.category, inst.instance_id, inst.vertices_cam, tri,
                                           color, lifetime_s))
        # label above the box: camera "up" is -y; half the box diagonal clears it from any view
        above = t + np.array([0.0, -(0.5 * float(np.linalg.norm(size)) + 0.02), 0.0])
        text = label_text(inst.category, inst.instance_id, float(pose.quality), size, inst.trusted,
                          getattr(inst, "reason", ""))
        out.markers.append(label_marker(header, inst.category, inst.instance_id, above, text, color,
                                        lifetime_s))
    return out


