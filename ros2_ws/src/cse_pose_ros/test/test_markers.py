"""Message builders: quaternions, poses, MarkerArray layout, debug image drawing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from cse_pose_ros.markers import (
    BOX_EDGES,
    box_corners_obj,
    build_marker_array,
    draw_instances,
    label_text,
    matrix_from_quaternion,
    pose_array,
    pose_stamped,
    quaternion_from_matrix,
    tf_child_frame,
)


def _random_rotations(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return np.stack([matrix_from_quaternion(v) for v in q])


def _instance(iid=1, category="mug", trusted=True, quality=0.9, with_mesh=True):
    R = _random_rotations(1, iid)[0]
    pose = SimpleNamespace(R=R, t_m=np.array([0.05, -0.02, 0.7]), size_m=np.array([0.12, 0.1, 0.09]),
                           quality=quality)
    verts = np.random.default_rng(iid).normal(size=(10, 3)) * 0.03 + pose.t_m if with_mesh else None
    return SimpleNamespace(instance_id=iid, category=category, pose=pose, trusted=trusted,
                           reason="" if trusted else "low_quality", vertices_cam=verts)


def test_quaternion_round_trip_including_180_degree_turns():
    Rs = list(_random_rotations(200)) + [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]),
                                         np.diag([-1.0, -1.0, 1.0]), np.eye(3)]
    for R in Rs:
        q = quaternion_from_matrix(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(matrix_from_quaternion(q), R, atol=1e-9)


def test_quaternion_convention_is_xyzw():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45)
    Rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(quaternion_from_matrix(Rz), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)


def test_pose_stamped_keeps_header_and_translation():
    h = Header(frame_id="cam_optical")
    h.stamp.sec, h.stamp.nanosec = 12, 345
    inst = _instance()
    msg = pose_stamped(h, inst.pose.R, inst.pose.t_m)
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345
    assert (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z) == (0.05, -0.02, 0.7)
    arr = pose_array(h, [inst.pose, inst.pose])
    assert len(arr.poses) == 2 and arr.header.frame_id == "cam_optical"


def test_box_edges_are_the_twelve_unit_edges():
    c = box_corners_obj([2.0, 4.0, 6.0])
    lengths = sorted(np.linalg.norm(c[a] - c[b]) for a, b in BOX_EDGES)
    assert lengths == [2.0] * 4 + [4.0] * 4 + [6.0] * 4


def test_marker_array_layout_and_facts():
    h = Header(frame_id="cam")
    faces = {"mug": np.array([[0, 1, 2], [2, 3, 4]], dtype=np.int32)}
    good, bad = _instance(1), _instance(2, trusted=False, quality=0.1)
    nopose = SimpleNamespace(instance_id=3, category="mug", pose=None, trusted=False, reason="empty_mask",
                             vertices_cam=None)
    arr = build_marker_array(h, [good, bad, nopose], faces, lifetime_s=0.5)
    assert arr.markers[0].action == Marker.DELETEALL
    by_ns = {(m.ns, m.id): m for m in arr.markers[1:]}
    assert set(by_ns) == {(f"mug/{k}", i) for k in ("box", "axes", "mesh", "label") for i in (1, 2)}
    box = by_ns[("mug/box", 1)]
    assert box.type == Marker.LINE_LIST and len(box.points) == 24 and box.lifetime.nanosec == 500_000_000
    pts = np.array([[p.x, p.y, p.z] for p in box.points])
    np.testing.assert_allclose(pts.max(0) - pts.min(0), good.pose.size_m)  # size rides on the box points
    mesh = by_ns[("mug/mesh", 1)]
    assert mesh.type == Marker.TRIANGLE_LIST and len(mesh.points) == 6
    np.testing.assert_allclose([mesh.points[3].x, mesh.points[3].y, mesh.points[3].z], good.vertices_cam[2])
    axes = by_ns[("mug/axes", 1)]
    assert len(axes.points) == 6 and len(axes.colors) == 6 and axes.colors[0].r == 1.0
    assert "mug #1 q=0.90" in by_ns[("mug/label", 1)].text
    assert "UNTRUSTED (low_quality)" in by_ns[("mug/label", 2)].text
    assert by_ns[("mug/box", 2)].color.r == by_ns[("mug/box", 2)].color.g  # untrusted: grey
    assert all(m.header.frame_id == "cam" for m in arr.markers)


def test_marker_array_without_mesh():
    arr = build_marker_array(Header(), [_instance(1, with_mesh=False)], {"mug": np.zeros((0, 3))})
    assert {m.ns for m in arr.markers[1:]} == {"mug/box", "mug/axes", "mug/label"}
    arr = build_marker_array(Header(), [_instance(1)], {"mug": np.array([[0, 1, 2]])}, with_mesh=False)
    assert "mug/mesh" not in {m.ns for m in arr.markers}


def test_label_text_and_tf_name():
    assert label_text("can", 4, 0.5, np.array([0.066, 0.12, 0.066]), True) == "can #4 q=0.50\n6.6x12.0x6.6 cm"
    assert tf_child_frame("cse/", "mug", 7) == "cse/mug_7"


def test_debug_image_draws_projected_box_and_axes():
    pytest.importorskip("cv2")
    K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]])
    rgb = np.zeros((240, 320, 3), np.uint8)
    inst = _instance()
    inst.pose.R = np.eye(3)
    inst.pose.t_m = np.array([0.0, 0.0, 0.6])
    out = draw_instances(rgb, K, [inst])
    assert rgb.sum() == 0  # input untouched
    # the box's near face spans u = 160 +- 500*0.06/0.555 = [106, 214]; the x axis (0.072 m) ends at u = 220
    cols = np.nonzero(out.any(axis=(0, 2)))[0]
    assert 102 <= cols.min() <= 108 and 218 <= cols.max() <= 224
    assert (out[..., 0] > 200).any() and (out[..., 2] > 200).any()  # x axis red, z axis blue
    # behind the camera: nothing drawn, no exception
    inst.pose.t_m = np.array([0.0, 0.0, -1.0])
    assert draw_instances(rgb, K, [inst]).sum() == 0
