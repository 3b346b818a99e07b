"""NOCS REAL275 loader, exactly as the reference reads it (docs/reference.md §4.3).

- ``root`` = one split directory (``real_train`` / ``real_test``) of scene folders; list lines are
  scene indices into the sorted ``os.listdir(root)`` (default: every scene).
- Per frame ``<NNNN>``: ``_color.png`` (RGB), ``_depth.png`` (16-bit millimetres -> metres here),
  ``_mask.png`` (8-bit instance ids, **255 = background**), ``_meta.txt`` (lines
  ``inst_id class_id model_name``) and ``_label.pkl`` (the object-deformnet / SPD format:
  ``instance_ids``, ``class_ids``, ``model_list``, ``rotations``, ``translations``, ``scales``,
  ``bboxes`` as ``[y1, x1, y2, x2]``).
- Class ids: bottle 1, bowl 2, camera 3, can 4, laptop 5, mug 6. A "video" = every frame of one object
  model in one scene; one item = one instance in one frame.
- Crop from the annotated 2D box (not the mask); per-axis enlargement U(1.1, 1.3) train, 1.2 test.
  Without a label pkl the box of the mask is used.
- Intrinsics: REAL275's (fx, fy, cx, cy) = (591.0125, 590.16775, 322.525, 244.11084). **The reference
  truncates them with ``int()`` to (591, 590, 322, 244)**; ``truncate_intrinsics=True`` reproduces that.
- Ground truth (test items): ``R`` = the label's rotation (NOCS object frame -> camera; this is our
  published frame, so unlike the reference no ``diag(1, -1, -1)`` is applied unless
  ``reference_axes=True``), ``t`` = translation (metres), ``size`` = the label's ``sizes`` when present,
  else (max - min of the model's NOCS vertices from ``models``, e.g. ``obj_models/real_test.pkl``)
  x scale, else NaN.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cse_pose.core.crop import crop_box_from_mask

from .common import box_from_bbox, draw_enlarge, make_item

__all__ = [
    "CLASS_IDS",
    "REAL275_INTRINSICS",
    "REAL275_INTRINSICS_TRUNCATED",
    "TEST_ENLARGE",
    "TRAIN_ENLARGE",
    "Real275Dataset",
    "Real275Video",
    "real275_K",
]

CLASS_IDS: dict[str, int] = {"bottle": 1, "bowl": 2, "camera": 3, "can": 4, "laptop": 5, "mug": 6}
#: (fx, fy, cx, cy) of the REAL275 camera, exact; and as the reference uses them (``int()``-truncated).
REAL275_INTRINSICS: tuple[float, float, float, float] = (591.0125, 590.16775, 322.525, 244.11084)
REAL275_INTRINSICS_TRUNCATED: tuple[float, float, float, float] = (591.0, 590.0, 322.0, 244.0)
TRAIN_ENLARGE: tuple[float, float] = (1.1, 1.3)
TEST_ENLARGE = 1.2
_BACKGROUND = 255


def real275_K(truncate: bool = False) -> np.ndarray:
    """(3, 3) REAL275 intrinsics; ``truncate=True`` gives the reference's integer-truncated values."""
    fx, fy, cx, cy = REAL275_INTRINSICS_TRUNCATED if truncate else REAL275_INTRINSICS
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Real275Video:
    """All frames of one object model in one scene: ``(frame_id, instance_id)`` in frame order."""

    scene: str
    model_name: str
    path: Path
    frames: tuple[tuple[str, int], ...]


def read_meta(path: str | Path) -> list[tuple[int, int, str]]:
    """``_meta.txt`` -> [(instance_id, class_id, model_name)]."""
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((int(parts[0]), int(parts[1]), parts[2]))
    return out


def read_label(path: str | Path) -> dict[str, Any]:
    """``_label.pkl`` (SPD format) as a dict."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _read_depth_m(path: Path) -> np.ndarray:
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise FileNotFoundError(f"cannot read depth {path}")
    if d.ndim == 3:  # NOCS 3-channel encoding: high byte in channel 1, low byte in channel 2 (BGR order)
        d = d[:, :, 1].astype(np.uint16) * 256 + d[:, :, 2].astype(np.uint16)
    if d.dtype != np.uint16:
        raise ValueError(f"depth {path} must be 16-bit millimetres, got {d.dtype}")
    return d.astype(np.float32) * np.float32(1e-3)


def _read_instance_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return m[:, :, 2] if m.ndim == 3 else m  # the reference (SPD) reads channel 2 of 3-channel files


class Real275Dataset(Dataset):
    """REAL275 items of one category (one instance in one frame each).

    Args:
        root: split directory of scene folders.
        category: one of ``CLASS_IDS``.
        split: 'train' (random enlargement, no GT) or 'test' (fixed enlargement, GT in items).
        list_file: optional file of scene indices (into sorted ``os.listdir(root)``), or ``scenes``.
        scenes: optional explicit scene directory names.
        crop_size: S.
        enlarge: override of the split's enlargement (fixed factor or (kx, ky)).
        truncate_intrinsics: use the reference's truncated intrinsics.
        models: optional {model_name: (N, 3) NOCS vertices} or a path to such a pickle, for GT sizes.
        reference_axes: apply the reference's ``R_gt @ diag(1, -1, -1)`` to GT rotations.
        return_gt: include GT (default: True for 'test').
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "train",
        list_file: str | Path | None = None,
        scenes: list[str] | None = None,
        crop_size: int = 256,
        enlarge: float | tuple[float, float] | None = None,
        truncate_intrinsics: bool = False,
        models: Mapping[str, np.ndarray] | str | Path | None = None,
        reference_axes: bool = False,
        return_gt: bool | None = None,
    ) -> None:
        if category not in CLASS_IDS:
            raise ValueError(f"unknown REAL275 category {category!r}; known: {sorted(CLASS_IDS)}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.category = category
        self.class_id = CLASS_IDS[category]
        self.split = split
        self.crop_size = int(crop_size)
        self.enlarge = enlarge
        self.K = real275_K(truncate_intrinsics)
        self.reference_axes = reference_axes
        self.return_gt = (split == "test") if return_gt is None else bool(return_gt)
        if isinstance(models, (str, Path)):
            with open(models, "rb") as fh:
                models = pickle.load(fh)
        self.models = models
        if scenes is None:
            listing = sorted(os.listdir(self.root))
            if list_file is not None:
                lines = Path(list_file).read_text().split()
                scenes = [listing[int(x)] for x in lines]
            else:
                scenes = [s for s in listing if (self.root / s).is_dir()]
        videos: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for scene in scenes:
            scene_dir = self.root / scene
            frame_ids = sorted(n[: -len("_color.png")] for n in os.listdir(scene_dir) if n.endswith("_color.png"))
            for fid in frame_ids:
                meta_path = scene_dir / f"{fid}_meta.txt"
                if not meta_path.is_file():
                    continue
                for inst_id, class_id, model in read_meta(meta_path):
                    if class_id == self.class_id:
                        videos.setdefault((scene, model), []).append((fid, inst_id))
        self.videos = [Real275Video(s, m, self.root / s, tuple(fr)) for (s, m), fr in videos.items()]
        #: (video index, frame position) of every item.
        self.index: list[tuple[int, int]] = [
            (v, j) for v, vid in enumerate(self.videos) for j in range(len(vid.frames))
        ]
        starts = np.cumsum([0] + [len(v.frames) for v in self.videos])
        #: Flat dataset indices of each video's frames, in time order (for ``VideoBatchSampler``).
        self.video_items: list[list[int]] = [
            list(range(int(starts[v]), int(starts[v + 1]))) for v in range(len(self.videos))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def _enlarge(self) -> float | tuple[float, float]:
        if self.enlarge is not None:
            return self.enlarge
        return draw_enlarge(*TRAIN_ENLARGE) if self.split == "train" else TEST_ENLARGE

    def _gt(self, label: Mapping[str, Any], k: int, model: str) -> dict[str, np.ndarray]:
        R = np.asarray(label["rotations"][k], np.float64).reshape(3, 3)
        if self.reference_axes:
            R = R @ np.diag([1.0, -1.0, -1.0])
        t = np.asarray(label["translations"][k], np.float64).reshape(3)
        if "sizes" in label:
            size = np.asarray(label["sizes"][k], np.float64).reshape(3)
        elif self.models is not None and model in self.models:
            v = np.asarray(self.models[model], np.float64).reshape(-1, 3)
            size = (v.max(axis=0) - v.min(axis=0)) * float(np.asarray(label["scales"][k]).reshape(-1)[0])
        else:
            size = np.full(3, np.nan)
        return {"R": R, "t": t, "size": size}

    def __getitem__(self, idx: int) -> dict[str, Any]:
        video_index, position = self.index[idx]
        vid = self.videos[video_index]
        fid, inst_id = vid.frames[position]
        base = vid.path / fid
        bgr = cv2.imread(str(base) + "_color.png", cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read {base}_color.png")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        depth = _read_depth_m(Path(str(base) + "_depth.png"))
        inst = _read_instance_mask(Path(str(base) + "_mask.png"))
        mask = (inst == inst_id) & (inst != _BACKGROUND)
        label_path = Path(str(base) + "_label.pkl")
        label = read_label(label_path) if label_path.is_file() else None
        k = None
        if label is not None:
            ids = [int(i) for i in np.asarray(label["instance_ids"]).reshape(-1)]
            k = ids.index(inst_id) if inst_id in ids else None
        enlarge = self._enlarge()
        if k is not None:
            box = box_from_bbox(label["bboxes"][k], self.crop_size, enlarge)
        else:
            box = crop_box_from_mask(mask, self.crop_size, enlarge)
        gt = None
        if self.return_gt:
            if k is None:
                raise FileNotFoundError(f"no label for instance {inst_id} in {label_path}")
            gt = self._gt(label, k, vid.model_name)
        try:
            frame_number = int(fid)
        except ValueError:
            frame_number = position
        item = make_item(rgb, mask, depth, self.K, box, video_index, frame_number, gt)
        item["instance_id"] = int(inst_id)
        return item

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items into a batch."""
        return torch.utils.data.default_collate(items)
