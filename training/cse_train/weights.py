"""The one configuration of loss weights, weight schedules, optimiser, clipping and NaN policy.

All numbers are the reference's (docs/reference.md §3.5-3.7, ``config/<cat>_wild6d/base_config.txt``) unless
marked "ours". Loss names (the keys of :func:`weights_at`) match the functions of :mod:`cse_train.losses`:

========================  =====================================  ==========================  ============
key                       loss function                          reference flag              schedule
========================  =====================================  ==========================  ============
``mask``                  :func:`~cse_train.losses.mask_loss`    ``mask_wt`` 0.15            constant
``texture``               ``texture_loss``                       ``tex_wt`` 0.05             constant
``depth``                 ``depth_loss``                         ``depth_wt`` 0.1            constant
``match``                 ``instance_cycle_2d3d_loss``           ``match_wt`` 0.02           rising
``imatch``                ``instance_cycle_3d2d_loss``           ``imatch_wt`` 0.02          rising
``cross_cycle``           ``cross_cycle_loss`` (DINO / flow)     ``cycle_loss_pretrain_wt``  decaying
``rotation_cycle``        ``rotation_cycle_loss``                ``cycle_loss_wt``           decaying
``symmetry``              ``symmetry_loss``                      ``symmetry_wt`` 0.5         decaying
``laplacian``             ``laplacian_loss``                     ``triangle_wt`` 0.002       decaying
``deform``                ``deformation_loss``                   ``deform_wt`` 0.4           constant
``pull_far``              ``pull_far_loss``                      ``pullfar_wt`` 0.01         constant
``synthetic_gt``          ``synthetic_gt_correspondence_loss``   (ours, 1.0; synthetic-gt)   constant
========================  =====================================  ==========================  ============

Schedules are linear in the step over ``total_steps`` (docs/reference.md §3.7): decaying weights go from ``w`` to
``decay_ratio * w`` (0.1), rising ones from ``decay_ratio * w`` to ``w``. The reference's unused
``camera_wt`` (0.005, camera loss off) and ``flatten`` loss are not listed.

``can`` is not a reference category: it uses bottle's settings (y-symmetric, same weights and
learning-rate ratios). The pose head's 6D rotation offsets (the reference's ``rotation_offset``) are model
facts and live only in :data:`cse_train.config.ROTATION_OFFSETS` (used by ``CSENet.from_category``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cse_pose.core.errors import UnknownCategoryError

__all__ = [
    "CATEGORIES",
    "CLIP",
    "DECAYING",
    "LOSS_NAMES",
    "NAN_POLICY",
    "OPTIM",
    "PARAM_GROUPS",
    "RISING",
    "CategoryConfig",
    "ClipConfig",
    "LossWeights",
    "OptimConfig",
    "category_config",
    "clip_gradients",
    "nan_guard",
    "onecycle_kwargs",
    "param_group_lrs",
    "schedule_factor",
    "weights_at",
]

CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "camera", "can", "laptop", "mug")

LOSS_NAMES: tuple[str, ...] = (
    "mask",
    "texture",
    "depth",
    "match",
    "imatch",
    "cross_cycle",
    "rotation_cycle",
    "symmetry",
    "laplacian",
    "deform",
    "pull_far",
    "synthetic_gt",
    "pose_gt",
)
DECAYING: tuple[str, ...] = ("laplacian", "symmetry", "rotation_cycle", "cross_cycle")
RISING: tuple[str, ...] = ("match", "imatch")

# Optimiser parameter groups (docs/reference.md §3.7), in the order the reference builds them.
PARAM_GROUPS: tuple[str, ...] = ("mean_v", "pose", "shape", "features", "backbone")

RENDER_POSES: tuple[str, ...] = ("head", "fit", "label")
"""The pose the render-and-compare terms use (``TrainConfig.render_pose``): ``head``, the regressed pose (the
reference); ``fit``, the pose of the network's own correspondences on the depth (ours, for fine-tuning a model
whose head is far off); ``label``, the batch's pose labels (ours: with ``adapt --pseudo-labels``, the pose the
node's pipeline gave the frame)."""

NAN_POLICY = "zero_all_grads"
"""If any gradient is NaN (ours: or +-inf) after backward, every gradient is zeroed and the optimiser still
steps (so AdamW applies weight decay and its moment decay), as the reference does. See :func:`nan_guard`."""


@dataclass(frozen=True)
class LossWeights:
    """Peak loss weights of one category (docs/reference.md §3.5-3.6). Field names = :data:`LOSS_NAMES`."""

    mask: float = 0.15
    texture: float = 0.05
    depth: float = 0.1
    match: float = 0.02
    imatch: float = 0.02
    cross_cycle: float = 0.0
    rotation_cycle: float = 0.0
    symmetry: float = 0.5
    laplacian: float = 0.002
    deform: float = 0.4
    pull_far: float = 0.01
    synthetic_gt: float = 1.0  # ours: only used with --supervision synthetic-gt
    pose_gt: float = 0.0  # ours: the pose head against the labels, only with --supervision synthetic-gt (opt-in)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CategoryConfig:
    """Per-category training settings.

    Attributes:
        category: name.
        weights: peak loss weights.
        vert_lr_ratio: mean_v peak LR = ratio * base LR.
        cam_lr_ratio: pose-head peak LR = ratio * base LR.
        symmetry: 'y' (17 rotations about y), 'mirror_x' ({I, diag(-1,1,1)}) or None (identity).
        settings_from: reference category the numbers are taken from (``bottle`` for ``can``).
    """

    category: str
    weights: LossWeights
    vert_lr_ratio: float
    cam_lr_ratio: float
    symmetry: str | None
    settings_from: str


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + OneCycleLR settings (docs/reference.md §3.7).

    The reference passes ``total_steps = total_iters * ngpu`` but runs only ``total_iters`` steps per process
    (with 2 GPUs the cycle stops at its midpoint, ~54 % of peak LR). Ours: ``total_steps`` = the steps we run,
    so the cycle completes.
    """

    base_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    pct_start: float = 0.05
    div_factor: float = 25.0
    final_div_factor: float = 25.0
    anneal_strategy: str = "cos"
    cycle_momentum: bool = False
    total_iters: int = 20000
    decay_ratio: float = 0.1


@dataclass(frozen=True)
class ClipConfig:
    """Gradient clipping after backward (docs/reference.md §3.7): max L2 norms.

    ``mean_v``: each parameter of the group separately; ``shape``: all shape parameters jointly (code Linear +
    deformation MLP); ``pose``: the pose head jointly. ``features`` and ``backbone`` are not clipped.
    """

    mean_v: float = 1.0
    shape: float = 1.0
    pose: float = 0.1
    per_parameter: tuple[str, ...] = field(default=("mean_v",))


OPTIM = OptimConfig()
CLIP = ClipConfig()

# (rotation_cycle = cycle_loss_wt, cross_cycle = cycle_loss_pretrain_wt, vert_lr_ratio, cam_lr_ratio,
#  symmetry, settings taken from) -- docs/reference.md §3.6
_Row = tuple[float, float, float, float, str | None, str]
_CATEGORY_TABLE: dict[str, _Row] = {
    "bottle": (0.02, 0.05, 0.1, 0.1, "y", "bottle"),
    "bowl": (0.02, 0.005, 0.1, 0.2, "y", "bowl"),
    "camera": (0.02, 0.005, 0.1, 0.1, None, "camera"),
    # not in the reference: bottle's y-symmetric settings
    "can": (0.02, 0.05, 0.1, 0.1, "y", "bottle"),
    "laptop": (0.01, 0.02, 0.01, 0.1, "mirror_x", "laptop"),
    "mug": (0.01, 0.02, 0.01, 0.1, "mirror_x", "mug"),
}


def category_config(category: str) -> CategoryConfig:
    """Settings of one category.

    Raises:
        UnknownCategoryError: not one of :data:`CATEGORIES`.
    """
    try:
        row = _CATEGORY_TABLE[category]
    except KeyError:
        raise UnknownCategoryError(f"unknown category {category!r}; known: {list(CATEGORIES)}") from None
    rot_wt, cross_wt, vert, cam, sym, src = row
    return CategoryConfig(
        category=category,
        weights=LossWeights(rotation_cycle=rot_wt, cross_cycle=cross_wt),
        vert_lr_ratio=vert,
        cam_lr_ratio=cam,
        symmetry=sym,
        settings_from=src,
    )


def schedule_factor(name: str, step: int, total_steps: int, decay_ratio: float = OPTIM.decay_ratio) -> float:
    """Multiplier of a loss's peak weight at ``step`` (0-based) of ``total_steps``.

    Decaying (:data:`DECAYING`): ``1 - (1 - r) * p``; rising (:data:`RISING`): ``r + (1 - r) * p``; others 1,
    with ``p = clamp(step / total_steps, 0, 1)`` and ``r = decay_ratio``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    p = min(max(step / total_steps, 0.0), 1.0)
    if name in DECAYING:
        return 1.0 - (1.0 - decay_ratio) * p
    if name in RISING:
        return decay_ratio + (1.0 - decay_ratio) * p
    return 1.0


def weights_at(category: str, step: int, total_steps: int) -> dict[str, float]:
    """Scheduled loss weights of ``category`` at ``step`` of ``total_steps`` (keys = :data:`LOSS_NAMES`).

    ``weights_at(c, 0, T)`` gives w for decaying and 0.1 w for rising losses; ``weights_at(c, T, T)`` gives
    0.1 w and w.
    """
    peak = category_config(category).weights.as_dict()
    return {k: w * schedule_factor(k, step, total_steps) for k, w in peak.items()}


def param_group_lrs(category: str, base_lr: float = OPTIM.base_lr) -> dict[str, float]:
    """Peak learning rate of each optimiser group (:data:`PARAM_GROUPS`) for ``category`` (docs/reference.md §3.7)."""
    cfg = category_config(category)
    return {
        "mean_v": cfg.vert_lr_ratio * base_lr,
        "pose": cfg.cam_lr_ratio * base_lr,
        "shape": base_lr,
        "features": base_lr,
        "backbone": base_lr,
    }


def onecycle_kwargs(total_steps: int, max_lrs: Sequence[float], optim: OptimConfig = OPTIM) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.lr_scheduler.OneCycleLR`` (cosine, no momentum cycling)."""
    return dict(
        max_lr=list(max_lrs),
        total_steps=int(total_steps),
        pct_start=optim.pct_start,
        anneal_strategy=optim.anneal_strategy,
        div_factor=optim.div_factor,
        final_div_factor=optim.final_div_factor,
        cycle_momentum=optim.cycle_momentum,
    )


def _named_groups(
    model_param_groups: Mapping[str, Iterable[torch.Tensor]] | Sequence[Mapping[str, Any]],
) -> dict[str, list[torch.Tensor]]:
    if isinstance(model_param_groups, Mapping):
        return {str(k): list(v) for k, v in model_param_groups.items()}
    out: dict[str, list[torch.Tensor]] = {}
    for g in model_param_groups:
        if "name" not in g:
            raise ValueError("optimizer param groups need a 'name' entry (one of PARAM_GROUPS) to be clipped")
        out.setdefault(str(g["name"]), []).extend(g["params"])
    return out


def clip_gradients(
    model_param_groups: Mapping[str, Iterable[torch.Tensor]] | Sequence[Mapping[str, Any]],
    clip: ClipConfig = CLIP,
) -> dict[str, float]:
    """Clip gradients in place as the reference (docs/reference.md §3.7).

    ``mean_v``: every parameter to norm ``clip.mean_v`` separately; ``shape``: jointly to ``clip.shape``;
    ``pose``: jointly to ``clip.pose``. Other groups are left alone; missing groups are skipped.

    Args:
        model_param_groups: ``{group name: parameters}`` or ``optimizer.param_groups`` whose dicts carry a
            ``name`` key (names from :data:`PARAM_GROUPS`).
        clip: limits.

    Returns:
        ``{group: total gradient norm before clipping}`` for the clipped groups present (for logging).
    """
    groups = _named_groups(model_param_groups)
    norms: dict[str, float] = {}
    limits = {"mean_v": clip.mean_v, "shape": clip.shape, "pose": clip.pose}
    for name, max_norm in limits.items():
        params = [p for p in groups.get(name, []) if p.grad is not None]
        if not params:
            continue
        if name in clip.per_parameter:
            sq = 0.0
            for p in params:
                sq += float(torch.nn.utils.clip_grad_norm_([p], max_norm)) ** 2
            norms[name] = math.sqrt(sq)
        else:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return norms


def nan_guard(params: Iterable[torch.Tensor]) -> bool:
    """Zero every gradient if any gradient is NaN (ours: or +-inf); return whether it fired.

    The reference checks NaN only; an infinite gradient poisons AdamW's moments just the same, so we treat it
    alike. Parameters without a gradient are ignored. The caller still calls ``optimizer.step()`` (policy
    :data:`NAN_POLICY`).
    """
    params = [p for p in params if p.grad is not None]
    bad = any(not bool(torch.isfinite(p.grad).all()) for p in params)
    if bad:
        for p in params:
            p.grad.zero_()
    return bad
