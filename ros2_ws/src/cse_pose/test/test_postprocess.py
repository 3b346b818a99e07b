"""The pipeline's post-processing stages, ROS-free: instance listing, ICP refinement, temporal smoothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cse_pose.core.crop import crop_box_from_mask
from cse_pose.core.errors import InvalidInputError
from cse_pose.core.metrics import rotation_error_deg
from cse_pose.core.rotation import matrix_from_quaternion, random_rotation, slerp
from cse_pose.instances import instance_classes
from cse_pose.pipeline import PipelineParams
from cse_pose.refine import MAX_OBSERVED_POINTS, SurfaceSampler, icp_refine, observed_points
from cse_pose.smoothing import PoseSmoother
from cse_pose_dev.oracle import default_intrinsics, render_oracle_frame

W, H = 320, 240


def test_slerp_midpoint_and_short_way():
    qa = np.array([0.0, 0.0, 0.0, 1.0])
    qb = np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])  # 90 deg about z
    mid = matrix_from_quaternion(slerp(qa, qb, 0.5))
    assert rotation_error_deg(mid, matrix_from_quaternion(qa)) == pytest.approx(45.0, abs=1e-6)
    assert rotation_error_deg(matrix_from_quaternion(slerp(qa, -qb, 0.5)), mid) < 1e-6  # -q is the same turn


def test_smoother_exponential_and_timeout():
    s = PoseSmoother()
    R0 = np.eye(3)
    Rz = matrix_from_quaternion([0.0, 0.0, np.sin(np.pi / 8), np.cos(np.pi / 8)])  # 45 deg
    s.update(("mug", 1), 0.0, R0, np.zeros(3), 0.5, 1.0)
    R, t = s.update(("mug", 1), 0.1, Rz, np.array([0.1, 0.0, 0.0]), 0.5, 1.0)
    np.testing.assert_allclose(t, [0.05, 0.0, 0.0])
    assert rotation_error_deg(R, R0) == pytest.approx(22.5, abs=1e-6)
    R, t = s.update(("mug", 1), 5.0, Rz, np.array([0.2, 0.0, 0.0]), 0.5, 1.0)  # after the timeout: reset
    np.testing.assert_allclose(t, [0.2, 0.0, 0.0])
    R, t = s.update(("mug", 2), 5.1, R0, np.ones(3), 0.0, 1.0)  # alpha 0 = off
    np.testing.assert_allclose(t, np.ones(3))


def test_instance_classes_for_id_and_label_masks():
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 3, 1, 7
    assert instance_classes(mask, "mug", {}) == {1: "mug", 3: "mug", 7: "mug"}
    assert instance_classes(mask, "", {1: "bowl", 7: "can", 9: "mug"}) == {1: "bowl", 7: "can"}
    assert instance_classes(mask.astype(np.int32) - 1, "mug", {}) == {2: "mug", 6: "mug"}  # -1 and 0 ignored
    assert instance_classes(np.zeros((3, 3), np.uint16), "mug", {}) == {}


def test_surface_samples_lie_on_the_mesh_with_its_face_normals_and_follow_its_deformation():
    from cse_pose_dev.oracle import box_mesh

    half = np.array([1.0, 2.0, 3.0])
    v, f = box_mesh(2 * half)
    sampler = SurfaceSampler(v, f, n=500)
    pts, normals = sampler(v)
    assert pts.shape == normals.shape == (500, 3)
    on_face = np.isclose(np.abs(pts) / half, 1.0)  # (500, 3): which face plane each point lies on
    assert (on_face.sum(axis=1) >= 1).all() and (np.abs(pts) <= half + 1e-9).all()
    axis = np.abs(normals).argmax(axis=1)
    np.testing.assert_allclose(np.abs(normals[np.arange(500), axis]), 1.0)  # axis-aligned unit normals
    assert on_face[np.arange(500), axis].all()  # each normal is its face's
    np.testing.assert_array_equal(pts, SurfaceSampler(v, f, n=500)(v)[0])  # deterministic
    # the same samples on a stretched and turned copy of the mesh: stretched and turned with it
    R = random_rotation(np.random.default_rng(1))
    moved, moved_normals = sampler((v * [2.0, 1.0, 1.0]) @ R.T)
    np.testing.assert_allclose(moved, (pts * [2.0, 1.0, 1.0]) @ R.T, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(moved_normals * (normals @ R.T), axis=1)), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="no area"):
        SurfaceSampler(np.zeros((3, 3)), np.array([[0, 1, 2]]))


def test_refine_categories_default_to_the_mug_and_are_checked():
    assert PipelineParams().refine_categories == ("mug",)
    assert PipelineParams(refine_categories=["can", "mug"]).refine_categories == ("can", "mug")
    with pytest.raises(InvalidInputError, match="refine_categories"):
        PipelineParams(refine_categories=("cup",))


def test_icp_refine_recovers_a_small_offset():
    pytest.importorskip("open3d")
    K = default_intrinsics(W, H, 300.0)
    R, t, size = random_rotation(np.random.default_rng(3)), np.array([0.0, 0.0, 0.5]), np.array([0.1, 0.12, 0.08])
    _, depth, mask = render_oracle_frame(R, t, size, K, W, H)
    obs = observed_points(depth, mask, 1, K)
    assert MAX_OBSERVED_POINTS // 2 < len(obs) <= MAX_OBSERVED_POINTS < np.count_nonzero(mask == 1)  # strided
    box = crop_box_from_mask(mask == 1, 64)
    np.testing.assert_array_equal(observed_points(depth, mask, 1, K, box=box), obs)  # the crop box holds them all
    # the model: the true box turned by 4 deg about its centre and shifted by 6 mm (a slightly wrong pose)
    from cse_pose_dev.oracle import box_mesh

    v, f = box_mesh(size)
    turn = matrix_from_quaternion(np.array([0.0, np.sin(np.radians(2.0)), 0.0, np.cos(np.radians(2.0))]))
    R_wrong, t_wrong = R @ turn, t + np.array([0.006, -0.003, 0.0])
    T, fitness = icp_refine(obs, *SurfaceSampler(v, f)(v @ R_wrong.T + t_wrong), 0.02, 5)
    assert fitness > 0.9
    R_fixed, t_fixed = T[:3, :3] @ R_wrong, T[:3, :3] @ t_wrong + T[:3, 3]
    assert rotation_error_deg(R_wrong, R) > 3.9 and rotation_error_deg(R_fixed, R) < 0.5
    assert np.linalg.norm(t_fixed - t) < 0.001


def test_a_model_without_faces_is_served_unrefined_with_the_reason(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime runs the oracle model")
    from cse_pose.inference import load_model
    from cse_pose.pipeline import PosePipeline
    from cse_pose_dev.oracle import DEFAULT_EXTENTS, write_oracle_model

    model = load_model(write_oracle_model(tmp_path / "mug.onnx", category="mug"), backend="cpu")
    K = default_intrinsics(W, H, 300.0)
    R, t = random_rotation(np.random.default_rng(5)), np.array([0.0, 0.0, 0.5])
    rgb, depth, ids = render_oracle_frame(R, t, 0.06 * np.asarray(DEFAULT_EXTENTS), K, W, H)
    class NoFaces:  # as a model file without the prior's triangles
        info = dataclasses.replace(model.info, faces=None)
        run = model.run

    off = PosePipeline({"mug": model}, PipelineParams(refine_categories=()))
    on = PosePipeline({"mug": NoFaces()}, PipelineParams())
    want = off.process(rgb, depth, ids, {1: "mug"}, K).instances[0]
    for _ in range(2):  # the reason every frame, without retrying the sampler
        got = on.process(rgb, depth, ids, {1: "mug"}, K).instances[0]
        assert got.refine_note == "refine_failed: the model has no faces"
        np.testing.assert_array_equal(got.pose.R, want.pose.R)
        np.testing.assert_array_equal(got.pose.t_m, want.pose.t_m)
