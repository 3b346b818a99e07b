"""Distil an exported model into a smaller network (``python -m cse_train distill``).

The node's CPU frame time is dominated by the network (README "Performance"); a narrower trunk computes the same
contract outputs in less time if it learns to produce the same pixel features. The student here learns from the
teacher's own outputs on training crops, no labels:

* the student is a :class:`~cse_train.model.CSENet` of a smaller config (``tiny`` by default) with the teacher's
  prior, mesh encoder and deformation MLP, copied and frozen, so both compare image features against the same
  vertex features; where the teacher's deformed prior does not depend on the image (``model.shape_spread``, the
  shipped bottle, bowl, can, laptop and mug) the student gets that prior as ``mean_v`` and a zero deformation, so
  its export folds it too;
* per step, a batch of jittered training crops through both: ``img`` = KL divergence of the student's 2D->3D
  correspondence distribution (softmax over vertices of ``tau * sim``) from the teacher's, over the mask's cells;
  ``mesh`` = the same for the 3D->2D distribution (softmax over the mask's cells, per vertex); ``feat`` = one minus
  the cosine of the two unit pixel features over the mask's cells (a dense signal while the maps still differ a lot);
  ``code`` = squared error of the shape code (the deformation follows it where the prior is not folded); ``pose`` =
  squared error of the pose head's rotation and translation (evaluation baseline (a) only);
* AdamW with a OneCycle schedule, as training; then ``export`` (float16 weights) and the accuracy of both files is
  ``make eval``'s to measure (``eval-models --models <out>/export``).

Loop read top to bottom in :func:`distill`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import get_config
from .losses import downsample_mask
from .model import SHAPE_FOLD_TOL, CSENet, save_checkpoint, shape_spread

__all__ = ["DistillConfig", "distill", "distill_losses", "student_from_teacher"]

#: Loss weights: the correspondence distributions carry the outputs the node uses.
WEIGHTS: dict[str, float] = {"img": 1.0, "mesh": 1.0, "feat": 1.0, "code": 0.1, "pose": 0.1}


@dataclass
class DistillConfig:
    """Settings of one distillation run.

    Attributes:
        teacher: exported ONNX file (``cse_train export``) to learn from.
        data: the teacher category's training videos (``generate`` / ``from-bag`` layout, category root).
        out: output folder: ``last.pt``, ``log.jsonl``, ``export/<category>.onnx``.
        config: the student's config preset (``cse_train.config.CONFIGS``).
        steps, batch, lr: optimisation (AdamW, OneCycle peak ``lr``).
        threads: torch intra-op threads (0 = torch's default).
        seed: sampling and jitter seed.
    """

    teacher: str
    data: str
    out: str
    config: str = "tiny"
    steps: int = 1500
    batch: int = 16
    lr: float = 1e-3
    threads: int = 2
    seed: int = 0


def student_from_teacher(teacher: CSENet, config: str) -> CSENet:
    """A fresh :class:`CSENet` of preset ``config`` with the teacher's prior, faces, facts, mesh encoder and
    deformation MLP (frozen). A teacher whose deformed prior the image does not move gives its prior as the
    student's ``mean_v`` with a zero last deformation layer (the student's export folds it as the teacher's)."""
    cfg = get_config(config, crop_size=teacher.cfg.crop_size, grid_size=teacher.cfg.grid_size, tau=teacher.cfg.tau)
    spread, vertices = shape_spread(teacher)
    folded = spread <= SHAPE_FOLD_TOL
    prior = vertices if folded else teacher.mean_v.detach()
    student = CSENet(cfg, prior.numpy(), teacher.faces.numpy(), category=teacher.category,
                     symmetry=teacher.symmetry, base_rotation=teacher.base_rotation,
                     rotation_offset=(tuple(teacher.pose.x_offset.tolist()), tuple(teacher.pose.y_offset.tolist())))
    student.mesh_encoder.load_state_dict(teacher.mesh_encoder.state_dict())
    student.deformer.load_state_dict(teacher.deformer.state_dict())
    with torch.no_grad():
        if folded:
            student.deformer.fc_rgb.weight.zero_()
            student.deformer.fc_rgb.bias.zero_()
    for p in (*student.mesh_encoder.parameters(), *student.deformer.parameters(), student.mean_v):
        p.requires_grad_(False)
    return student


def _correspondence_kl(sim_t: Tensor, sim_s: Tensor, valid: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """KL(teacher || student) of the 2D->3D (over vertices, per valid cell) and 3D->2D (over valid cells, per
    vertex) distributions. sim [B,P,N], valid [B,P] bool -> (img, mesh) scalars."""
    logits_t, logits_s = tau * sim_t, tau * sim_s
    log_pt, log_ps = F.log_softmax(logits_t, dim=2), F.log_softmax(logits_s, dim=2)
    per_cell = (log_pt.exp() * (log_pt - log_ps)).sum(dim=2)  # [B,P]
    img = (per_cell * valid).sum() / valid.sum().clamp_min(1)
    off = torch.finfo(sim_t.dtype).min / 4
    keep = valid.unsqueeze(-1)
    log_qt = F.log_softmax(torch.where(keep, logits_t, off), dim=1)
    log_qs = F.log_softmax(torch.where(keep, logits_s, off), dim=1)
    per_vertex = torch.where(keep, log_qt.exp() * (log_qt - log_qs), 0.0).sum(dim=1)  # [B,N]
    has_cells = valid.any(dim=1).to(per_vertex.dtype)  # images with an empty grid mask add nothing
    mesh = (per_vertex.mean(dim=1) * has_cells).sum() / has_cells.sum().clamp_min(1)
    return img, mesh


def distill_losses(student: CSENet, teacher: CSENet, rgb: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The loss terms of one batch. rgb [B,3,S,S] in [0,1], mask [B,1,S,S] or [B,1,G,G] (object > 0)."""
    g = student.cfg.grid_size
    valid = downsample_mask(mask, g).flatten(1)  # [B,P] bool
    with torch.no_grad():
        feat_t, global_t = teacher.encode_image(rgb)
        code_t = teacher.shape_code(global_t)
        mesh_feat = teacher.mesh_encoder(teacher.deform(code_t))  # [B,N,C]
        sim_t = torch.bmm(feat_t.flatten(2).transpose(1, 2), mesh_feat.transpose(1, 2))
        R_t, t_t = teacher.pose(global_t, None)
    feat_s, global_s = student.encode_image(rgb)
    sim_s = torch.bmm(feat_s.flatten(2).transpose(1, 2), mesh_feat.transpose(1, 2))
    img, mesh = _correspondence_kl(sim_t, sim_s, valid, teacher.cfg.tau)
    cosine = (feat_s * feat_t).sum(dim=1).flatten(1)  # [B,P], unit features
    R_s, t_s = student.pose(global_s, None)
    return {
        "img": img,
        "mesh": mesh,
        "feat": ((1.0 - cosine) * valid).sum() / valid.sum().clamp_min(1),
        "code": F.mse_loss(student.shape_code(global_s), code_t),
        "pose": F.mse_loss(R_s, R_t) + F.mse_loss(t_s, t_t),
    }


def distill(cfg: DistillConfig) -> Path:
    """Train the student (see the module docstring), save ``<out>/last.pt`` and export ``<out>/export/``.
    Returns the exported ONNX path."""
    from .adapt import model_from_onnx
    from .data.batching import VideoBatchSampler
    from .data.wild6d import Wild6DDataset
    from .export import export_from_checkpoint, read_onnx_metadata
    from .train import color_jitter
    from .weights import onecycle_kwargs

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    teacher = model_from_onnx(cfg.teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = student_from_teacher(teacher, cfg.config).train()
    meta = read_onnx_metadata(cfg.teacher)

    dataset = Wild6DDataset(cfg.data, split="train", category=teacher.category, crop_size=teacher.cfg.crop_size)
    sampler = VideoBatchSampler(dataset.video_items, max(1, cfg.batch // 4), 4, num_batches=cfg.steps,
                                seed=cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **onecycle_kwargs(cfg.steps, [cfg.lr]))
    jitter = torch.Generator().manual_seed(cfg.seed + 1)

    t0 = time.perf_counter()
    with (out / "log.jsonl").open("w") as log:
        for step, batch in enumerate(loader):
            rgb = color_jitter(batch["rgb"], generator=jitter)
            terms = distill_losses(student, teacher, rgb, batch["mask"])
            total = sum(WEIGHTS[k] * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            if step % 25 == 0 or step + 1 == cfg.steps:
                row = {"step": step + 1, "total": float(total.detach()),
                       **{k: float(v.detach()) for k, v in terms.items()},
                       "lr": float(optimizer.param_groups[0]["lr"]), "s": round(time.perf_counter() - t0, 1)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                      flush=True)

    student.eval()
    checkpoint = save_checkpoint(out / "last.pt", student, {"distilled_from": str(cfg.teacher), "steps": cfg.steps})
    return export_from_checkpoint(
        checkpoint, out / "export" / f"{teacher.category}.onnx", fp16_weights=True,
        version=f"{meta.get('version', teacher.category)}-distilled-{cfg.config}-{cfg.steps}",
        training_data=f"distilled from {Path(cfg.teacher).name} ({meta.get('version', '')}) on {cfg.data}: "
                      f"{cfg.steps} steps x {cfg.batch} crops, {cfg.config} config",
    )
