"""Wild6D loaders (train and test), exactly as the reference reads the data (docs/reference.md §4.1-4.2).

Also reads our synthetic videos, which ``synthetic.generate`` writes in the same layout
(``FORMAT.md``); their extras (``scene.json``) are used for ground truth when no pkl annotation exists.

- Roots: training ``<Wild6D>/<category>/``, test ``<Wild6D>/test_set/<category>/``; ground truth in
  ``<root>/../pkl_annotations/<category>/<category>-<object_dir>-<sequence_dir>.pkl``.
- List file lines ``"<objIdx>_<seqIdx>"`` index the **sorted** ``os.listdir`` of the root and of the
  object directory (the reference's fragile convention, kept so the published lists work); without a
  list, every sequence found is used.
- Frames of a sequence: its ``images/<i>-mask.png`` files sorted by ``i``; RGB ``<i>.jpg``, depth
  ``<i>-depth.png`` (16-bit millimetres -> metres here), mask non-zero = object.
- ``metadata`` K is stored column-major; it is used with the JPEG's pixel grid as-is (no rescaling by
  ``w``/``h``, like the reference).
- Crops: box from the mask; per-axis enlargement U(1.2, 1.5) for training, 1.35 for test.
- Ground-truth rotations: the docs/reference.md (§7.4) suspects Wild6D's annotations of being improper
  (det = -1, a flipped y axis). With ``fix_improper_gt=True`` (default) an improper ``R`` is replaced by
  ``R @ diag(1, -1, 1)`` (proper, y up) and the item carries ``gt_improper = True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cse_pose.core.crop import crop_box_from_mask
from cse_pose.core.errors import EmptyMaskError

from . import wild6d_format as fmt
from .common import draw_enlarge, make_item

__all__ = ["TEST_ENLARGE", "TRAIN_ENLARGE", "Wild6DDataset", "Wild6DVideo"]

#: Per-axis crop enlargement: training range U(low, high) and the fixed test factor (docs/reference.md §2.1/3.2).
TRAIN_ENLARGE: tuple[float, float] = (1.2, 1.5)
TEST_ENLARGE = 1.35


@dataclass(frozen=True)
class Wild6DVideo:
    """One sequence: its directory, frame numbers (sorted) and full-image intrinsics (3, 3)."""

    object_dir: str
    sequence_dir: str
    path: Path
    frames: tuple[int, ...]
    K: np.ndarray


class Wild6DDataset(Dataset):
    """Wild6D-layout dataset (real Wild6D or our synthetic videos); one item = one frame's crop.

    Args:
        root: category root, ``<Wild6D>/<category>`` (train) or ``<Wild6D>/test_set/<category>`` (test).
        split: 'train' (random enlargement, no GT) or 'test' (fixed enlargement, GT in items).
        category: category name (default: the root directory's name).
        list_file: optional reference list file (``"<objIdx>_<seqIdx>"`` lines); or ``sequences``.
        sequences: optional explicit [(object_dir, sequence_dir)].
        crop_size: S.
        enlarge: override: a fixed factor / (kx, ky), or None for the split's default.
        annotation_root: directory holding ``pkl_annotations`` (default: the parent of ``root``).
        fix_improper_gt: see the module docstring.
        return_gt: include GT (default: True for 'test').
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        category: str | None = None,
        list_file: str | Path | None = None,
        sequences: list[tuple[str, str]] | None = None,
        crop_size: int = 256,
        enlarge: float | tuple[float, float] | None = None,
        annotation_root: str | Path | None = None,
        fix_improper_gt: bool = True,
        return_gt: bool | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.category = category or self.root.resolve().name
        self.crop_size = int(crop_size)
        self.enlarge = enlarge
        self.annotation_root = Path(annotation_root) if annotation_root else self.root.resolve().parent
        self.fix_improper_gt = fix_improper_gt
        self.return_gt = (split == "test") if return_gt is None else bool(return_gt)
        if sequences is None:
            if list_file is not None:
                sequences = fmt.resolve_list(self.root, fmt.parse_list_file(list_file))
            else:
                sequences = fmt.list_sequences(self.root)
        self.videos: list[Wild6DVideo] = []
        for obj, seq in sequences:
            path = self.root / obj / seq
            frames = tuple(fmt.frame_indices(path))
            if not frames:
                continue
            self.videos.append(Wild6DVideo(obj, seq, path, frames, fmt.read_metadata(path)["K"]))
        #: (video index, frame position) of every item.
        self.index: list[tuple[int, int]] = [
            (v, j) for v, vid in enumerate(self.videos) for j in range(len(vid.frames))
        ]
        starts = np.cumsum([0] + [len(v.frames) for v in self.videos])
        #: Flat dataset indices of each video's frames, in time order (for ``VideoBatchSampler``).
        self.video_items: list[list[int]] = [
            list(range(int(starts[v]), int(starts[v + 1]))) for v in range(len(self.videos))
        ]
        self._gt_cache: dict[int, list[dict[str, np.ndarray]] | None] = {}

    def __len__(self) -> int:
        return len(self.index)

    # -- ground truth -------------------------------------------------------------------------------------

    def _load_gt(self, video_index: int) -> list[dict[str, np.ndarray]] | None:
        """Per frame-position GT of the target (R, t, size), from the pkl or else our scene.json."""
        if video_index in self._gt_cache:
            return self._gt_cache[video_index]
        vid = self.videos[video_index]
        pkl = fmt.pkl_path(self.annotation_root, self.category, vid.object_dir, vid.sequence_dir)
        gts: list[dict[str, np.ndarray]] | None = None
        if pkl.is_file():
            ann = fmt.read_gt_pkl(pkl)["annotations"]
            gts = []
            for f in vid.frames:
                if f >= len(ann):
                    raise ValueError(f"{pkl}: no annotation for frame {f} ({len(ann)} annotations)")
                a = ann[f]
                name = str(a.get("name", ""))
                if name and name.split("/")[-1].isdigit() and int(name.split("/")[-1]) != f:
                    raise ValueError(f"{pkl}: annotation {f} is named {name!r}")
                gts.append({"R": np.asarray(a["rotation"], np.float64).reshape(3, 3),
                            "t": np.asarray(a["translation"], np.float64).reshape(3),
                            "size": np.asarray(a["size"], np.float64).reshape(3)})
        else:
            scene = fmt.read_scene_json(vid.path)
            if scene is not None:
                by_index = {fr["index"]: fr["instances"][0] for fr in scene["frames"]}
                gts = [{"R": np.asarray(by_index[f]["R"]), "t": np.asarray(by_index[f]["t"]),
                        "size": np.asarray(by_index[f]["size"])} for f in vid.frames]
        self._gt_cache[video_index] = gts
        return gts

    # -- items --------------------------------------------------------------------------------------------

    def _enlarge(self) -> float | tuple[float, float]:
        if self.enlarge is not None:
            return self.enlarge
        return draw_enlarge(*TRAIN_ENLARGE) if self.split == "train" else TEST_ENLARGE

    def load_frame(self, video_index: int, position: int) -> dict[str, np.ndarray]:
        """Full-resolution arrays of one frame: ``rgb`` (H, W, 3) uint8, ``mask`` (H, W) bool,
        ``depth_m`` (H, W) float32 metres, ``K`` (3, 3), and ``instances`` (H, W) when the extra exists."""
        vid = self.videos[video_index]
        paths = fmt.frame_paths(vid.path, vid.frames[position])
        out = {
            "rgb": fmt.read_rgb(paths["rgb"]),
            "mask": fmt.read_mask(paths["mask"]) > 0,
            "depth_m": fmt.read_depth_m(paths["depth"]),
            "K": vid.K,
        }
        if paths["instances"].is_file():
            out["instances"] = fmt.read_mask(paths["instances"])
        return out

    def __getitem__(self, idx: int) -> dict[str, Any]:
        video_index, position = self.index[idx]
        n = len(self.videos[video_index].frames)
        # An empty mask cannot be cropped: training falls back to the next frame of the same video
        # (keeps the video-major batch structure); evaluation reports the error.
        for step in range(n if self.split == "train" else 1):
            pos = (position + step) % n
            frame = self.load_frame(video_index, pos)
            try:
                box = crop_box_from_mask(frame["mask"], self.crop_size, self._enlarge())
            except EmptyMaskError:
                if self.split != "train":
                    raise
                continue
            gt = None
            if self.return_gt:
                gts = self._load_gt(video_index)
                if gts is None:
                    raise FileNotFoundError(f"no ground truth for {self.videos[video_index].path}")
                gt = dict(gts[pos])
                improper = np.linalg.det(gt["R"]) < 0
                if improper and self.fix_improper_gt:
                    gt["R"] = gt["R"] @ np.diag([1.0, -1.0, 1.0])
            item = make_item(frame["rgb"], frame["mask"], frame["depth_m"], frame["K"], box, video_index,
                             self.videos[video_index].frames[pos], gt)
            if gt is not None:
                item["gt_improper"] = bool(improper)
            return item
        raise EmptyMaskError(f"every mask of {self.videos[video_index].path} is empty")

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items into a batch (tensors stacked, ints -> int64 tensors)."""
        return torch.utils.data.default_collate(items)
