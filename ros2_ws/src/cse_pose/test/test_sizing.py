"""The box measured on the observed depth (cse_pose.sizing)."""

from __future__ import annotations

import numpy as np
import pytest

from cse_pose.core.errors import InvalidInputError
from cse_pose.core.pose import ObjectPose
from cse_pose.core.rotation import random_rotation
from cse_pose.pipeline import PipelineParams
from cse_pose.sizing import (
    DEFAULT_CATEGORIES,
    MEASURABLE_CATEGORIES,
    MEASURED_AXES,
    apply_measured_box,
    measured_box,
    percentiles,
)


def seen_cylinder(radius_m: float, height_m: float, y_shift_m: float = 0.0, n: int = 2000,
                  noise_m: float = 0.0005, seed: int = 0) -> np.ndarray:
    """Points of the half of a cylinder's side facing +z and of its top disc (what a camera above and in front
    sees), object frame, with depth noise and 4 % background pixels far behind it."""
    rng = np.random.default_rng(seed)
    side = n * 3 // 4
    phi = rng.uniform(-np.pi / 2, np.pi / 2, side)
    y = rng.uniform(-height_m / 2, height_m / 2, side)
    pts = [np.stack([radius_m * np.sin(phi), y, radius_m * np.cos(phi)], axis=1)]
    r = radius_m * np.sqrt(rng.uniform(0, 1, n - side))
    a = rng.uniform(0, 2 * np.pi, n - side)
    pts.append(np.stack([r * np.cos(a), np.full(n - side, height_m / 2), r * np.sin(a)], axis=1))
    p = np.concatenate(pts) + rng.normal(0, noise_m, (n, 3))
    outliers = rng.choice(n, n // 25, replace=False)
    p[outliers, 2] -= 0.3  # mask-edge pixels whose depth is the wall behind
    p[:, 1] += y_shift_m
    return p


def test_a_solid_of_revolution_is_measured_from_one_side():
    gate = np.array([0.1, 0.1, 0.1])  # the background pixels lie beyond it
    size, centre = measured_box(seen_cylinder(0.045, 0.08), "can", gate)
    assert np.allclose(size, [0.09, 0.08, 0.09], rtol=0.03), size
    assert np.allclose(centre, 0.0, atol=0.002), centre
    ungated, _ = measured_box(seen_cylinder(0.045, 0.08), "can")
    assert ungated[0] > 0.2  # without the gate the background pixels stretch the box
    # a box placed 1.5 cm too high around the object: the measured centre says where the object is
    _, centre = measured_box(seen_cylinder(0.045, 0.08, y_shift_m=-0.015), "bottle", gate)
    assert centre[1] == pytest.approx(-0.015, abs=0.002)


def seen_box(extents_m: np.ndarray, n: int = 2000, seed: int = 1) -> np.ndarray:
    """Points of a box's top face and of the two side faces towards +z and +x (a camera above and in front)."""
    rng = np.random.default_rng(seed)
    h = np.asarray(extents_m) / 2
    top = rng.uniform(-h, h, (n // 3, 3))
    top[:, 1] = h[1]
    front = rng.uniform(-h, h, (n // 3, 3))
    front[:, 2] = h[2]
    side = rng.uniform(-h, h, (n - 2 * (n // 3), 3))
    side[:, 0] = h[0]
    return np.concatenate([top, front, side])


def test_each_category_measures_the_axes_one_view_shows():
    gate = np.array([0.2, 0.2, 0.2])
    pts = seen_cylinder(0.04, 0.1)
    size, centre = measured_box(pts, "mug", gate)  # the handle (+x) is often on the far side
    assert np.isnan(size[[0, 2]]).all() and size[1] == pytest.approx(0.1, rel=0.03)
    extents = np.array([0.12, 0.08, 0.06])
    for category in ("camera", "laptop"):  # top face and front: all three extents
        size, centre = measured_box(seen_box(extents), category, gate)
        assert np.allclose(size, extents, rtol=0.03) and np.allclose(centre, 0.0, atol=0.002), (category, size)
    assert np.isnan(measured_box(pts[:10], "can")[0]).all()  # too few points
    assert np.isnan(measured_box(pts, "cup")[0]).all()  # no rule
    assert set(MEASURABLE_CATEGORIES) == set(MEASURED_AXES) == {"bottle", "bowl", "camera", "can", "laptop", "mug"}


def test_the_measured_box_replaces_the_priors_and_stretches_the_mesh():
    """A squat can posed with the category's mean (tall, thin) proportions gets its own box; the box centre moves
    along the object's y axis, wherever that points in the camera; the mesh is stretched to the new box."""
    R = random_rotation(np.random.default_rng(3))
    t = np.array([0.05, -0.02, 0.7])
    true_size = np.array([0.094, 0.084, 0.094])
    pose = ObjectPose(R=R, t_m=t, size_m=np.array([0.08, 0.147, 0.08]), scale=0.05, quality=0.8, inlier_ratio=0.9,
                      rms_m=0.002, mean_confidence=0.8, n_correspondences=400)
    obj = seen_cylinder(0.047, 0.084, y_shift_m=0.01)  # the object sits 1 cm above the posed box centre
    cam = obj @ R.T + t
    half = pose.size_m / 2
    mesh_obj = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    new, mesh = apply_measured_box(pose, mesh_obj @ R.T + t, cam, "can")
    assert np.allclose(new.size_m, true_size, rtol=0.03), new.size_m
    assert np.allclose((new.t_m - t) @ R, [0.0, 0.01, 0.0], atol=0.002)
    assert new.R is pose.R and new.quality == pose.quality
    mesh_new_obj = (mesh - new.t_m) @ R
    assert np.allclose(mesh_new_obj.max(0) - mesh_new_obj.min(0), new.size_m)
    assert np.allclose(mesh_new_obj.mean(0), 0.0, atol=1e-12)
    # nothing measured (too few points): the pose comes back as it was
    same, same_mesh = apply_measured_box(pose, None, cam[:10], "can")
    assert same is pose and same_mesh is None


def test_an_axis_not_seen_whole_keeps_the_priors_extent():
    """A laptop seen from behind: its lid spans x and y, but along z only the lid's few centimetres are seen,
    not the base behind it; z keeps the prior's extent and centre, x and y are measured."""
    lid = seen_box(np.array([0.34, 0.22, 0.03]))
    pose = ObjectPose(R=np.eye(3), t_m=np.zeros(3), size_m=np.array([0.36, 0.24, 0.30]), scale=0.15, quality=0.8,
                      inlier_ratio=0.9, rms_m=0.002, mean_confidence=0.8, n_correspondences=400)
    new, _ = apply_measured_box(pose, None, lid, "laptop")
    assert np.allclose(new.size_m[:2], [0.34, 0.22], rtol=0.03) and new.size_m[2] == 0.30 and new.t_m[2] == 0.0


def test_measured_categories_default_to_all_but_the_camera_and_are_checked():
    assert PipelineParams().measure_size_categories == DEFAULT_CATEGORIES == ("bottle", "bowl", "can", "laptop", "mug")
    every = PipelineParams(measure_size_categories=MEASURABLE_CATEGORIES)
    assert every.measure_size_categories == MEASURABLE_CATEGORIES
    assert PipelineParams(measure_size_categories=["can"]).measure_size_categories == ("can",)
    with pytest.raises(InvalidInputError, match="measure_size_categories"):
        PipelineParams(measure_size_categories=("cup",))


@pytest.mark.parametrize("shape", [(1,), (2,), (7, 1), (1000,), (999, 3)])
def test_percentiles_are_numpys(shape):
    values = np.random.default_rng(len(shape) + shape[0]).normal(size=shape)
    for q in ((0.5, 99.5), (98.0,), (0.0, 100.0), (25.0, 50.0, 75.0)):
        np.testing.assert_array_equal(percentiles(values, q), np.percentile(values, q, axis=0))
