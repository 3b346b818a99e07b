"""Fast version of ``make train-smoke``: a tiny training run must lower the loss, resume, and export.

The model is the ``small`` architecture shrunk for speed (crop 64, grid 16, ResNet widths /4); data are two
tiny synthetic videos. The loss compared is ``total_fixed`` (every term with its constant peak weight), so
a fall cannot come from the weight schedules alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cse_train.__main__ import build_parser, check_onnx_runs, export_model
from cse_train.config import get_config
from cse_train.data.synthetic import generate
from cse_train.model import CSENet, load_checkpoint
from cse_train.train import (
    TrainConfig,
    build_param_groups,
    canonical_azimuth,
    color_jitter,
    gt_canonical_grid,
    render_intrinsics,
    train,
)
from cse_train.weights import PARAM_GROUPS

TINY = {"crop_size": 64, "grid_size": 16, "resnet_widths": [16, 32, 64, 128]}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smoke_data")
    generate(root, "mug", "train", 2, frames=(6, 6), width=160, height=120, seed=3)
    return root / "mug"


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        category="mug", data=str(data), out_dir=str(out), steps=24, videos_per_batch=2, frames_per_video=2,
        checkpoint_every=20, log_every=1, progress=False, tensorboard=False, model_overrides=TINY,
        matcher_grid=16, matcher_k=64, render_size=32, seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_training_lowers_loss_resumes_and_exports(tiny_data: Path, tmp_path: Path) -> None:
    result = train(_cfg(tiny_data, tmp_path / "run"))
    assert len(result.history) == 24 and result.nan_steps == 0
    assert all(math.isfinite(h["total"]) and math.isfinite(h["total_fixed"]) for h in result.history)
    # every self-supervised term ran (no DINO here: cross-time cycle through optical flow)
    for name in ("mask", "texture", "depth", "match", "imatch", "cross_cycle", "rotation_cycle", "symmetry",
                 "laplacian", "deform", "pull_far"):
        assert name in result.history[0], name
    assert "synthetic_gt" not in result.history[0]  # self-supervision never computes the GT term
    assert result.last_avg_fixed < result.first_avg_fixed, (result.first_avg_fixed, result.last_avg_fixed)
    assert (tmp_path / "run" / "log.csv").is_file()
    ckpt20 = tmp_path / "run" / "checkpoints" / "step_0000020.pt"
    assert ckpt20.is_file() and result.checkpoint.is_file()

    # resume from step 20 in a fresh directory: continues at step 21 with the saved optimiser state
    resumed = train(_cfg(tiny_data, tmp_path / "resumed", resume=str(ckpt20)))
    assert [h["step"] for h in resumed.history] == [21.0, 22.0, 23.0, 24.0]
    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in result.history[20:]], rel=1e-9)
    _, payload = load_checkpoint(resumed.checkpoint)
    assert payload["extra"]["step"] == 24
    adam_steps = {float(s["step"]) for s in payload["extra"]["optimizer"]["state"].values()}
    assert adam_steps == {24.0}
    assert payload["extra"]["scheduler"]["last_epoch"] == 24

    # export the trained model and run it in onnxruntime through the node's loader
    onnx_path = export_model(resumed.checkpoint, tmp_path / "models", training_data="test", version="t")
    assert onnx_path.name == "mug.onnx" and onnx_path.with_suffix(".pt").is_file()
    shapes = check_onnx_runs(onnx_path)
    n = CSENet.from_category("mug", get_config("small", **TINY)).num_vertices
    assert shapes == {"vertices": (2, n, 3), "match": (2, 16, 16, 3), "confidence": (2, 16, 16)}


def test_synthetic_gt_pretraining_then_self_fine_tuning(tiny_data: Path, tmp_path: Path) -> None:
    result = train(_cfg(tiny_data, tmp_path / "gt", steps=3, supervision="synthetic-gt", checkpoint_every=100))
    assert len(result.history) == 3
    values = [h["synthetic_gt"] for h in result.history]
    assert all(math.isfinite(v) and v > 0 for v in values)

    # fine-tune from the pre-trained weights: the run starts from them (same prior mean_v), fresh optimiser
    pre, _ = load_checkpoint(result.checkpoint)
    tuned = train(_cfg(tiny_data, tmp_path / "ft", steps=1, init_checkpoint=str(result.checkpoint), lr=0.0))
    post, payload = load_checkpoint(tuned.checkpoint)
    assert payload["extra"]["step"] == 1
    torch.testing.assert_close(post.mean_v, pre.mean_v)  # lr 0: weights unchanged but for weight decay x 0
    with pytest.raises(ValueError, match="init-checkpoint"):
        train(_cfg(tiny_data, tmp_path / "bad", steps=1, init_checkpoint=str(result.checkpoint),
                   model_overrides={**TINY, "grid_size": 8}))


def test_the_run_uses_its_thread_count_and_restores_the_callers(tiny_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``threads`` (default 1: a long CPU run degrades gently beside other jobs) holds during the run only."""
    import cse_train.train as train_module

    seen: list[int] = []
    real_run = train_module._run
    monkeypatch.setattr(train_module, "_run", lambda cfg: (seen.append(torch.get_num_threads()), real_run(cfg))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert TrainConfig().threads == 1
        train(_cfg(tiny_data, tmp_path / "t1", steps=1, supervision="synthetic-gt", checkpoint_every=100))
        assert torch.get_num_threads() == 2
        train(_cfg(tiny_data, tmp_path / "t0", steps=1, supervision="synthetic-gt", checkpoint_every=100,
                   threads=0))
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cross_instance_cycle_from_the_networks_own_features(tiny_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``cross_instance='features'``: without DINO weights the cross-instance cycle runs on the network's own
    image features (pairs of different videos of the batch), and the term is finite and non-zero."""
    from cse_train import matchers as M

    calls: list[tuple[int, ...]] = []
    real = M.FeatureMatcher.match_features

    def spy(self, f_src, f_tgt, *args, **kw):  # noqa: ANN001, ANN202
        calls.append(tuple(f_src.shape))
        return real(self, f_src, f_tgt, *args, **kw)

    monkeypatch.setattr(M.FeatureMatcher, "match_features", spy)
    result = train(_cfg(tiny_data, tmp_path / "fi", steps=2, cross_instance="features", checkpoint_every=100,
                        disable=("texture", "rotation_cycle", "symmetry", "laplacian")))
    assert len(calls) == 2 and calls[0][0] == 4  # one call per step, 2 videos x 2 frames
    assert all(math.isfinite(h["cross_cycle"]) and h["cross_cycle"] > 0 for h in result.history)


#: Parameter groups (weights.PARAM_GROUPS) each loss term must reach, and no others. Pose and shape come from
#: the posed deformed prior (its render, its mesh), the correspondence from the image and mesh features; the
#: 2D->3D instance cycle, the synthetic-GT term and the cycles detach the mesh and pose they compare against,
#: the 3D->2D cycle trains the pose through the projection (docs/reference.md §3.5). ``deform`` penalises the
#: offset from mean_v, so mean_v gets no gradient from it. ``pull_far`` is a hinge that is inactive here
#: (t_z >= 1): no gradient at all. ``pose_gt`` trains the regressed pose only.
GRADIENT_ROUTES: dict[str, set[str]] = {
    "mask": {"mean_v", "pose", "shape", "backbone"},
    "depth": {"mean_v", "pose", "shape", "backbone"},
    "texture": {"mean_v", "pose", "shape", "features", "backbone"},
    "match": {"features", "backbone"},
    "imatch": {"pose", "features", "backbone"},
    "cross_cycle": {"features", "backbone"},
    "rotation_cycle": {"features", "backbone"},
    "symmetry": {"mean_v", "shape", "backbone"},
    "laplacian": {"mean_v", "shape", "backbone"},
    "deform": {"shape", "backbone"},
    "pull_far": set(),
    "synthetic_gt": {"features", "backbone"},
    "pose_gt": {"pose", "backbone"},
}


#: With ``render_pose='fit'`` (the correspondences' own, detached pose) or ``'label'`` (the batch's pose labels) the
#: renders and the 3D->2D cycle get no gradient into the pose head; everything else is routed as above.
FIT_ROUTES: dict[str, set[str]] = {
    name: groups - {"pose"} if name in ("mask", "depth", "texture", "imatch") else groups
    for name, groups in GRADIENT_ROUTES.items()
}


@pytest.mark.parametrize(("render_pose", "routes"),
                         [("head", GRADIENT_ROUTES), ("fit", FIT_ROUTES), ("label", FIT_ROUTES)])
def test_each_loss_term_reaches_the_parameters_it_should(tiny_data: Path, render_pose: str,
                                                         routes: dict[str, set[str]]) -> None:
    """Every term of the loss, back-propagated alone on one batch, moves exactly its parameter groups."""
    from cse_train.data.batching import VideoBatchSampler
    from cse_train.matchers import build_matchers
    from cse_train.train import LossModule, _build_dataset
    from cse_train.weights import LOSS_NAMES

    torch.manual_seed(0)
    cfg = _cfg(tiny_data, Path("unused"), supervision="synthetic-gt")
    model = CSENet.from_category("mug", cfg.model_config())
    dataset = _build_dataset(cfg, model.cfg.crop_size)
    batch = dataset.collate([dataset[i] for i in next(iter(VideoBatchSampler(dataset.video_items, 2, 2, 1)))])
    matchers = build_matchers(None, cross_instance="features")
    losses = LossModule(model, 32, 200, matchers.cross_time, matchers.cross_instance, 2, 16, 32, False,
                        "synthetic-gt", render_pose)
    _, terms = losses(batch, dict.fromkeys((*LOSS_NAMES, "synthetic_gt"), 1.0))
    assert set(terms) == set(routes)
    groups = build_param_groups(model, "mug", 1e-4)
    for name, term in terms.items():
        model.zero_grad(set_to_none=True)
        if term.requires_grad:
            term.backward(retain_graph=True)
        reached = {g["name"] for g in groups
                   if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in g["params"])}
        assert reached == routes[name], (name, reached)


def test_label_render_pose_renders_with_the_labels(tiny_data: Path) -> None:
    """render_pose='label': the silhouette is rendered under the batch's pose labels, so the mask term is small
    at the true labels and grows when the labels are turned; without labels the setting is refused."""
    from cse_train.data.batching import VideoBatchSampler
    from cse_train.train import LossModule, _build_dataset

    torch.manual_seed(0)
    cfg = _cfg(tiny_data, Path("unused"), supervision="synthetic-gt", render_pose="label")
    model = CSENet.from_category("mug", cfg.model_config())
    dataset = _build_dataset(cfg, model.cfg.crop_size)
    batch = dataset.collate([dataset[i] for i in next(iter(VideoBatchSampler(dataset.video_items, 2, 2, 1)))])
    losses = LossModule(model, 32, 200, None, None, 2, 16, 32, False, "synthetic-gt", "label")
    with torch.no_grad():
        right = float(losses(batch, {"mask": 1.0})[1]["mask"])
        turn = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 90 deg about x
        wrong = float(losses({**batch, "R": batch["R"] @ turn}, {"mask": 1.0})[1]["mask"])
    assert right < 0.5 * wrong, (right, wrong)
    with pytest.raises(ValueError, match="label"):
        _cfg(tiny_data, Path("unused"), supervision="self", render_pose="label")
    with pytest.raises(ValueError, match="label"):
        LossModule(model, 32, 200, None, None, 2, 16, 32, False, "self", "label")


def test_fitted_render_pose_recovers_the_pose_through_wrong_cells(tiny_data: Path) -> None:
    """The correspondences' own pose (render_pose='fit'): with every cell at its true canonical point the fit
    is the ground-truth similarity; a fifth of the cells sent to random points barely moves it, where a plain
    unweighted fit is dragged off."""
    from cse_train.train import cell_points_cam, fitted_render_pose, weighted_umeyama

    batch, (lo, hi), (coords, valid, R, t, s) = _gt_grid(tiny_data, (1, 7))
    t_units = t / s.view(2, 1)  # v_cam = R v + t / s, canonical units

    def errors(R_fit: torch.Tensor, t_fit: torch.Tensor) -> tuple[float, float]:
        cos = ((torch.einsum("bij,bij->b", R, R_fit) - 1.0) / 2.0).clamp(-1.0, 1.0)
        return float(torch.rad2deg(torch.acos(cos)).max()), float((t_fit - t_units).norm(dim=-1).max())

    conf = valid.float()
    R_fit, t_fit, ok = fitted_render_pose(coords, conf, None, batch["depth_m"], batch["mask"], batch["K_crop"])
    assert ok.all()
    rot, trans = errors(R_fit, t_fit)
    assert rot < 0.5 and trans < 0.01 * float(t_units.norm(dim=-1).min()), (rot, trans)

    g = torch.Generator().manual_seed(0)
    wrong = (torch.rand(valid.shape, generator=g) < 0.2) & valid
    noisy = torch.where(wrong.unsqueeze(-1), lo + (hi - lo) * torch.rand(coords.shape, generator=g), coords)
    # snapped to a "mesh" of the true cell points: wrong cells land on some surface point, right ones stay
    mesh = torch.where(valid.unsqueeze(-1), coords, coords[valid][:1].view(1, 1, 1, 3)).flatten(1, 2)
    R_fit, t_fit, ok = fitted_render_pose(noisy, conf, mesh, batch["depth_m"], batch["mask"], batch["K_crop"])
    robust = errors(R_fit, t_fit)
    p_cam, _ = cell_points_cam(batch["depth_m"], batch["mask"], batch["K_crop"], 16)
    _, R_plain, _ = weighted_umeyama(noisy.flatten(1, 2), p_cam.flatten(1, 2), conf.flatten(1))
    plain = errors(R_plain, t_fit)[0]
    print(f"rotation error with 20 % wrong cells: re-weighted {robust[0]:.2f} deg, plain {plain:.2f} deg")
    assert ok.all() and robust[0] < 3.0 and robust[0] < 0.5 * plain, (robust, plain)
    # too few cells: flagged, so the caller keeps the head's pose
    few = torch.zeros_like(conf)
    few[:, 0, :4] = 1.0
    assert not fitted_render_pose(coords, few, None, batch["depth_m"], batch["mask"], batch["K_crop"])[2].any()


def _gt_grid(data: Path, items: tuple[int, ...]):  # noqa: ANN202 (test helper)
    """A batch of ``items`` (crop 64), the TINY prior's box (lo, hi) and ``gt_canonical_grid`` on a 16 grid."""
    from cse_train.data.wild6d import Wild6DDataset

    ds = Wild6DDataset(data, split="train", crop_size=64, return_gt=True)
    batch = ds.collate([ds[i] for i in items])
    prior = CSENet.from_category("mug", get_config("small", **TINY)).mean_v.detach()
    lo, hi = prior.min(0).values, prior.max(0).values
    grid = gt_canonical_grid(
        batch["depth_m"], batch["mask"], batch["K_crop"], batch["R"], batch["t"], batch["size"],
        0.5 * (lo + hi), hi - lo, torch.eye(3), 16,
    )
    return batch, (lo, hi), grid


def test_gt_canonical_grid_lands_in_the_prior_box(tiny_data: Path) -> None:
    batch, (lo, hi), (coords, valid, R, t, s) = _gt_grid(tiny_data, (0, 5))
    assert coords.shape == (2, 16, 16, 3) and valid.shape == (2, 16, 16) and valid.sum() > 20
    pts = coords[valid]
    margin = 0.08 * (hi - lo).max()  # depth noise and cell averaging
    assert (pts >= lo - margin).all() and (pts <= hi + margin).all()
    # the returned similarity maps canonical cell points back to the observed camera points (metres)
    p_cam = s.view(2, 1, 1, 1) * torch.einsum("bij,bhwj->bhwi", R, coords) + t.view(2, 1, 1, 3)
    assert (p_cam[..., 2][valid] > 0.1).all()


def test_param_groups_cover_every_trainable_parameter() -> None:
    model = CSENet.from_category("mug", get_config("small", **TINY))
    groups = build_param_groups(model, "mug", 1e-4)
    assert [g["name"] for g in groups] == list(PARAM_GROUPS)
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == sum(1 for p in model.parameters() if p.requires_grad)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["mean_v"] == pytest.approx(1e-6) and lrs["backbone"] == pytest.approx(1e-4)


def test_color_jitter_and_render_intrinsics() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 3, 8, 8, generator=gen)
    out = color_jitter(rgb, generator=gen)
    assert out.shape == rgb.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, rgb)
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert torch.allclose(color_jitter(grey, brightness=0, contrast=0, saturation=0, hue=0.05), grey, atol=1e-6)
    K = torch.tensor([[[100.0, 0.0, 64.0], [0.0, 90.0, 60.0], [0.0, 0.0, 1.0]]])
    Kr = render_intrinsics(K, 128, 64)
    # crop pixel i (centre i + 0.5 in K) and render pixel j (centre j) see the same ray when i + 0.5 = 2 (j + 0.5)
    assert torch.allclose(Kr[0], torch.tensor([[50.0, 0.0, 31.5], [0.0, 45.0, 29.5], [0.0, 0.0, 1.0]]))


def test_cli_parses_every_subcommand() -> None:
    p = build_parser()
    a = p.parse_args(["train", "--category", "mug", "--data", "d", "--steps", "5", "--resume",
                      "--model-override", "crop_size=64", "--disable", "texture", "symmetry"])
    assert a.resume == "auto" and a.model_override == ["crop_size=64"] and a.disable == ["texture", "symmetry"]
    a = p.parse_args(["evaluate", "--model", "m.onnx", "--data", "d", "--baselines", "pipeline", "pose_head"])
    assert a.baselines == ["pipeline", "pose_head"]
    assert p.parse_args(["export", "--checkpoint", "c.pt"]).out_dir == "models"
    assert p.parse_args(["generate", "--out", "o", "--category", "bowl"]).videos == 10
    assert p.parse_args(["smoke"]).steps == 250
    assert p.parse_args(["train", "--category", "mug", "--data", "d"]).render_pose == "head"
    assert p.parse_args(["adapt", "--category", "mug", "--data", "d", "--render-pose", "fit"]).render_pose == "fit"
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--category", "teapot", "--data", "d"])
    with pytest.raises(SystemExit):
        p.parse_args(["adapt", "--category", "mug", "--data", "d", "--render-pose", "gt"])
    with pytest.raises(ValueError, match="render_pose"):
        TrainConfig(category="mug", data="d", render_pose="gt")


def test_canonical_azimuth_puts_the_camera_in_the_yz_half_plane() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).view(16, 3, 3)
    t = torch.randn(16, 3, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    R2 = canonical_azimuth(R, t)
    cam = -torch.einsum("bji,bj->bi", R2, t)  # camera centre in the new object frame
    assert torch.allclose(cam[:, 0], torch.zeros(16, dtype=torch.float64), atol=1e-9)
    assert (cam[:, 2] > 0).all()
    # the change is a rotation about the object's y axis only (a symmetry of y-symmetric shapes)
    D = R.transpose(1, 2) @ R2
    assert torch.allclose(D[:, 1], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(16, 3), atol=1e-9)
    assert torch.allclose(torch.linalg.det(R2), torch.ones(16, dtype=torch.float64), atol=1e-9)
    # the same distance and height of the camera
    cam0 = -torch.einsum("bji,bj->bi", R, t)
    assert torch.allclose(cam.norm(dim=-1), cam0.norm(dim=-1)) and torch.allclose(cam[:, 1], cam0[:, 1])
    # idempotent
    assert torch.allclose(canonical_azimuth(R2, t), R2, atol=1e-9)


def test_frozen_groups_do_not_move(tiny_data: Path, tmp_path: Path) -> None:
    """``freeze``: only the pose head trains (a head-only phase); the trunk's batch-norm statistics stay."""
    from cse_train.model import save_checkpoint

    torch.manual_seed(0)
    start = CSENet.from_category("mug", get_config("small", **TINY))
    init = save_checkpoint(tmp_path / "init.pt", start, {})
    result = train(_cfg(tiny_data, tmp_path / "run", steps=3, init_checkpoint=str(init), supervision="synthetic-gt",
                        pose_gt=1.0, freeze=("mean_v", "shape", "features", "backbone")))
    after, _ = load_checkpoint(result.checkpoint, map_location="cpu")
    before = start.state_dict()
    moved = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("pose.") for k in moved), sorted(moved)[:5]
    with pytest.raises(ValueError, match="unknown parameter groups"):
        _cfg(tiny_data, tmp_path / "x", freeze=("trunk",))
    with pytest.raises(ValueError, match="pose_gt"):  # the head term needs labels
        _cfg(tiny_data, tmp_path / "x", pose_gt=1.0)
