"""The object's box measured on its own depth points, for the extents one view shows.

The network cannot size an object: the crop is stretched per axis to the model's square input (the reference
crop), so the image it sees has no aspect ratio, and the deformed prior keeps the category's mean proportions
(measured on the shipped can: the same extents to 1e-7 for every crop). The pose fixes the object's axes; the
observed points, taken into that frame, then show the extents directly:

- y-symmetric categories (bottle, bowl, can): the diameter is twice the radial distance of the points from the
  y axis (one side of a solid of revolution shows its radius), the height is their extent along y;
- the mug: the height only (its body diameter and handle need the far side);
- camera, laptop: nothing (their depth along the view is hidden), the deformed prior's box stays.

Measured extents replace the prior's on those axes and the box centre moves to the middle of the measured
height. Mask-edge pixels whose depth belongs to the background must not stretch the box: points beyond
:data:`GATE_FACTOR` times the prior box (plus :data:`GATE_MARGIN_M`) are dropped, then the radius is a high
percentile and the height a percentile range. Frames: camera optical frame, metres.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .core.categories import is_symmetric
from .core.pose import ObjectPose

#: Categories with a measured box; the others keep the deformed prior's.
MEASURABLE_CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "can", "mug")
#: The radius is this percentile of the points' distances from the y axis, the height the range between the
#: HEIGHT_PERCENTILES of their y coordinates. Chosen on the validation split (shipped models, 120 frames each;
#: median translation / size error, cm): height (1, 99) -> (0.5, 99.5): can 0.64 / 0.53 -> 0.57 / 0.46, bottle
#: 0.61 / 0.71 -> 0.56 / 0.51, bowl 0.54 / 0.42 -> 0.54 / 0.40; (0.2, 99.8) with radius 99: can 0.52 / 0.58.
RADIUS_PERCENTILE = 98.0
HEIGHT_PERCENTILES = (0.5, 99.5)
#: Fewer observed points than this: nothing measured.
MIN_POINTS = 50
#: Points farther from the posed box centre than GATE_FACTOR * (prior half-extent) + GATE_MARGIN_M along any
#: axis are not the object: the measured box may grow by half over the prior's, not more.
GATE_FACTOR = 1.5
GATE_MARGIN_M = 0.01


def measured_box(points_obj: np.ndarray, category: str, max_half_m: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Measured extents and box centre of one object from its points in its own frame.

    Args:
        points_obj: (n, 3) observed points, published object frame (y up, origin at the posed box centre), metres.
        category: the object's category.
        max_half_m: (3,) optional gate: points with ``|p_axis| > max_half_m[axis]`` on any axis are dropped.
    Returns:
        (size (3,), centre (3,)) in the object frame, metres; NaN on the axes not measured for the category
        (all three for camera and laptop, and when there are fewer than :data:`MIN_POINTS` points).
    """
    p = np.asarray(points_obj, dtype=np.float64)
    if max_half_m is not None:
        p = p[(np.abs(p) <= np.asarray(max_half_m, np.float64)).all(axis=1)]
    size = np.full(3, np.nan)
    centre = np.full(3, np.nan)
    if category not in MEASURABLE_CATEGORIES or len(p) < MIN_POINTS:
        return size, centre
    y0, y1 = np.percentile(p[:, 1], HEIGHT_PERCENTILES)
    size[1], centre[1] = y1 - y0, 0.5 * (y0 + y1)
    if is_symmetric(category):
        diameter = 2.0 * float(np.percentile(np.hypot(p[:, 0], p[:, 2]), RADIUS_PERCENTILE))
        size[[0, 2]], centre[[0, 2]] = diameter, 0.0
    return size, centre


def apply_measured_box(pose: ObjectPose, vertices_cam: np.ndarray | None, points_cam: np.ndarray,
                       category: str) -> tuple[ObjectPose, np.ndarray | None]:
    """The pose with its box replaced by the measured one on the measured axes, and the posed mesh stretched
    to that box (so markers and box agree).

    Args:
        pose: the posed box. vertices_cam: (N, 3) the posed mesh (camera frame) or None.
        points_cam: (n, 3) the object's observed points, camera frame, metres.
        category: the object's category.
    Returns:
        (pose, vertices_cam), unchanged when nothing was measured.
    """
    R, t = np.asarray(pose.R, np.float64), np.asarray(pose.t_m, np.float64)
    old = np.asarray(pose.size_m, np.float64)
    gate = GATE_FACTOR * 0.5 * old + GATE_MARGIN_M
    size, centre = measured_box((np.asarray(points_cam, np.float64) - t) @ R, category, gate)
    measured = np.isfinite(size) & (size > 0)
    if not measured.any():
        return pose, vertices_cam
    new_size = np.where(measured, size, old)
    shift = np.where(measured, centre, 0.0)  # object frame
    t_new = t + R @ shift
    if vertices_cam is not None:
        v_obj = (np.asarray(vertices_cam, np.float64) - t) @ R
        stretch = np.where(old > 0, new_size / np.where(old > 0, old, 1.0), 1.0)
        vertices_cam = (v_obj * stretch) @ R.T + t_new
    return replace(pose, t_m=t_new, size_m=new_size), vertices_cam
