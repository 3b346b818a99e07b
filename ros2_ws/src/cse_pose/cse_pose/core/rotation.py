"""Rotation representations: unit quaternions (x, y, z, w) <-> matrices, interpolation, sampling.

Quaternions are in ROS order (x, y, z, w) with w >= 0 where this module produces them; matrices are
proper rotations (3, 3), ``p_a = R @ p_b``.
"""

from __future__ import annotations

import math

import numpy as np


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a proper rotation matrix R (3, 3) (Shepperd's method).

    Scalar arithmetic on Python floats: a few microseconds, where numpy's per-element indexing took ~45 us
    (the node converts every published pose).
    """
    m = np.asarray(R, dtype=np.float64).reshape(3, 3).tolist()
    tr = m[0][0] + m[1][1] + m[2][2]
    if tr > 0.0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s, 0.25 * s]
    else:
        diag = (m[0][0], m[1][1], m[2][2])
        i = diag.index(max(diag))  # the first largest, as np.argmax
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i][i] - m[j][j] - m[k][k], 1e-300))
        q = [0.0, 0.0, 0.0, 0.0]
        q[i] = 0.25 * s
        q[j] = (m[j][i] + m[i][j]) / s
        q[k] = (m[k][i] + m[i][k]) / s
        q[3] = (m[k][j] - m[j][k]) / s
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    sign = -1.0 if q[3] < 0 else 1.0
    return np.array([sign * c / norm for c in q])


def matrix_from_quaternion(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion (x, y, z, w) (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


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


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random proper rotation (3, 3) (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
