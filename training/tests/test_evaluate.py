"""Evaluation through the node's pipeline on tiny synthetic test videos, with answers known in advance.

- ground-truth correspondences + the node's solver must be near perfect (upper bound);
- a deliberately wrong model (the same correspondences turned by 90 degrees) must fail every pose metric;
- every baseline runs on a (random) torch checkpoint and on its ONNX export through the node's loader, and
  the CLI writes the JSON report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cse_pose.pipeline import PipelineParams
from cse_train.__main__ import export_model, main
from cse_train.config import get_config
from cse_train.data.synthetic import generate
from cse_train.data.wild6d import Wild6DDataset
from cse_train.evaluate import (
    BASELINES,
    EvalMode,
    GTCorrespondenceBackend,
    OnnxPoseHead,
    evaluate,
    format_table,
    load_eval_model,
    run_evaluation,
    wild6d_frames,
)
from cse_train.model import CSENet, save_checkpoint

TINY = {"crop_size": 64, "grid_size": 16, "resnet_widths": [16, 32, 64, 128]}


@pytest.fixture(scope="module")
def test_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    generate(root, "mug", "test", 1, frames=(3, 3), width=320, height=240, seed=5)
    generate(root, "bowl", "test", 1, frames=(2, 2), width=320, height=240, seed=6)
    return root


def _frames(root: Path, category: str) -> list:
    return list(wild6d_frames(Wild6DDataset(root / category, split="test", crop_size=64)))


def test_gt_correspondences_are_near_perfect(test_root: Path) -> None:
    for category in ("mug", "bowl"):  # non-symmetric and y-symmetric metrics
        frames = _frames(test_root, category)
        report = evaluate(frames, category, mode=BASELINES["gt_correspondences"], crop_size=128, grid_size=32)
        s = report.summary
        assert s["frames"] == len(frames) > 0 and s["failures"] == 0
        for name in ("IoU25", "IoU50", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm"):
            assert s[name] == 1.0, (category, name, s)
        assert s["median_rotation_deg"] < 1.0 and s["median_translation_cm"] < 0.5
        assert all(f["iou"] > 0.9 for f in report.frames)
        # plain Umeyama on the same ground-truth points agrees (no outliers to reject)
        plain = evaluate(frames, category, mode=EvalMode("gt_plain", correspondences="gt", solver="umeyama"),
                         crop_size=128, grid_size=32)
        assert plain.summary["5deg2cm"] == 1.0


def test_plain_umeyama_keeps_every_pixel(test_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Baseline (b) is the reference's all-pixel least squares, whatever the node's max_correspondences."""
    import cse_pose.pipeline as pipeline_module

    seen: dict[str, list] = {}
    select = pipeline_module.select_pixels

    def spy(*args, max_pairs=None, **kwargs):
        seen.setdefault(current, []).append(max_pairs)
        return select(*args, max_pairs=max_pairs, **kwargs)

    monkeypatch.setattr(pipeline_module, "select_pixels", spy)
    frames = _frames(test_root, "mug")[:1]
    params = PipelineParams(max_correspondences=50)
    for current in ("gt_correspondences", "umeyama_gt"):
        mode = BASELINES["gt_correspondences"] if current == "gt_correspondences" else \
            EvalMode("umeyama_gt", correspondences="gt", solver="umeyama")
        evaluate(frames, "mug", mode=mode, params=params, crop_size=128, grid_size=32)
    assert seen == {"gt_correspondences": [50], "umeyama_gt": [None]}


class _TurnedGT(GTCorrespondenceBackend):
    """Ground-truth correspondences rotated by 90 degrees about the object x axis: a confidently wrong model."""

    TURN = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray):
        v, m, c = super().run(rgb_crops, masks)
        return v, m @ self.TURN.T, c


def test_wrong_model_scores_low(test_root: Path) -> None:
    frames = _frames(test_root, "mug")
    params = PipelineParams()
    wrong = _TurnedGT("mug", 128, 32, params)

    class _Feeder:  # evaluate() calls set_frame only on its own GT backend; feed the custom one here
        def __init__(self, frames):
            self.frames = frames

        def __iter__(self):
            for f in self.frames:
                wrong.set_frame(f)
                yield f

    report = evaluate(_Feeder(frames), "mug", mode=BASELINES["pipeline"], backend=wrong, params=params)
    s = report.summary
    assert s["frames"] == 3
    for name in ("5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm"):  # (a mug box turned 90° may still overlap)
        assert s[name] == 0.0, (name, s)
    assert s["median_rotation_deg"] > 60.0


def test_all_baselines_on_checkpoint_and_onnx(test_root: Path, tmp_path: Path) -> None:
    model = CSENet.from_category("mug", get_config("small", **TINY))
    ckpt = save_checkpoint(tmp_path / "random.pt", model)
    out_json = tmp_path / "eval.json"
    reports = run_evaluation(ckpt, test_root / "mug", baselines=list(BASELINES), json_path=out_json, progress=False,
                             print_table=False)
    assert [r.mode for r in reports] == list(BASELINES)
    for r in reports:
        assert r.summary["frames"] == 3
        assert r.summary["failures"] + sum("iou" in f for f in r.frames) == 3
    assert reports[-1].summary["IoU50"] == 1.0  # gt correspondences at the model's S, G
    doc = json.loads(out_json.read_text())
    assert doc["category"] == "mug" and len(doc["reports"]) == 4
    table = format_table(reports)
    assert "gt_correspondences" in table and "5°2cm" in table

    # the exported ONNX runs through the node's loader and pipeline
    onnx_path = export_model(ckpt, tmp_path / "models")
    runtime, torch_model = load_eval_model(onnx_path)
    assert torch_model is None and runtime.name.startswith("onnxruntime")
    r = evaluate(_frames(test_root, "mug"), "mug", backend=runtime)
    assert r.summary["frames"] == 3
    with pytest.raises(ValueError, match="pose_head"):
        evaluate(_frames(test_root, "mug"), "mug", mode=BASELINES["pose_head"], backend=runtime)
    # ... and carries the pose regressor: baseline (a) from the ONNX file equals the checkpoint's, frame by frame
    head = OnnxPoseHead(onnx_path)
    r_onnx = evaluate(_frames(test_root, "mug"), "mug", mode=BASELINES["pose_head"], pose_head=head)
    r_torch = next(r for r in reports if r.mode == "pose_head")
    assert len(r_onnx.frames) == len(r_torch.frames) == 3
    for a, b in zip(r_onnx.frames, r_torch.frames, strict=True):
        assert ("iou" in a) == ("iou" in b)
        if "iou" in a:
            assert abs(a["rotation_deg"] - b["rotation_deg"]) < 1e-2 and abs(a["iou"] - b["iou"]) < 1e-3
            assert abs(a["translation_cm"] - b["translation_cm"]) < 1e-2
    onnx_only = run_evaluation(onnx_path, test_root / "mug", baselines=["pose_head"], progress=False,
                               print_table=False)
    assert onnx_only[0].summary["frames"] == 3


def test_cli_evaluate_gt_baseline_writes_json(test_root: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "cli.json"
    rc = main(["evaluate", "--data", str(test_root / "bowl"), "--category", "bowl", "--baselines",
               "gt_correspondences", "--json", str(out_json), "--no-progress"])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert doc["reports"][0]["summary"]["IoU50"] == 1.0


def _write_real275_scene(split_dir: Path, n_frames: int = 2) -> None:
    """Synthetic frames re-rendered with the REAL275 intrinsics, written in REAL275's on-disk format."""
    import dataclasses
    import pickle

    import cv2

    from cse_train.data.real275 import REAL275_INTRINSICS
    from cse_train.data.synthetic import render_frame, sample_scene

    fx, fy, cx, cy = REAL275_INTRINSICS
    scene = sample_scene("mug", "test", 11, frames=(n_frames, n_frames))
    scene = dataclasses.replace(scene, camera={"fx": fx, "fy": fy, "dcx": cx - 319.5, "dcy": cy - 239.5})
    d = split_dir / "scene_1"
    d.mkdir(parents=True)
    for i in range(n_frames):
        fr = render_frame(scene, i, 640, 480)
        np.testing.assert_allclose(fr.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], atol=1e-9)
        fid = f"{i:04d}"
        cv2.imwrite(str(d / f"{fid}_color.png"), cv2.cvtColor(fr.rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(d / f"{fid}_depth.png"), np.round(fr.depth_m * 1000.0).astype(np.uint16))
        target = fr.instance_mask == 1
        cv2.imwrite(str(d / f"{fid}_mask.png"), np.where(target, 1, 255).astype(np.uint8))
        (d / f"{fid}_meta.txt").write_text("1 6 mug_model\n")
        ys, xs = np.nonzero(target)
        gt = fr.gt[0]
        label = {
            "instance_ids": [1], "class_ids": [6], "model_list": ["mug_model"],
            "rotations": np.asarray(gt["R"], np.float32)[None], "translations": np.asarray(gt["t"], np.float32)[None],
            "scales": np.ones(1, np.float32), "sizes": np.asarray(gt["size"], np.float32)[None],
            "bboxes": np.array([[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]]),
        }  # fmt: skip
        with open(d / f"{fid}_label.pkl", "wb") as fh:
            pickle.dump(label, fh)


def test_real275_split_through_its_loader(tmp_path: Path) -> None:
    split = tmp_path / "real_test"
    _write_real275_scene(split)
    reports = run_evaluation(None, split, dataset="real275", category="mug", baselines=["gt_correspondences"],
                             progress=False, print_table=False)
    s = reports[0].summary
    assert s["frames"] == 2 and s["failures"] == 0
    assert s["IoU50"] == 1.0 and s["5deg2cm"] == 1.0


def test_wild6d_frames_carry_the_handle_visibility_and_old_splits_load(test_root: Path, tmp_path: Path) -> None:
    import shutil

    frames = _frames(test_root, "mug")
    scene = json.loads((test_root / "mug" / "00000" / "00" / "scene.json").read_text())
    recorded = {fr["index"]: fr["instances"][0]["handle_visible"] for fr in scene["frames"]}
    assert [f.handle_visible for f in frames] == [recorded[int(f.name.split("/")[-1])] for f in frames]
    assert all(f.handle_visible is None for f in _frames(test_root, "bowl"))
    # a split written before the field existed: loads, visibility unknown (scored as visible)
    old = tmp_path / "old"
    shutil.copytree(test_root, old)
    path = old / "mug" / "00000" / "00" / "scene.json"
    for fr in scene["frames"]:
        for inst in fr["instances"]:
            inst.pop("handle_visible", None)
            inst.pop("handle_pixels", None)
    path.write_text(json.dumps(scene))
    old_frames = _frames(old, "mug")
    assert len(old_frames) == len(frames) and all(f.handle_visible is None for f in old_frames)
    report = evaluate(old_frames, "mug", mode=BASELINES["gt_correspondences"], crop_size=128, grid_size=32)
    assert report.summary["symmetric_frames"] == 0 and report.by_handle["hidden"]["frames"] == 0


class _SpunGT(GTCorrespondenceBackend):
    """Ground-truth correspondences turned by 90 degrees about the object's y (up) axis: exact for a mug whose
    handle is hidden (NOCS scores it as y-symmetric), a 90 degree error otherwise."""

    TURN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], np.float32)

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray):
        v, m, c = super().run(rgb_crops, masks)
        return v @ self.TURN.T, m @ self.TURN.T, c


def _fed(backend: GTCorrespondenceBackend, frames: list):
    for f in frames:
        backend.set_frame(f)
        yield f


def test_mug_with_hidden_handle_is_scored_y_symmetric(test_root: Path, capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    frames = _frames(test_root, "mug")
    spun = _SpunGT("mug", 128, 32, PipelineParams())
    seen = [dataclasses.replace(f, handle_visible=True) for f in frames]
    hidden = [dataclasses.replace(f, handle_visible=False) for f in frames]
    mixed = [hidden[0], *seen[1:]]
    r_seen = evaluate(_fed(spun, seen), "mug", backend=spun)
    r_hidden = evaluate(_fed(spun, hidden), "mug", backend=spun)
    r_mixed = evaluate(_fed(spun, mixed), "mug", backend=spun)
    assert r_seen.summary["failures"] == 0 and r_seen.summary["median_rotation_deg"] > 80.0
    assert r_seen.summary["symmetric_frames"] == 0 and r_seen.summary["10deg5cm"] == 0.0
    assert r_hidden.summary["symmetric_frames"] == 3 and r_hidden.summary["5deg2cm"] == 1.0
    assert all(f["symmetric"] and f["handle_visible"] is False for f in r_hidden.frames)
    # by handle: the hidden frame is right, the visible ones are 90 degrees off; left + right = visible
    by = r_mixed.by_handle
    assert by["hidden"]["frames"] == 1 and by["hidden"]["5deg2cm"] == 1.0
    assert by["visible"]["frames"] == 2 and by["visible"]["10deg5cm"] == 0.0
    assert by["left"]["frames"] + by["right"]["frames"] == 2
    sides = [f["handle_side"] for f in r_mixed.frames[1:]]
    assert by["left"]["frames"] == sides.count("left")
    doc = json.loads(json.dumps(r_mixed.to_dict()))
    assert doc["by_handle"]["hidden"]["frames"] == 1
    # bowl keeps its y-rotation rule on every frame
    bowl = evaluate(_frames(test_root, "bowl"), "bowl", mode=BASELINES["gt_correspondences"], crop_size=128,
                    grid_size=32)
    assert bowl.summary["symmetric_frames"] == bowl.summary["frames"] and bowl.by_handle == {}
    # the line make eval prints
    from cse_train.evaluate import format_handle_table, handle_line

    assert handle_line([r_mixed]) == "mug: handle hidden in 1 of 3 frames, scored as y-symmetric (NOCS protocol)"
    assert handle_line([bowl]) is None and format_handle_table(bowl) == ""
    assert "handle hidden (scored y-symmetric)" in format_handle_table(r_mixed)


def test_handle_side_follows_the_projection() -> None:
    from cse_train.evaluate import handle_side

    K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
    t = np.array([0.0, 0.0, 0.6])
    size = np.array([0.12, 0.1, 0.09])
    assert handle_side(np.eye(3), t, size, K) == "right"  # object +x = camera +x = image right
    flip = np.diag([-1.0, 1.0, -1.0])  # turned 180 degrees about y
    assert handle_side(flip, t, size, K) == "left"


def test_published_rows_count_untrusted_poses_as_failures(test_root: Path) -> None:
    frames = _frames(test_root, "mug")
    strict = PipelineParams(min_quality=0.999999)
    report = evaluate(frames, "mug", mode=BASELINES["gt_correspondences"], params=strict, crop_size=128,
                      grid_size=32)
    s, pub = report.summary, report.published
    assert s["failures"] == 0 and s["5deg2cm"] == 1.0  # every pose is right ...
    assert s["published"] == 0.0 and not any(f["trusted"] for f in report.frames)  # ... and none is trusted
    assert pub["failures"] == 3 and pub["5deg2cm"] == 0.0 and pub["IoU25"] == 0.0
    table = format_table([report])
    assert "gt_correspondences, published" in table and "IoU75" in table and "publ%" in table
    normal = evaluate(frames, "mug", mode=BASELINES["gt_correspondences"], crop_size=128, grid_size=32)
    assert normal.summary["published"] == 1.0 and normal.published["5deg2cm"] == 1.0
    assert "published" not in format_table([normal])  # identical rows are not repeated (except the node's)


class _Recording:
    """Wraps a backend (or pose head) and keeps the network inputs it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.info = getattr(inner, "info", None)
        self.name = "recording"
        self.crop_size = getattr(inner, "crop_size", None)
        self.grid_size = getattr(inner, "grid_size", None)
        self.faces = getattr(inner, "faces", None)
        self.base_rotation = getattr(inner, "base_rotation", None)
        self.inputs: list[tuple[np.ndarray, np.ndarray]] = []

    def run(self, rgb, masks):
        self.inputs.append((np.array(rgb), np.array(masks)))
        return self.inner.run(rgb, masks)

    def predict(self, rgb, mask):
        self.inputs.append((np.array(rgb), np.array(mask)))
        return self.inner.predict(rgb, mask)


@pytest.mark.parametrize("depth_sampling", ["aligned", "reference"])
def test_baselines_crop_like_the_pipeline(test_root: Path, monkeypatch: pytest.MonkeyPatch,
                                          depth_sampling: str) -> None:
    """Pipeline, (a) pose head and (c) GT correspondences see the same network inputs, selection mask and
    depth crop of every frame (one crop function, crop_instance)."""
    import cse_pose.pipeline as pipeline_module
    import cse_train.evaluate as ev
    from cse_pose.core import crop as core_crop

    frames = _frames(test_root, "mug")
    # no ICP: the network inputs are under test, and the ICP's sampler adds one model call of its own
    params = PipelineParams(depth_sampling=depth_sampling, refine_categories=())
    model = CSENet.from_category("mug", get_config("small", **TINY))
    crops: dict[str, list] = {"pipeline": [], "baseline": []}
    selected: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(where):
        def crop_instance(*args, **kwargs):
            out = core_crop.crop_instance(*args, **kwargs)
            crops[where].append(out)
            return out
        return crop_instance

    real_select = pipeline_module.select_pixels

    def select_spy(match, confidence, mask_crop, depth_crop_m, *args, **kwargs):
        selected.append((np.array(mask_crop), np.array(depth_crop_m)))
        return real_select(match, confidence, mask_crop, depth_crop_m, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "crop_instance", spy("pipeline"))
    monkeypatch.setattr(pipeline_module, "select_pixels", select_spy)
    monkeypatch.setattr(ev, "crop_instance", spy("baseline"))

    node = _Recording(ev.CheckpointBackend(model))
    evaluate(frames, "mug", backend=node, params=params)
    head = _Recording(ev.TorchPoseHead(model))
    evaluate(frames, "mug", mode=BASELINES["pose_head"], pose_head=head, params=params)
    gt_report = evaluate(frames, "mug", mode=BASELINES["gt_correspondences"], params=params, crop_size=64,
                         grid_size=16)
    n = len(frames)
    assert len(crops["pipeline"]) == 2 * n and len(crops["baseline"]) == 2 * n  # gt: backend + pipeline
    assert len(node.inputs) == len(head.inputs) == n and len(selected) >= 2 * n
    for i in range(n):
        ours, head_crop, gt_crop = crops["pipeline"][i], crops["baseline"][i], crops["baseline"][n + i]
        for other in (head_crop, gt_crop, crops["pipeline"][n + i]):
            assert other.box == ours.box and other.depth_sampling == depth_sampling
            np.testing.assert_array_equal(other.mask_crop, ours.mask_crop)
            np.testing.assert_array_equal(other.select_mask, ours.select_mask)
            np.testing.assert_array_equal(other.depth_crop_m, ours.depth_crop_m)
        # (a) gets exactly the pipeline's network inputs
        np.testing.assert_array_equal(head.inputs[i][0], node.inputs[i][0])
        np.testing.assert_array_equal(head.inputs[i][1], node.inputs[i][1])
        # the pipeline selects on the crop it made
        np.testing.assert_array_equal(selected[i][0], ours.select_mask)
        np.testing.assert_array_equal(selected[i][1], ours.depth_crop_m)
    assert gt_report.summary["failures"] == 0
