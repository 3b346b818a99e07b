"""The paper's evaluation (docs/reference.md §5): 3D IoU, rotation and translation errors, thresholds.

Boxes are oriented: rotation R (3, 3, object -> camera, columns are the box axes), centre t (3,) metres,
full extents ``size`` (3,) metres. Symmetric categories (continuous symmetry about the object y axis) are
scored by the angle between the y axes and by the best IoU over rotations of the ground truth about its
own y axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .errors import InvalidInputError

#: (name, max rotation error in degrees, max translation error in cm); strict '<' on both.
POSE_THRESHOLDS: tuple[tuple[str, float, float], ...] = (
    ("5deg2cm", 5.0, 2.0),
    ("5deg5cm", 5.0, 5.0),
    ("10deg2cm", 10.0, 2.0),
    ("10deg5cm", 10.0, 5.0),
)
#: (name, min 3D IoU); ">=" as NOCS.
IOU_THRESHOLDS: tuple[tuple[str, float], ...] = (("IoU25", 0.25), ("IoU50", 0.50), ("IoU75", 0.75))
METRIC_NAMES: tuple[str, ...] = tuple(n for n, _ in IOU_THRESHOLDS) + tuple(n for n, _, _ in POSE_THRESHOLDS)

# Sign pattern of the 8 corners (objectron order): x slowest, z fastest.
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def _box_args(R: np.ndarray, t: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    size = np.asarray(size, dtype=np.float64).reshape(-1)
    if R.shape != (3, 3) or t.shape != (3,) or size.shape != (3,):
        raise InvalidInputError(f"box needs R (3,3), t (3,), size (3,); got {R.shape}, {t.shape}, {size.shape}")
    if not (np.isfinite(R).all() and np.isfinite(t).all() and np.isfinite(size).all()):
        raise InvalidInputError("box parameters contain NaN or inf")
    if (size < 0).any():
        raise InvalidInputError(f"box size must be non-negative, got {size.tolist()}")
    return R, t, size


def box_corners(R: np.ndarray, t: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(8, 3) corners of an oriented box in the camera frame (objectron order: (-,-,-), (-,-,+), ...)."""
    R, t, size = _box_args(R, t, size)
    return (0.5 * _CORNER_SIGNS * size) @ R.T + t


def _halfspaces(R: np.ndarray, t: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box as 6 half-spaces ``n . x <= d``: normals (6, 3), offsets (6,)."""
    normals = np.concatenate([R.T, -R.T])  # rows: +x, +y, +z, -x, -y, -z axes
    d = normals @ t + np.concatenate([size, size]) / 2.0
    return normals, d


def _convex_volume(normals: np.ndarray, d: np.ndarray, tol: float) -> float:
    """Volume of the bounded polytope {x : normals x <= d} (exact, vertex enumeration)."""
    # Coincident planes (e.g. two boxes sharing a face plane) would count their face twice: keep one.
    keep: list[int] = []
    for i in range(len(d)):
        if not any(normals[i] @ normals[j] > 1 - 1e-12 and abs(d[i] - d[j]) <= tol for j in keep):
            keep.append(i)
    normals, d = normals[keep], d[keep]
    triples = np.array(list(combinations(range(len(d)), 3)))
    A = normals[triples]  # (T, 3, 3)
    b = d[triples]
    det = np.linalg.det(A)
    good = np.abs(det) > 1e-12
    if not good.any():
        return 0.0
    pts = np.linalg.solve(A[good], b[good][..., None])[..., 0]
    inside = (pts @ normals.T <= d + tol).all(axis=1)
    pts = pts[inside]
    if len(pts) < 4:
        return 0.0
    centre = pts.mean(axis=0)
    volume = 0.0
    for n, off in zip(normals, d, strict=True):
        on = pts[np.abs(pts @ n - off) <= tol]
        if len(on) < 3:
            continue
        # Order the face's vertices by angle around their centroid within the plane, then fan-triangulate.
        c = on.mean(axis=0)
        u = on[np.argmax(np.linalg.norm(on - c, axis=1))] - c
        if np.linalg.norm(u) < tol:
            continue
        u /= np.linalg.norm(u)
        v = np.cross(n, u)
        ang = np.arctan2((on - c) @ v, (on - c) @ u)
        on = on[np.argsort(ang)]
        area_vec = np.cross(on[1:-1] - on[0], on[2:] - on[0]).sum(axis=0) / 2.0
        area = abs(area_vec @ n)
        height = off - centre @ n
        volume += area * height / 3.0
    return float(volume)


def iou_3d(
    R1: np.ndarray, t1: np.ndarray, size1: np.ndarray, R2: np.ndarray, t2: np.ndarray, size2: np.ndarray
) -> float:
    """Exact IoU of two oriented 3D boxes (intersection volume by half-space vertex enumeration)."""
    R1, t1, size1 = _box_args(R1, t1, size1)
    R2, t2, size2 = _box_args(R2, t2, size2)
    v1, v2 = float(np.prod(size1)), float(np.prod(size2))
    if v1 <= 0 or v2 <= 0:
        return 0.0
    # Quick reject: bounding spheres apart.
    if np.linalg.norm(t1 - t2) > 0.5 * (np.linalg.norm(size1) + np.linalg.norm(size2)):
        return 0.0
    n1, d1 = _halfspaces(R1, t1, size1)
    n2, d2 = _halfspaces(R2, t2, size2)
    scale = max(size1.max(), size2.max())
    inter = _convex_volume(np.concatenate([n1, n2]), np.concatenate([d1, d2]), tol=1e-9 * scale + 1e-12)
    inter = min(inter, v1, v2)
    return inter / (v1 + v2 - inter)


def rotation_about_axis(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues: rotation (3, 3) by ``angle_rad`` about unit ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * K + (1 - np.cos(angle_rad)) * (K @ K)


def rotation_error_deg(R_pred: np.ndarray, R_gt: np.ndarray, symmetric: bool = False) -> float:
    """Geodesic angle between rotations; for y-symmetric objects the angle between their y axes."""
    R_pred = np.asarray(R_pred, dtype=np.float64)
    R_gt = np.asarray(R_gt, dtype=np.float64)
    if R_pred.shape != (3, 3) or R_gt.shape != (3, 3):
        raise InvalidInputError(f"rotations must be (3, 3), got {R_pred.shape} and {R_gt.shape}")
    # Numerically stable forms (arccos of a trace loses ~1e-6 deg near zero).
    if symmetric:
        a, b = R_pred[:, 1], R_gt[:, 1]
        return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), a @ b)))
    # ||R1 - R2||_F = 2 sqrt(2) sin(angle / 2) for rotations.
    half_sin = np.linalg.norm(R_pred - R_gt) / (2.0 * np.sqrt(2.0))
    return float(np.degrees(2.0 * np.arcsin(np.clip(half_sin, 0.0, 1.0))))


def translation_error_cm(t_pred: np.ndarray, t_gt: np.ndarray) -> float:
    """Euclidean distance between box centres, centimetres."""
    return float(100.0 * np.linalg.norm(np.asarray(t_pred, float).reshape(3) - np.asarray(t_gt, float).reshape(3)))


def symmetric_iou(
    R_pred: np.ndarray,
    t_pred: np.ndarray,
    size_pred: np.ndarray,
    R_gt: np.ndarray,
    t_gt: np.ndarray,
    size_gt: np.ndarray,
    n_rotations: int = 18,
) -> float:
    """Best IoU over ``n_rotations`` copies of the ground truth rotated about its own y axis (k * 360/n deg)."""
    R_gt = np.asarray(R_gt, dtype=np.float64)
    best = 0.0
    for k in range(n_rotations):
        Rk = rotation_about_axis(R_gt[:, 1], 2.0 * np.pi * k / n_rotations) @ R_gt
        best = max(best, iou_3d(R_pred, t_pred, size_pred, Rk, t_gt, size_gt))
    return best


@dataclass(frozen=True)
class PoseErrors:
    """Errors of one predicted box against its ground truth (``size_cm``: :func:`size_error_cm`; NaN when
    not measured)."""

    iou: float
    rotation_deg: float
    translation_cm: float
    size_cm: float = float("nan")


def size_error_cm(size_pred: np.ndarray, size_gt: np.ndarray, symmetric: bool = False) -> float:
    """Largest per-axis difference of the box extents (3,) metres, in cm.

    For a y-symmetric object the x and z extents are compared sorted (a turn about y swaps them).
    """
    pred = np.asarray(size_pred, dtype=np.float64).reshape(3)
    gt = np.asarray(size_gt, dtype=np.float64).reshape(3)
    if symmetric:
        pred = np.array([*sorted((pred[0], pred[2])), pred[1]])
        gt = np.array([*sorted((gt[0], gt[2])), gt[1]])
    return float(100.0 * np.max(np.abs(pred - gt)))


def evaluate_pose(
    R_pred: np.ndarray,
    t_pred: np.ndarray,
    size_pred: np.ndarray,
    R_gt: np.ndarray,
    t_gt: np.ndarray,
    size_gt: np.ndarray,
    symmetric: bool = False,
) -> PoseErrors:
    """IoU (symmetric IoU for symmetric categories), rotation error (deg), translation error (cm) and size
    error (cm, :func:`size_error_cm`)."""
    if symmetric:
        iou = symmetric_iou(R_pred, t_pred, size_pred, R_gt, t_gt, size_gt)
    else:
        iou = iou_3d(R_pred, t_pred, size_pred, R_gt, t_gt, size_gt)
    return PoseErrors(
        iou, rotation_error_deg(R_pred, R_gt, symmetric), translation_error_cm(t_pred, t_gt),
        size_error_cm(size_pred, size_gt, symmetric),
    )


def summarize(errors: Iterable[PoseErrors | None]) -> dict[str, float]:
    """Fraction of frames meeting each threshold (``None`` = failed frame, counts as a miss).

    Returns keys ``IoU25, IoU50, IoU75, 5deg2cm, 5deg5cm, 10deg2cm, 10deg5cm`` (fractions in [0, 1]),
    ``median_rotation_deg``, ``median_translation_cm``, ``median_size_cm`` (over successful frames; NaN
    when none, or no size error was measured) and ``frames``.
    """
    errs: Sequence[PoseErrors | None] = list(errors)
    n = len(errs)
    ok = [e for e in errs if e is not None]
    out: dict[str, float] = {"frames": float(n)}
    for name, thr in IOU_THRESHOLDS:
        out[name] = sum(e.iou >= thr for e in ok) / n if n else 0.0
    for name, rot, trans in POSE_THRESHOLDS:
        out[name] = sum(e.rotation_deg < rot and e.translation_cm < trans for e in ok) / n if n else 0.0
    out["median_rotation_deg"] = float(np.median([e.rotation_deg for e in ok])) if ok else float("nan")
    out["median_translation_cm"] = float(np.median([e.translation_cm for e in ok])) if ok else float("nan")
    sizes = [e.size_cm for e in ok if np.isfinite(e.size_cm)]
    out["median_size_cm"] = float(np.median(sizes)) if sizes else float("nan")
    return out
