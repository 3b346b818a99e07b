"""Wild6D loader on a tiny fixture written here in the exact on-disk format (docs/reference.md §4.1-4.2)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cse_train.data.wild6d import TEST_ENLARGE, Wild6DDataset

W, H = 64, 48
# Deliberately asymmetric so a row-/column-major mix-up shows.
K = np.array([[70.0, 0.0, 30.5], [0.0, 66.0, 22.5], [0.0, 0.0, 1.0]])
# Object dirs in non-sorted creation order; frames 0, 2, 10 (numeric, not lexicographic, order) plus a
# frame 5 without mask (ignored).
OBJECTS = {"obj_b": ["seq_1"], "obj_a": ["seq_2", "seq_1"]}
FRAMES = [0, 2, 10]


def _depth_mm(obj: str, seq: str, frame: int) -> int:
    return 500 + 100 * sorted(OBJECTS).index(obj) + 10 * int(seq[-1]) + frame


def _mask_box(frame: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (inclusive) of the mask rectangle of a frame."""
    return 10 + frame, 8, 40 + frame, 30


def _write_fixture(root: Path, improper: bool = False) -> Path:
    cat_root = root / "test_set" / "mug"
    for obj, seqs in OBJECTS.items():
        for seq in seqs:
            seq_dir = cat_root / obj / seq
            (seq_dir / "images").mkdir(parents=True)
            meta = {"K": K.T.reshape(-1).tolist(), "w": W, "h": H, "fps": 30}  # column-major
            (seq_dir / "metadata").write_text(json.dumps(meta))
            for f in FRAMES + [5]:
                rgb = np.zeros((H, W, 3), np.uint8)
                rgb[..., 0] = 200  # red in RGB -> written as BGR
                rgb[..., 2] = 20
                cv2.imwrite(str(seq_dir / "images" / f"{f}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                depth = np.full((H, W), _depth_mm(obj, seq, f), np.uint16)
                depth[0:4, :] = 0  # a band of invalid depth
                cv2.imwrite(str(seq_dir / "images" / f"{f}-depth.png"), depth)
                if f == 5:
                    continue
                mask = np.zeros((H, W), np.uint8)
                x0, y0, x1, y1 = _mask_box(f)
                mask[y0 : y1 + 1, x0 : x1 + 1] = 7  # any non-zero value = object
                cv2.imwrite(str(seq_dir / "images" / f"{f}-mask.png"), mask)
            flip = np.diag([1.0, -1.0, 1.0]) if improper else np.eye(3)
            ann = [
                {
                    "name": f"mug/{obj}/{seq}/{i}",
                    "rotation": flip if i in FRAMES else np.eye(3),
                    "translation": np.array([0.01 * i, 0.0, 0.5]),
                    "size": np.array([0.1, 0.12, 0.09]),
                }
                for i in range(11)
            ]
            pkl = root / "test_set" / "pkl_annotations" / "mug" / f"mug-{obj}-{seq}.pkl"
            pkl.parent.mkdir(parents=True, exist_ok=True)
            with open(pkl, "wb") as fh:
                pickle.dump({"annotations": ann}, fh)
    return cat_root


def test_list_file_indexes_sorted_listdir_and_frames_sort_numerically(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("1_0\n0_1\n")  # obj_b/seq_1, obj_a/seq_2 (sorted listings)
    ds = Wild6DDataset(root, split="train", list_file=lst, crop_size=32)
    assert [(v.object_dir, v.sequence_dir) for v in ds.videos] == [("obj_b", "seq_1"), ("obj_a", "seq_2")]
    assert all(v.frames == (0, 2, 10) for v in ds.videos)  # frame 5 has no mask: ignored
    assert len(ds) == 6 and ds.video_items == [[0, 1, 2], [3, 4, 5]]
    np.testing.assert_allclose(ds.videos[0].K, K)  # column-major metadata -> usual K
    assert ds.category == "mug"


def test_items_shapes_units_and_crop_intrinsics(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    ds = Wild6DDataset(root, split="test", crop_size=32)
    assert len(ds.videos) == 3 and len(ds) == 9
    item = ds[ds.video_items[0][2]]  # obj_a/seq_1, frame 10
    assert item["frame_index"] == 10 and item["video_index"] == 0
    for key, shape in {"rgb": (3, 32, 32), "mask": (1, 32, 32), "depth_m": (1, 32, 32), "K_crop": (3, 3),
                       "K_ndc": (3, 3), "R": (3, 3), "t": (3,), "size": (3,)}.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    assert 0.0 <= item["rgb"].min() and item["rgb"].max() <= 1.0
    # RGB order: the red channel is the bright one.
    assert item["rgb"][0].mean() > 0.6 and item["rgb"][2].mean() < 0.2
    # Depth: millimetres -> metres, 0 stays invalid.
    d = item["depth_m"][0]
    expected = _depth_mm("obj_a", "seq_1", 10) / 1000.0
    assert torch.allclose(d[d > 0], torch.tensor(expected), atol=1e-6)
    # Crop box: mask box (20..50, 8..30), half sizes enlarged 1.35 per axis.
    x0, y0, x1, y1 = _mask_box(10)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    lx, ly = int(TEST_ENLARGE * ((x1 - x0) // 2)), int(TEST_ENLARGE * ((y1 - y0) // 2))
    assert item["box"].tolist() == [cx, cy, lx, ly]
    Kc = item["K_crop"].double().numpy()
    np.testing.assert_allclose(Kc[0], [K[0, 0] * 16 / lx, 0, (K[0, 2] - (cx - lx)) * 16 / lx], rtol=1e-6)
    np.testing.assert_allclose(Kc[1], [0, K[1, 1] * 16 / ly, (K[1, 2] - (cy - ly)) * 16 / ly], rtol=1e-6)
    Kn = item["K_ndc"].double().numpy()
    np.testing.assert_allclose(Kn[:2, :2], Kc[:2, :2] / 16, rtol=1e-6)
    np.testing.assert_allclose(Kn[:2, 2], Kc[:2, 2] / 16 - 1, rtol=1e-6, atol=1e-6)
    # Mask: the object fills the central 1/1.35 of the crop.
    frac = item["mask"].mean().item()
    assert abs(frac - (1 / TEST_ENLARGE) ** 2) < 0.1
    # GT from the pkl, frame 10.
    np.testing.assert_allclose(item["t"].numpy(), [0.1, 0.0, 0.5], atol=1e-6)
    assert item["gt_improper"] is False


def test_improper_gt_rotation_is_fixed_and_flagged(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path, improper=True)
    item = Wild6DDataset(root, split="test", crop_size=32)[0]
    assert item["gt_improper"] is True
    assert torch.linalg.det(item["R"]).item() == pytest.approx(1.0)
    raw = Wild6DDataset(root, split="test", crop_size=32, fix_improper_gt=False)[0]
    assert torch.linalg.det(raw["R"]).item() == pytest.approx(-1.0)


def test_training_items_have_random_enlargement_and_no_gt(tmp_path: Path) -> None:
    root = _write_fixture(tmp_path)
    ds = Wild6DDataset(root, split="train", crop_size=32)
    torch.manual_seed(0)
    boxes = {tuple(ds[0]["box"].tolist()) for _ in range(20)}
    assert len(boxes) > 3
    x0, y0, x1, y1 = _mask_box(0)
    for _, _, lx, ly in boxes:
        assert int(1.2 * ((x1 - x0) // 2)) <= lx <= int(1.5 * ((x1 - x0) // 2))
        assert int(1.2 * ((y1 - y0) // 2)) <= ly <= int(1.5 * ((y1 - y0) // 2))
    assert "R" not in ds[0]
    batch = ds.collate([ds[i] for i in range(4)])
    assert batch["rgb"].shape == (4, 3, 32, 32) and batch["frame_index"].tolist() == [0, 2, 10, 0]
