"""REAL275 loader on a tiny fixture written here in the exact on-disk format (docs/reference.md §4.3)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cse_train.data.real275 import (
    CLASS_IDS,
    REAL275_INTRINSICS,
    TEST_ENLARGE,
    Real275Dataset,
    real275_K,
)

W, H = 64, 48
# Two scenes x 3 frames; each frame: a mug (instance 1, class 6) and a bottle (instance 2, class 1).
SCENES = ["scene_2", "scene_1"]
MUG_BBOX = [10, 6, 30, 34]  # [y1, x1, y2, x2], deliberately larger than the mug's mask
MUG_MASK = (12, 8, 27, 30)  # y0, x0, y1, x1 (inclusive)


def _write_fixture(root: Path, with_sizes: bool = False) -> Path:
    split = root / "real_test"
    for s, scene in enumerate(SCENES):
        d = split / scene
        d.mkdir(parents=True)
        for f in range(3):
            fid = f"{f:04d}"
            rgb = np.full((H, W, 3), 40, np.uint8)
            rgb[..., 1] = 220  # green
            cv2.imwrite(str(d / f"{fid}_color.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(d / f"{fid}_depth.png"), np.full((H, W), 800 + 10 * f + 100 * s, np.uint16))
            mask = np.full((H, W), 255, np.uint8)  # 255 = background
            y0, x0, y1, x1 = MUG_MASK
            mask[y0 : y1 + 1, x0 : x1 + 1] = 1
            mask[35:45, 40:60] = 2
            cv2.imwrite(str(d / f"{fid}_mask.png"), mask)
            (d / f"{fid}_meta.txt").write_text(f"1 6 mug_model_{s}\n2 1 bottle_model_{s}\n")
            label = {
                "instance_ids": [1, 2],
                "class_ids": [6, 1],
                "model_list": [f"mug_model_{s}", f"bottle_model_{s}"],
                "rotations": np.stack([np.eye(3), np.diag([1.0, -1.0, -1.0])]).astype(np.float32),
                "translations": np.array([[0.01 * f, 0.02, 0.6 + s], [0.1, 0.1, 0.9]], np.float32),
                "scales": np.array([0.2, 0.3], np.float32),
                "bboxes": np.array([MUG_BBOX, [35, 40, 45, 60]]),
            }
            if with_sizes:
                label["sizes"] = np.array([[0.1, 0.1, 0.1], [0.07, 0.2, 0.07]], np.float32)
            with open(d / f"{fid}_label.pkl", "wb") as fh:
                pickle.dump(label, fh)
    return split


def test_videos_are_models_per_scene_and_class_ids_filter(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    mugs = Real275Dataset(root, "mug", split="test", crop_size=32)
    assert [(v.scene, v.model_name) for v in mugs.videos] == [("scene_1", "mug_model_1"), ("scene_2", "mug_model_0")]
    assert len(mugs) == 6 and mugs.video_items == [[0, 1, 2], [3, 4, 5]]
    bottles = Real275Dataset(root, "bottle", split="test", crop_size=32)
    assert [v.model_name for v in bottles.videos] == ["bottle_model_1", "bottle_model_0"]
    assert CLASS_IDS == {"bottle": 1, "bowl": 2, "camera": 3, "can": 4, "laptop": 5, "mug": 6}
    assert len(Real275Dataset(root, "laptop", split="test")) == 0
    lst = tmp_path / "list.txt"
    lst.write_text("1\n")  # index into sorted listdir -> scene_2
    assert [v.scene for v in Real275Dataset(root, "mug", list_file=lst).videos] == ["scene_2"]


def test_items_crop_from_bbox_background_255_and_units(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    ds = Real275Dataset(root, "mug", split="test", crop_size=32)
    item = ds[1]  # scene_1, frame 1
    assert item["frame_index"] == 1 and item["instance_id"] == 1
    for key, shape in {"rgb": (3, 32, 32), "mask": (1, 32, 32), "depth_m": (1, 32, 32), "K_crop": (3, 3),
                       "K_ndc": (3, 3), "R": (3, 3), "t": (3,), "size": (3,)}.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    assert item["rgb"][1].mean() > 0.8 and item["rgb"][0].mean() < 0.2  # RGB order
    # Box from the annotated bbox [y1, x1, y2, x2], not from the mask.
    y1, x1, y2, x2 = MUG_BBOX
    lx, ly = int(TEST_ENLARGE * ((x2 - x1) // 2)), int(TEST_ENLARGE * ((y2 - y1) // 2))
    assert item["box"].tolist() == [(x1 + x2) // 2, (y1 + y2) // 2, lx, ly]
    # Mask = this instance only; 255 background and the bottle (id 2) excluded.
    full = np.zeros((H, W), bool)
    y0, x0, yy1, xx1 = MUG_MASK
    full[y0 : yy1 + 1, x0 : xx1 + 1] = True
    expected_frac = full.sum() / ((2 * lx) * (2 * ly))
    assert abs(item["mask"].mean().item() - expected_frac) < 0.06
    assert item["mask"].sum() > 0
    # Depth mm -> m everywhere inside the image.
    d = item["depth_m"][0]
    assert torch.allclose(d[d > 0], torch.tensor(0.81 + 0.1), atol=1e-6)
    np.testing.assert_allclose(item["t"].numpy(), [0.01, 0.02, 1.6], atol=1e-6)
    assert torch.isnan(item["size"]).all()  # no models / sizes given
    np.testing.assert_allclose(item["K"].double().numpy(), real275_K(), rtol=1e-6)


def test_intrinsics_exact_and_truncated(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    K = Real275Dataset(root, "mug", split="test").K
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == REAL275_INTRINSICS == (591.0125, 590.16775, 322.525, 244.11084)
    Kt = Real275Dataset(root, "mug", split="test", truncate_intrinsics=True).K
    assert (Kt[0, 0], Kt[1, 1], Kt[0, 2], Kt[1, 2]) == (591.0, 590.0, 322.0, 244.0)


def test_gt_size_from_models_or_label_and_reference_axes(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    models = {"bottle_model_0": np.array([[-0.1, -0.3, -0.1], [0.1, 0.3, 0.1]]),
              "bottle_model_1": np.array([[-0.2, -0.3, -0.1], [0.2, 0.3, 0.1]])}
    ds = Real275Dataset(root, "bottle", split="test", models=models)
    item = ds[0]  # scene_1 -> bottle_model_1, scale 0.3
    np.testing.assert_allclose(item["size"].numpy(), [0.12, 0.18, 0.06], atol=1e-6)
    np.testing.assert_allclose(item["R"].numpy(), np.diag([1.0, -1.0, -1.0]))
    ref = Real275Dataset(root, "bottle", split="test", models=models, reference_axes=True)[0]
    np.testing.assert_allclose(ref["R"].numpy(), np.eye(3))  # R_gt @ diag(1, -1, -1)
    root2 = _write_fixture(tmp_path / "b", with_sizes=True)
    np.testing.assert_allclose(Real275Dataset(root2, "mug", split="test")[0]["size"].numpy(), [0.1, 0.1, 0.1])


def test_training_enlargement_range(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    ds = Real275Dataset(root, "mug", split="train", crop_size=32)
    torch.manual_seed(1)
    y1, x1, y2, x2 = MUG_BBOX
    halves = {tuple(ds[0]["box"].tolist()[2:]) for _ in range(20)}
    assert len(halves) > 3
    for lx, ly in halves:
        assert int(1.1 * ((x2 - x1) // 2)) <= lx <= int(1.3 * ((x2 - x1) // 2))
        assert int(1.1 * ((y2 - y1) // 2)) <= ly <= int(1.3 * ((y2 - y1) // 2))
    assert "R" not in ds[0]
    with pytest.raises(ValueError):
        Real275Dataset(root, "plate")
