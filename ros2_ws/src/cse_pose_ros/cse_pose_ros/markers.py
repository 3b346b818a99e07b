"""Output messages built from pose results: Pose/PoseArray, TF, MarkerArray and the debug image.

All geometry is in the camera optical frame of the input image (x right, y down, z forward); object
poses are ``p_cam = R @ p_obj + t_m`` with ``p_obj`` in the published object frame (origin at the 3D box
centre, y up along the object's upright axis). Functions take any object with the attributes of
:class:`~cse_pose_ros.pipeline.InstanceResult` (``instance_id``, ``category``, ``pose`` (an
``ObjectPose`` or None), ``trusted``, ``reason``, ``vertices_cam`` ((N, 3) metres or None)).

MarkerArray layout (vision_msgs is not required: the same facts ride on the markers): the first marker
is a ``DELETEALL`` (so markers of objects that left the view vanish), then per instance with a pose,
namespaces ``<category>/box`` (LINE_LIST, 12 edges of the box, pose = object pose, so the points
carry the size), ``<category>/axes`` (LINE_LIST, x red, y green, z blue), ``<category>/mesh``
(TRIANGLE_LIST, the deformed mesh in the camera frame) and ``<category>/label`` (TEXT_VIEW_FACING:
category, instance id, score, size, and the reason when untrusted); the marker id is the instance id.

Cost: a TRIANGLE_LIST carries 3 ``Point`` messages per triangle, and both building them in Python and
rclpy's Python->C conversion at ``publish`` are per-point work (about 0.8 us + 0.5 us per point here).
So the mesh marker draws a display decimation of the prior mesh (:func:`decimate_faces`, chosen once per
model: triangles over a subset of the mesh's own vertices, so they follow the deformed vertices of every
frame), and points are created without the generated per-field setters (:func:`_points`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

# 12 edges of a box as index pairs into the corners of :func:`box_corners_obj` (sign bits x, y, z).
BOX_EDGES = np.array(
    [[0, 1], [2, 3], [4, 5], [6, 7],  # along z
     [0, 2], [1, 3], [4, 6], [5, 7],  # along y
     [0, 4], [1, 5], [2, 6], [3, 7]],  # along x
    dtype=np.int64,
)
CATEGORY_COLORS: dict[str, tuple[float, float, float]] = {
    "bottle": (0.20, 0.60, 1.00),
    "bowl": (1.00, 0.60, 0.10),
    "camera": (0.70, 0.30, 1.00),
    "can": (0.90, 0.20, 0.20),
    "laptop": (0.20, 0.85, 0.85),
    "mug": (0.20, 0.90, 0.30),
}
UNTRUSTED_COLOR = (0.6, 0.6, 0.6)
AXIS_COLORS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------------
# rotations
# ---------------------------------------------------------------------------------------------------
def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a proper rotation matrix R (3, 3) (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0.0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion (x, y, z, w) (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


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


def tf_child_frame(prefix: str, category: str, instance_id: int) -> str:
    """TF frame name of one object: ``<prefix><category>_<id>`` (e.g. ``cse/mug_3``)."""
    return f"{prefix}{category}_{int(instance_id)}"


# ---------------------------------------------------------------------------------------------------
# markers
# ---------------------------------------------------------------------------------------------------
def box_corners_obj(size_m: np.ndarray) -> np.ndarray:
    """(8, 3) corners of a box of full extents ``size_m`` (3,) centred at the origin; corner index =
    4*[x>0] + 2*[y>0] + [z>0]."""
    half = 0.5 * np.asarray(size_m, dtype=np.float64).reshape(3)
    bits = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=np.float64)
    return (2.0 * bits - 1.0) * half


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


#: Grid sizes tried on either side of the bisection's answer in :func:`decimate_faces`.
_DECIMATE_WINDOW = 6


def _components(faces: np.ndarray, n: int) -> np.ndarray:
    """(n,) connected-component label of every vertex of the triangle mesh (label = smallest vertex id)."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    label = np.arange(n)
    while True:  # min-label propagation with pointer jumping: converges in O(log diameter) rounds
        low = np.minimum(label[edges[:, 0]], label[edges[:, 1]])
        new = label.copy()
        np.minimum.at(new, edges[:, 0], low)
        np.minimum.at(new, edges[:, 1], low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def _normal_classes(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N,) class 0..5 of every vertex: the axis direction (-x, +x, -y, +y, -z, +z) nearest to its
    area-weighted normal."""
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    normal = np.zeros_like(vertices)
    np.add.at(normal, faces.reshape(-1), np.repeat(face_n, 3, axis=0))
    axis = np.argmax(np.abs(normal), axis=1)
    return 2 * axis + (normal[np.arange(len(vertices)), axis] > 0)


def _cluster_faces(vertices: np.ndarray, faces: np.ndarray, groups: np.ndarray, cells: int) -> np.ndarray:
    """Vertex clustering on a ``cells``^3 grid over the bounding box; clusters never span two ``groups``
    (N,) labels. Every cluster is represented by its vertex nearest to the cluster mean. Returns the faces
    mapped to representatives, degenerate and repeated triangles dropped (first orientation kept)."""
    lo = vertices.min(axis=0)
    extent = float((vertices.max(axis=0) - lo).max())
    step = extent / cells if extent > 0 else 1.0
    cell = np.minimum(np.floor((vertices - lo) / step), cells - 1).astype(np.int64)
    key = np.concatenate([cell, groups[:, None]], axis=1)
    _, cluster = np.unique(key, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    k = int(cluster.max()) + 1
    mean = np.zeros((k, 3))
    np.add.at(mean, cluster, vertices)
    mean /= np.bincount(cluster, minlength=k)[:, None]
    dist = np.linalg.norm(vertices - mean[cluster], axis=1)
    order = np.lexsort((np.arange(len(vertices)), dist, cluster))  # per cluster: nearest first, then lowest id
    first = np.ones(len(order), bool)
    first[1:] = cluster[order[1:]] != cluster[order[:-1]]
    rep = np.empty(k, np.int64)
    rep[cluster[order[first]]] = order[first]
    tri = rep[cluster[faces]]
    tri = tri[(tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])]
    if len(tri) == 0:
        return tri
    _, keep = np.unique(np.sort(tri, axis=1), axis=0, return_index=True)
    return tri[np.sort(keep)]


def decimate_faces(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> np.ndarray:
    """At most ``max_faces`` display triangles over a subset of the mesh's own vertices.

    Vertex clustering on the finest regular grid (cells of equal size over the bounding box of
    ``vertices``) that yields at most ``max_faces`` triangles. Vertices of different connected components
    (a mug's handle) or of differently facing surfaces (normal nearest to another axis direction: a cap
    and the side wall, two sides of a thin part) never merge. Each cluster collapses onto one of its
    vertices, so the result indexes the original vertex array and follows any deformation of it (choose
    it once per model from the undeformed or a typical vertex set, apply it to every frame's vertices).

    Args:
        vertices: (N, 3) vertex positions (any unit) used to choose the clusters.
        faces: (F, 3) triangles, indices into ``vertices``.
        max_faces: upper bound on the triangles returned; ``<= 0`` or ``>= F`` returns ``faces`` unchanged.
    Returns:
        (F', 3) int32 triangles, ``F' <= max_faces`` (all of ``faces`` when no decimation is needed; its
        first ``max_faces`` triangles in the degenerate case that no grid gives any triangle).
    """
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if max_faces <= 0 or len(faces) <= max_faces:
        return faces.astype(np.int32)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if faces.min() < 0 or faces.max() >= len(v):
        raise ValueError(f"faces index outside the {len(v)} vertices")
    groups = 6 * _components(faces, len(v)) + _normal_classes(v, faces)
    counts: dict[int, np.ndarray] = {}

    def clustered(cells: int) -> np.ndarray:
        if cells not in counts:
            counts[cells] = _cluster_faces(v, faces, groups, cells)
        return counts[cells]

    # Grid cells per axis: the face count grows with them, though not monotonically (the grid's phase
    # against the vertices matters). Bisect for the boundary, then take the best grid near it.
    lo, hi = 1, 512
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(clustered(mid)) <= max_faces:
            lo = mid
        else:
            hi = mid - 1
    best = faces[:0]
    for cells in range(max(1, lo - _DECIMATE_WINDOW), lo + _DECIMATE_WINDOW + 1):
        tri = clustered(cells)
        if len(best) < len(tri) <= max_faces:
            best = tri
    if len(best) == 0:
        best = faces[:max_faces]
    return best.astype(np.int32)


class DisplayMeshes:
    """Display triangles of every category's mesh marker: :func:`decimate_faces` once per bound, cached.

    Args:
        faces: category -> (F, 3) triangles of the model's prior mesh.
        vertices: category -> (N, 3) vertex positions that choose the decimation (e.g. the model's
            vertices for a neutral input); a category without them (missing or None) keeps its full mesh.
    """

    def __init__(self, faces: Mapping[str, np.ndarray], vertices: Mapping[str, np.ndarray | None]) -> None:
        self._faces = {c: np.asarray(f) for c, f in faces.items()}
        self._vertices = {c: np.asarray(v) for c, v in vertices.items() if v is not None}
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    def faces(self, max_faces: int) -> dict[str, np.ndarray]:
        """category -> display triangles with at most ``max_faces`` each (0 = full meshes)."""
        if self._cache is None or self._cache[0] != max_faces:
            out = {}
            for c, f in self._faces.items():
                v = self._vertices.get(c)
                out[c] = f if v is None or len(f) == 0 else decimate_faces(v, f, max_faces)
            self._cache = (max_faces, out)
        return self._cache[1]


def label_text(category: str, instance_id: int, quality: float | None, size_m: np.ndarray | None,
               trusted: bool, reason: str = "") -> str:
    """Marker text: ``mug #3 q=0.87`` + size in cm + ``UNTRUSTED (reason)`` when not published as a pose."""
    q = "n/a" if quality is None else f"{quality:.2f}"
    text = f"{category} #{int(instance_id)} q={q}"
    if size_m is not None:
        s = 100.0 * np.asarray(size_m, dtype=np.float64).reshape(3)
        text += f"\n{s[0]:.1f}x{s[1]:.1f}x{s[2]:.1f} cm"
    if not trusted:
        text += f"\nUNTRUSTED ({reason or 'low score'})"
    return text


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


# ---------------------------------------------------------------------------------------------------
# debug image
# ---------------------------------------------------------------------------------------------------
def project_points(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(n, 3) camera-frame points -> (n, 2) pixels; points behind the camera get NaN."""
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    z = p[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (p @ np.asarray(K, dtype=np.float64).T)[:, :2] / z
    uv[(z[:, 0] <= 1e-6)] = np.nan
    return uv


def draw_pose(image: np.ndarray, K: np.ndarray, R: np.ndarray, t_m: np.ndarray, size_m: np.ndarray,
              color_rgb: Sequence[float], label: str = "", thickness: int = 2) -> None:
    """Draw a pose's 3D box (``color_rgb`` in 0..1), its axes (x red, y green, z blue) and ``label``
    into ``image`` (H, W, 3) uint8 RGB, in place."""
    import cv2

    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t_m, dtype=np.float64).reshape(3)
    corners = box_corners_obj(size_m) @ R.T + t
    uv = project_points(corners, K)
    col = tuple(int(255 * c) for c in color_rgb)
    for a, b in BOX_EDGES:
        if np.isfinite(uv[[a, b]]).all():
            cv2.line(image, _pt(uv[a]), _pt(uv[b]), col, thickness, cv2.LINE_AA)
    length = 0.6 * float(np.max(size_m))
    axes = np.vstack([t, t + R.T[0] * length, t + R.T[1] * length, t + R.T[2] * length])
    auv = project_points(axes, K)
    for i, c in enumerate(AXIS_COLORS):
        if np.isfinite(auv[[0, i + 1]]).all():
            cv2.line(image, _pt(auv[0]), _pt(auv[i + 1]), tuple(int(255 * v) for v in c), thickness, cv2.LINE_AA)
    if label and np.isfinite(uv).all():
        top = uv[np.argmin(uv[:, 1])]
        cv2.putText(image, label, _pt(top + np.array([0.0, -6.0])), cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1,
                    cv2.LINE_AA)


def _pt(uv: np.ndarray) -> tuple[int, int]:
    """Pixel (2,) float -> int tuple, clipped to a range cv2 accepts."""
    u, v = np.clip(np.round(uv), -1e5, 1e5).astype(np.int64)
    return int(u), int(v)


def draw_instances(rgb: np.ndarray, K: np.ndarray, instances: Iterable) -> np.ndarray:
    """Copy of ``rgb`` (H, W, 3) uint8 with every instance pose drawn (untrusted ones grey)."""
    image = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    for inst in instances:
        pose = inst.pose
        if pose is None:
            continue
        color = CATEGORY_COLORS.get(inst.category, (1.0, 1.0, 1.0)) if inst.trusted else UNTRUSTED_COLOR
        label = f"{inst.category} #{int(inst.instance_id)} {float(pose.quality):.2f}"
        draw_pose(image, K, pose.R, pose.t_m, pose.size_m, color, label)
    return image
