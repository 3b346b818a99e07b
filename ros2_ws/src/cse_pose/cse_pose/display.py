"""What a person looks at: display colours, the mesh decimation of the mesh marker, the debug-image drawing.

ROS-free: the node turns these into messages (``cse_pose_ros.markers``) and the demo draws with them.
Geometry is in the camera optical frame of the input image (x right, y down, z forward); poses are
``p_cam = R @ p_obj + t_m``. Drawing functions take any object with the attributes of
:class:`~cse_pose.pipeline.InstanceResult`.

Mesh decimation: a TRIANGLE_LIST marker costs per point (building and converting ``Point`` messages), so
the mesh marker draws a display decimation of the prior mesh (:func:`decimate_faces`, chosen once per
model: triangles over a subset of the mesh's own vertices, so they follow the deformed vertices of every
frame).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .core.camera import project
from .core.metrics import box_corners

#: 12 edges of a box as index pairs into the corners of :func:`cse_pose.core.metrics.box_corners`
#: (corner index = 4*[x>0] + 2*[y>0] + [z>0]).
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



def box_corners_obj(size_m: np.ndarray) -> np.ndarray:
    """(8, 3) corners of a box of full extents ``size_m`` (3,) centred at the object origin."""
    return box_corners(np.eye(3), np.zeros(3), np.asarray(size_m, np.float64))


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


def neutral_vertices(model) -> np.ndarray | None:
    """(N, 3) canonical vertices ``model`` (an ``InferenceBackend``) predicts for a black crop with a full
    mask (deterministic per model file): the geometry that chooses the mesh marker's decimation. None when
    the call fails."""
    info = model.info
    s, g = info.crop_size, info.grid_size
    try:
        vertices = model.run(np.zeros((1, 3, s, s), np.float32), np.ones((1, 1, g, g), np.float32))[0]
        return np.array(vertices[0], dtype=np.float64)
    except Exception:  # noqa: BLE001 - display only: the full mesh is drawn instead
        return None


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


def project_points(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(n, 3) camera-frame points -> (n, 2) pixels; points behind the camera get NaN."""
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = project(p, K)
    uv[p[:, 2] <= 1e-6] = np.nan
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
