"""Self-supervised training of one CSE category model (docs/reference.md §3), readable top to bottom.

One step, for a video-major batch of B = V videos x F frames crops (docs/reference.md §3.1):

1. colour jitter (torch, per image; the loader gives clean crops) -> ``model(rgb, mask_G, K_ndc)``;
2. render the deformed prior with the *regressed* pose (docs/reference.md §3.3-3.4): one DEPTH render (soft alpha,
   soft depth, hard canonical coordinates = ``match_gt``) and one SOFT_TEXTURE render of the per-vertex
   colours sampled at ``imatch``; per-vertex visibility from the rendered depth;
3. every loss of docs/reference.md §3.5 (``cse_train.losses``) with the scheduled weights ``weights_at(category, step,
   total)``: mask, texture, depth, instance cycles 2D->3D / 3D->2D, cross-time cycle through the 2-D matcher
   (FlowMatcher, or DINO which also enables the cross-instance pairs), auxiliary rotation cycle, symmetry,
   Laplacian, deformation, pull-far; with ``supervision='synthetic-gt'`` also the supervised correspondence
   terms from the synthetic ground truth (pre-training; ``'self'`` never reads ground truth);
4. backward, gradient clipping and NaN guard (``cse_train.weights``), AdamW step (five parameter groups),
   OneCycle LR step.

Around it: checkpoints every ``checkpoint_every`` steps (+ ``last.pt``; ``resume``), a CSV log
(``log.csv``; TensorBoard when importable), a tqdm bar with the losses and images/s, single-process
CPU/GPU, and DDP when started by ``torchrun`` (process group from the environment, videos sharded across
ranks, optional SyncBN).

Units: the network's geometry is in canonical units (prior max |coord| = 1); observed depth is metres (the
depth loss is scale invariant). Frames: OpenCV camera, ``p_cam = R @ v + t`` (column vectors).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses as L
from .config import ModelConfig, get_config
from .matchers import Matcher, build_matchers
from .model import CSENet, load_checkpoint, save_checkpoint
from .render import DEPTH, SOFT_TEXTURE, render, vertex_visibility
from .weights import (
    LOSS_NAMES,
    PARAM_GROUPS,
    RENDER_POSES,
    category_config,
    clip_gradients,
    nan_guard,
    onecycle_kwargs,
    param_group_lrs,
    weights_at,
)

__all__ = [
    "LossModule",
    "TrainConfig",
    "TrainResult",
    "build_param_groups",
    "color_jitter",
    "gt_canonical_grid",
    "render_intrinsics",
    "train",
]

SUPERVISIONS = ("self", "synthetic-gt")


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything a training run needs (the CLI flags of ``python -m cse_train train``).

    Attributes:
        category: object category (one model per category).
        data: dataset root of that category: Wild6D layout ``<root>/<category>`` (ours or real Wild6D), or a
            REAL275 split directory with ``dataset='real275'``.
        out_dir: checkpoints, ``log.csv``, ``config.json`` go here.
        dataset: ``wild6d`` (also our synthetic videos) or ``real275``.
        list_file: optional reference list file (Wild6D ``"<obj>_<seq>"`` lines / REAL275 scene indices).
        model: ``small`` or ``paper`` preset; ``model_overrides`` replaces preset fields (tests, ablations).
        steps: optimisation steps (the OneCycle schedule and the loss schedules span them).
        videos_per_batch, frames_per_video: batch = V x F crops per process (reference 8 x 4 per GPU).
        lr: base learning rate (the five groups scale it, ``weights.param_group_lrs``).
        supervision: ``self`` (default, no ground truth read) or ``synthetic-gt`` (adds
            ``synthetic_gt_correspondence_loss``; needs ground-truth poses in the data).
        freeze: parameter groups (:data:`weights.PARAM_GROUPS`) held fixed (:func:`freeze_groups`), e.g. all but
            ``pose`` for a head-only phase.
        pose_gt: weight of the pose-head term under ``synthetic-gt`` (``losses.pose_head_gt_loss``; 0 = off,
            as the shipped models were trained): the regressed pose, which every render-and-compare term uses,
            trained towards the labels.
        render_pose: the pose of the render-and-compare terms and the 3D->2D cycle: ``head`` (the regressed
            pose, the reference), ``fit`` (the pose of the network's own correspondences on the depth,
            :func:`fitted_render_pose`; a deviation for fine-tuning a model whose head is far off) or ``label``
            (the pose labels of the batch, with ``synthetic-gt``: with ``adapt --pseudo-labels``, the pose the
            node's pipeline gave each frame).
        dino_weights: DINO ViT-S/8 weights file: DINO for cross-time and cross-instance pairs; without it
            cross-time pairs use Farneback flow and the cross-instance term is skipped (unless
            ``cross_instance`` is ``features``).
        cross_instance: matcher of the cross-instance cycle (``matchers.build_matchers``): ``auto`` (DINO when
            ``dino_weights`` is given, else skipped), ``dino``, ``features`` (the network's own image features,
            ``matchers.FeatureMatcher``; a deviation from the reference for users without DINO) or ``off``.
        backbone_weights: optional torchvision-style ResNet-18 state dict for the trunk.
        init_checkpoint: start from this checkpoint's weights (fine-tuning; optimiser starts fresh).
        resume: ``None``, ``'auto'`` (``out_dir/last.pt`` if present) or a checkpoint path: continue that run
            (weights, optimiser, scheduler, step).
        checkpoint_every: save ``step_<n>.pt`` and ``last.pt`` every this many steps (and at the end).
        log_every: CSV/TensorBoard row every this many steps.
        render_size: side of the renders and of the pixel losses (default: the crop size S).
        symmetry_samples: surface samples per symmetry transform (default 10,000 on GPU, 1,000 on CPU).
        matcher_grid, matcher_k: cross-cycle matcher grid and pairs per image pair (reference 32, 200).
        jitter: colour jitter (brightness/contrast/saturation 0.2, hue 0.05) as augmentation.
        disable: loss names (``weights.LOSS_NAMES``) to skip entirely.
        workers: DataLoader worker processes.
        threads: torch intra-op threads on the CPU (``torch.set_num_threads``); 0 = torch's default (one per
            core). Default 1, so that a long run degrades gently when other processes share the cores: every
            parallel operator waits for its slowest thread, and a thread that another process preempts stalls
            them all. On the 2-core machine two threads fell to 0.2-0.7 images/s beside one busy process,
            where one thread kept 6-8; on a quiet machine two threads are faster (camera: 14.5 images/s
            against 6.7-8.4 with one), hence ``--threads 0`` there.
        device: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:<i>``.
        sync_bn: SyncBatchNorm under DDP on GPUs.
        ddp_videos: under DDP, ``shard`` (each rank its own videos, DistributedSampler-style) or ``shared``
            (the reference: same videos, different frames per rank).
        seed: RNG seed.
        progress: tqdm bar on rank 0.
        tensorboard: also log to TensorBoard under ``out_dir/tb`` when ``torch.utils.tensorboard`` imports.
    """

    category: str = "mug"
    data: str = ""
    out_dir: str = "out/train"
    dataset: str = "wild6d"
    list_file: str | None = None
    model: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 20000
    videos_per_batch: int = 8
    frames_per_video: int = 4
    lr: float = 1e-4
    supervision: str = "self"
    pose_gt: float = 0.0
    render_pose: str = "head"
    dino_weights: str | None = None
    cross_instance: str = "auto"
    backbone_weights: str | None = None
    init_checkpoint: str | None = None
    resume: str | None = None
    checkpoint_every: int = 2000
    log_every: int = 10
    render_size: int | None = None
    symmetry_samples: int | None = None
    matcher_grid: int = 32
    matcher_k: int = 200
    jitter: bool = True
    disable: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    workers: int = 0
    threads: int = 1
    device: str = "auto"
    sync_bn: bool = False
    ddp_videos: str = "shard"
    seed: int = 0
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {self.supervision!r}")
        if self.render_pose not in RENDER_POSES:
            raise ValueError(f"render_pose must be one of {RENDER_POSES}, got {self.render_pose!r}")
        if self.render_pose == "label" and self.supervision != "synthetic-gt":
            raise ValueError("render_pose 'label' renders with the pose labels: it needs supervision 'synthetic-gt'")
        if self.dataset not in ("wild6d", "real275"):
            raise ValueError(f"dataset must be 'wild6d' or 'real275', got {self.dataset!r}")
        if self.ddp_videos not in ("shard", "shared"):
            raise ValueError(f"ddp_videos must be 'shard' or 'shared', got {self.ddp_videos!r}")
        unknown = set(self.disable) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss names in disable: {sorted(unknown)}; known: {list(LOSS_NAMES)}")
        if self.pose_gt and self.supervision != "synthetic-gt":
            raise ValueError("pose_gt trains the pose head towards labels: it needs supervision='synthetic-gt'")
        unknown = set(self.freeze) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter groups in freeze: {sorted(unknown)}; known: {list(PARAM_GROUPS)}")
        self.freeze = tuple(self.freeze)
        if self.steps <= 0 or self.videos_per_batch <= 0 or self.frames_per_video <= 0:
            raise ValueError("steps, videos_per_batch and frames_per_video must be positive")
        self.disable = tuple(self.disable)

    def model_config(self) -> ModelConfig:
        """The architecture: the named preset with ``model_overrides`` applied."""
        return get_config(self.model, **dict(self.model_overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0; other ranks get the same numbers of their own process).

    Attributes:
        history: per step ``{"step", "total", "total_fixed", <loss names>, "lr", "images_per_s", "nan"}``
            (this run only). ``total`` is the optimised loss with the scheduled weights; ``total_fixed`` the
            same terms with the constant peak weights, so that it is comparable across steps (the schedules
            alone make ``total`` fall: the Laplacian, symmetry and cycle weights decay ten-fold).
        first_avg, last_avg: mean ``total`` of the first / last ``window`` steps of this run.
        first_avg_fixed, last_avg_fixed: the same for ``total_fixed``.
        window: the averaging window.
        images_per_s: images per second over the run after the first ``min(5, steps)`` steps (all ranks).
        checkpoint: path of the final checkpoint (``last.pt``).
        wall_s: wall time of the whole call.
        nan_steps: steps whose gradients the NaN guard zeroed.
    """

    history: list[dict[str, float]]
    first_avg: float
    last_avg: float
    first_avg_fixed: float
    last_avg_fixed: float
    window: int
    images_per_s: float
    checkpoint: Path
    wall_s: float
    nan_steps: int


# ----------------------------------------------------------------------------------------------------------
# Small pieces used by the step
# ----------------------------------------------------------------------------------------------------------


def color_jitter(
    rgb: Tensor,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.05,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-image colour jitter in torch (ColorJitter(0.2, 0.2, 0.2, 0.05) of the reference, no torchvision).

    Brightness ``x * b``, contrast ``(x - mean grey) * c + mean grey``, saturation ``(x - grey) * s + grey``
    with b, c, s ~ U(1 - v, 1 + v) per image, then a hue shift by ``h * 360`` degrees, h ~ U(-hue, hue),
    done as a rotation of the RGB cube about its grey axis (a close, cheap stand-in for the HSV shift).
    Each stage clamps to [0, 1]. Fixed stage order (torchvision draws a random order).

    Args:
        rgb: [B,3,H,W] in [0,1].
    Returns:
        [B,3,H,W] in [0,1], no gradient path needed (input is data).
    """
    b = rgb.shape[0]
    dev, dt = rgb.device, rgb.dtype

    def draw(v: float) -> Tensor:
        u = torch.rand(b, 1, 1, 1, generator=generator).to(dev, dt)
        return 1.0 + (2.0 * u - 1.0) * v

    grey_w = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt).view(1, 3, 1, 1)
    x = (rgb * draw(brightness)).clamp(0.0, 1.0)
    mean = (x * grey_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * draw(contrast) + mean).clamp(0.0, 1.0)
    grey = (x * grey_w).sum(1, keepdim=True)
    x = ((x - grey) * draw(saturation) + grey).clamp(0.0, 1.0)
    if hue > 0:
        ang = (2.0 * torch.rand(b, generator=generator) - 1.0) * hue * 2.0 * math.pi
        c, s = torch.cos(ang), torch.sin(ang)
        k = 1.0 / math.sqrt(3.0)
        # Rodrigues rotation about the unit grey axis (1,1,1)/sqrt(3), one matrix per image: [B,3,3].
        one_minus = (1.0 - c) / 3.0
        a = one_minus.view(b, 1, 1) * torch.ones(b, 3, 3)
        cross = torch.zeros(b, 3, 3)
        cross[:, 0, 1], cross[:, 0, 2] = -k * s, k * s
        cross[:, 1, 0], cross[:, 1, 2] = k * s, -k * s
        cross[:, 2, 0], cross[:, 2, 1] = -k * s, k * s
        rot = (c.view(b, 1, 1) * torch.eye(3) + a + cross).to(dev, dt)
        x = torch.einsum("bij,bjhw->bihw", rot, x).clamp(0.0, 1.0)
    return x


def render_intrinsics(K_crop: Tensor, crop_size: int, render_size: int) -> Tensor:
    """Crop intrinsics -> pixel intrinsics of a ``render_size`` render of the crop, renderer convention.

    ``K_crop`` puts the centre of crop pixel i at i + 0.5 (reference crop maths); the renderer puts it at
    the integer i. So ``f' = f r``, ``c' = c r - 0.5`` with ``r = render_size / crop_size``.

    Args:
        K_crop: [B,3,3] pixel intrinsics of the S x S crop.
    Returns:
        [B,3,3].
    """
    r = render_size / crop_size
    K = K_crop.clone()
    K[:, :2, :] = K[:, :2, :] * r
    K[:, 0, 2] -= 0.5
    K[:, 1, 2] -= 0.5
    return K


def canonical_azimuth(R_gt: Tensor, t_gt: Tensor) -> Tensor:
    """For objects symmetric about their y axis: the GT rotation turned about y so that the camera lies in the
    object's y-z half-plane (x = 0, z > 0).

    The ground truth of a y-symmetric object fixes its azimuth only through the (random) texture, so a
    network cannot predict it from the image; supervising coordinates in a frame that depends on it teaches
    the average over azimuths, which pulls the visible surface towards the axis (the fitted centre then
    lands about a radius towards the camera). In the frame returned here the azimuth is a function of the
    view, as NOCS does for its symmetric categories. ``R' = R R_y(phi)``, ``phi = atan2(c_x, c_z)`` with
    ``c = -R^T t`` the camera centre in the object frame; the object's points map by ``R_y(phi)^T``, which
    leaves a y-symmetric shape unchanged.

    Args:
        R_gt: [B,3,3] published object -> camera (column form). t_gt: [B,3] box centre in the camera frame.
    Returns:
        [B,3,3] rotation, det +1.
    """
    c = -torch.einsum("bji,bj->bi", R_gt, t_gt)  # R^T (0 - t)
    phi = torch.atan2(c[:, 0], c[:, 2])
    cos, sin = torch.cos(phi), torch.sin(phi)
    zero, one = torch.zeros_like(phi), torch.ones_like(phi)
    R_y = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=-1).view(-1, 3, 3)
    return R_gt @ R_y


def cell_points_cam(
    depth_m: Tensor, mask: Tensor, K_crop: Tensor, grid: int, min_fraction: float = 0.25
) -> tuple[Tensor, Tensor]:
    """Mean camera-frame point of each grid cell's valid pixels (mask and depth), in metres.

    depth_m [B,1,S,S] (0 invalid), mask [B,1,S,S], K_crop [B,3,3] (pixel centre at i + 0.5) ->
    (points [B,G,G,3] camera frame, metres; valid [B,G,G] bool: at least ``min_fraction`` of the cell's pixels).
    """
    b, _, s, _ = depth_m.shape
    dev, dt = depth_m.device, depth_m.dtype
    z = depth_m[:, 0]
    valid_px = (mask[:, 0] > 0.5) & (z > 0)
    u = torch.arange(s, device=dev, dtype=dt) + 0.5
    fx, fy = K_crop[:, 0, 0].view(b, 1, 1), K_crop[:, 1, 1].view(b, 1, 1)
    cx, cy = K_crop[:, 0, 2].view(b, 1, 1), K_crop[:, 1, 2].view(b, 1, 1)
    x = (u.view(1, 1, s) - cx) / fx * z
    y = (u.view(1, s, 1) - cy) / fy * z
    p_cam = torch.stack([x, y, z], dim=1)  # [B,3,S,S]
    stride = s // grid
    w = valid_px.to(dt).unsqueeze(1)  # [B,1,S,S]
    num = F.avg_pool2d(p_cam * w, stride)
    den = F.avg_pool2d(w, stride)
    return (num / den.clamp(min=1e-6)).permute(0, 2, 3, 1), den[:, 0] >= min_fraction


def weighted_umeyama(src: Tensor, dst: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batched weighted similarity ``dst ~ s R src + t`` (Umeyama 1991, reflection fixed).

    src, dst [B,P,3], weights [B,P] (>= 0; a row of zeros gives scale 0, which callers must reject) ->
    (s [B], R [B,3,3], t [B,3]).
    """
    w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    mu_s = torch.einsum("bp,bpi->bi", w, src)
    mu_d = torch.einsum("bp,bpi->bi", w, dst)
    xs, xd = src - mu_s.unsqueeze(1), dst - mu_d.unsqueeze(1)
    var_s = torch.einsum("bp,bp->b", w, (xs * xs).sum(-1)).clamp_min(1e-12)
    cov = torch.einsum("bp,bpi,bpj->bij", w, xd, xs)
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1)  # [B,3]
    R = U @ torch.diag_embed(D) @ Vh
    scale = (S * D).sum(-1) / var_s
    t = mu_d - scale.unsqueeze(-1) * torch.einsum("bij,bj->bi", R, mu_s)
    return scale, R, t


@torch.no_grad()
def fitted_render_pose(
    match: Tensor,
    confidence: Tensor,
    vertices: Tensor | None,
    depth_m: Tensor,
    mask: Tensor,
    K_crop: Tensor,
    iterations: int = 3,
    min_cells: int = 8,
) -> tuple[Tensor, Tensor, Tensor]:
    """The pose the correspondences themselves give, for the render-and-compare terms (``render_pose='fit'``).

    A confidence-weighted Umeyama from each cell's predicted canonical point to its back-projected depth,
    re-weighted ``iterations`` times by ``1 / (1 + (r / 2 median r)^2)`` (r: the cell's residual) so that a
    few wrong cells do not drag it: the solver's pose in spirit (the node's RANSAC is not differentiable
    and need not be; this pose is detached).

    Each cell's point is first snapped to its nearest mesh vertex: ``match`` is a soft expectation over the
    vertices, pulled inside the surface, so the fit's scale comes out too large and the render too big (shipped
    mug, lit adaptation frames: rendered silhouette / observed mask area 1.10 median, 0.97 snapped); the mask
    term then pushes the mesh to shrink, and adaptation with the unsnapped fit lost more (docs/adaptation.md).

    Args:
        match: [B,G,G,3] canonical points per cell. confidence: [B,G,G] in [0, 1].
        vertices: [B,N,3] the deformed mesh the points are snapped to (None: use ``match`` as it is).
        depth_m, mask: [B,1,S,S] (metres; 0 = invalid). K_crop: [B,3,3].
        min_cells: items with fewer valid cells get ``ok = False`` (their caller keeps another pose).

    Returns:
        (R [B,3,3], t [B,3] camera frame in canonical units, i.e. ``v_cam = R v + t`` up to the metric scale,
        ok [B] bool).
    """
    g = match.shape[1]
    p_cam, valid = cell_points_cam(depth_m, mask, K_crop, g)
    valid = valid & (L.downsample_mask(mask, g))
    src, dst = match.flatten(1, 2), p_cam.flatten(1, 2)  # [B,P,3]
    if vertices is not None:
        nearest = torch.cdist(src, vertices).argmin(dim=-1)  # [B,P]
        src = torch.gather(vertices, 1, nearest.unsqueeze(-1).expand(-1, -1, 3))
    w0 = confidence.flatten(1).clamp_min(0.0) * valid.flatten(1).to(match.dtype)
    w = w0
    scale, R, t = weighted_umeyama(src, dst, w)
    for _ in range(iterations):
        r = (dst - scale.view(-1, 1, 1) * torch.einsum("bij,bpj->bpi", R, src) - t.unsqueeze(1)).norm(dim=-1)
        r_valid = torch.where(w0 > 0, r, torch.full_like(r, float("nan")))
        sigma = 2.0 * torch.nanmedian(r_valid, dim=1).values.nan_to_num(1.0).clamp_min(1e-4)
        w = w0 / (1.0 + (r / sigma.unsqueeze(1)) ** 2)
        scale, R, t = weighted_umeyama(src, dst, w)
    ok = ((w0 > 0).sum(dim=1) >= min_cells) & (scale > 1e-6) & torch.isfinite(t).all(dim=-1)
    return R, t / scale.clamp_min(1e-6).unsqueeze(-1), ok


def gt_canonical_grid(
    depth_m: Tensor,
    mask: Tensor,
    K_crop: Tensor,
    R_gt: Tensor,
    t_gt: Tensor,
    size_gt: Tensor,
    prior_center: Tensor,
    prior_extent: Tensor,
    base_rotation: Tensor,
    grid: int,
    min_fraction: float = 0.25,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Ground-truth canonical coordinates per grid cell from depth and the GT pose (synthetic-gt mode).

    The instance is mapped onto the prior's canonical frame by the similarity that puts its GT box on the
    prior's box: ``p_can = c_p + k B^T p_obj`` with ``k = max(prior extents) / max(size_gt)`` (uniform),
    ``c_p`` the prior's box centre, B the canonical -> published base rotation. Each crop pixel with
    mask and depth is back-projected (``K_crop``, pixel centre at i + 0.5), taken to the object frame with
    the GT pose and to canonical units; a cell's target is the mean over its valid pixels.

    Args:
        depth_m: [B,1,S,S] metres (0 invalid). mask: [B,1,S,S]. K_crop: [B,3,3].
        R_gt: [B,3,3] published object -> camera. t_gt: [B,3] box centre, metres. size_gt: [B,3] metres.
        prior_center: [3], prior_extent: [3] canonical units. base_rotation: [3,3].
        grid: G. min_fraction: a cell is valid when at least this fraction of its pixels is valid.

    Returns:
        (coords [B,G,G,3], valid [B,G,G] bool, R_can [B,3,3], t_can [B,3] metres, scale [B] metres per
        canonical unit) with ``p_cam = scale * R_can @ p_can + t_can``.
    """
    b = depth_m.shape[0]
    dev, dt = depth_m.device, depth_m.dtype
    p_cam, valid = cell_points_cam(depth_m, mask, K_crop, grid, min_fraction)  # cell means: affine maps commute
    p_obj = torch.einsum("bji,bhwj->bhwi", R_gt, p_cam - t_gt.view(b, 1, 1, 3))  # R^T (p - t)
    k = prior_extent.max() / size_gt.max(dim=-1).values.clamp(min=1e-6)  # [B]
    Bm = base_rotation.to(dev, dt)
    coords = prior_center.view(1, 1, 1, 3) + k.view(b, 1, 1, 1) * (p_obj @ Bm)  # B^T p  (row form p @ B)
    R_can = R_gt @ Bm
    scale = 1.0 / k
    t_can = t_gt - scale.view(b, 1) * torch.einsum("bij,j->bi", R_can, prior_center.to(dev, dt))
    return coords, valid, R_can, t_can, scale


# ----------------------------------------------------------------------------------------------------------
# The loss of one batch (an nn.Module so that DDP sees one forward per backward)
# ----------------------------------------------------------------------------------------------------------


class LossModule(nn.Module):
    """Model + loss constants; ``forward(batch, weights)`` returns ``(total, {name: term})``.

    Args:
        model: the CSE network.
        render_size: side of the renders (pixel losses run at this resolution).
        symmetry_samples: surface samples per symmetry transform.
        matchers: cross-time matcher and optional cross-instance matcher (``None``: term skipped).
        frames_per_video: F of the video-major batch (B = V x F) for the pairings.
        matcher_grid, matcher_k: see :class:`TrainConfig`.
        jitter: colour jitter on/off.
        supervision: ``self`` or ``synthetic-gt``.
        render_pose: ``head`` (the regressed pose, the reference), ``fit`` (:func:`fitted_render_pose`, the
            pose of the network's own correspondences and the depth) or ``label`` (the batch's pose labels,
            e.g. ``adapt``'s pseudo-labels: the node's own pipeline pose; needs ``synthetic-gt``); with ``fit``
            and ``label`` the pose head gets no gradient from the render terms.
    """

    def __init__(
        self,
        model: CSENet,
        render_size: int,
        symmetry_samples: int,
        cross_time: Matcher | None,
        cross_instance: Matcher | None,
        frames_per_video: int,
        matcher_grid: int = 32,
        matcher_k: int = 200,
        jitter: bool = True,
        supervision: str = "self",
        render_pose: str = "head",
    ) -> None:
        super().__init__()
        if render_pose not in RENDER_POSES:
            raise ValueError(f"render_pose must be one of {RENDER_POSES}, got {render_pose!r}")
        if render_pose == "label" and supervision != "synthetic-gt":
            raise ValueError("render_pose 'label' renders with the pose labels: it needs supervision 'synthetic-gt'")
        self.render_pose = render_pose
        self.model = model
        self.render_size = int(render_size)
        self.symmetry_samples = int(symmetry_samples)
        self.cross_time = cross_time
        self.cross_instance = cross_instance
        self.frames_per_video = int(frames_per_video)
        self.matcher_grid = int(matcher_grid)
        self.matcher_k = int(matcher_k)
        self.jitter = jitter
        self.supervision = supervision
        n = model.num_vertices
        self.register_buffer("laplacian", L.uniform_laplacian(model.faces, n), persistent=False)
        # Laplacian of the deformation from the initial prior (see losses.laplacian_loss: our procedural priors
        # have sharp rims the reference form would smooth away).
        self.register_buffer("rest_vertices", model.mean_v.detach().clone(), persistent=False)
        self.register_buffer("sym_transforms", L.symmetry_transforms(model.category), persistent=False)
        self.y_symmetric = model.symmetry == "y"  # synthetic-gt targets in the view-canonical azimuth
        prior = model.mean_v.detach()
        lo, hi = prior.min(0).values, prior.max(0).values
        self.register_buffer("prior_center", 0.5 * (lo + hi), persistent=False)
        self.register_buffer("prior_extent", hi - lo, persistent=False)
        self.register_buffer(
            "base_rotation", torch.as_tensor(np.asarray(model.base_rotation), dtype=torch.float32), persistent=False
        )

    def forward(self, batch: Mapping[str, Tensor], weights: Mapping[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        m = self.model
        cfg = m.cfg
        on = {k for k, w in weights.items() if w != 0.0}
        rgb, mask, depth = batch["rgb"], batch["mask"], batch["depth_m"]  # [B,3,S,S], [B,1,S,S], [B,1,S,S]
        K_crop, K_ndc = batch["K_crop"], batch["K_ndc"]
        s, g = cfg.crop_size, cfg.grid_size
        terms: dict[str, Tensor] = {}

        # 1. forward on the jittered crop; the grid mask is the legacy-nearest downsample of the crop mask
        mask_g = L.downsample_mask(mask, g)  # [B,G,G] bool
        rgb_in = color_jitter(rgb) if self.jitter else rgb
        fit = self.render_pose == "fit"
        out = m(rgb_in, mask_g.unsqueeze(1).to(rgb.dtype), K_ndc, with_confidence=fit)

        # ground-truth (or pseudo-label) correspondences and pose in the network's canonical convention
        labelled = {"synthetic_gt", "pose_gt"} & on if self.supervision == "synthetic-gt" else set()
        label = None
        if labelled or self.render_pose == "label":
            if "R" not in batch:
                raise KeyError("supervision 'synthetic-gt' and render_pose 'label' need poses (R, t, size) in batches")
            R_gt = canonical_azimuth(batch["R"], batch["t"]) if self.y_symmetric else batch["R"]
            label = gt_canonical_grid(
                depth, mask, K_crop, R_gt, batch["t"], batch["size"], self.prior_center,
                self.prior_extent, self.base_rotation, g,
            )

        # 2. renders with the regressed pose, the correspondences' own, or the label's (canonical units, camera frame)
        R_r, t_r = out.R, out.t
        if self.render_pose == "label":
            assert label is not None
            R_r, t_r = label[2], label[3] / label[4].view(-1, 1)  # metres -> canonical units
        elif fit:
            assert out.confidence is not None
            R_fit, t_fit, ok = fitted_render_pose(out.match, out.confidence, out.vertices.detach(), depth, mask,
                                                  K_crop)
            R_r = torch.where(ok.view(-1, 1, 1), R_fit, R_r)
            t_r = torch.where(ok.view(-1, 1), t_fit, t_r)
        sr = self.render_size
        K_r = render_intrinsics(K_crop, s, sr)
        v_cam = torch.einsum("bij,bnj->bni", R_r, out.vertices) + t_r.unsqueeze(1)  # [B,N,3]
        if sr != s:
            rgb_r = F.interpolate(rgb, size=(sr, sr), mode="area")
            mask_r = F.interpolate(mask, size=(sr, sr), mode="nearest")[:, 0]
            depth_r = F.interpolate(depth, size=(sr, sr), mode="nearest")[:, 0]
        else:
            rgb_r, mask_r, depth_r = rgb, mask[:, 0], depth[:, 0]
        geo = render(v_cam, m.faces, K_r, (sr, sr), attributes=v_cam, settings=DEPTH,
                     hard_attributes=out.vertices.detach())
        visibility = vertex_visibility(v_cam.detach(), geo.depth.detach(), K_r, rate=5.0)  # [B,N]

        # 3. losses (docs/reference.md §3.5)
        if "mask" in on:
            terms["mask"] = L.mask_loss(geo.alpha, mask_r)
        if "depth" in on:
            terms["depth"] = L.depth_loss(geo.attributes[:, 2], geo.alpha, depth_r, mask_r, alpha_threshold=0.5)
        if "texture" in on:
            tex = F.grid_sample(rgb, out.imatch.unsqueeze(2), mode="bilinear", align_corners=False)  # [B,3,N,1]
            tex = tex[..., 0].transpose(1, 2)  # [B,N,3]
            soft = render(v_cam, m.faces, K_r, (sr, sr), attributes=tex, settings=SOFT_TEXTURE)
            terms["texture"] = L.texture_loss(rgb_r, mask_r, soft.attributes, soft.alpha)
        if "match" in on:
            assert geo.hard_attributes is not None
            terms["match"] = L.instance_cycle_2d3d_loss(
                out.match, geo.hard_attributes, geo.mask.to(rgb.dtype), mask_r, alpha_threshold=0.5
            )
        if "imatch" in on:
            terms["imatch"] = L.instance_cycle_3d2d_loss(out.imatch, out.vertices, R_r, t_r, K_ndc, visibility)
        if "cross_cycle" in on and self.cross_time is not None:
            terms["cross_cycle"] = self._cross_cycle(rgb, mask, out, visibility)
        if "rotation_cycle" in on:
            angle = float(torch.rand(()) * 2.0 * math.pi)  # one angle per batch (reference)
            rgb_rot, mask_rot = L.rotate_image_and_mask(rgb, mask, angle)
            feat_rot, _ = m.encode_image(color_jitter(rgb_rot) if self.jitter else rgb_rot)
            terms["rotation_cycle"] = L.rotation_cycle_loss(
                out.img_feat, feat_rot, mask, mask_rot, angle, tau=cfg.tau, grid=max(g // 2, 1)
            )
        if "symmetry" in on:
            terms["symmetry"] = L.symmetry_loss(out.vertices, m.faces, self.sym_transforms, self.symmetry_samples)
        if "laplacian" in on:
            terms["laplacian"] = L.laplacian_loss(out.vertices, self.laplacian, self.rest_vertices)
        if "deform" in on:
            terms["deform"] = L.deformation_loss(out.vertices, m.mean_v)
        if "pull_far" in on:
            terms["pull_far"] = L.pull_far_loss(out.t)
        if labelled:
            assert label is not None
            coords, valid, R_can, t_can, scale = label
            if "synthetic_gt" in labelled:
                m_term, i_term = L.synthetic_gt_correspondence_loss(
                    out.match, out.imatch, out.vertices, coords, valid & mask_g, R_can, t_can, K_ndc, scale
                )
                terms["synthetic_gt"] = m_term + i_term
            if "pose_gt" in labelled:
                terms["pose_gt"] = L.pose_head_gt_loss(out.R, out.t, R_can, t_can, scale)

        total = sum((weights[k] * v for k, v in terms.items()), start=rgb.new_zeros(()))
        return total, terms

    def _cross_cycle(self, rgb: Tensor, mask: Tensor, out: Any, visibility: Tensor) -> Tensor:
        """Cross-time (roll along frames) and, with a cross-instance matcher, cross-instance (roll along videos)
        cycle terms."""
        b = rgb.shape[0]
        f = self.frames_per_video
        v = b // f
        idx = torch.arange(b, device=rgb.device).view(v, f)
        pairs: list[tuple[Matcher, Tensor]] = []
        if f > 1:
            pairs.append((self.cross_time, idx.roll(-1, dims=1).reshape(-1)))
        if v > 1 and self.cross_instance is not None:
            pairs.append((self.cross_instance, idx.roll(-1, dims=0).reshape(-1)))
        if not pairs:
            return rgb.new_zeros(())
        feat = out.img_feat.flatten(2).transpose(1, 2)  # [B,P,C]
        sim = torch.bmm(feat, out.mesh_feat.transpose(1, 2))  # [B,P,N] raw cosine similarity
        grid = self.matcher_grid
        mask_grid = L.downsample_mask(mask, grid)  # [B,g,g]
        k = min(self.matcher_k, grid * grid)
        total = rgb.new_zeros(())
        for matcher, src in pairs:
            if matcher.uses_model_features:
                cells, src_xy, valid = matcher.match_features(out.img_feat[src], out.img_feat, mask[src], mask, k=k,
                                                              grid=grid)
            else:
                cells, src_xy, valid = matcher.match(rgb[src], rgb, mask[src], mask, k=k, grid=grid)
            total = total + L.cross_cycle_loss(
                sim[src], sim, mask_grid[src], mask_grid, visibility[src], visibility, cells, src_xy, valid,
                tau=self.model.cfg.tau,
            )
        return total / len(pairs)


# ----------------------------------------------------------------------------------------------------------
# Optimiser groups, data, DDP, checkpoints
# ----------------------------------------------------------------------------------------------------------


def build_param_groups(model: CSENet, category: str, base_lr: float) -> list[dict[str, Any]]:
    """The five AdamW groups of docs/reference.md §3.7 (names :data:`weights.PARAM_GROUPS`, peak LRs per category).

    Only parameters with ``requires_grad`` (frozen BN affine excluded); every trainable parameter is in
    exactly one group.
    """
    lrs = param_group_lrs(category, base_lr)
    members = _group_members(model)
    groups = [
        {"name": name, "params": [p for m in members[name] for p in _parameters(m) if p.requires_grad],
         "lr": lrs[name]}
        for name in PARAM_GROUPS
    ]
    grouped = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    if missing:
        raise RuntimeError(f"parameters in no optimiser group: {missing}")
    return groups


def _group_members(model: CSENet) -> dict[str, list[nn.Module | nn.Parameter]]:
    """What each parameter group (:data:`weights.PARAM_GROUPS`) holds: modules, or the prior's vertices."""
    return {"mean_v": [model.mean_v], "pose": [model.pose], "shape": [model.shape_code, model.deformer],
            "features": [model.decoder, model.mesh_encoder], "backbone": [model.trunk]}


def _parameters(member: nn.Module | nn.Parameter) -> list[nn.Parameter]:
    return list(member.parameters()) if isinstance(member, nn.Module) else [member]


def freeze_groups(model: CSENet, names: Sequence[str]) -> None:
    """Hold the parameter groups ``names`` (:data:`weights.PARAM_GROUPS`) fixed: no gradient, and their modules
    in eval mode, so that batch normalisation keeps its running statistics (the frozen part computes exactly
    what it computed before training)."""
    members = _group_members(model)
    for name in names:
        for member in members[name]:
            if isinstance(member, nn.Module):
                member.eval()
            member.requires_grad_(False)


def _build_dataset(cfg: TrainConfig, crop_size: int):  # noqa: ANN202 (torch Dataset subclass)
    need_gt = cfg.supervision == "synthetic-gt"
    if cfg.dataset == "wild6d":
        from .data.wild6d import Wild6DDataset

        return Wild6DDataset(cfg.data, split="train", category=cfg.category, list_file=cfg.list_file,
                             crop_size=crop_size, return_gt=need_gt)
    from .data.real275 import Real275Dataset

    return Real275Dataset(cfg.data, cfg.category, split="train", list_file=cfg.list_file, crop_size=crop_size,
                          return_gt=need_gt)


def _ddp_env() -> tuple[bool, int, int, int]:
    """(distributed, rank, world size, local rank) from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0, 1, 0
    return True, int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _save(path: Path, model: CSENet, step: int, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
          scheduler: Any) -> Path:
    extra = {
        "step": int(step),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "train_config": json.dumps(cfg.to_dict()),
    }
    return save_checkpoint(path, model, extra)


def _resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        last = Path(cfg.out_dir) / "last.pt"
        return last if last.is_file() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume checkpoint not found: {path}")
    return path


class _Logger:
    """CSV (always) and TensorBoard (when importable) on rank 0."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, append: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "log.csv"
        self.columns = ["step", "total", "total_fixed", *LOSS_NAMES, "lr", "images_per_s", "nan"]
        self.tb = None
        if not enabled:
            return
        new = not (append and self.path.is_file())
        self._fh = open(self.path, "w" if new else "a", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard missing or broken: CSV only
                self.tb = None

    def write(self, row: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self._csv.writerow({k: row.get(k, "") for k in self.columns})
        self._fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, int(row["step"]))

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            if self.tb is not None:
                self.tb.close()


# ----------------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training run; see the module docstring. Returns :class:`TrainResult`.

    On the CPU, torch's intra-op threads are ``cfg.threads`` for the run and restored after it."""
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))  # only matters on the CPU
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: TrainConfig) -> TrainResult:
    t_start = time.perf_counter()
    # -- processes and devices ----------------------------------------------------------------------------
    distributed, rank, world, local_rank = _ddp_env()
    device = _device(cfg.device, local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    master = rank == 0
    torch.manual_seed(cfg.seed + rank)  # jitter, rotation angle, surface samples; the sampler has its own seed
    out_dir = Path(cfg.out_dir)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    # -- model ------------------------------------------------------------------------------------------------
    mcfg = cfg.model_config()
    model = CSENet.from_category(cfg.category, mcfg, backbone_weights=cfg.backbone_weights)
    if cfg.init_checkpoint:
        init, _ = load_checkpoint(cfg.init_checkpoint)
        if init.cfg != mcfg or init.category != cfg.category:
            raise ValueError(f"--init-checkpoint {cfg.init_checkpoint}: config/category differ from this run")
        model.load_state_dict(init.state_dict())
    model.to(device).train()
    freeze_groups(model, cfg.freeze)

    # -- data: video-major batches, videos sharded over ranks -------------------------------------------------
    from .data.batching import VideoBatchSampler

    dataset = _build_dataset(cfg, mcfg.crop_size)
    video_items = dataset.video_items
    if distributed and cfg.ddp_videos == "shard":
        video_items = video_items[rank::world]
        if not video_items:
            raise ValueError(f"rank {rank}: no videos left after sharding {len(dataset.video_items)} over {world}")

    # -- optimiser, schedule, resume --------------------------------------------------------------------------
    groups = build_param_groups(model, cfg.category, cfg.lr)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=1e-4)
    start_step = 0
    resume_path = _resolve_resume(cfg)
    if resume_path is not None:
        loaded, payload = load_checkpoint(resume_path, map_location="cpu")
        model.load_state_dict(loaded.state_dict())
        extra = payload.get("extra", {})
        optimizer.load_state_dict(extra["optimizer"])
        start_step = int(extra["step"])
        if master:
            print(f"resumed from {resume_path} at step {start_step}")
    if start_step >= cfg.steps:
        raise ValueError(f"nothing to do: resumed at step {start_step} >= steps {cfg.steps}")
    # OneCycle over cfg.steps, positioned at start_step (a resumed run may change the total: the rest of the
    # cycle is then recomputed for the new total rather than replayed from the saved scheduler state)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, **onecycle_kwargs(cfg.steps, [g["lr"] for g in groups]), last_epoch=start_step - 1
    )

    sampler = VideoBatchSampler(
        video_items, cfg.videos_per_batch, cfg.frames_per_video, num_batches=cfg.steps - start_step,
        seed=cfg.seed + 1_000_003 * start_step, rank=rank if cfg.ddp_videos == "shared" else 0,
        world_size=world if cfg.ddp_videos == "shared" else 1,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=dataset.collate,
        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
    )

    # -- losses (+ DDP wrapper) -------------------------------------------------------------------------------
    matchers = build_matchers(cfg.dino_weights, device=str(device), cross_instance=cfg.cross_instance)
    symmetry_samples = cfg.symmetry_samples or (10000 if device.type == "cuda" else 1000)
    loss_module = LossModule(
        model, cfg.render_size or mcfg.crop_size, symmetry_samples, matchers.cross_time, matchers.cross_instance,
        cfg.frames_per_video, cfg.matcher_grid, cfg.matcher_k, cfg.jitter, cfg.supervision, cfg.render_pose,
    ).to(device)
    step_module: nn.Module = loss_module
    if distributed:
        if cfg.sync_bn and device.type == "cuda":
            loss_module = nn.SyncBatchNorm.convert_sync_batchnorm(loss_module)
        step_module = nn.parallel.DistributedDataParallel(
            loss_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.disable),  # a disabled term can leave e.g. the pose head unused
        )
    if master:
        if matchers.cross_instance is not None:
            instance = type(matchers.cross_instance).__name__
        elif cfg.cross_instance == "off":
            instance = "off"
        else:
            instance = "skipped (no DINO weights; --cross-instance features matches the network's own features)"
        print(f"cross-instance cycle: {instance}; cross-time cycle: {type(matchers.cross_time).__name__}")

    # -- loop ---------------------------------------------------------------------------------------------------
    logger = _Logger(out_dir, master, cfg.tensorboard, append=resume_path is not None)
    bar = None
    if master and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, desc=f"train {cfg.category}", unit="step")
    history: list[dict[str, float]] = []
    peak = category_config(cfg.category).weights.as_dict()  # schedule-free weights for ``total_fixed``
    peak["pose_gt"] = cfg.pose_gt
    nan_steps = 0
    images_per_step = cfg.videos_per_batch * cfg.frames_per_video * world
    timed_from, timed_images, t_timed = min(5, cfg.steps - start_step - 1), 0, time.perf_counter()
    t_prev = time.perf_counter()
    step = start_step
    for i, batch in enumerate(loader):
        step = start_step + i
        batch = _to_device(batch, device)
        weights = dict(weights_at(cfg.category, step, cfg.steps), pose_gt=cfg.pose_gt)
        for name in cfg.disable:
            weights[name] = 0.0
        if cfg.supervision != "synthetic-gt":
            weights["synthetic_gt"] = weights["pose_gt"] = 0.0

        total, terms = step_module(batch, weights)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        fired = nan_guard(p for g in optimizer.param_groups for p in g["params"])
        clip_gradients(optimizer.param_groups)
        optimizer.step()
        scheduler.step()

        # -- bookkeeping ------------------------------------------------------------------------------------
        total_val = total.detach()  # the other columns are rank 0's own terms
        if distributed:
            dist.all_reduce(total_val)
            total_val /= world
        now = time.perf_counter()
        row = {"step": float(step + 1), "total": float(total_val)}
        row.update({k: float(v.detach()) for k, v in terms.items()})
        row["total_fixed"] = sum(peak[k] * row[k] for k in terms)
        row["lr"] = float(optimizer.param_groups[PARAM_GROUPS.index("backbone")]["lr"])
        row["images_per_s"] = images_per_step / max(now - t_prev, 1e-9)
        row["nan"] = float(fired)
        t_prev = now
        nan_steps += int(fired)
        history.append(row)
        if i == timed_from:
            t_timed, timed_images = now, 0
        elif i > timed_from:
            timed_images += images_per_step
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            logger.write(row)
        if bar is not None:
            bar.update(1)
            shown = {"loss": row["total"], **{k: row[k] for k in ("mask", "texture", "depth") if k in row}}
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in shown.items()}, "img/s": f"{row['images_per_s']:.1f}"})
        if master and ((step + 1) % cfg.checkpoint_every == 0) and step + 1 < cfg.steps:
            _save(out_dir / "checkpoints" / f"step_{step + 1:07d}.pt", model, step + 1, cfg, optimizer, scheduler)
            _save(out_dir / "last.pt", model, step + 1, cfg, optimizer, scheduler)

    # -- end ----------------------------------------------------------------------------------------------------
    if bar is not None:
        bar.close()
    final = out_dir / "last.pt"
    if master:
        _save(out_dir / "checkpoints" / f"step_{step + 1:07d}.pt", model, step + 1, cfg, optimizer, scheduler)
        _save(final, model, step + 1, cfg, optimizer, scheduler)
    logger.close()
    if distributed:
        dist.barrier()
    totals = [h["total"] for h in history]
    fixed = [h["total_fixed"] for h in history]
    window = max(1, min(50, len(totals) // 5))
    first_avg, last_avg = float(np.mean(totals[:window])), float(np.mean(totals[-window:]))
    first_fixed, last_fixed = float(np.mean(fixed[:window])), float(np.mean(fixed[-window:]))
    elapsed = time.perf_counter() - t_timed
    ips = timed_images / elapsed if timed_images and elapsed > 0 else history[-1]["images_per_s"]
    if master:
        print(
            f"total loss (scheduled weights): first {window} steps avg {first_avg:.4f} -> last {window} steps "
            f"avg {last_avg:.4f} ({_pct(first_avg, last_avg)})\n"
            f"total loss (fixed peak weights): first {window} steps avg {first_fixed:.4f} -> last {window} steps "
            f"avg {last_fixed:.4f} ({_pct(first_fixed, last_fixed)})\n"
            f"{ips:.2f} images/s; {nan_steps} NaN-guarded steps; checkpoint {final}"
        )
    return TrainResult(history, first_avg, last_avg, first_fixed, last_fixed, window, ips, final,
                       time.perf_counter() - t_start, nan_steps)


def _pct(first: float, last: float) -> str:
    return f"{100.0 * (last - first) / abs(first):+.1f} %" if first else "n/a"


def config_from_args(values: Mapping[str, Any]) -> TrainConfig:
    """:class:`TrainConfig` from a dict of CLI values (keys not in the dataclass are ignored)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["crop_size=64", "resnet_widths=[16,32,64,128]"]`` -> dict (values parsed as JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"model override must be key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
