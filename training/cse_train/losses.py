"""Self-supervised training losses of CSE, as pure functions of plain tensors.

Every loss of docs/reference.md §3.5 is one function here; none depends on the model or renderer modules,
only on the tensors they produce (shapes documented per function). Conventions:

- Column vectors: ``p_cam = s * R @ p_obj + t``; camera frame OpenCV optical (x right, y down, z forward).
- NDC crop coordinates in [-1, 1]: x = column, y = row; cell ``j`` of an ``n``-grid has centre
  ``(j + 0.5) / (n / 2) - 1``; flattening is row-major (``index = row * n + col``).
- ``K_ndc`` [B,3,3] = ``[[f_x, 0, c_x], [0, f_y, c_y], [0, 0, 1]]`` in NDC units (docs/reference.md §0, §2.6):
  ``u_ndc = f_x * X / Z + c_x``, ``v_ndc = f_y * Y / Z + c_y``.
- Canonical units: the prior mesh normalised to max |coord| = 1 (docs/reference.md §1.8); rendered depth is in
  canonical units, ground-truth depth in any metric unit (the depth loss is scale invariant).

Every function returns a scalar tensor (batch-averaged) unless stated otherwise. "Detached" in a
docstring means the function itself calls ``.detach()`` on that input, so no gradient reaches it whatever
the caller passes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cse_pose.core.errors import UnknownCategoryError

__all__ = [
    "SYMMETRY_TYPES",
    "cross_cycle_loss",
    "deformation_loss",
    "depth_loss",
    "downsample_mask",
    "instance_cycle_2d3d_loss",
    "instance_cycle_3d2d_loss",
    "laplacian_loss",
    "mask_loss",
    "ndc_cell_centers",
    "project_ndc",
    "pose_head_gt_loss",
    "pull_far_loss",
    "rotate_image_and_mask",
    "rotation_cycle_loss",
    "rotation_matrix_2d",
    "sample_surface_points",
    "symmetry_loss",
    "symmetry_transforms",
    "synthetic_gt_correspondence_loss",
    "texture_loss",
    "uniform_laplacian",
]

_MASK_FILL = -1e5  # logit given to masked-out cells (reference value)

# Training-time symmetry type per category (docs/reference.md §3.6 `symmetry_idx`): 'y' = rotations about the y axis,
# 'mirror_x' = {I, diag(-1, 1, 1)}, None = identity only. `can` is not in the reference; it is y-symmetric
# like bottle. (The evaluation-time symmetry in cse_pose.core.priors.SYMMETRY is 'y' or None only.)
SYMMETRY_TYPES: dict[str, str | None] = {
    "bottle": "y",
    "bowl": "y",
    "can": "y",
    "camera": None,
    "laptop": "mirror_x",
    "mug": "mirror_x",
}
_NUM_Y_ROTATIONS = 17


# ----------------------------------------------------------------------------------------------------------
# Small geometric helpers
# ----------------------------------------------------------------------------------------------------------


def ndc_cell_centers(
    n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """NDC centres of an ``n x n`` grid, row-major.

    Returns:
        [n*n, 2] (x = column, y = row), ``(i + 0.5) / (n / 2) - 1``.
    """
    c = (torch.arange(n, device=device, dtype=dtype) + 0.5) / (n / 2.0) - 1.0
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def downsample_mask(mask: Tensor, size: int) -> Tensor:
    """Downsample a mask with PyTorch legacy ``nearest`` (top-left sample of each block), as the reference.

    Args:
        mask: [B,H,W] or [B,1,H,W], any dtype (non-zero = object).
        size: output side ``g``.

    Returns:
        [B,g,g] bool.
    """
    m = mask if mask.dim() == 4 else mask.unsqueeze(1)
    m = m.to(torch.float32)
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m[:, 0] > 0.5


def project_ndc(points_cam: Tensor, K_ndc: Tensor, min_depth: float = 1e-6) -> Tensor:
    """Pinhole projection of camera-frame points to NDC crop coordinates.

    Args:
        points_cam: [B,N,3] camera frame (x right, y down, z forward), any unit.
        K_ndc: [B,3,3] NDC intrinsics (docs/reference.md §0).
        min_depth: z is clamped to at least this (same unit as points) to avoid division by zero.

    Returns:
        [B,N,2] (u_ndc, v_ndc).
    """
    z = points_cam[..., 2:3].clamp(min=min_depth)
    xy = points_cam[..., :2] / z
    f = torch.stack([K_ndc[:, 0, 0], K_ndc[:, 1, 1]], dim=-1).unsqueeze(1)  # [B,1,2]
    c = K_ndc[:, :2, 2].unsqueeze(1)  # [B,1,2]
    return xy * f + c


def rotation_matrix_2d(angle_rad: float | Tensor, batch: int = 1, device=None, dtype=torch.float32) -> Tensor:
    """2-D rotation used by :func:`rotate_image_and_mask`, mapping output NDC (x, y) to input NDC.

    ``A = [[cos a, -sin a], [sin a, cos a]]``. With x right and y down, a positive angle turns the image
    content counter-clockwise as displayed (angle pi/2 == ``torch.rot90(img, 1, dims=(-2, -1))``). For a
    cell at NDC ``p`` in the rotated image, ``A @ p`` is where its content came from in the source.

    Args:
        angle_rad: scalar or [B] radians.
        batch: batch size used when ``angle_rad`` is a scalar.

    Returns:
        [B,2,2].
    """
    a = torch.as_tensor(angle_rad, device=device, dtype=dtype)
    if a.dim() == 0:
        a = a.expand(batch)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _masked_image_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Per-image mean of ``x`` [B,H,W] over ``valid`` [B,H,W] bool -> [B] (0 where nothing is valid)."""
    v = valid.to(x.dtype)
    return (x * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------
# Reconstruction losses (renderer outputs vs. observations)
# ----------------------------------------------------------------------------------------------------------


def mask_loss(
    alpha: Tensor,
    mask: Tensor,
    num_levels: int = 5,
    level_weight: float = 0.2,
    reference_width_only: bool = False,
) -> Tensor:
    """Multi-scale silhouette loss.

    ``L = level_weight * sum_{i<num_levels} mean_px (up_i(down_i(alpha)) - up_i(down_i(mask)))^2`` where
    ``down_i`` is area (box) downsampling by ``2^i`` and ``up_i`` area upsampling back to full size; the
    squared difference is taken at the coarse level and then upsampled, as the reference does.

    Default: the intended 2-D pyramid (pools rows and columns). ``reference_width_only=True`` reproduces
    the reference quirk (docs/reference.md §3.5): the reference passes [B,H,W] tensors to ``F.interpolate``, which
    treats them as 1-D signals and only downsamples the width. Default False.

    Args:
        alpha: [B,H,W] rendered silhouette in [0,1] (gradient flows into it).
        mask: [B,H,W] observed object mask (0/1; not differentiated).
        num_levels: pyramid levels (reference 5).
        level_weight: weight of each level (reference: 0.2).
        reference_width_only: reproduce the width-only pyramid of the reference code.

    Returns:
        scalar.
    """
    if alpha.shape != mask.shape or alpha.dim() != 3:
        raise ValueError(f"alpha and mask must be [B,H,W], got {tuple(alpha.shape)}, {tuple(mask.shape)}")
    mask = mask.to(alpha.dtype)
    height, width = alpha.shape[-2:]
    total = alpha.new_zeros(())
    for i in range(num_levels):
        factor = 2**i
        if reference_width_only:
            # 3-D input: interpolate sees (N=B, C=H, L=W) and pools along W only.
            size_w = max(width // factor, 1)
            a = F.interpolate(alpha, size=size_w, mode="area")
            m = F.interpolate(mask, size=size_w, mode="area")
            diff = F.interpolate((a - m) ** 2, size=width, mode="area")
        else:
            size = (max(height // factor, 1), max(width // factor, 1))
            a = F.interpolate(alpha.unsqueeze(1), size=size, mode="area")
            m = F.interpolate(mask.unsqueeze(1), size=size, mode="area")
            diff = F.interpolate((a - m) ** 2, size=(height, width), mode="area")
        total = total + diff.mean()
    return level_weight * total


def texture_loss(rgb: Tensor, mask: Tensor, render_rgb: Tensor, render_alpha: Tensor) -> Tensor:
    """Texture (RGB) reconstruction loss of the reference (docs/reference.md §3.5).

    ``L = 0.75 * mean_px sum_c (I*M - T*alpha)^2 + mean_px mean_c |I_w - T|`` with ``I_w = I*M + (1 - M)``
    (the image on a white background, matching the soft-texture renderer's white background).

    Args:
        rgb: [B,3,H,W] input crop I in [0,1] (not differentiated).
        mask: [B,H,W] observed mask M (0/1; not differentiated).
        render_rgb: [B,3,H,W] soft-texture render T (white background); gradient flows into it.
        render_alpha: [B,H,W] its alpha; gradient flows into it.

    Returns:
        scalar.
    """
    m = mask.to(rgb.dtype).unsqueeze(1)
    a = render_alpha.unsqueeze(1)
    term_masked = ((rgb * m - render_rgb * a) ** 2).sum(1).mean()
    rgb_white = rgb * m + (1.0 - m)
    term_l1 = (rgb_white - render_rgb).abs().mean()
    return 0.75 * term_masked + term_l1


def depth_loss(
    render_depth: Tensor,
    render_alpha: Tensor,
    depth: Tensor,
    mask: Tensor,
    batch_gamma: bool = False,
    alpha_threshold: float = 0.0,
    clamp: float = 1.0,
    detach_gamma: bool = False,
) -> Tensor:
    """Scale-invariant depth loss (docs/reference.md §3.5).

    ``gamma = mean(D_r over rendered silhouette) / mean(D_gt over mask & D_gt>0)``;
    ``d = D_r - gamma * D_gt`` on ``mask & silhouette & D_gt > 0`` (0 elsewhere);
    ``L = mean_px min(d^2, clamp)``.
    The silhouette is ``render_alpha > alpha_threshold`` (reference: alpha > 0; with a soft rasteriser whose
    alpha has long tails pass e.g. 0.5).

    gamma is computed per image by default; ``batch_gamma=True`` reproduces the reference, which takes both
    means over the whole batch (so one image's depth scale leaks into the others).

    Args:
        render_depth: [B,H,W] rendered depth D_r (canonical units); gradient flows into it (also through gamma
            unless ``detach_gamma``).
        render_alpha: [B,H,W] rendered alpha (only thresholded; no gradient through it).
        depth: [B,H,W] observed depth D_gt in any metric unit, 0 = invalid (not differentiated).
        mask: [B,H,W] observed mask (0/1).
        batch_gamma: one gamma for the whole batch (reference quirk).
        alpha_threshold: silhouette threshold on alpha.
        clamp: per-pixel cap on d^2 (reference 1).
        detach_gamma: stop the gradient through gamma (default off: the reference does not detach it,
            docs/reference.md §3.5).

    Returns:
        scalar.
    """
    depth = depth.to(render_depth.dtype)
    silhouette = render_alpha.detach() > alpha_threshold
    observed = (mask > 0.5) & (depth > 0)
    if batch_gamma:
        num = _masked_image_mean(render_depth.reshape(1, -1, 1), silhouette.reshape(1, -1, 1))
        den = _masked_image_mean(depth.reshape(1, -1, 1), observed.reshape(1, -1, 1))
        gamma = (num / den.clamp(min=1e-12)).expand(render_depth.shape[0])
    else:
        den = _masked_image_mean(depth, observed).clamp(min=1e-12)
        gamma = _masked_image_mean(render_depth, silhouette) / den
    if detach_gamma:
        gamma = gamma.detach()
    valid = (observed & silhouette).to(render_depth.dtype)
    d = (render_depth - gamma.view(-1, 1, 1) * depth) * valid
    return torch.clamp(d**2, max=clamp).mean()


# ----------------------------------------------------------------------------------------------------------
# Instance cycle losses
# ----------------------------------------------------------------------------------------------------------


def instance_cycle_2d3d_loss(
    match: Tensor,
    render_coords: Tensor,
    render_alpha: Tensor,
    mask: Tensor,
    alpha_threshold: float = 0.0,
) -> Tensor:
    """Instance cycle 2D -> 3D ("match" loss, docs/reference.md §3.5).

    ``L = mean_px || up(match) - X_r ||_2 * [alpha > thr & M]`` over all B*H*W pixels, where ``up`` is nearest
    upsampling of the per-cell 3-D match to the render resolution and ``X_r`` is the rendered canonical
    coordinate of the surface seen at each pixel (hard texture render of the vertices' canonical coordinates
    with the regressed pose).

    ``render_coords`` and ``render_alpha`` are detached: the rendered coordinates are the target, so this loss
    trains only the correspondence (through ``match``, which the model computes from the detached vertices);
    it moves neither the vertices nor the pose.

    Args:
        match: [B,G,G,3] expected canonical point per grid cell (gradient flows into it).
        render_coords: [B,3,H,W] rendered canonical coordinates (detached).
        render_alpha: [B,H,W] alpha of that render (detached, thresholded).
        mask: [B,H,W] observed mask (0/1).
        alpha_threshold: pixels with ``alpha > alpha_threshold`` are on the render (reference: 0).

    Returns:
        scalar.
    """
    height, width = render_coords.shape[-2:]
    up = F.interpolate(match.permute(0, 3, 1, 2), size=(height, width), mode="nearest")
    valid = ((render_alpha.detach() > alpha_threshold) & (mask > 0.5)).to(match.dtype)
    err = torch.linalg.vector_norm(up - render_coords.detach(), dim=1)
    return (err * valid).mean()


def instance_cycle_3d2d_loss(
    imatch: Tensor,
    vertices: Tensor,
    R: Tensor,
    t: Tensor,
    K_ndc: Tensor,
    visibility: Tensor,
    scale: Tensor | float = 1.0,
) -> Tensor:
    """Instance cycle 3D -> 2D ("imatch" loss, docs/reference.md §3.5).

    ``L = mean_{b,n} || imatch_n - proj(s * R @ sg(v_n) + t) ||_2 * sg(w_n)`` with ``proj`` the NDC pinhole
    projection (:func:`project_ndc`) and ``sg`` stop-gradient.

    Detached: ``vertices`` and ``visibility``. Not detached: ``R`` and ``t`` (the gradient reaches the pose
    head, as in the reference) and ``imatch`` (the correspondence).

    Args:
        imatch: [B,N,2] expected NDC image location per vertex.
        vertices: [B,N,3] deformed mesh, canonical units (detached).
        R: [B,3,3] rotation canonical -> camera, column form.
        t: [B,3] translation (canonical units, camera frame).
        K_ndc: [B,3,3] NDC intrinsics of the crop.
        visibility: [B,N] per-vertex visibility weight in [0,1] (detached).
        scale: scalar or [B] uniform scale (reference: 1).

    Returns:
        scalar.
    """
    s = torch.as_tensor(scale, dtype=vertices.dtype, device=vertices.device)
    s = s.view(-1, 1, 1) if s.dim() > 0 else s
    p_cam = s * torch.einsum("bij,bnj->bni", R, vertices.detach()) + t.unsqueeze(1)
    proj = project_ndc(p_cam, K_ndc)
    err = torch.linalg.vector_norm(imatch - proj, dim=-1)
    return (err * visibility.detach()).mean()


# ----------------------------------------------------------------------------------------------------------
# Cross-instance / cross-time cycle (through a 2-D matcher) and auxiliary rotation cycle
# ----------------------------------------------------------------------------------------------------------


def _sim_to_grid(sim: Tensor, grid: int) -> Tensor:
    """Resample a similarity [B,P,N] on a G x G grid to [B,grid*grid,N] (bilinear, align_corners=False)."""
    b, p, n = sim.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"similarity has P={p} cells, not a square grid")
    if g == grid:
        return sim
    x = sim.transpose(1, 2).reshape(b, n, g, g)
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.reshape(b, n, grid * grid).transpose(1, 2)


def cross_cycle_loss(
    sim_src: Tensor,
    sim_tgt: Tensor,
    mask_src: Tensor,
    mask_tgt: Tensor,
    vis_src: Tensor,
    vis_tgt: Tensor,
    tgt_cells: Tensor,
    src_xy_ndc: Tensor,
    valid: Tensor,
    tau: float = 10.0,
    vis_threshold: float = 0.5,
) -> Tensor:
    """Cross-instance / cross-time 4-step cycle (docs/reference.md §3.5 "DINO cross-instance / cross-time cycle").

    Forward (3-D) map from the model, on the matcher grid g x g (p = g*g cells):
    ``A_mesh,src = softmax_p(tau * S_src)`` (src cells off ``mask_src`` get logit -1e5) times
    ``[vis_src >= thr]`` per vertex; ``A_img,tgt = softmax_N(tau * S_tgt)`` times ``[vis_tgt >= thr]``;
    ``C = A_mesh,src @ A_img,tgt^T`` [p_src, p_tgt], columns normalised to sum 1 (+1e-5);
    ``s_hat[t] = sum_s grid[s] * C[s, t]``: the expected src location of tgt cell t via the shared vertex ids.
    Backward (2-D) map from the matcher: ``src_xy_ndc`` for the k selected ``tgt_cells``.
    ``L = mean_{b,k} || s_hat[tgt_cells] - src_xy_ndc ||_2 * valid``.

    Only the k selected columns of C are formed ([B,p,k], not [B,p,p]). If the model grid G differs from the
    matcher grid g, the similarities are bilinearly resampled to g x g first (reference: 64 -> 32). Pass the
    raw (unmasked) cosine similarity; the masks here are applied on the matcher grid.

    The minimum 0 is reached only for one-hot correspondences (tau * S sharply peaked); with tau = 10 and
    cosine similarities the soft expectation is biased towards the mask centroid.

    Detached: ``vis_src``, ``vis_tgt`` (only thresholded), ``tgt_cells``, ``src_xy_ndc``, ``valid``. Gradient
    flows into ``sim_src`` and ``sim_tgt`` (image and vertex features).

    Args:
        sim_src: [B,P,N] cosine similarity of source cells (G x G, row-major) and vertices.
        sim_tgt: [B,P,N] the same for the target image.
        mask_src: [B,g,g] source object mask on the matcher grid (bool or 0/1).
        mask_tgt: [B,g,g] target object mask on the matcher grid (not used by the loss value except through
            ``valid``; kept for symmetry and shape checking).
        vis_src: [B,N] source vertex visibility in [0,1].
        vis_tgt: [B,N] target vertex visibility.
        tgt_cells: [B,k] long, row-major target cell indices on the g grid.
        src_xy_ndc: [B,k,2] matched source NDC locations (from the 2-D matcher).
        valid: [B,k] bool, which pairs count.
        tau: softmax temperature (reference 10).
        vis_threshold: vertices with visibility below this are dropped (reference: 0.5).

    Returns:
        scalar.
    """
    grid = mask_src.shape[-1]
    if mask_src.shape[-2:] != (grid, grid) or mask_tgt.shape[-2:] != (grid, grid):
        raise ValueError("mask_src and mask_tgt must be [B,g,g] on the same square grid")
    s_src = _sim_to_grid(sim_src, grid)
    s_tgt = _sim_to_grid(sim_tgt, grid)
    b, p, n = s_src.shape
    m_src = (mask_src.reshape(b, p) > 0.5) if mask_src.dtype != torch.bool else mask_src.reshape(b, p)
    logits_src = (tau * s_src).masked_fill(~m_src.unsqueeze(-1), _MASK_FILL)
    a_mesh_src = torch.softmax(logits_src, dim=1)  # over src cells
    a_mesh_src = a_mesh_src * (vis_src.detach() >= vis_threshold).to(s_src.dtype).unsqueeze(1)
    idx = tgt_cells.long().unsqueeze(-1).expand(-1, -1, n)
    s_tgt_sel = torch.gather(s_tgt, 1, idx)  # [B,k,N]
    a_img_tgt = torch.softmax(tau * s_tgt_sel, dim=-1)  # over vertices
    a_img_tgt = a_img_tgt * (vis_tgt.detach() >= vis_threshold).to(s_tgt.dtype).unsqueeze(1)
    c = torch.bmm(a_mesh_src, a_img_tgt.transpose(1, 2))  # [B,p,k]
    c = c / (c.sum(1, keepdim=True) + 1e-5)
    g = ndc_cell_centers(grid, device=c.device, dtype=c.dtype)  # [p,2]
    s_hat = torch.einsum("bpk,pd->bkd", c, g)
    err = torch.linalg.vector_norm(s_hat - src_xy_ndc.detach().to(c.dtype), dim=-1)
    return (err * valid.detach().to(c.dtype)).mean()


def rotate_image_and_mask(rgb: Tensor, mask: Tensor, angle_rad: float | Tensor) -> tuple[Tensor, Tensor]:
    """Rotate square images and masks about the image centre (torch only, no torchvision).

    A positive angle turns the content counter-clockwise as displayed (``pi/2`` equals
    ``torch.rot90(x, 1, dims=(-2, -1))``); see :func:`rotation_matrix_2d`. RGB is sampled bilinearly, the mask
    with nearest; outside the source image both are 0 (``grid_sample`` zeros padding, align_corners=False).

    Args:
        rgb: [B,C,S,S] float image.
        mask: [B,1,S,S] or [B,S,S] mask (returned with the same shape, float).
        angle_rad: scalar or [B] rotation angle in radians.

    Returns:
        (rgb_rot [B,C,S,S], mask_rot like ``mask``).
    """
    b, _, h, w = rgb.shape
    if h != w:
        raise ValueError(f"rotate_image_and_mask needs square images, got {h}x{w}")
    a = rotation_matrix_2d(angle_rad, batch=b, device=rgb.device, dtype=rgb.dtype)
    theta = torch.cat([a, a.new_zeros(b, 2, 1)], dim=-1)  # [B,2,3]
    sampling = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    rgb_rot = F.grid_sample(rgb, sampling, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = mask if mask.dim() == 4 else mask.unsqueeze(1)
    m_rot = F.grid_sample(
        m.to(rgb.dtype), sampling, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return rgb_rot, (m_rot if mask.dim() == 4 else m_rot[:, 0])


def rotation_cycle_loss(
    feat_src: Tensor,
    feat_rot: Tensor,
    mask_src: Tensor,
    mask_rot: Tensor,
    angle_rad: float | Tensor,
    tau: float = 10.0,
    grid: int = 32,
) -> Tensor:
    """Auxiliary rotation cycle (docs/reference.md §3.5): 2-D correspondences between an image and its rotated copy.

    Both feature maps are nearest-downsampled to ``grid`` (reference 64 -> 32), masks likewise (legacy
    nearest). ``S[t, s] = f_rot[t] . f_src[s]``, src cells off ``mask_src`` get logit -1e5;
    ``pred[t] = sum_s softmax_s(tau * S[t, :]) * grid[s]``; the ground truth is where the rotation took the
    content from, ``gt[t] = A(angle) @ grid[t]`` (exact, the same matrix as :func:`rotate_image_and_mask`; the
    reference rotates a coordinate image with nearest sampling instead, i.e. quantises gt to cells).
    ``L = mean_{b,t} || pred[t] - gt[t] ||_2 * mask_rot[t]``.

    Gradient flows into both feature maps. The minimum 0 needs one-hot correspondences (large tau * S).

    Args:
        feat_src: [B,C,G,G] L2-normalised features of the image.
        feat_rot: [B,C,G,G] features of the rotated image.
        mask_src: [B,1,H,W] or [B,H,W] mask of the image (any resolution).
        mask_rot: [B,1,H,W] or [B,H,W] rotated mask.
        angle_rad: scalar or [B] angle passed to :func:`rotate_image_and_mask`.
        tau: softmax temperature (reference 10).
        grid: matching grid side (reference 32).

    Returns:
        scalar.
    """
    b = feat_src.shape[0]
    if feat_src.shape[-1] != grid:
        feat_src = F.interpolate(feat_src, size=(grid, grid), mode="nearest")
        feat_rot = F.interpolate(feat_rot, size=(grid, grid), mode="nearest")
    f_src = feat_src.flatten(2)  # [B,C,p]
    f_rot = feat_rot.flatten(2)
    m_src = downsample_mask(mask_src, grid).reshape(b, -1)
    m_rot = downsample_mask(mask_rot, grid).reshape(b, -1).to(f_src.dtype)
    logits = tau * torch.einsum("bct,bcs->bts", f_rot, f_src)
    logits = logits.masked_fill(~m_src.unsqueeze(1), _MASK_FILL)
    g = ndc_cell_centers(grid, device=f_src.device, dtype=f_src.dtype)  # [p,2]
    pred = torch.softmax(logits, dim=-1) @ g  # [B,p,2]
    a = rotation_matrix_2d(angle_rad, batch=b, device=f_src.device, dtype=f_src.dtype)
    gt = torch.einsum("bij,pj->bpi", a, g)
    err = torch.linalg.vector_norm(pred - gt, dim=-1)
    return (err * m_rot).mean()


# ----------------------------------------------------------------------------------------------------------
# Shape regularisers
# ----------------------------------------------------------------------------------------------------------


def symmetry_transforms(category: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Symmetry transforms of a category for the symmetry loss (docs/reference.md §3.6), canonical frame (y up).

    - y-symmetric (bottle, bowl, can): 17 rotations about y by ``k * 360/17`` degrees, k = 0..16 (k=0: I).
    - mirror-symmetric (laptop, mug): ``{I, diag(-1, 1, 1)}`` (mirror x).
    - camera: ``{I}``.

    Returns:
        [T,3,3] column-form matrices (``p' = T @ p``).

    Raises:
        UnknownCategoryError: category not in :data:`SYMMETRY_TYPES`.
    """
    if category not in SYMMETRY_TYPES:
        raise UnknownCategoryError(f"unknown category {category!r}; known: {sorted(SYMMETRY_TYPES)}")
    kind = SYMMETRY_TYPES[category]
    if kind == "y":
        ang = torch.arange(_NUM_Y_ROTATIONS, dtype=torch.float64) * (2.0 * math.pi / _NUM_Y_ROTATIONS)
        c, s = torch.cos(ang), torch.sin(ang)
        zero, one = torch.zeros_like(ang), torch.ones_like(ang)
        rows = [(c, zero, s), (zero, one, zero), (-s, zero, c)]
        rot = torch.stack([torch.stack(r, -1) for r in rows], dim=-2)
        return rot.to(dtype)
    if kind == "mirror_x":
        return torch.stack([torch.eye(3), torch.diag(torch.tensor([-1.0, 1.0, 1.0]))]).to(dtype)
    return torch.eye(3, dtype=dtype).unsqueeze(0)


def sample_surface_points(
    vertices: Tensor, faces: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Sample points uniformly on a triangle mesh surface (faces chosen with probability ~ area).

    Barycentric sampling ``p = (1 - sqrt(u)) a + sqrt(u) (1 - v) b + sqrt(u) v c``; differentiable with
    respect to ``vertices`` (the face choice itself is not).

    Args:
        vertices: [B,N,3].
        faces: [F,3] long vertex indices (shared by the batch).
        num_samples: M points per mesh.
        generator: optional torch RNG (on the vertices' device).

    Returns:
        [B,M,3].
    """
    b = vertices.shape[0]
    faces = faces.long().to(vertices.device)
    tri = vertices[:, faces]  # [B,F,3,3]
    v0, v1, v2 = tri[:, :, 0], tri[:, :, 1], tri[:, :, 2]
    with torch.no_grad():
        area = 0.5 * torch.linalg.vector_norm(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)  # [B,F]
        area = area + 1e-12 * (area.sum(-1, keepdim=True) == 0)  # degenerate mesh: uniform over faces
        face_idx = torch.multinomial(area, num_samples, replacement=True, generator=generator)  # [B,M]
    u = torch.rand(b, num_samples, 1, device=vertices.device, dtype=vertices.dtype, generator=generator)
    v = torch.rand(b, num_samples, 1, device=vertices.device, dtype=vertices.dtype, generator=generator)
    su = u.sqrt()
    idx = face_idx.unsqueeze(-1).expand(-1, -1, 3)
    a = torch.gather(v0, 1, idx)
    bb = torch.gather(v1, 1, idx)
    c = torch.gather(v2, 1, idx)
    return (1.0 - su) * a + su * (1.0 - v) * bb + su * v * c


def symmetry_loss(
    vertices: Tensor,
    faces: Tensor,
    transforms: Tensor,
    num_samples: int = 10000,
    generator: torch.Generator | None = None,
    max_pair_elements: int = 1 << 25,
) -> Tensor:
    """Symmetry loss (docs/reference.md §3.5): one-sided Chamfer from vertices to transformed surface samples.

    For every transform ``T_j``: sample ``num_samples`` surface points of the mesh (fresh samples per
    transform, area weighted), transform them ``q = T_j @ p``, and take for each vertex the squared distance
    to its nearest transformed sample. ``L = mean_{b,j,n} min_m || v_n - T_j p_m ||^2``.

    For a mesh with the symmetry the loss equals its sampling floor (the identity-only value, which falls as
    ``num_samples`` grows); breaking the symmetry raises it. The nearest neighbour is found without gradient,
    then the distance to it is differentiated, so the gradient reaches ``vertices`` through both the queries
    and the samples.

    Args:
        vertices: [B,N,3] deformed mesh (canonical units).
        faces: [F,3] long.
        transforms: [T,3,3] from :func:`symmetry_transforms`.
        num_samples: surface samples per (mesh, transform) (reference 10,000).
        generator: optional torch RNG for reproducible sampling.
        max_pair_elements: memory cap for the distance matrix (batch is chunked to stay below it).

    Returns:
        scalar.
    """
    b, n, _ = vertices.shape
    transforms = transforms.to(vertices)
    chunk = max(1, max_pair_elements // max(1, n * num_samples))
    total = vertices.new_zeros(())
    for j in range(transforms.shape[0]):
        samples = sample_surface_points(vertices, faces, num_samples, generator) @ transforms[j].T  # [B,M,3]
        for start in range(0, b, chunk):
            q = vertices[start : start + chunk]
            s = samples[start : start + chunk]
            with torch.no_grad():
                nn_idx = torch.cdist(q.detach(), s.detach()).argmin(dim=-1)  # [b',N]
            nearest = torch.gather(s, 1, nn_idx.unsqueeze(-1).expand(-1, -1, 3))
            total = total + ((q - nearest) ** 2).sum(-1).sum()
    return total / (b * n * transforms.shape[0])


def uniform_laplacian(
    faces: Tensor,
    num_vertices: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform graph Laplacian ``L = I - D^-1 A`` of a triangle mesh (dense; N <= a few thousand).

    ``A`` is the symmetric 0/1 edge adjacency from the faces, ``D`` its degree. Isolated vertices get a
    zero row.

    Args:
        faces: [F,3] vertex indices.
        num_vertices: N.

    Returns:
        [N,N]; each row sums to 0, diagonal 1 (for connected vertices), ``L[i,j] = -1/deg(i)`` on edges.
    """
    f = faces.long().to(device)
    i = torch.cat([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = torch.cat([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = torch.zeros(num_vertices, num_vertices, dtype=dtype, device=device)
    adj[i, j] = 1.0
    adj.fill_diagonal_(0.0)
    deg = adj.sum(1, keepdim=True)
    connected = (deg > 0).to(dtype)
    return torch.eye(num_vertices, dtype=dtype, device=device) * connected - adj / deg.clamp(min=1.0)


def laplacian_loss(vertices: Tensor, laplacian: Tensor, rest_vertices: Tensor | None = None) -> Tensor:
    """Laplacian smoothness ("triangle") loss (docs/reference.md §3.5).

    ``L = (N / 64) * mean_b sum_{n, xyz} (L_u @ (v_b - v_rest))^2``, ``L_u`` the uniform Laplacian of the prior
    faces. With ``rest_vertices=None`` (the reference) ``v_rest = 0``: the mesh itself is smoothed, which is
    harmless for the reference's smooth icosphere-like priors but shrinks our procedural priors with sharp
    rims and edges (mug prior: 68 at rest vs a weight of 0.002). Passing the initial prior as
    ``rest_vertices`` penalises only the roughness of the *deformation*. Invariant to translation.

    Args:
        vertices: [B,N,3] deformed mesh (gradient flows into it).
        laplacian: [N,N] from :func:`uniform_laplacian`.
        rest_vertices: optional [N,3] shape whose Laplacian counts as zero (no gradient).

    Returns:
        scalar.
    """
    n = vertices.shape[1]
    if rest_vertices is not None:
        vertices = vertices - rest_vertices.detach().to(vertices)
    lv = torch.matmul(laplacian.to(vertices), vertices)  # [B,N,3]
    return (n / 64.0) * (lv**2).sum(dim=(1, 2)).mean()


def deformation_loss(vertices: Tensor, mean_vertices: Tensor) -> Tensor:
    """Deformation loss: smooth-L1 (beta = 1) on the offset ``Delta = pred_v - mean_v``, mean over B*N*3.

    Args:
        vertices: [B,N,3] deformed mesh ``pred_v``.
        mean_vertices: [N,3] or [B,N,3] the (learnable) prior ``mean_v``.

    Returns:
        scalar.
    """
    target = mean_vertices.expand_as(vertices) if mean_vertices.dim() == 2 else mean_vertices
    return F.smooth_l1_loss(vertices, target, beta=1.0, reduction="mean")


def pull_far_loss(t: Tensor, min_depth: float = 1.0) -> Tensor:
    """Pull-far loss ``mean_b relu(min_depth - t_z)`` (keeps the object >= 1 canonical unit from the camera).

    Args:
        t: [B,3] regressed translation (camera frame, canonical units).

    Returns:
        scalar.
    """
    return F.relu(min_depth - t[:, 2]).mean()


# ----------------------------------------------------------------------------------------------------------
# Optional supervised pre-training on synthetic ground truth (ours; not in the reference)
# ----------------------------------------------------------------------------------------------------------


def pose_head_gt_loss(R: Tensor, t: Tensor, R_gt: Tensor, t_gt: Tensor, scale_gt: Tensor | float = 1.0) -> Tensor:
    """Pose-head term for ``--supervision synthetic-gt`` (ours): the regressed pose against the labelled one.

    ``L = mean_b ( ||R - R_gt||_F^2 / 8 + ||t - t_gt / s_gt||_2 / (t_gt,z / s_gt) )``: the rotation term is
    (1 - cos angle) / 2 for rotations (in [0, 1]); the translation is compared in the head's canonical units and
    relative to the labelled depth. Without it only the render terms train the head, from silhouettes and depth
    that leave e.g. a mug's handle side ambiguous, and every render-and-compare term renders with its pose.

    Detached: ``R_gt``, ``t_gt``, ``scale_gt``.

    Args:
        R: [B,3,3] regressed rotation canonical -> camera. t: [B,3] regressed translation (canonical units).
        R_gt: [B,3,3] labelled rotation. t_gt: [B,3] labelled translation (camera units, e.g. metres).
        scale_gt: scalar or [B] labelled scale (camera units per canonical unit).
    """
    s = torch.as_tensor(scale_gt, dtype=t.dtype, device=t.device).detach().reshape(-1, 1)
    t_can = t_gt.detach().to(t.dtype) / s  # [B,3] canonical units
    rot = ((R - R_gt.detach().to(R.dtype)) ** 2).sum(dim=(1, 2)) / 8.0
    trans = torch.linalg.vector_norm(t - t_can, dim=-1) / t_can[:, 2].abs().clamp_min(1e-6)
    return (rot + trans).mean()


def synthetic_gt_correspondence_loss(
    match: Tensor,
    imatch: Tensor,
    vertices: Tensor,
    gt_coords: Tensor,
    gt_valid: Tensor,
    R_gt: Tensor,
    t_gt: Tensor,
    K_ndc: Tensor,
    scale_gt: Tensor | float = 1.0,
    visibility: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Supervised correspondence terms for ``--supervision synthetic-gt`` pre-training (ours).

    - match term: ``mean over valid cells || match - X_gt ||_2``, ``X_gt`` the ground-truth canonical
      coordinate of the surface seen in each cell (same frame and units as the prior vertices).
    - imatch term: ``mean_{b,n} || imatch_n - proj(s_gt * R_gt @ sg(v_n) + t_gt) ||_2 * sg(w_n)``: each
      predicted vertex projected with the ground-truth pose (``w`` = optional visibility, default 1).

    Detached: ``vertices``, ``gt_*``, ``visibility``. Gradient flows into ``match`` and ``imatch`` only.

    Args:
        match: [B,G,G,3] predicted canonical point per cell.
        imatch: [B,N,2] predicted NDC location per vertex.
        vertices: [B,N,3] predicted deformed mesh (canonical units).
        gt_coords: [B,G,G,3] ground-truth canonical coordinates per cell.
        gt_valid: [B,G,G] bool, cells where ``gt_coords`` is defined (object visible).
        R_gt: [B,3,3] ground-truth rotation canonical -> camera, column form.
        t_gt: [B,3] ground-truth translation (camera frame; same unit as ``scale_gt * canonical``).
        K_ndc: [B,3,3] NDC crop intrinsics.
        scale_gt: scalar or [B] ground-truth scale (camera units per canonical unit).
        visibility: [B,N] optional per-vertex weight.

    Returns:
        (match_term, imatch_term), two scalars.
    """
    valid = gt_valid.to(match.dtype)
    err = torch.linalg.vector_norm(match - gt_coords.detach().to(match.dtype), dim=-1)
    match_term = (err * valid).sum() / valid.sum().clamp(min=1.0)
    w = torch.ones_like(imatch[..., 0]) if visibility is None else visibility
    with torch.no_grad():
        s = torch.as_tensor(scale_gt, dtype=vertices.dtype, device=vertices.device)
        s = s.view(-1, 1, 1) if s.dim() > 0 else s
        p_cam = s * torch.einsum("bij,bnj->bni", R_gt.to(vertices), vertices) + t_gt.to(vertices).unsqueeze(1)
        target = project_ndc(p_cam, K_ndc.to(vertices))
    imatch_err = torch.linalg.vector_norm(imatch - target, dim=-1)
    imatch_term = (imatch_err * w.detach()).mean()
    return match_term, imatch_term
