"""Wild6D on-disk layout: file names, metadata and annotation I/O (numpy + OpenCV, no torch).

Shared by the synthetic writer (``synthetic.generate``) and the readers (``wild6d``), so that both
agree on every name. Layout (docs/reference.md §4.1 and 4.2; ``FORMAT.md`` beside this file):

```
<root>/<category>/<object_dir>/<sequence_dir>/metadata            JSON: K (9, column-major), w, h, fps
<root>/<category>/<object_dir>/<sequence_dir>/images/<i>.jpg       RGB frame i
<root>/<category>/<object_dir>/<sequence_dir>/images/<i>-mask.png  8-bit, non-zero = target object
<root>/<category>/<object_dir>/<sequence_dir>/images/<i>-depth.png 16-bit depth in millimetres, 0 = invalid
<root>/pkl_annotations/<category>/<category>-<object_dir>-<sequence_dir>.pkl   ground truth (test set)
```
Extras (ours, read when present): ``images/<i>-instances.png`` (16-bit instance ids, 0 background,
1 target, 2.. distractors) and ``<sequence_dir>/scene.json``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "CLASS_IDS",
    "frame_indices",
    "frame_paths",
    "k_from_column_major",
    "k_to_column_major",
    "list_sequences",
    "parse_list_file",
    "pkl_path",
    "read_depth_m",
    "read_gt_pkl",
    "read_mask",
    "read_metadata",
    "read_rgb",
    "read_scene_json",
    "resolve_list",
    "write_frame",
    "write_gt_pkl",
    "write_metadata",
]

#: Class ids written into our pkl annotations (NOCS numbering, as REAL275: bottle 1 ... mug 6).
CLASS_IDS: dict[str, int] = {"bottle": 1, "bowl": 2, "camera": 3, "can": 4, "laptop": 5, "mug": 6}


def k_to_column_major(K: np.ndarray) -> list[float]:
    """(3, 3) intrinsics -> 9 floats in column-major order (Wild6D ``metadata['K']``)."""
    return [float(x) for x in np.asarray(K, dtype=np.float64).reshape(3, 3).T.reshape(-1)]


def k_from_column_major(values: Any) -> np.ndarray:
    """9 numbers in column-major order -> (3, 3) float64 K (``reshape(3, 3).T``, docs/reference.md §4.1)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size != 9:
        raise ValueError(f"metadata K must have 9 numbers, got {arr.size}")
    return arr.reshape(3, 3).T.copy()


def write_metadata(seq_dir: str | Path, K: np.ndarray, width: int, height: int, fps: float = 30.0) -> None:
    """Write ``<seq_dir>/metadata`` (JSON, no extension) with column-major ``K``, ``w``, ``h``, ``fps``."""
    meta = {"K": k_to_column_major(K), "w": int(width), "h": int(height), "fps": float(fps)}
    Path(seq_dir, "metadata").write_text(json.dumps(meta))


def read_metadata(seq_dir: str | Path) -> dict[str, Any]:
    """Read ``<seq_dir>/metadata``; returns the JSON dict with ``K`` replaced by the (3, 3) matrix."""
    meta = json.loads(Path(seq_dir, "metadata").read_text())
    meta["K"] = k_from_column_major(meta["K"])
    return meta


def frame_paths(seq_dir: str | Path, index: int) -> dict[str, Path]:
    """Paths of frame ``index``: keys ``rgb``, ``mask``, ``depth``, ``instances``."""
    images = Path(seq_dir, "images")
    return {
        "rgb": images / f"{index}.jpg",
        "mask": images / f"{index}-mask.png",
        "depth": images / f"{index}-depth.png",
        "instances": images / f"{index}-instances.png",
    }


def write_frame(
    seq_dir: str | Path, index: int, rgb: np.ndarray, mask: np.ndarray, depth_m: np.ndarray, jpeg_quality: int = 92
) -> dict[str, Path]:
    """Write frame ``index`` of a sequence: ``<i>.jpg`` (JPEG ``jpeg_quality``), ``<i>-mask.png`` (0/255)
    and ``<i>-depth.png`` (16-bit millimetres, ``round(depth_m * 1000)``, values outside 1..65535 as 0).

    Args:
        rgb: (H, W, 3) uint8 RGB. mask: (H, W), non-zero = the target object. depth_m: (H, W) metres, 0 = invalid.
    Returns:
        :func:`frame_paths` of the frame (``images/`` is created if needed).
    """
    paths = frame_paths(seq_dir, index)
    paths["rgb"].parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(paths["rgb"]), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    cv2.imwrite(str(paths["mask"]), np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8))
    with np.errstate(invalid="ignore"):
        depth_mm = np.round(np.asarray(depth_m, dtype=np.float64) * 1000.0)
        depth_mm = np.where((depth_mm > 0) & (depth_mm <= 65535), depth_mm, 0).astype(np.uint16)
    cv2.imwrite(str(paths["depth"]), depth_mm)
    return paths


def frame_indices(seq_dir: str | Path) -> list[int]:
    """Frame indices of a sequence, built from its ``<i>-mask.png`` files, sorted numerically.

    As the reference: frames without a mask file are ignored; the index is the integer before the first
    ``-`` of the file name.
    """
    names = os.listdir(Path(seq_dir, "images"))
    return sorted(int(n.split("-")[0]) for n in names if n.endswith("-mask.png"))


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB (the file is decoded as BGR by OpenCV and converted)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """(H, W) integer image read unchanged (first channel if the file has several)."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return m[..., 0] if m.ndim == 3 else m


def read_depth_m(path: str | Path) -> np.ndarray:
    """16-bit millimetre depth PNG -> (H, W) float32 metres, 0 = invalid."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise FileNotFoundError(f"cannot read depth {path}")
    if d.ndim == 3:
        d = d[..., 0]
    if d.dtype != np.uint16:
        raise ValueError(f"depth {path} must be 16-bit (millimetres), got {d.dtype}")
    return d.astype(np.float32) * np.float32(1e-3)


def read_scene_json(seq_dir: str | Path) -> dict[str, Any] | None:
    """Our ``scene.json`` extra of a sequence, or None when absent (real Wild6D)."""
    path = Path(seq_dir, "scene.json")
    return json.loads(path.read_text()) if path.is_file() else None


def pkl_path(test_root: str | Path, category: str, object_dir: str, sequence_dir: str) -> Path:
    """``<test_root>/pkl_annotations/<category>/<category>-<object_dir>-<sequence_dir>.pkl``."""
    return Path(test_root, "pkl_annotations", category, f"{category}-{object_dir}-{sequence_dir}.pkl")


def write_gt_pkl(
    path: str | Path,
    category: str,
    object_dir: str,
    sequence_dir: str,
    frame_ids: list[int],
    rotations: list[np.ndarray],
    translations: list[np.ndarray],
    sizes: list[np.ndarray],
    K: np.ndarray,
) -> None:
    """Write a Wild6D test annotation pickle (docs/reference.md §4.2).

    ``annotations[j]`` is frame ``frame_ids[j]``: ``name`` ``"<cat>/<obj>/<seq>/<frame>"``, ``rotation``
    (3, 3) object -> camera (column convention, proper), ``translation`` (3,) box centre in metres,
    ``size`` (3,) full box extents in metres, ``class_id``. Top level also has ``class_id``,
    ``intrinsics`` (3, 3) and ``num_frames``.
    """
    class_id = CLASS_IDS.get(category, 0)
    annotations = [
        {
            "name": f"{category}/{object_dir}/{sequence_dir}/{i}",
            "rotation": np.asarray(R, dtype=np.float64).reshape(3, 3),
            "translation": np.asarray(t, dtype=np.float64).reshape(3),
            "size": np.asarray(s, dtype=np.float64).reshape(3),
            "class_id": class_id,
        }
        for i, R, t, s in zip(frame_ids, rotations, translations, sizes, strict=True)
    ]
    data = {
        "annotations": annotations,
        "class_id": class_id,
        "intrinsics": np.asarray(K, dtype=np.float64).reshape(3, 3),
        "num_frames": len(annotations),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=4)


def read_gt_pkl(path: str | Path) -> dict[str, Any]:
    """Load a Wild6D test annotation pickle (dict with ``annotations`` list indexed by frame)."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def list_sequences(root: str | Path) -> list[tuple[str, str]]:
    """Every (object_dir, sequence_dir) under ``root`` (sorted; directories only)."""
    out = []
    for obj in sorted(os.listdir(root)):
        obj_path = Path(root, obj)
        if not obj_path.is_dir():
            continue
        for seq in sorted(os.listdir(obj_path)):
            if Path(obj_path, seq, "images").is_dir():
                out.append((obj, seq))
    return out


def parse_list_file(path: str | Path) -> list[tuple[int, int]]:
    """Lines ``"<objIdx>_<seqIdx>"`` -> [(objIdx, seqIdx)] (split on ``_``, the last two fields)."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        fields = line.split("_")
        pairs.append((int(fields[-2]), int(fields[-1])))
    return pairs


def resolve_list(root: str | Path, pairs: list[tuple[int, int]]) -> list[tuple[str, str]]:
    """(objIdx, seqIdx) -> (object_dir, sequence_dir), indices into **sorted** ``os.listdir`` (reference).

    Exactly the reference's indexing: plain sorted listings of ``root`` and of the object directory,
    files included, so adding or removing an entry shifts the indices.
    """
    objects = sorted(os.listdir(root))
    out = []
    for oi, si in pairs:
        obj = objects[oi]
        seqs = sorted(os.listdir(Path(root, obj)))
        out.append((obj, seqs[si]))
    return out
