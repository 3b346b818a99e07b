"""The CSE network in torch (docs/reference.md §1, §2.2–2.4), its export wrapper and checkpoint helpers.

Data flow for one batch (B images, N prior vertices, G x G grid, P = G * G cells, C = feat_dim):

    rgb [B,3,S,S] in [0,1] -> ImageNet normalisation -> ResNet-18 trunk (conv2..conv5)
        -> top-down decoder -> 1x1 proj -> L2-normalised pixel features  img_feat [B,C,G,G]
        -> mean of conv5 -> global_feat [B,512] -> Linear -> shape_code [B,64]
    mean_v [N,3] (learnable prior) + shape_code -> coordinate MLP -> zero-mean offset -> vertices [B,N,3]
    vertices.detach() -> tiny PointNet (STN) -> L2-normalised vertex features mesh_feat [B,N,C]
    similarity [B,P,N] (cells outside the mask set to -1e5) -> A_img (softmax over N), A_mesh (over P)
    match = A_img @ vertices.detach() [B,G,G,3], imatch = A_mesh^T @ grid [B,N,2] (NDC)
    cycle confidence exp(-5 * ||g - imatch[nearest vertex of match]||) [B,G,G]
    global_feat -> pose regressor -> R [B,3,3] (column form, det +1), t [B,3] (training only)

Conventions: column vectors, ``p_cam = R @ p_obj + t`` (the reference uses row vectors,
``R_row = R^T``). NDC grid: x = column, y = row, cell centre ``(i + 0.5) / (G / 2) - 1``, row-major.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cse_pose.inference.model_info import CONTRACT

from .config import ROTATION_OFFSETS, ModelConfig, config_from_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "BackboneLoadReport",
    "CSENet",
    "CSEOutput",
    "CorrespondenceOutput",
    "Correspondence",
    "ExportWrapper",
    "FUSED_TAU_MAX",
    "MeshEncoder",
    "PoseRegressor",
    "ResNet18Trunk",
    "SHAPE_FOLD_TOL",
    "ShapeDeformer",
    "TopDownDecoder",
    "correspondence_maps",
    "cycle_confidence",
    "fused_correspondence",
    "load_backbone_weights",
    "load_checkpoint",
    "masked_similarity",
    "ndc_grid",
    "rotation_from_6d",
    "save_checkpoint",
    "shape_probe_images",
    "shape_spread",
]

_LOG = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cse_pose/checkpoint/1"


# ----------------------------------------------------------------------------------------------------
# ResNet-18 trunk (torchvision layout and key names, no fc)
# ----------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 conv + BN, identity or 1x1-conv+BN shortcut. [B,Cin,H,W] -> [B,Cout,H/s,W/s]."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """ResNet-18 without ``fc`` (torchvision module names, so its state-dict keys match torchvision's).

    BatchNorm affine parameters are frozen (``requires_grad=False``) as in the reference; the running
    statistics still follow ``train()``/``eval()``.

    forward: x [B,3,S,S] (ImageNet-normalised) -> (conv2 [B,64,S/4,S/4], conv3 [B,128,S/8,S/8],
    conv4 [B,256,S/16,S/16], conv5 [B,512,S/32,S/32]) for the default widths.
    """

    def __init__(
        self, widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.conv1 = nn.Conv2d(3, self.widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = self.widths[0]
        for i, (width, n_blocks) in enumerate(zip(self.widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(in_ch, width, stride)] + [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = width
        self._init_weights()
        self.freeze_bn_affine()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze_bn_affine(self) -> None:
        """Set ``requires_grad=False`` on every BatchNorm weight and bias (docs/reference.md §1.2)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


@dataclass
class BackboneLoadReport:
    """What :func:`load_backbone_weights` did. Keys are in the trunk's (torchvision) naming."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"backbone weights {self.path}: {len(self.loaded)} tensors loaded"]
        if self.missing:
            lines.append(f"  missing (kept at their init): {self.missing}")
        if self.unexpected:
            lines.append(f"  unexpected (not used): {self.unexpected}")
        if self.ignored:
            lines.append(f"  ignored (classifier head): {self.ignored}")
        return "\n".join(lines)


_BACKBONE_PREFIXES = (
    "module.",
    "encoder.backbone.resnet.",
    "backbone.resnet.",
    "trunk.",
    "resnet.",
    "backbone.",
)


def _strip_backbone_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _BACKBONE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def load_backbone_weights(trunk: ResNet18Trunk, path: str | Path, strict: bool = False) -> BackboneLoadReport:
    """Load an ImageNet / torchvision-style ResNet-18 state dict from ``path`` into ``trunk``.

    Accepts a bare state dict or one wrapped under ``state_dict``/``model``; prefixes such as
    ``module.``, ``resnet.``, ``backbone.``, ``trunk.`` and the reference checkpoint's
    ``encoder.backbone.resnet.`` are stripped; ``fc.*`` is ignored. ``num_batches_tracked`` may be absent.
    BatchNorm affine parameters stay frozen afterwards.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no trunk key found, a shape mismatch, or (``strict``) missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict):
        for wrapper_key in ("state_dict", "model"):
            if wrapper_key in raw and isinstance(raw[wrapper_key], dict):
                raw = raw[wrapper_key]
                break
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(raw).__name__}")

    target = trunk.state_dict()
    report = BackboneLoadReport(path=str(path))
    new_state: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, value in raw.items():
        name = _strip_backbone_prefix(str(key))
        if name.startswith("fc."):
            report.ignored.append(name)
        elif name in target and isinstance(value, Tensor):
            if tuple(value.shape) != tuple(target[name].shape):
                mismatched.append(f"{name}: file {tuple(value.shape)} vs model {tuple(target[name].shape)}")
            else:
                new_state[name] = value
        else:
            report.unexpected.append(str(key))
    if mismatched:
        raise ValueError(f"{path}: shape mismatch for {mismatched}")
    if not new_state:
        raise ValueError(f"{path}: no ResNet-18 trunk keys found (first keys: {list(raw)[:5]})")
    report.missing = sorted(k for k in target if k not in new_state and not k.endswith("num_batches_tracked"))
    if strict and report.missing:
        raise ValueError(f"{path}: missing trunk keys {report.missing}")
    trunk.load_state_dict(new_state, strict=False)
    trunk.freeze_bn_affine()
    report.loaded = sorted(new_state)
    if report.missing or report.unexpected:
        _LOG.warning("%s", report)
    else:
        _LOG.info("%s", report)
    return report


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------


class ConvLReLU(nn.Module):
    """3x3 conv (stride 1, padding 1, bias, no BN) + LeakyReLU. [B,Cin,H,W] -> [B,Cout,H,W]."""

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=1, padding=1, bias=True)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


def _upsample2(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling, ``align_corners=False``. [B,C,H,W] -> [B,C,2H,2W]."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class TopDownDecoder(nn.Module):
    """Top-down fusion decoder of the reference (docs/reference.md §1.3), stopping at the level of the given stride.

    For stride 4 (both presets): upconv5 (512->256) on up(conv5), iconv4 on [., conv4] (512->256),
    upconv4 (256->128) on up, iconv3 on [., conv3] (256->128), upconv3 (128->64) on up, iconv2 on
    [., conv2] (128->64), then a 1x1 ``proj`` (64 -> feat_dim, bias, no activation). Stride 8/16 stop
    earlier (reference behaviour for ``corr_h`` = S/8), stride 32 projects conv5 directly.

    forward: (conv2, conv3, conv4, conv5) -> [B,feat_dim,S/stride,S/stride] (not normalised).
    """

    _LEVEL = {4: 0, 8: 1, 16: 2, 32: 3}

    def __init__(
        self, widths: Sequence[int], feat_dim: int, stride: int = 4, slope: float = 0.1
    ) -> None:
        super().__init__()
        if stride not in self._LEVEL:
            raise ValueError(f"decoder stride must be one of {sorted(self._LEVEL)}, got {stride}")
        self.widths = tuple(widths)
        self.target = self._LEVEL[stride]
        for k in range(3, self.target, -1):
            w_hi, w_lo = self.widths[k], self.widths[k - 1]
            self.add_module(f"upconv{k + 2}", ConvLReLU(w_hi, w_lo, slope))
            self.add_module(f"iconv{k + 1}", ConvLReLU(2 * w_lo, w_lo, slope))
        self.proj = nn.Conv2d(self.widths[self.target], feat_dim, 1, bias=True)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        x = feats[3]
        for k in range(3, self.target, -1):
            x = getattr(self, f"upconv{k + 2}")(_upsample2(x))
            x = getattr(self, f"iconv{k + 1}")(torch.cat([x, feats[k - 1]], dim=1))
        return self.proj(x)


# ----------------------------------------------------------------------------------------------------
# Shape deformation (coordinate MLP)
# ----------------------------------------------------------------------------------------------------


class ShapeDeformer(nn.Module):
    """Coordinate MLP of the reference (docs/reference.md §1.5): per vertex, [xyz (3), code (code_dim)] -> offset (3).

    Layers: ``layer1`` Linear (3+code)->hidden (no activation), ``layers_xyz`` Linear hidden->hidden + ReLU,
    ``fc_feat`` Linear hidden->hidden + ReLU, ``layers_dir`` Linear hidden->hidden2 + ReLU, ``fc_rgb``
    Linear hidden2->3 (the reference's dead ``fc_alpha`` head is omitted). Input columns of ``layer1``:
    0..2 = xyz, 3.. = code.

    Layer 1 is split as ``W_xyz xyz + b`` (image independent, [N,hidden], precomputable) plus
    ``W_code code`` ([B,hidden]); :meth:`forward` uses the split, :meth:`forward_concat` the plain path.
    """

    def __init__(self, code_dim: int = 64, hidden: int = 256, hidden2: int = 128) -> None:
        super().__init__()
        self.layer1 = nn.Linear(3 + code_dim, hidden)
        self.layers_xyz = nn.Linear(hidden, hidden)
        self.fc_feat = nn.Linear(hidden, hidden)
        self.layers_dir = nn.Linear(hidden, hidden2)
        self.fc_rgb = nn.Linear(hidden2, 3)

    def xyz_term(self, mean_v: Tensor) -> Tensor:
        """Image-independent part of layer 1: mean_v [N,3] -> ``mean_v W_xyz^T + b`` [N,hidden]."""
        return F.linear(mean_v, self.layer1.weight[:, :3], self.layer1.bias)

    def code_term(self, code: Tensor) -> Tensor:
        """Per-image part of layer 1: code [B,code_dim] -> ``code W_code^T`` [B,hidden]."""
        return F.linear(code, self.layer1.weight[:, 3:])

    def _tail(self, h: Tensor) -> Tensor:
        h = F.relu(self.layers_xyz(h))
        h = F.relu(self.fc_feat(h))
        h = F.relu(self.layers_dir(h))
        return self.fc_rgb(h)

    def forward(self, mean_v: Tensor, code: Tensor, xyz_term: Tensor | None = None) -> Tensor:
        """Offsets [B,N,3] (not yet zero-mean) from mean_v [N,3] and code [B,code_dim].

        ``xyz_term`` [N,hidden], when given, replaces :meth:`xyz_term` (a precomputed constant).
        """
        if xyz_term is None:
            xyz_term = self.xyz_term(mean_v)
        h = xyz_term.unsqueeze(0) + self.code_term(code).unsqueeze(1)
        return self._tail(h)

    def forward_concat(self, mean_v: Tensor, code: Tensor) -> Tensor:
        """Reference path: concat [xyz, code] per vertex -> layer 1 -> ... Offsets [B,N,3]."""
        b, n = code.shape[0], mean_v.shape[0]
        x = torch.cat([mean_v.unsqueeze(0).expand(b, n, 3), code.unsqueeze(1).expand(b, n, code.shape[1])], -1)
        return self._tail(self.layer1(x))


# ----------------------------------------------------------------------------------------------------
# Mesh encoder (tiny PointNet with STN)
# ----------------------------------------------------------------------------------------------------


class MeshEncoder(nn.Module):
    """Tiny PointNet of the reference (docs/reference.md §1.6). vertices [B,N,3] -> unit features [B,N,C] (>= 0).

    STN: ``stn.conv1`` point-wise 3->hidden + ReLU, max over vertices, ``stn.fc`` hidden->9, + identity
    -> T [B,3,3]; ``x = v @ T`` (row form as the reference); ``conv1`` point-wise 3->C + ReLU; L2 normalise.
    Point-wise layers are ``nn.Linear`` (the reference's Conv1d k=1 weights squeeze to these).
    """

    def __init__(self, feat_dim: int = 64, stn_hidden: int = 128) -> None:
        super().__init__()
        self.stn = nn.Module()
        self.stn.conv1 = nn.Linear(3, stn_hidden)
        self.stn.fc = nn.Linear(stn_hidden, 9)
        self.conv1 = nn.Linear(3, feat_dim)
        self.register_buffer("eye3", torch.eye(3).reshape(1, 3, 3), persistent=False)

    def forward(self, vertices: Tensor) -> Tensor:
        h = F.relu(self.stn.conv1(vertices)).amax(dim=1)  # [B,hidden]
        transform = self.stn.fc(h).reshape(-1, 3, 3) + self.eye3  # [B,3,3]
        x = torch.bmm(vertices, transform)
        return F.normalize(F.relu(self.conv1(x)), dim=-1)


# ----------------------------------------------------------------------------------------------------
# Pose regressor (training only)
# ----------------------------------------------------------------------------------------------------


def rotation_from_6d(a: Tensor, b: Tensor) -> Tensor:
    """Column-form rotation from two raw 3-vectors (reference 6D scheme, docs/reference.md §1.4).

    x = a/|a|, z = (x × b)/|.|, y = (z × x)/|.|; the reference's ``R_row`` has x, y, z as columns, so the
    column-form R = R_row^T has them as rows. a, b [B,3] -> R [B,3,3], det +1.
    """
    x = F.normalize(a, dim=-1)
    z = F.normalize(torch.linalg.cross(x, b, dim=-1), dim=-1)
    y = F.normalize(torch.linalg.cross(z, x, dim=-1), dim=-1)
    return torch.stack([x, y, z], dim=-2)


class PoseRegressor(nn.Module):
    """Pose head (docs/reference.md §1.4): global feature [B,512] -> R [B,3,3] (column form), t [B,3] (canonical units).

    Rotation: ``rot_pred_layer`` = layers x (Linear + LeakyReLU(0.1)) 512->128->..., init N(0, 0.02) / 0,
    then Linear 128->6 (default init); 6D -> matrix with the per-category ``x_offset``/``y_offset``.
    Translation: Linear 512->3; ``t_xy = 0.1 raw_xy``, ``t_z = raw_z + depth_offset``; with ``K_ndc``
    [B,3,3], ``t_xy -= (c_ndc / f_ndc) * t_z.detach()`` so raw (0, 0) projects onto the crop centre.
    """

    def __init__(
        self,
        in_dim: int = 512,
        hidden: int = 128,
        layers: int = 3,
        slope: float = 0.1,
        depth_offset: float = 5.0,
        trans_xy_scale: float = 0.1,
        rotation_offset: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        stack: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers):
            lin = nn.Linear(dim, hidden)
            nn.init.normal_(lin.weight, 0.0, 0.02)
            nn.init.zeros_(lin.bias)
            stack += [lin, nn.LeakyReLU(slope)]
            dim = hidden
        stack.append(nn.Linear(dim, 6))
        self.rot_pred_layer = nn.Sequential(*stack)
        self.trans_pred_layer = nn.Linear(in_dim, 3)
        x_off, y_off = rotation_offset if rotation_offset is not None else ((0.0,) * 3, (0.0,) * 3)
        self.register_buffer("x_offset", torch.tensor(x_off, dtype=torch.float32).reshape(3))
        self.register_buffer("y_offset", torch.tensor(y_off, dtype=torch.float32).reshape(3))
        self.depth_offset = float(depth_offset)
        self.trans_xy_scale = float(trans_xy_scale)

    def forward(self, global_feat: Tensor, K_ndc: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raw = self.rot_pred_layer(global_feat)
        R = rotation_from_6d(raw[:, 0:3] + self.x_offset, raw[:, 3:6] + self.y_offset)
        traw = self.trans_pred_layer(global_feat)
        t_z = traw[:, 2:3] + self.depth_offset
        t_xy = self.trans_xy_scale * traw[:, 0:2]
        if K_ndc is not None:
            f_ndc = torch.stack([K_ndc[:, 0, 0], K_ndc[:, 1, 1]], dim=-1)
            c_ndc = K_ndc[:, 0:2, 2]
            t_xy = t_xy - (c_ndc / f_ndc) * t_z.detach()
        return R, torch.cat([t_xy, t_z], dim=-1)


# ----------------------------------------------------------------------------------------------------
# Correspondence and cycle confidence
# ----------------------------------------------------------------------------------------------------


def ndc_grid(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Cell-centre NDC coordinates of an n x n grid, [n*n, 2] (x = column, y = row, row-major)."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / (n / 2.0) - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1).to(dtype)


def masked_similarity(img_feat: Tensor, mesh_feat: Tensor, valid: Tensor, fill: float = -1e5) -> Tensor:
    """Cosine similarity of cells and vertices, cells outside the mask set to ``fill``.

    img_feat [B,P,C] (unit), mesh_feat [B,N,C] (unit), valid [B,P] bool -> sim [B,P,N].
    """
    sim = torch.bmm(img_feat, mesh_feat.transpose(1, 2))
    return torch.where(valid.unsqueeze(-1), sim, torch.full_like(sim, fill))


def correspondence_maps(sim: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """A_img = softmax over vertices (2D->3D), A_mesh = softmax over cells (3D->2D) of tau * sim.

    sim [B,P,N] -> (A_img [B,P,N] rows sum to 1, A_mesh [B,P,N] columns sum to 1).
    """
    logits = tau * sim
    return torch.softmax(logits, dim=2), torch.softmax(logits, dim=1)


def cycle_confidence(
    match: Tensor, vertices: Tensor, imatch: Tensor, grid: Tensor, alpha: float = 5.0
) -> Tensor:
    """2D->3D->2D cycle confidence (docs/reference.md §2.4) without the B x P x N x 3 difference tensor.

    n*(p) = argmin_n ||match_p - v_n||^2 = argmin_n (||v_n||^2 - 2 match_p . v_n) (the ||match_p||^2 term
    is constant per cell and dropped), e(p) = ||g_p - imatch[n*(p)]|| (NDC), conf = exp(-alpha e).

    match [B,P,3], vertices [B,N,3], imatch [B,N,2], grid [P,2] or [B,P,2] -> conf [B,P] in (0, 1]. A match
    [B,1,3] with a grid [P,2] gives every cell's confidence for that one 3D point. No gradient.
    """
    match, vertices, imatch = match.detach(), vertices.detach(), imatch.detach()
    score = (vertices * vertices).sum(-1).unsqueeze(1) - 2.0 * torch.bmm(match, vertices.transpose(1, 2))
    nearest = score.argmin(dim=-1)  # [B,P]
    back = torch.gather(imatch, 1, nearest.unsqueeze(-1).expand(-1, -1, 2))  # [B,P,2]
    diff = back - (grid if grid.ndim == 3 else grid.unsqueeze(0))
    return torch.exp(-alpha * torch.sqrt((diff * diff).sum(-1)))


#: Largest temperature :func:`fused_correspondence` is used for: its exponentials lie in
#: [exp(-2 tau), 1], which float32 holds as normal numbers up to tau ~ 43.
FUSED_TAU_MAX: float = 40.0


def fused_correspondence(
    img_feat: Tensor, mesh_feat: Tensor, vertices: Tensor, mask: Tensor, grid: Tensor, tau: float, alpha: float
) -> tuple[Tensor, Tensor]:
    """``match`` and cycle ``confidence`` of :class:`Correspondence` (``with_confidence=True``) for inference,
    with one exponential, over the cells of the mask only, and neither normalised map materialised.

    The features are unit vectors, so ``sim`` lies in [-1, 1] and ``exp(tau * (sim - 1))`` lies in
    (0, 1]: the constant shift cancels in both softmaxes and needs no per-row maximum. Rows of the [B,P,N]
    maps are independent, and cells outside the mask weigh nothing in ``imatch`` (``exp(mask_fill)`` underflows
    to 0), so only the K cells of the mask (K = the batch's largest count, the others padded with cells outside)
    go through the [B,K,N] products: ``match = E @ V / rowsum(E)`` and ``imatch = E^T @ (valid * grid) /
    E^T @ valid`` (no valid cell gives (0, 0), the uniform average of the grid). A cell outside the mask gets the
    mean vertex, as the uniform softmax over its all-``mask_fill`` row gives, and that point's cycle confidence
    at its own grid position. A crop's mask covers ~30-50 % of the grid (the shipped categories' test crops), so
    this does about half the work of all P cells. Equal to the two-softmax form up to float rounding
    (``training/tests/test_model.py``) for ``tau <= FUSED_TAU_MAX`` (raises ``ValueError`` above: the sums could
    underflow).

    img_feat [B,C,G,G] (unit), mesh_feat [B,N,C] (unit), vertices [B,N,3], mask [B,1,G,G], grid [P,2]
    -> (match [B,G,G,3], confidence [B,G,G]). No gradient through ``vertices``.
    """
    if tau > FUSED_TAU_MAX:
        raise ValueError(f"fused_correspondence needs tau <= {FUSED_TAU_MAX}, got {tau}")
    c, g = img_feat.shape[1], img_feat.shape[-1]
    feat = img_feat.flatten(2).transpose(1, 2)  # [B,P,C]
    valid = (mask.flatten(1) > 0.5).to(feat.dtype)  # [B,P]
    _, cells = torch.topk(valid, valid.sum(dim=1).max().to(torch.int64), dim=1)  # [B,K], the mask's cells first
    valid_k = torch.gather(valid, 1, cells).unsqueeze(-1)  # [B,K,1]
    grid_k = grid[cells]  # [B,K,2]
    feat_k = torch.gather(feat, 1, cells.unsqueeze(-1).expand(-1, -1, c))  # [B,K,C]
    e = torch.exp(tau * (torch.bmm(feat_k, mesh_feat.transpose(1, 2)) - 1.0))  # [B,K,N] in (0, 1]
    verts = vertices.detach()
    mean_vertex = verts.mean(dim=1, keepdim=True)  # [B,1,3]
    num = torch.bmm(e, torch.cat([verts, torch.ones_like(verts[..., :1])], dim=-1))  # [B,K,4]
    match_k = torch.where(valid_k > 0, num[..., :3] / num[..., 3:], mean_vertex)
    back = torch.bmm(e.transpose(1, 2), torch.cat([grid_k * valid_k, valid_k], dim=-1))  # [B,N,3]
    imatch = back[..., :2] / back[..., 2:].clamp_min(torch.finfo(back.dtype).tiny)
    outside = cycle_confidence(mean_vertex, verts, imatch, grid, alpha)  # [B,P]: every cell outside the mask
    inside = torch.where(valid_k[..., 0] > 0, cycle_confidence(match_k, verts, imatch, grid_k, alpha),
                         torch.gather(outside, 1, cells))  # [B,K]
    confidence = torch.scatter(outside, 1, cells, inside)
    match = torch.scatter(mean_vertex.expand(-1, g * g, -1), 1, cells.unsqueeze(-1).expand(-1, -1, 3), match_k)
    return match.reshape(-1, g, g, 3), confidence.reshape(-1, g, g)


@dataclass
class CorrespondenceOutput:
    """Outputs of :class:`Correspondence` (P = G * G)."""

    sim: Tensor  # [B,P,N] masked similarity
    A_img: Tensor  # [B,P,N] softmax over vertices
    A_mesh: Tensor  # [B,P,N] softmax over cells
    match: Tensor  # [B,G,G,3] expected canonical point per cell
    imatch: Tensor  # [B,N,2] expected NDC location per vertex
    confidence: Tensor | None  # [B,G,G] cycle confidence, or None


class Correspondence(nn.Module):
    """Dense 2D<->3D correspondence on the G x G grid (docs/reference.md §1.7, §2.3, §2.4). Holds the NDC grid [P,2]."""

    def __init__(self, grid_size: int, tau: float = 10.0, mask_fill: float = -1e5, alpha: float = 5.0) -> None:
        super().__init__()
        self.grid_size = int(grid_size)
        self.tau = float(tau)
        self.mask_fill = float(mask_fill)
        self.alpha = float(alpha)
        self.register_buffer("grid", ndc_grid(self.grid_size), persistent=False)

    def forward(
        self,
        img_feat: Tensor,
        mesh_feat: Tensor,
        vertices: Tensor,
        mask: Tensor,
        with_confidence: bool = False,
    ) -> CorrespondenceOutput:
        """img_feat [B,C,G,G] (unit), mesh_feat [B,N,C] (unit), vertices [B,N,3] (used detached),
        mask [B,1,G,G] (a cell is on the object where mask > 0.5)."""
        g = self.grid_size
        feat = img_feat.flatten(2).transpose(1, 2)  # [B,P,C]
        valid = mask.flatten(1) > 0.5  # [B,P]
        sim = masked_similarity(feat, mesh_feat, valid, self.mask_fill)
        a_img, a_mesh = correspondence_maps(sim, self.tau)
        verts = vertices.detach()
        match_flat = torch.bmm(a_img, verts)  # [B,P,3]
        imatch = torch.matmul(a_mesh.transpose(1, 2), self.grid)  # [B,N,2]
        confidence = None
        if with_confidence:
            confidence = cycle_confidence(match_flat, verts, imatch, self.grid, self.alpha).reshape(-1, g, g)
        return CorrespondenceOutput(
            sim=sim,
            A_img=a_img,
            A_mesh=a_mesh,
            match=match_flat.reshape(-1, g, g, 3),
            imatch=imatch,
            confidence=confidence,
        )


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------


@dataclass
class CSEOutput:
    """Everything one forward produces (B images, N vertices, G grid, P = G * G, C feat_dim)."""

    img_feat: Tensor  # [B,C,G,G] unit pixel features
    global_feat: Tensor  # [B,512] mean of conv5
    shape_code: Tensor  # [B,code_dim]
    vertices: Tensor  # [B,N,3] deformed prior, canonical units (carries gradient to mean_v and the MLP)
    mesh_feat: Tensor  # [B,N,C] unit vertex features (from detached vertices)
    sim: Tensor  # [B,P,N] masked similarity
    A_img: Tensor  # [B,P,N]
    A_mesh: Tensor  # [B,P,N]
    match: Tensor  # [B,G,G,3] canonical 3D per cell (from detached vertices)
    imatch: Tensor  # [B,N,2] NDC per vertex
    confidence: Tensor | None  # [B,G,G] or None
    R: Tensor  # [B,3,3] column-form rotation canonical -> camera, det +1 (pose head, training only)
    t: Tensor  # [B,3] translation, canonical units


class CSENet(nn.Module):
    """The CSE network for one category (docs/reference.md §1).

    Args:
        cfg: architecture configuration.
        prior_vertices: (N,3) prior mesh vertices, canonical units (initial ``mean_v``).
        faces: (F,3) triangle indices of the prior mesh (stored as a buffer; topology never changes).
        category: category name (metadata).
        symmetry: ``"y"`` or ``None`` (metadata).
        base_rotation: (3,3) B mapping the canonical prior frame to the published object frame,
            ``v_pub = B @ v`` (metadata; identity for our procedural priors).
        rotation_offset: ((3,), (3,)) pose-head 6D offsets (defaults zeros).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        prior_vertices: Tensor | np.ndarray,
        faces: Tensor | np.ndarray,
        *,
        category: str = "unknown",
        symmetry: str | None = None,
        base_rotation: Sequence[Sequence[float]] | np.ndarray | Tensor | None = None,
        rotation_offset: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        verts = torch.as_tensor(np.asarray(prior_vertices, dtype=np.float32))
        tris = torch.as_tensor(np.asarray(faces, dtype=np.int64))
        if verts.ndim != 2 or verts.shape[1] != 3 or verts.shape[0] < 4:
            raise ValueError(f"prior_vertices must be (N>=4, 3), got {tuple(verts.shape)}")
        if not torch.isfinite(verts).all():
            raise ValueError("prior_vertices contain non-finite values")
        if tris.ndim != 2 or tris.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {tuple(tris.shape)}")
        if tris.numel() and (int(tris.min()) < 0 or int(tris.max()) >= verts.shape[0]):
            raise ValueError("faces index outside [0, N)")
        if symmetry not in (None, "y"):
            raise ValueError(f"symmetry must be 'y' or None, got {symmetry!r}")
        B = np.eye(3) if base_rotation is None else np.asarray(base_rotation, dtype=np.float64).reshape(3, 3)

        self.cfg = cfg
        self.category = str(category)
        self.symmetry = symmetry
        self.base_rotation = B
        self.register_buffer("pixel_mean", torch.tensor(cfg.imagenet_mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.imagenet_std).reshape(1, 3, 1, 1), persistent=False)
        self.trunk = ResNet18Trunk(cfg.resnet_widths, cfg.resnet_blocks)
        self.decoder = TopDownDecoder(cfg.resnet_widths, cfg.feat_dim, cfg.stride, cfg.decoder_slope)
        self.shape_code = nn.Linear(cfg.resnet_widths[3], cfg.code_dim)
        self.deformer = ShapeDeformer(cfg.code_dim, cfg.mlp_hidden, cfg.mlp_hidden2)
        self.mesh_encoder = MeshEncoder(cfg.feat_dim, cfg.stn_hidden)
        self.pose = PoseRegressor(
            cfg.resnet_widths[3],
            cfg.pose_hidden,
            cfg.pose_layers,
            cfg.decoder_slope,
            cfg.depth_offset,
            cfg.trans_xy_scale,
            rotation_offset,
        )
        self.correspondence = Correspondence(cfg.grid_size, cfg.tau, cfg.mask_fill, cfg.confidence_alpha)
        self.mean_v = nn.Parameter(verts.clone())
        self.register_buffer("faces", tris.clone())

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_category(
        cls, category: str, cfg: ModelConfig, *, backbone_weights: str | Path | None = None
    ) -> CSENet:
        """Build the model for ``category`` from ``cse_train.shapes`` (prior mesh, symmetry,
        base rotation of the procedural prior).

        The reference pose-head offsets (:data:`cse_train.config.ROTATION_OFFSETS`) are defined in the
        authors' .obj prior frame; they are rotated into our prior frame with
        ``priors.REFERENCE_BASE_ROTATION[category]`` (B: offsets are object-space vectors, ``o' = B o``), so
        the initial viewpoint stays "upright, seen from above" (e.g. the bottle, whose reference prior has
        its neck at -y). Categories without reference offsets (``can``) get zeros.

        ``backbone_weights``: optional torchvision-style ResNet-18 state-dict file; from scratch otherwise.
        """
        from . import shapes as priors

        mesh = priors.prior_mesh(category)
        offsets = ROTATION_OFFSETS.get(category)
        ref_base = getattr(priors, "REFERENCE_BASE_ROTATION", {}).get(category)
        if offsets is not None and ref_base is not None:
            B = np.asarray(ref_base, dtype=np.float64).reshape(3, 3)
            offsets = (tuple(B @ np.asarray(offsets[0])), tuple(B @ np.asarray(offsets[1])))
        model = cls(
            cfg,
            mesh.vertices,
            mesh.faces,
            category=category,
            symmetry=priors.SYMMETRY.get(category),
            base_rotation=priors.base_rotation(category),
            rotation_offset=offsets,
        )
        if backbone_weights is not None:
            model.load_backbone_weights(backbone_weights)
        return model

    def load_backbone_weights(self, path: str | Path, strict: bool = False) -> BackboneLoadReport:
        """See :func:`load_backbone_weights`."""
        return load_backbone_weights(self.trunk, path, strict=strict)

    @property
    def num_vertices(self) -> int:
        """N, number of prior vertices."""
        return int(self.mean_v.shape[0])

    # -- pieces -----------------------------------------------------------------------------------------

    def encode_image(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """rgb [B,3,S,S] in [0,1] -> (img_feat [B,C,G,G] unit over channels, global_feat [B,512])."""
        feats = self.trunk((rgb - self.pixel_mean) / self.pixel_std)
        img_feat = F.normalize(self.decoder(feats), dim=1)
        return img_feat, feats[3].mean(dim=(2, 3))

    def deform(self, shape_code: Tensor, mean_v: Tensor | None = None, xyz_term: Tensor | None = None) -> Tensor:
        """Deformed prior [B,N,3] = mean_v + ratio * (delta - mean_n delta); the MLP sees mean_v detached.

        ``mean_v`` [N,3] defaults to the parameter; ``xyz_term`` [N,hidden] is the optional precomputed
        layer-1 xyz part (must belong to the same ``mean_v``).
        """
        mv = self.mean_v if mean_v is None else mean_v
        delta = self.deformer(mv.detach(), shape_code, xyz_term)
        delta = delta - delta.mean(dim=1, keepdim=True)
        return mv.unsqueeze(0) + self.cfg.deform_ratio * delta

    def _check_inputs(self, rgb: Tensor, mask: Tensor) -> None:
        s, g = self.cfg.crop_size, self.cfg.grid_size
        if rgb.ndim != 4 or tuple(rgb.shape[1:]) != (3, s, s):
            raise ValueError(f"rgb must be [B,3,{s},{s}], got {tuple(rgb.shape)}")
        if mask.ndim != 4 or tuple(mask.shape[1:]) != (1, g, g) or mask.shape[0] != rgb.shape[0]:
            raise ValueError(f"mask must be [B,1,{g},{g}] with B={rgb.shape[0]}, got {tuple(mask.shape)}")

    def forward(
        self, rgb: Tensor, mask: Tensor, K_ndc: Tensor | None = None, with_confidence: bool = False
    ) -> CSEOutput:
        """rgb [B,3,S,S] in [0,1], mask [B,1,G,G], K_ndc [B,3,3] crop intrinsics in NDC (optional,
        training) -> :class:`CSEOutput`. No colour jitter here (a loader/train-loop augmentation)."""
        self._check_inputs(rgb, mask)
        img_feat, global_feat = self.encode_image(rgb)
        shape_code = self.shape_code(global_feat)
        vertices = self.deform(shape_code)
        mesh_feat = self.mesh_encoder(vertices.detach())
        corr = self.correspondence(img_feat, mesh_feat, vertices, mask, with_confidence)
        R, t = self.pose(global_feat, K_ndc)
        return CSEOutput(
            img_feat=img_feat,
            global_feat=global_feat,
            shape_code=shape_code,
            vertices=vertices,
            mesh_feat=mesh_feat,
            sim=corr.sim,
            A_img=corr.A_img,
            A_mesh=corr.A_mesh,
            match=corr.match,
            imatch=corr.imatch,
            confidence=corr.confidence,
            R=R,
            t=t,
        )

    # -- reporting ------------------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Parameter count per block, plus ``inference`` (all but the pose head) and ``total``."""
        blocks = {
            "trunk": self.trunk,
            "decoder": self.decoder,
            "shape_code": self.shape_code,
            "deformer": self.deformer,
            "mesh_encoder": self.mesh_encoder,
            "pose": self.pose,
        }
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in blocks.items()}
        counts["mean_v"] = self.mean_v.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())
        counts["inference"] = counts["total"] - counts["pose"]
        return counts

    def metadata(self, training_data: str = "", version: str = "") -> dict[str, str]:
        """The model-contract metadata (docs/reference.md §D4), every value a string."""
        return {
            "contract": CONTRACT,
            "category": self.category,
            "crop_size": str(self.cfg.crop_size),
            "grid_size": str(self.cfg.grid_size),
            "num_vertices": str(self.num_vertices),
            "tau": f"{self.cfg.tau:g}",
            "base_rotation": json.dumps([float(x) for x in np.asarray(self.base_rotation).reshape(9)]),
            "symmetry": self.symmetry if self.symmetry is not None else "none",
            "faces": json.dumps(self.faces.cpu().tolist(), separators=(",", ":")),
            "training_data": str(training_data),
            "version": str(version),
        }


# ----------------------------------------------------------------------------------------------------
# Export wrapper
# ----------------------------------------------------------------------------------------------------


#: :class:`ExportWrapper` writes the deformed prior as a constant when, over :func:`shape_probe_images`, it moves
#: by at most this much (canonical units; ~1e-5 of the object's size, a few micrometres). The shipped bottle, bowl,
#: can, laptop and mug models move by at most 2.7e-6 (their shape code's image-independent part outweighs the
#: per-vertex term of the deformation MLP's first layer, so every vertex gets the same offset, which the zero-mean
#: step removes); the camera's moves by 0.02-0.23.
SHAPE_FOLD_TOL: float = 1e-5


def shape_probe_images(crop_size: int, seed: int = 0) -> Tensor:
    """Images spanning what a crop can hold, for :func:`shape_spread`: [8,3,S,S] in [0,1]: four of uniform noise,
    black, white, grey, and 8 x 8 blocks of noise."""
    gen = torch.Generator().manual_seed(seed)
    s = int(crop_size)
    noise = torch.rand(4, 3, s, s, generator=gen)
    flat = torch.tensor([0.0, 1.0, 0.5]).reshape(3, 1, 1, 1).expand(3, 3, s, s)
    blocks = torch.rand(1, 3, 8, 8, generator=gen).repeat_interleave(s // 8, 2).repeat_interleave(s // 8, 3)
    return torch.cat([noise, flat, blocks])


@torch.no_grad()
def shape_spread(model: CSENet) -> tuple[float, Tensor]:
    """How much the deformed prior depends on the image: (largest |vertex - its mean over the probe images|,
    canonical units; the mean deformed prior [N,3]) over :func:`shape_probe_images`, in eval mode (BatchNorm
    running statistics untouched)."""
    probe = shape_probe_images(model.cfg.crop_size).to(model.mean_v.device)
    was_training = model.training
    model.eval()
    try:
        _, global_feat = model.encode_image(probe)
        vertices = model.deform(model.shape_code(global_feat))
    finally:
        model.train(was_training)
    mean = vertices.mean(dim=0)
    return float((vertices - mean).abs().max()), mean


class ExportWrapper(nn.Module):
    """Inference graph: (rgb [B,3,S,S] in [0,1], mask [B,1,G,G]) -> (vertices [B,N,3], match [B,G,G,3],
    confidence [B,G,G]) and, with ``pose_head``, (pose_rotation [B,3,3], pose_translation [B,3]).

    A snapshot of the model at construction: ``mean_v`` and the layer-1 xyz term ``W_xyz mean_v + b``
    [N,hidden] become constants, so per frame only ``W_code code`` is added. Rebuild it after training
    changes the model. Call ``eval()`` before tracing. The correspondence is :func:`fused_correspondence`
    (one exponential, the mask's cells only; the two-softmax module above ``FUSED_TAU_MAX``): measured with
    ``models/mug.onnx`` in onnxruntime on 2 CPU cores, one exponential took x0.69 of the two-softmax graph's time
    for one crop, x0.60-0.67 for three; the mask's cells alone then took CPU time per crop from 8.0-8.9 to
    5.9-6.7 ms (crops 45 % covered by the mask, one to five crops a call).

    ``fold_shape``: the deformed prior becomes one constant [1,N,3] (its mean over the probe images), expanded to
    the batch, and the shape code and deformation MLP leave the graph (the mesh encoder stays, on the constant).
    ``None`` (default): fold when :func:`shape_spread` is at most :data:`SHAPE_FOLD_TOL`, i.e. when the image
    does not move the prior anyway. The MLP is ~185 MFLOP a crop (N = 564 vertices through 256-256-256-128
    units), the trunk's size: folded, ``models/mug.onnx`` took 7.3 instead of 9.0 ms a crop in onnxruntime
    (one CPU thread). ``cse_train.adapt.model_from_onnx`` rebuilds such a file with a zero last deformation
    layer (the same outputs; training then starts the deformation from there).

    ``pose_head`` adds the training-time pose regressor (a 512-d MLP, negligible cost) as two extra outputs
    for evaluation (baseline (a)); the node reads only the three contract outputs. Its translation is the
    regressor's without the crop-centre shift (``K_ndc=None``): canonical units, camera frame,
    ``t_xy`` still to be corrected by ``- (c_ndc / f_ndc) t_z`` for the crop's intrinsics.
    """

    def __init__(self, model: CSENet, pose_head: bool = False, fold_shape: bool | None = None) -> None:
        super().__init__()
        self.model = model
        self.pose_head = bool(pose_head)
        with torch.no_grad():
            mean_v = model.mean_v.detach().clone()
            self.register_buffer("mean_v_const", mean_v)
            self.register_buffer("xyz_term", model.deformer.xyz_term(mean_v).detach().clone())
            spread, vertices = shape_spread(model)
        self.fold_shape = spread <= SHAPE_FOLD_TOL if fold_shape is None else bool(fold_shape)
        if self.fold_shape:
            self.register_buffer("vertices_const", vertices.unsqueeze(0).clone())

    def forward(self, rgb: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        img_feat, global_feat = m.encode_image(rgb)
        if self.fold_shape:
            vertices = self.vertices_const.expand(rgb.shape[0], -1, -1)
        else:
            vertices = m.deform(m.shape_code(global_feat), mean_v=self.mean_v_const, xyz_term=self.xyz_term)
        mesh_feat = m.mesh_encoder(vertices)
        c = m.correspondence
        if c.tau <= FUSED_TAU_MAX:
            match, confidence = fused_correspondence(img_feat, mesh_feat, vertices, mask, c.grid, c.tau, c.alpha)
        else:
            corr = c(img_feat, mesh_feat, vertices, mask, with_confidence=True)
            match, confidence = corr.match, corr.confidence
        if not self.pose_head:
            return vertices, match, confidence
        R, t = m.pose(global_feat, None)
        return vertices, match, confidence, R, t


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: CSENet, extra: dict[str, Any] | None = None) -> Path:
    """Save state dict + config + category + faces (+ symmetry, base rotation, ``extra``) to ``path``.

    ``extra`` must hold only tensors and plain python values (loaded back with ``weights_only=True``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.cfg.to_dict(),
        "category": model.category,
        "symmetry": model.symmetry,
        "base_rotation": [float(x) for x in np.asarray(model.base_rotation).reshape(9)],
        "rotation_offset": [model.pose.x_offset.tolist(), model.pose.y_offset.tolist()],
        "faces": model.faces.detach().cpu().clone(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CSENet, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_checkpoint`. Returns (model in eval mode, the payload dict).

    Raises:
        FileNotFoundError, ValueError (not a cse_pose checkpoint / incompatible state).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    cfg = config_from_dict(payload["config"])
    state = payload["state_dict"]
    x_off, y_off = payload.get("rotation_offset") or ((0.0,) * 3, (0.0,) * 3)
    model = CSENet(
        cfg,
        state["mean_v"].float().cpu().numpy(),
        payload["faces"].cpu().numpy(),
        category=payload.get("category", "unknown"),
        symmetry=payload.get("symmetry"),
        base_rotation=np.asarray(payload.get("base_rotation", np.eye(3).reshape(9))).reshape(3, 3),
        rotation_offset=(x_off, y_off),
    )
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return model, payload
