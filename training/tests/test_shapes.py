"""The procedural shape generator (cse_train.shapes): closed, oriented, normalised priors; symmetry."""

import numpy as np
import pytest

from cse_pose.core.errors import InvalidInputError, UnknownCategoryError
from cse_train import shapes as priors


@pytest.mark.parametrize("category", priors.CATEGORIES)
def test_prior_is_closed_oriented_normalised(category):
    mesh = priors.prior_mesh(category)
    v, f = mesh.vertices, mesh.faces
    assert 500 <= len(v) <= 1000
    np.testing.assert_allclose(v.mean(axis=0), 0, atol=1e-5)
    assert abs(np.abs(v).max() - 1) < 1e-6
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, counts = np.unique(directed, axis=0, return_counts=True)
    assert (counts == 1).all(), "each directed edge once: consistent orientation"
    undirected = np.sort(directed, axis=1)
    _, counts = np.unique(undirected, axis=0, return_counts=True)
    assert (counts == 2).all(), "closed: every edge shared by exactly two faces"
    a, b, c = (v[f[:, i]].astype(np.float64) for i in range(3))
    assert np.einsum("ij,ij->", a, np.cross(b, c)) > 0, "outward orientation (positive volume)"


def test_shape_params_change_the_shape_in_the_published_frame():
    low = priors.build_shape("mug", {"radius": 0.035, "height": 0.075})
    high = priors.build_shape("mug", {"radius": 0.05, "height": 0.11})
    assert high.extent[1] > low.extent[1] + 0.03  # y is up
    np.testing.assert_allclose(0.5 * (low.vertices.min(0) + low.vertices.max(0)), 0, atol=1e-6)
    mug = priors.build_shape("mug")
    # Vertex 0 is the body's bottom pole, on the body axis: the box centre lies between axis and handle.
    assert mug.vertices[0, 0] < -0.005, "handle points to +x"
    lid90 = priors.build_shape("laptop", {"lid_angle": 90.0})
    assert lid90.extent[1] > priors.build_shape("laptop", {"lid_angle": 130.0}).extent[1]
    with pytest.raises(InvalidInputError, match="unknown shape parameters"):
        priors.build_shape("mug", {"wingspan": 1.0})


def test_symmetry_base_rotation_and_unknown_category():
    assert [c for c in priors.CATEGORIES if priors.is_symmetric(c)] == ["bottle", "bowl", "can"]
    for c in priors.CATEGORIES:
        B = priors.base_rotation(c, "reference")
        assert np.isclose(np.linalg.det(B), 1.0) and np.allclose(B @ B.T, np.eye(3))
        np.testing.assert_array_equal(priors.base_rotation(c), np.eye(3))
    with pytest.raises(UnknownCategoryError, match="teapot"):
        priors.prior_mesh("teapot")


def test_load_obj_normalises_like_the_reference(tmp_path):
    obj = tmp_path / "quad.obj"
    obj.write_text("v 0 0 0\nv 4 0 0\nv 4 2 0\nv 0 2 2\nf 1 2 3 4\nf 1/1/1 3/3/3 4/4/4\n")
    mesh = priors.load_obj(obj)
    np.testing.assert_allclose(mesh.vertices.mean(0), 0, atol=1e-6)
    assert abs(np.abs(mesh.vertices).max() - 1) < 1e-6
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]
    with pytest.raises(InvalidInputError, match="not found"):
        priors.load_obj(tmp_path / "missing.obj")
