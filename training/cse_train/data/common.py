"""Crop items shared by the Wild6D, synthetic and REAL275 loaders (torch tensors out).

Every dataset item is one object instance in one frame, cropped exactly as the reference (reference
docs/reference.md §2.1 through ``core.crop``): box from the mask (Wild6D / synthetic) or from the annotated
2D box (REAL275), each half-size enlarged by its own factor (so the crop is stretched to a square),
RGB bilinear, mask and depth nearest, zero padding.

Item keys (S = crop size):

=============== ============================ ==============================================================
key             shape / type                 meaning
=============== ============================ ==============================================================
``rgb``         float32 [3, S, S]            RGB in [0, 1]
``mask``        float32 [1, S, S]            1 on the object, 0 elsewhere (and outside the image)
``depth_m``     float32 [1, S, S]            depth in metres, 0 = invalid / outside the image
``K_crop``      float32 [3, 3]               intrinsics in pixel units of the S x S crop
``K_ndc``       float32 [3, 3]               NDC intrinsics: ``f_ndc = f_crop/(S/2)``, ``c_ndc = c_crop/(S/2) - 1``
``K``           float32 [3, 3]               intrinsics of the full image
``box``         int64 [4]                    crop ``(center_x, center_y, half_x, half_y)`` in image pixels
``video_index`` int                          index of the video in the dataset
``frame_index`` int                          frame number within the video (file index)
``R``           float32 [3, 3]               eval only: object -> camera rotation (column convention)
``t``           float32 [3]                  eval only: box centre in the camera frame, metres
``size``        float32 [3]                  eval only: box extents, metres (NaN when unknown)
=============== ============================ ==============================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cse_pose.core.crop import CropBox, crop_image, crop_intrinsics, intrinsics_to_ndc

__all__ = ["box_from_bbox", "draw_enlarge", "make_item"]


def draw_enlarge(low: float, high: float) -> tuple[float, float]:
    """Independent per-axis enlargement factors (kx, ky) ~ U(low, high).

    Uses torch's global generator, which ``DataLoader`` seeds differently in every worker (numpy
    generators copied into workers would repeat the same draws).
    """
    k = torch.empty(2, dtype=torch.float64).uniform_(float(low), float(high))
    return float(k[0]), float(k[1])


def box_from_bbox(bbox_yxyx: Any, size: int, enlarge: float | tuple[float, float]) -> CropBox:
    """Reference crop box from an annotated 2D box ``[y1, x1, y2, x2]`` (REAL275, section 4.3).

    ``center = ((x1 + x2) // 2, (y1 + y2) // 2)``, ``half = ((x2 - x1) // 2, (y2 - y1) // 2)``,
    ``l = int(k * half)`` per axis.
    """
    y1, x1, y2, x2 = (int(v) for v in np.asarray(bbox_yxyx).reshape(4))
    kx, ky = (enlarge, enlarge) if np.isscalar(enlarge) else enlarge
    half_x, half_y = int(kx * ((x2 - x1) // 2)), int(ky * ((y2 - y1) // 2))
    if half_x <= 0 or half_y <= 0:
        raise ValueError(f"2D box {[y1, x1, y2, x2]} too small to crop")
    return CropBox((x1 + x2) // 2, (y1 + y2) // 2, half_x, half_y, int(size))


def make_item(
    rgb: np.ndarray,
    mask: np.ndarray,
    depth_m: np.ndarray,
    K: np.ndarray,
    box: CropBox,
    video_index: int,
    frame_index: int,
    gt: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Crop one instance and pack it as tensors (keys and shapes in the module docstring).

    Args:
        rgb: (H, W, 3) uint8 RGB. mask: (H, W) bool / 0-1. depth_m: (H, W) float32 metres, 0 invalid.
        K: (3, 3) intrinsics of the image. box: the crop.
        gt: optional dict with ``R`` (3, 3), ``t`` (3,), ``size`` (3,) (evaluation items only).
    """
    S = box.size
    rgb_c = crop_image(rgb, box, "bilinear") / np.float32(255.0)
    mask_c = crop_image(np.asarray(mask).astype(np.uint8), box, "nearest")
    depth_c = crop_image(np.asarray(depth_m, dtype=np.float32), box, "nearest")
    K_crop = crop_intrinsics(K, box)
    item: dict[str, Any] = {
        "rgb": torch.from_numpy(np.ascontiguousarray(np.clip(rgb_c, 0.0, 1.0).transpose(2, 0, 1), np.float32)),
        "mask": torch.from_numpy((mask_c > 0).astype(np.float32)).view(1, S, S),
        "depth_m": torch.from_numpy(np.ascontiguousarray(depth_c, np.float32)).view(1, S, S),
        "K_crop": torch.from_numpy(K_crop.astype(np.float32)),
        "K_ndc": torch.from_numpy(intrinsics_to_ndc(K_crop, S).astype(np.float32)),
        "K": torch.from_numpy(np.asarray(K, np.float32).reshape(3, 3)),
        "box": torch.tensor([box.center_x, box.center_y, box.half_x, box.half_y], dtype=torch.int64),
        "video_index": int(video_index),
        "frame_index": int(frame_index),
    }
    if gt is not None:
        item["R"] = torch.from_numpy(np.asarray(gt["R"], np.float32).reshape(3, 3))
        item["t"] = torch.from_numpy(np.asarray(gt["t"], np.float32).reshape(3))
        item["size"] = torch.from_numpy(np.asarray(gt["size"], np.float32).reshape(3))
    return item
