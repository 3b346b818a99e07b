"""Message builders: poses, MarkerArray layout, the mesh marker of a decimated mesh, fast Point building."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from cse_pose.core.rotation import matrix_from_quaternion
from cse_pose.display import DisplayMeshes, label_text
from cse_pose_ros import markers
from cse_pose_ros.markers import build_marker_array, pose_array, pose_stamped, tf_child_frame


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


def test_pose_stamped_keeps_header_and_translation():
    h = Header(frame_id="cam_optical")
    h.stamp.sec, h.stamp.nanosec = 12, 345
    inst = _instance()
    msg = pose_stamped(h, inst.pose.R, inst.pose.t_m)
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345
    assert (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z) == (0.05, -0.02, 0.7)
    arr = pose_array(h, [inst.pose, inst.pose])
    assert len(arr.poses) == 2 and arr.header.frame_id == "cam_optical"


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


def test_mesh_marker_of_a_decimated_mesh_follows_the_deformed_vertices():
    from cse_train.shapes import prior_mesh

    mesh = prior_mesh("mug")
    v, f = mesh.vertices.astype(np.float64), np.asarray(mesh.faces)
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
    from rclpy.serialization import deserialize_message, serialize_message
    from visualization_msgs.msg import MarkerArray

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
    # CDR alignment padding is not initialised by the C serialiser, so the bytes of two equal messages may
    # differ there (seen: one padding byte after DELETEALL's fields): compare what a subscriber reads back.
    assert len(a) == len(b)
    assert deserialize_message(a, MarkerArray) == deserialize_message(b, MarkerArray)
