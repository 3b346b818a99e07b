"""Message builders: quaternions, poses, MarkerArray layout, debug image drawing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from cse_pose_ros import markers
from cse_pose_ros.markers import (
    BOX_EDGES,
    DisplayMeshes,
    box_corners_obj,
    build_marker_array,
    decimate_faces,
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


def _mug():
    from cse_pose_ros.core.priors import prior_mesh

    mesh = prior_mesh("mug")  # body and handle: two closed components, 564 vertices, 1120 triangles
    return mesh.vertices.astype(np.float64), np.asarray(mesh.faces)


def _components(faces: np.ndarray, n: int) -> list[set[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in faces.tolist():
        parent[find(a)] = find(b)
        parent[find(b)] = find(c)
    groups: dict[int, set[int]] = {}
    for v in np.unique(faces).tolist():
        groups.setdefault(find(v), set()).add(v)
    return list(groups.values())


@pytest.mark.parametrize("max_faces", [150, 300, 600])
def test_decimated_mesh_is_well_formed_and_keeps_the_shape(max_faces):
    v, f = _mug()
    d = decimate_faces(v, f, max_faces)
    assert d.dtype == np.int32 and d.ndim == 2 and d.shape[1] == 3
    assert 0.6 * max_faces <= len(d) <= max_faces  # a fine grid under the bound, not far below it
    assert d.min() >= 0 and d.max() < len(v)  # indexes the original vertices: follows their deformation
    assert ((d[:, 0] != d[:, 1]) & (d[:, 1] != d[:, 2]) & (d[:, 0] != d[:, 2])).all()  # no degenerate
    assert len(np.unique(np.sort(d, axis=1), axis=0)) == len(d)  # no repeated triangle
    # every component (body, handle) is still drawn, the drawn vertices span the same box and cover it
    used = np.unique(d)
    assert all(set(used.tolist()) & comp for comp in _components(f, len(v)))
    np.testing.assert_allclose(v[used].min(0), v.min(0), atol=0.1)
    np.testing.assert_allclose(v[used].max(0), v.max(0), atol=0.1)
    gap = np.linalg.norm(v[:, None] - v[used][None], axis=2).min(axis=1)  # (N,) to the nearest drawn vertex
    assert np.percentile(gap, 95) < 0.45  # canonical units: the mesh spans 2
    # orientation kept and no folding of opposite walls onto each other: the enclosed volume stays close
    def volume(tri_idx: np.ndarray) -> float:
        t = v[tri_idx]
        return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6)

    assert volume(f) > 0 and abs(volume(d) - volume(f)) < 0.3 * volume(f)


def test_decimation_bounds_and_identity():
    v, f = _mug()
    np.testing.assert_array_equal(decimate_faces(v, f, 0), f)  # 0 = full mesh
    np.testing.assert_array_equal(decimate_faces(v, f, len(f)), f)
    assert len(decimate_faces(v, f, 4)) <= 4
    with pytest.raises(ValueError, match="outside"):
        decimate_faces(v[:10], f, 100)
    # deterministic: the same model gives the same display mesh
    np.testing.assert_array_equal(decimate_faces(v, f, 300), decimate_faces(v.copy(), f.copy(), 300))


def test_mesh_marker_of_a_decimated_mesh_follows_the_deformed_vertices():
    v, f = _mug()
    meshes = DisplayMeshes({"mug": f, "bowl": f}, {"mug": v, "bowl": None})
    faces = meshes.faces(300)
    assert len(faces["mug"]) <= 300 and faces["bowl"] is f  # no vertices known: full mesh
    assert meshes.faces(300) is faces  # cached per bound
    assert len(meshes.faces(0)["mug"]) == len(f)
    inst = _instance(1)
    inst.vertices_cam = 0.05 * (v + np.random.default_rng(3).normal(0, 0.01, v.shape)) + inst.pose.t_m
    arr = build_marker_array(Header(), [inst], faces)
    mesh = next(m for m in arr.markers if m.ns == "mug/mesh")
    pts = np.array([[p.x, p.y, p.z] for p in mesh.points])
    assert mesh.type == Marker.TRIANGLE_LIST and len(pts) == 3 * len(faces["mug"])
    np.testing.assert_array_equal(pts, inst.vertices_cam[faces["mug"].reshape(-1)])


def test_fast_points_equal_constructed_points_and_serialise_alike(monkeypatch):
    from geometry_msgs.msg import Point
    from rclpy.serialization import serialize_message

    assert markers._FAST_POINTS, "Point's generated layout changed: the fast path is off (slower markers)"
    arr = np.random.default_rng(0).normal(size=(50, 3))
    fast = markers._points(arr)
    assert fast == [Point(x=x, y=y, z=z) for x, y, z in arr.tolist()]
    assert all(type(p.x) is float for p in fast) and repr(fast[0]).startswith("geometry_msgs.msg.Point(")
    inst = _instance(2)
    faces = {"mug": np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7]])}
    a = serialize_message(build_marker_array(Header(frame_id="c"), [inst], faces))
    monkeypatch.setattr(markers, "_FAST_POINTS", False)
    b = serialize_message(build_marker_array(Header(frame_id="c"), [inst], faces))
    assert a == b
