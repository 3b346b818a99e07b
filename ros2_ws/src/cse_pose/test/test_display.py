"""ROS-free display helpers: quaternions, box edges, debug-image drawing, the mesh marker's decimation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cse_pose.core.rotation import matrix_from_quaternion, quaternion_from_matrix, random_rotation
from cse_pose.display import BOX_EDGES, box_corners_obj, decimate_faces, draw_instances


def test_quaternion_round_trip_including_180_degree_turns():
    rng = np.random.default_rng(0)
    Rs = [random_rotation(rng) for _ in range(200)] + [np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]),
                                         np.diag([-1.0, -1.0, 1.0]), np.eye(3)]
    for R in Rs:
        q = quaternion_from_matrix(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(matrix_from_quaternion(q), R, atol=1e-9)


def test_quaternion_convention_is_xyzw():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45)
    Rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(quaternion_from_matrix(Rz), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)


def test_box_edges_are_the_twelve_unit_edges():
    c = box_corners_obj([2.0, 4.0, 6.0])
    lengths = sorted(np.linalg.norm(c[a] - c[b]) for a, b in BOX_EDGES)
    assert lengths == [2.0] * 4 + [4.0] * 4 + [6.0] * 4


def test_debug_image_draws_projected_box_and_axes():
    pytest.importorskip("cv2")
    K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]])
    rgb = np.zeros((240, 320, 3), np.uint8)
    pose = SimpleNamespace(R=np.eye(3), t_m=np.array([0.0, 0.0, 0.6]), size_m=np.array([0.12, 0.1, 0.09]),
                           quality=0.9)
    inst = SimpleNamespace(instance_id=1, category="mug", pose=pose, trusted=True, reason="")
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
    from cse_train.shapes import prior_mesh

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
