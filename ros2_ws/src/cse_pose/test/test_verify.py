"""Render-and-compare pose verification (cse_pose.verify) and its hook in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from cse_pose.core.correspondence import lift_pixels, select_pixels
from cse_pose.core.crop import crop_instance, downsample_mask
from cse_pose.core.errors import InvalidInputError
from cse_pose.core.pose import ObjectPose, pose_from_similarity
from cse_pose.core.raster import RasterMesh, rasterize
from cse_pose.core.solver import ransac_umeyama
from cse_pose.pipeline import STAGES, PipelineParams, PosePipeline
from cse_pose.verify import (
    FULL_AGREEMENT,
    MUG_SWEEP_STEPS,
    SWITCH_MARGIN,
    candidate_rotations,
    observe,
    prepare_prior,
    render_depth,
    rotation_pivot,
    verified_quality,
    verify_pose,
)

W, H = 640, 480
K = np.array([[600.0, 0.0, (W - 1) / 2.0], [0.0, 600.0, (H - 1) / 2.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------------
# test meshes: closed, outward-oriented parts in the published frame (y up), metres
# ---------------------------------------------------------------------------------------------------------
def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    volume = np.einsum("ij,ij->", a - a.mean(0), np.cross(b - a.mean(0), c - a.mean(0)))
    return faces if volume > 0 else faces[:, ::-1]


def box(centre, size) -> tuple[np.ndarray, np.ndarray]:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    v = np.asarray(centre, np.float64) + signs * np.asarray(size, np.float64) / 2
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])  # fmt: skip
    # every face outward: its normal points away from the box centre
    a, b, c = (v[f[:, i]] for i in range(3))
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), (a + b + c) / 3 - np.asarray(centre)) < 0
    f[flip] = f[flip][:, ::-1]
    return v, f


def cylinder(centre, radius: float, length: float, axis: int, segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Closed cylinder along ``axis`` (1 = y, 2 = z) centred at ``centre``."""
    ang = 2 * np.pi * np.arange(segments) / segments
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1)
    v = []
    for h in (-length / 2, length / 2):
        p = np.zeros((segments, 3))
        other = [i for i in range(3) if i != axis]
        p[:, other[0]], p[:, other[1]], p[:, axis] = ring[:, 0], ring[:, 1], h
        v.append(p)
    caps = np.zeros((2, 3))
    caps[:, axis] = (-length / 2, length / 2)
    v = np.concatenate([*v, caps]) + np.asarray(centre, np.float64)
    n = segments
    f = []
    for k in range(n):
        k1 = (k + 1) % n
        f += [[k, k1, n + k1], [k, n + k1, n + k], [2 * n, k1, k], [2 * n + 1, n + k, n + k1]]
    f = np.asarray(f)
    a, b, c = (v[f[:, i]] for i in range(3))
    axis_point = np.asarray(centre, np.float64)
    mid = (a + b + c) / 3
    out = mid - axis_point
    on_side = np.abs(out[:, axis]) < length / 2 - 1e-9
    out[on_side, axis] = 0.0  # side faces point away from the axis, caps along it
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), out) < 0
    f[flip] = f[flip][:, ::-1]
    return v, f


def merge(*parts) -> tuple[np.ndarray, np.ndarray]:
    vs, fs, offset = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + offset)
        offset += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def mug_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A 9 cm tall, 8 cm wide cylinder with a 3.5 x 5 x 1.2 cm box handle at +x, body axis at x = z = 0."""
    body = cylinder((0.0, 0.0, 0.0), 0.04, 0.09, axis=1, segments=32)
    handle = box((0.055, 0.0, 0.0), (0.035, 0.05, 0.012))
    return merge(body, handle)


def camera_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A 12 x 8 x 5 cm box with a 2.5 cm radius, 4 cm long lens along +z, off-centre in x."""
    body = box((0.0, 0.0, 0.0), (0.12, 0.08, 0.05))
    lens = cylinder((0.02, -0.005, 0.045), 0.025, 0.04, axis=2, segments=24)
    return merge(body, lens)


def look_at(azimuth_deg: float, elevation_deg: float, distance_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) object -> camera of a camera on a sphere around the object origin, object y up in the image."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    eye = distance_m * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


def pose_of(R: np.ndarray, t: np.ndarray, vertices_obj: np.ndarray, quality: float = 0.5) -> ObjectPose:
    """The published pose (box-centre translation) of a mesh at (R, t)."""
    lo, hi = vertices_obj.min(0), vertices_obj.max(0)
    return ObjectPose(R=R, t_m=R @ (0.5 * (lo + hi)) + t, size_m=hi - lo, scale=1.0, quality=quality,
                      inlier_ratio=1.0, rms_m=0.0, mean_confidence=1.0, n_correspondences=100)


def observed(vertices_obj, faces, R, t):
    """The pipeline's crop and the verification's observation of one mesh rendered at (R, t)."""
    out = rasterize([RasterMesh(vertices_obj @ R.T + t, faces)], K, W, H)
    crop = crop_instance(out.covered, out.depth_m, 128)
    return observe(crop.select_mask, crop.depth_crop_m, crop.box, K, "aligned")


def rot_err_deg(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(A.T @ B) - 1) / 2, -1, 1))))


# ---------------------------------------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------------------------------------
def test_candidates_and_pivot():
    for cat, n in (("camera", 2), ("laptop", 2), ("mug", MUG_SWEEP_STEPS), ("bottle", 1)):
        F = candidate_rotations(cat)
        assert F.shape == (n, 3, 3)
        np.testing.assert_allclose(F[0], np.eye(3))
        np.testing.assert_allclose(F @ F.transpose(0, 2, 1), np.broadcast_to(np.eye(3), F.shape), atol=1e-12)
        np.testing.assert_allclose(F[:, 1, 1], 1.0)  # all about y
    v, f = mug_mesh()
    prior = prepare_prior(f, len(v))
    # the pivot is the body's axis, not the box centre (which the handle pulls to +x)
    np.testing.assert_allclose(rotation_pivot(v, prior.parts), [0.0, 0.0, 0.0], atol=1e-12)
    assert 0.5 * (v.min(0) + v.max(0))[0] > 0.01


def test_grid_rendering_matches_the_observed_crop():
    """Rendering with the grid intrinsics lands on the observed (full-resolution, then cropped) silhouette."""
    v, f = camera_mesh()
    R, t = look_at(35.0, 25.0, 0.6)
    obs = observed(v, f, R, t)
    D = render_depth(v, f, R[None], t, obs.K, obs.size)[0]
    rendered, mask = D > 0, obs.mask
    iou = (rendered & mask).sum() / (rendered | mask).sum()
    print(f"grid silhouette IoU {iou:.3f}")
    assert iou > 0.9
    both = rendered & mask & (obs.depth_m > 0)
    assert np.median(np.abs(D[both] - obs.depth_m[both])) < 0.002


def test_copies_render_as_alone():
    """Side-by-side copies give each copy's own image: tile k == the copy rendered alone."""
    v, f = mug_mesh()
    R, t = look_at(-20.0, 30.0, 0.5)
    obs = observed(v, f, R, t)
    M = R @ candidate_rotations("mug", 4)
    together = render_depth(v, f, M, t, obs.K, obs.size)
    for k in range(len(M)):
        alone = render_depth(v, f, M[k : k + 1], t, obs.K, obs.size)[0]
        np.testing.assert_array_equal(together[k], alone)
    assert not np.array_equal(together[0] > 0, together[2] > 0)  # the handle moved


# ---------------------------------------------------------------------------------------------------------
# the decision
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("azimuth", "elevation"), [(90.0, 25.0), (60.0, 40.0), (120.0, 30.0)])
def test_mug_sweep_finds_the_true_handle_side(azimuth, elevation):
    """A mug with its handle in view; the pose given is the true one turned about y by k * 30 degrees."""
    v, f = mug_mesh()
    prior = prepare_prior(f, len(v))
    R_true, t = look_at(azimuth, elevation, 0.55)
    obs = observed(v, f, R_true, t)
    for k in range(12):
        F = candidate_rotations("mug", 12)[k]
        R_in = R_true @ F  # turned about the body axis (the object origin here), which stays put
        result = verify_pose(pose_of(R_in, t, v), v @ R_in.T + t, prior, "mug", obs, sweep_steps=12)
        err = rot_err_deg(result.pose.R, R_true)
        assert err < 1e-4, (k, err, np.round(result.scores, 3))
        assert result.index == (12 - k) % 12
        if k:
            assert result.scores[result.index] > result.scores[0] + SWITCH_MARGIN
        np.testing.assert_allclose(result.vertices_cam, v @ R_true.T + t, atol=1e-9)
        np.testing.assert_allclose(result.pose.t_m, pose_of(R_true, t, v).t_m, atol=1e-9)


@pytest.mark.parametrize(("azimuth", "elevation"), [(20.0, 20.0), (-35.0, 30.0), (160.0, 25.0)])
def test_camera_front_back_flip_is_undone(azimuth, elevation):
    """A camera-like box whose lens (visible or not) the given pose puts on the wrong side."""
    v, f = camera_mesh()
    prior = prepare_prior(f, len(v))
    R_true, t = look_at(azimuth, elevation, 0.6)
    obs = observed(v, f, R_true, t)
    pivot = rotation_pivot(v, prior.parts)  # the body's centre
    F = candidate_rotations("camera")[1]
    R_in = R_true @ F
    t_in = R_true @ pivot + t - R_in @ pivot  # turned about the body centre
    flipped = verify_pose(pose_of(R_in, t_in, v), v @ R_in.T + t_in, prior, "camera", obs)
    assert flipped.index == 1 and rot_err_deg(flipped.pose.R, R_true) < 1e-4, np.round(flipped.scores, 3)
    np.testing.assert_allclose(flipped.vertices_cam, v @ R_true.T + t, atol=1e-9)
    kept = verify_pose(pose_of(R_true, t, v), v @ R_true.T + t, prior, "camera", obs)
    assert kept.index == 0 and kept.scores[0] > kept.scores[1] + SWITCH_MARGIN, np.round(kept.scores, 3)
    # an exact mesh scores near 1 and keeps its fit quality; a worse agreement scales the quality down
    assert kept.scores[0] > 0.9 and kept.pose.quality == 0.5
    assert verified_quality(0.5, 0.3) == pytest.approx(0.5 * 0.3 / FULL_AGREEMENT)


# ---------------------------------------------------------------------------------------------------------
# the pipeline hook, with the oracle model
# ---------------------------------------------------------------------------------------------------------
oracle = pytest.importorskip("cse_pose_dev.oracle", reason="the oracle model is a dev tool")


@pytest.fixture(scope="module")
def oracle_models(tmp_path_factory):
    pytest.importorskip("onnx", reason="onnx is needed to write the oracle model")
    pytest.importorskip("onnxruntime", reason="onnxruntime runs the oracle model")
    from cse_pose.inference import load_model

    folder = tmp_path_factory.mktemp("oracle_verify")
    return {c: load_model(oracle.write_oracle_model(folder / f"{c}.onnx", category=c), backend="cpu")
            for c in ("camera", "mug")}


def _frames(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        R, t = look_at(rng.uniform(-180, 180), rng.uniform(15, 60), rng.uniform(0.5, 0.9))
        t = t + np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05), 0.0])
        size = np.asarray(oracle.DEFAULT_EXTENTS) * rng.uniform(0.04, 0.08)
        yield R, t, size, oracle.render_oracle_frame(R, t, size, K, W, H)


@pytest.mark.parametrize("category", ["camera", "mug"])
def test_oracle_frames_never_get_a_worse_pose(oracle_models, category):
    """On exact correspondences verification may only keep the pose (a box's 180-degree turn is a tie)."""
    off = PosePipeline(oracle_models, PipelineParams())
    on = PosePipeline(oracle_models, PipelineParams(verify_categories=(category,)))
    for R, _, _, (rgb, depth, ids) in _frames(12):
        a = off.process(rgb, depth, ids, {1: category}, K).instances[0]
        b = on.process(rgb, depth, ids, {1: category}, K)
        assert b.timings_ms["verify"] > 0
        b = b.instances[0]
        assert a.pose is not None and b.pose is not None
        err_off, err_on = rot_err_deg(a.pose.R, R), rot_err_deg(b.pose.R, R)
        assert err_on <= err_off + 1e-9, (err_off, err_on)
        assert b.pose.quality <= a.pose.quality


def test_off_is_todays_pipeline_bit_for_bit(oracle_models, monkeypatch):
    """Verification off: the poses are exactly the core chain crop -> select -> lift -> solve -> pose."""
    import cse_pose.pipeline as pipeline_module

    def boom(*_args, **_kwargs):
        raise AssertionError("verification ran although it is off")

    monkeypatch.setattr(pipeline_module, "verify_pose", boom)
    monkeypatch.setattr(pipeline_module, "observe", boom)
    params = PipelineParams()
    assert params.verify_categories == ()
    pipe = PosePipeline(oracle_models, params)
    model = oracle_models["camera"]
    info = model.info
    for _, _, _, (rgb, depth, ids) in _frames(4, seed=5):
        result = pipe.process(rgb, depth, ids, {1: "camera"}, K)
        assert "verify" in STAGES and result.timings_ms["verify"] == 0.0
        got = result.instances[0].pose
        crop = crop_instance(ids == 1, depth, info.crop_size, rgb=rgb, enlarge=params.enlarge,
                             depth_sampling=params.depth_sampling, min_depth_m=params.min_depth_m,
                             max_depth_m=params.max_depth_m)
        vertices, match, confidence = model.run(crop.rgb[None], downsample_mask(crop.mask_crop, info.grid_size)
                                                .astype(np.float32)[None, None])
        sel = select_pixels(match[0], confidence[0], crop.select_mask, crop.depth_crop_m, crop.box,
                            confidence_floor=params.confidence_floor, min_pairs=params.min_correspondences,
                            max_pairs=params.max_correspondences)
        pairs = lift_pixels(sel, match[0], crop.depth_crop_m, crop.box, K, params.depth_sampling)
        fit = ransac_umeyama(pairs.src, pairs.dst, pairs.weights, threshold_m=params.ransac_threshold_m,
                             max_hypotheses=params.ransac_max_hypotheses, min_inliers=params.min_inliers,
                             seed=params.seed)
        want = pose_from_similarity(fit, vertices[0], info.base_rotation, pairs.mean_confidence,
                                    params.ransac_threshold_m)
        for name in ("R", "t_m", "size_m"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert got.quality == want.quality


def test_verify_categories_are_checked():
    with pytest.raises(InvalidInputError, match="verify_categories"):
        PipelineParams(verify_categories=("bottle",))
    assert PipelineParams(verify_categories=["mug"]).verify_categories == ("mug",)
