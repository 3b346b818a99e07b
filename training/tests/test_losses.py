"""Tests of cse_train.losses and cse_train.weights: perfect cases, gradient routing, schedules, NaN guard."""

from __future__ import annotations

import math

import pytest
import torch

from cse_pose.core.errors import UnknownCategoryError
from cse_train import losses as L
from cse_train import weights as W
from cse_train.config import ROTATION_OFFSETS

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _axis_angle_to_R(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues, differentiable: [B,3] -> [B,3,3]."""
    theta = w.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    k = w / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).view(-1, 3, 3)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return torch.eye(3).expand_as(K) + s * K + (1 - c) * (K @ K)


def _box_mesh(sx: float = 1.0, sy: float = 1.0, sz: float = 1.0, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed box surface [-sx,sx]x[-sy,sy]x[-sz,sz] as a subdivided grid on each face (deduplicated)."""
    verts: list[tuple[float, float, float]] = []
    index: dict[tuple[int, int, int], int] = {}
    faces = []

    def vid(key: tuple[int, int, int]) -> int:
        if key not in index:
            index[key] = len(verts)
            verts.append((key[0] / n * 2 - 1, key[1] / n * 2 - 1, key[2] / n * 2 - 1))
        return index[key]

    for axis in range(3):
        for side in (0, n):
            a1, a2 = [a for a in range(3) if a != axis]
            for i in range(n):
                for j in range(n):
                    quad = []
                    for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
                        key = [0, 0, 0]
                        key[axis], key[a1], key[a2] = side, i + di, j + dj
                        quad.append(vid(tuple(key)))
                    faces.append((quad[0], quad[1], quad[2]))
                    faces.append((quad[0], quad[2], quad[3]))
    v = torch.tensor(verts) * torch.tensor([sx, sy, sz])
    return v, torch.tensor(faces)


def _prism_mesh(sides: int = 17, height: float = 1.0, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed regular prism about the y axis (sides-fold symmetric about y)."""
    ang = torch.arange(sides) * (2 * math.pi / sides)
    ring = torch.stack([radius * torch.cos(ang), torch.zeros(sides), radius * torch.sin(ang)], -1)
    bottom = ring - torch.tensor([0.0, height / 2, 0.0])
    top = ring + torch.tensor([0.0, height / 2, 0.0])
    v = torch.cat([bottom, top, torch.tensor([[0.0, -height / 2, 0.0], [0.0, height / 2, 0.0]])])
    cb, ct = 2 * sides, 2 * sides + 1
    faces = []
    for i in range(sides):
        j = (i + 1) % sides
        faces += [(i, j, sides + j), (i, sides + j, sides + i), (cb, j, i), (ct, sides + i, sides + j)]
    return v, torch.tensor(faces)


# ------------------------------------------------------------------------------------------------------------
# mask / texture / depth
# ------------------------------------------------------------------------------------------------------------


def test_mask_loss_zero_when_equal_positive_otherwise():
    m = (torch.rand(2, 32, 32, generator=_gen()) > 0.5).float()
    assert L.mask_loss(m, m).item() == 0.0
    assert L.mask_loss(m, m, reference_width_only=True).item() == 0.0
    alpha = (m * 0.7).requires_grad_()
    loss = L.mask_loss(alpha, m)
    assert loss.item() > 0
    loss.backward()
    assert alpha.grad.abs().sum() > 0


def test_mask_loss_two_d_pyramid_versus_reference_width_only():
    # Alternating rows vs constant 0.5: rows differ by 0.5 at full res; a 2-D 2x pool averages them away,
    # a width-only pool never does.
    alpha = torch.zeros(1, 16, 16)
    alpha[:, ::2] = 1.0
    mask = torch.full((1, 16, 16), 0.5)
    two_d = L.mask_loss(alpha, mask)
    width_only = L.mask_loss(alpha, mask, reference_width_only=True)
    assert two_d.item() == pytest.approx(0.2 * 0.25)  # only level 0 differs
    assert width_only.item() == pytest.approx(0.2 * 5 * 0.25)  # all 5 levels differ
    # Level 0 alone is the same for both.
    assert L.mask_loss(alpha, mask, num_levels=1).item() == pytest.approx(
        L.mask_loss(alpha, mask, num_levels=1, reference_width_only=True).item()
    )


def test_texture_loss_perfect_and_perturbed():
    rgb = torch.rand(2, 3, 16, 16, generator=_gen())
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:12, 4:12] = 1
    render = rgb * mask[:, None] + (1 - mask[:, None])  # white background
    assert L.texture_loss(rgb, mask, render, mask).item() == pytest.approx(0.0, abs=1e-7)
    render_p = (render + 0.1).requires_grad_()
    alpha_p = mask.clone().requires_grad_()
    loss = L.texture_loss(rgb, mask, render_p, alpha_p)
    assert loss.item() > 0
    loss.backward()
    assert render_p.grad.abs().sum() > 0 and alpha_p.grad.abs().sum() > 0


def test_depth_loss_scale_invariant_and_per_image_gamma():
    depth_gt = 0.5 + torch.rand(2, 16, 16, generator=_gen())  # metres
    mask = torch.zeros(2, 16, 16)
    mask[:, 3:13, 3:13] = 1
    alpha = mask.clone()
    # Rendered depth = per-image scale times the observation: zero loss with per-image gamma.
    scales = torch.tensor([3.0, 7.0]).view(2, 1, 1)
    render = scales * depth_gt * mask
    assert L.depth_loss(render, alpha, depth_gt, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert L.depth_loss(render, alpha, depth_gt * 1000.0, mask).item() == pytest.approx(0.0, abs=1e-6)  # mm
    # The reference's batch-wide gamma cannot fit two scales at once.
    assert L.depth_loss(render, alpha, depth_gt, mask, batch_gamma=True).item() > 1e-3
    # With one scale for the batch both agree (zero).
    same = 4.0 * depth_gt * mask
    assert L.depth_loss(same, alpha, depth_gt, mask, batch_gamma=True).item() == pytest.approx(0.0, abs=1e-6)
    # Wrong shape of the depth profile -> positive, gradient into the rendered depth.
    bumpy = (same + 0.5 * torch.rand(2, 16, 16, generator=_gen(1)) * mask).requires_grad_()
    loss = L.depth_loss(bumpy, alpha, depth_gt, mask)
    assert loss.item() > 0
    loss.backward()
    assert bumpy.grad.abs().sum() > 0
    # Invalid depth pixels (0) count exactly as pixels outside the mask.
    holes = depth_gt.clone()
    holes[:, 5:8, 5:8] = 0
    mask_holes = mask.clone()
    mask_holes[:, 5:8, 5:8] = 0
    with_holes = L.depth_loss(bumpy, alpha, holes, mask)
    assert with_holes.item() == pytest.approx(L.depth_loss(bumpy, alpha, depth_gt, mask_holes).item(), rel=1e-6)
    assert with_holes.item() != pytest.approx(loss.item(), rel=1e-3)


# ------------------------------------------------------------------------------------------------------------
# instance cycles
# ------------------------------------------------------------------------------------------------------------


def test_instance_cycle_2d3d_zero_when_consistent_and_moves_only_features():
    b, g, s, n = 2, 8, 32, 20
    vertices = torch.nn.Parameter(torch.randn(b, n, 3, generator=_gen()))
    feat = torch.nn.Parameter(torch.randn(b, g * g, n, generator=_gen(1)))
    match = (torch.softmax(5 * feat, -1) @ vertices.detach()).view(b, g, g, 3)
    # Perfect case: the render equals the nearest-upsampled match.
    up = match.detach().permute(0, 3, 1, 2).repeat_interleave(s // g, 2).repeat_interleave(s // g, 3)
    alpha = torch.ones(b, s, s)
    mask = torch.ones(b, s, s)
    assert L.instance_cycle_2d3d_loss(match, up, alpha, mask).item() == pytest.approx(0.0, abs=1e-7)
    # The render depends on the vertices (as a real render does); the loss must still not move them.
    render = up + vertices.mean(1)[:, :, None, None] * 0.3
    mask[:, :4] = 0  # masked-out pixels do not count
    loss = L.instance_cycle_2d3d_loss(match, render, alpha, mask)
    assert loss.item() > 0
    loss.backward()
    assert vertices.grad is None
    assert feat.grad is not None and feat.grad.abs().sum() > 0


def test_instance_cycle_3d2d_zero_on_projection_and_moves_pose_not_vertices():
    b, n = 2, 30
    vertices = torch.nn.Parameter(torch.randn(b, n, 3, generator=_gen()) * 0.3)
    w_rot = torch.nn.Parameter(torch.tensor([[0.1, 0.2, -0.3], [0.0, -0.4, 0.1]]))
    t = torch.nn.Parameter(torch.tensor([[0.05, -0.02, 4.0], [0.1, 0.0, 5.0]]))
    vis = torch.nn.Parameter(torch.rand(b, n, generator=_gen(2)))
    K = torch.tensor([[2.0, 0, 0.1], [0, 2.0, -0.05], [0, 0, 1]]).expand(b, 3, 3)
    R = _axis_angle_to_R(w_rot)
    with torch.no_grad():
        p = torch.einsum("bij,bnj->bni", R, vertices) + t[:, None]
        proj = torch.stack([2.0 * p[..., 0] / p[..., 2] + 0.1, 2.0 * p[..., 1] / p[..., 2] - 0.05], -1)
    assert L.instance_cycle_3d2d_loss(proj, vertices, R, t, K, vis).item() == pytest.approx(0.0, abs=1e-6)
    imatch = torch.nn.Parameter(proj + 0.05)
    loss = L.instance_cycle_3d2d_loss(imatch, vertices, _axis_angle_to_R(w_rot), t, K, vis)
    assert loss.item() > 0
    loss.backward()
    assert vertices.grad is None and vis.grad is None
    assert w_rot.grad.abs().sum() > 0 and t.grad.abs().sum() > 0 and imatch.grad.abs().sum() > 0
    # Invisible vertices do not count.
    zero_vis = torch.zeros(b, n)
    assert L.instance_cycle_3d2d_loss(imatch, vertices, R, t, K, zero_vis).item() == 0.0


# ------------------------------------------------------------------------------------------------------------
# cross cycle and rotation cycle
# ------------------------------------------------------------------------------------------------------------


def _one_hot_sim(cells_of_vertex: torch.Tensor, p: int, value: float = 10.0) -> torch.Tensor:
    """[B,N] cell index per vertex -> similarity [B,p,N] = value at (cell, vertex), 0 elsewhere."""
    b, n = cells_of_vertex.shape
    sim = torch.zeros(b, p, n)
    sim.scatter_(1, cells_of_vertex[:, None, :], value)
    return sim


def test_cross_cycle_zero_for_consistent_shifted_pair_positive_otherwise():
    b, g, k = 2, 8, 10
    p = g * g
    grid_xy = L.ndc_cell_centers(g)
    # One vertex per src cell (vertex id = src cell); in tgt the object moved one cell right.
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    src_cell = (rows * g + cols).reshape(-1)
    tgt_cell = (rows * g + (cols + 1).clamp(max=g - 1)).reshape(-1)
    keep = (cols < g - 1).reshape(-1)  # vertices whose shifted cell exists
    n = int(keep.sum())
    sim_src = torch.nn.Parameter(_one_hot_sim(src_cell[keep].expand(b, n), p))
    sim_tgt = torch.nn.Parameter(_one_hot_sim(tgt_cell[keep].expand(b, n), p))
    mask_src = torch.zeros(b, g, g, dtype=torch.bool)
    mask_src[:, :, : g - 1] = True
    mask_tgt = torch.zeros(b, g, g, dtype=torch.bool)
    mask_tgt[:, :, 1:] = True
    vis = torch.nn.Parameter(torch.ones(b, n))
    chosen = torch.randperm(n, generator=_gen())[:k]
    tgt_cells = tgt_cell[keep][chosen].expand(b, k)
    src_xy = grid_xy[src_cell[keep][chosen]].expand(b, k, 2)
    valid = torch.ones(b, k, dtype=torch.bool)
    args = (mask_src, mask_tgt, vis, vis, tgt_cells)
    perfect = L.cross_cycle_loss(sim_src, sim_tgt, *args, src_xy, valid)
    assert perfect.item() < 1e-3
    wrong = L.cross_cycle_loss(sim_src, sim_tgt, *args, src_xy + 0.25, valid)
    assert wrong.item() == pytest.approx(0.25 * math.sqrt(2), abs=2e-3)
    wrong.backward()
    assert sim_src.grad.abs().sum() > 0 and sim_tgt.grad.abs().sum() > 0
    assert vis.grad is None
    # Invalid pairs do not count; invisible vertices give no path (loss = |0 - src_xy| at most).
    assert L.cross_cycle_loss(sim_src, sim_tgt, *args, src_xy + 0.25, ~valid).item() == 0.0


def test_cross_cycle_resamples_model_grid_to_matcher_grid():
    # Model grid 8 -> matcher grid 4: a vertex sharp on a 2x2 block stays sharp after bilinear downsampling.
    b, gm, g = 1, 8, 4
    n = g * g
    big = torch.zeros(b, gm * gm, n)
    for v in range(n):
        r, c = divmod(v, g)
        for dr in (0, 1):
            for dc in (0, 1):
                big[0, (2 * r + dr) * gm + 2 * c + dc, v] = 10.0
    mask = torch.ones(b, g, g, dtype=torch.bool)
    vis = torch.ones(b, n)
    cells = torch.arange(n)[None]
    xy = L.ndc_cell_centers(g)[None]
    loss = L.cross_cycle_loss(big, big, mask, mask, vis, vis, cells, xy, torch.ones(b, n, dtype=torch.bool))
    assert loss.item() < 1e-3


def test_rotate_image_and_mask_matches_rot90():
    rgb = torch.rand(2, 3, 12, 12, generator=_gen())
    mask = (torch.rand(2, 1, 12, 12, generator=_gen(1)) > 0.5).float()
    for k in (1, 2, 3):
        r, m = L.rotate_image_and_mask(rgb, mask, k * math.pi / 2)
        torch.testing.assert_close(r, torch.rot90(rgb, k, dims=(2, 3)), atol=1e-5, rtol=0)
        torch.testing.assert_close(m, torch.rot90(mask, k, dims=(2, 3)), atol=0, rtol=0)
    r0, m0 = L.rotate_image_and_mask(rgb, mask[:, 0], 0.0)
    torch.testing.assert_close(r0, rgb, atol=1e-6, rtol=0)
    assert m0.shape == (2, 12, 12)
    # A 45-degree turn leaves the corners empty (zero padding).
    r45, _ = L.rotate_image_and_mask(torch.ones(1, 3, 12, 12), mask[:1], math.pi / 4)
    assert r45[0, :, 0, 0].abs().max() == 0 and r45[0, :, 6, 6].min() > 0.99


def test_rotation_cycle_zero_for_true_rotation_positive_for_wrong_angle():
    g = 8
    p = g * g
    b = 2
    feat = torch.eye(p).view(1, p, g, g).expand(b, p, g, g).clone()  # one-hot positional features
    feat_src = torch.nn.Parameter(feat)
    mask = torch.zeros(b, 1, g, g)
    mask[:, :, 1:7, 2:6] = 1
    angle = math.pi / 2
    feat_rot_t = torch.rot90(feat, 1, dims=(2, 3))
    feat_rot = torch.nn.Parameter(feat_rot_t)
    _, mask_rot = L.rotate_image_and_mask(torch.zeros(b, 3, g, g), mask, angle)
    ok = L.rotation_cycle_loss(feat_src, feat_rot, mask, mask_rot, angle, tau=50.0, grid=g)
    assert ok.item() < 1e-6
    bad = L.rotation_cycle_loss(feat_src, feat_rot, mask, mask_rot, -angle, tau=50.0, grid=g)
    assert bad.item() > 0.1
    bad.backward()
    assert feat_src.grad.abs().sum() > 0 and feat_rot.grad.abs().sum() > 0

    # Non-right angles, features nearest-downsampled from a 2x finer grid (as 64 -> 32 in the reference).
    def up(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(2, 2).repeat_interleave(2, 3)

    ang = torch.tensor([0.3, -1.1])
    src_img = up(torch.eye(p).view(1, p, g, g)).expand(b, p, 2 * g, 2 * g).contiguous()
    rot_img, mask_rot2 = L.rotate_image_and_mask(src_img, up(mask), ang)
    true = L.rotation_cycle_loss(src_img, rot_img, up(mask), mask_rot2, ang, tau=50.0, grid=g)
    wrong = L.rotation_cycle_loss(src_img, rot_img, up(mask), mask_rot2, -ang, tau=50.0, grid=g)
    # Bilinear blur and the top-left nearest downsampling leave a sub-cell residual (one cell = 2/g NDC).
    assert true.item() < 0.5 * 2.0 / g
    assert wrong.item() > 3 * true.item()


# ------------------------------------------------------------------------------------------------------------
# symmetry, laplacian, deformation, pull-far
# ------------------------------------------------------------------------------------------------------------


def test_symmetry_transforms_per_category():
    for cat in ("bottle", "bowl", "can"):
        t = L.symmetry_transforms(cat)
        assert t.shape == (17, 3, 3)
        torch.testing.assert_close(t[0], torch.eye(3))
        torch.testing.assert_close(t[:, 1], torch.tensor([0.0, 1.0, 0.0]).expand(17, 3))  # y fixed
        torch.testing.assert_close(t @ t.transpose(1, 2), torch.eye(3).expand(17, 3, 3), atol=1e-6, rtol=0)
        assert torch.allclose(torch.linalg.det(t), torch.ones(17), atol=1e-6)
    for cat in ("laptop", "mug"):
        t = L.symmetry_transforms(cat)
        torch.testing.assert_close(t, torch.stack([torch.eye(3), torch.diag(torch.tensor([-1.0, 1, 1]))]))
    torch.testing.assert_close(L.symmetry_transforms("camera"), torch.eye(3)[None])
    with pytest.raises(UnknownCategoryError):
        L.symmetry_transforms("teapot")


def test_surface_sampling_is_area_weighted_and_on_surface():
    # Two triangles in the z=0 plane with areas 1 and 3.
    v = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [3, 0, 0], [3, 2, 0], [0, 0, 0]]])
    v[0, 3:] = torch.tensor([[10.0, 0, 0], [13, 0, 0], [10, 2, 0]])  # second triangle: area 3
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    pts = L.sample_surface_points(v, f, 20000, generator=_gen())
    frac_second = (pts[0, :, 0] >= 10).float().mean().item()
    assert frac_second == pytest.approx(0.75, abs=0.02)
    assert pts[0, :, 2].abs().max() == 0
    first = pts[0, pts[0, :, 0] < 10]
    assert (first[:, 0] >= 0).all() and (first[:, 1] >= 0).all() and (first[:, 0] + first[:, 1] / 2 <= 1 + 1e-6).all()


def test_symmetry_loss_floor_for_symmetric_mesh_and_gradient():
    v, f = _prism_mesh(17)
    v = v[None]
    rot = L.symmetry_transforms("bottle")
    sym = L.symmetry_loss(v, f, rot, num_samples=4000, generator=_gen())
    floor = L.symmetry_loss(v, f, torch.eye(3)[None], num_samples=4000, generator=_gen(1))
    # Symmetric: the rotated samples lie on the same surface -> same floor as the identity alone.
    assert sym.item() < 2.0 * floor.item() + 1e-4
    # Break the symmetry: push one side outwards.
    v_bad = v.clone()
    v_bad[0, v_bad[0, :, 0] > 0.5, 0] += 0.6
    asym = L.symmetry_loss(v_bad, f, rot, num_samples=4000, generator=_gen())
    assert asym.item() > 10 * sym.item()
    # Mirror symmetry: a box is mirror-x symmetric; a box with one corner pulled out is not.
    bv, bf = _box_mesh(0.5, 1.0, 0.7)
    mir = L.symmetry_transforms("mug")
    ok = L.symmetry_loss(bv[None], bf, mir, num_samples=4000, generator=_gen())
    bad_v = torch.nn.Parameter(bv[None].clone())
    with torch.no_grad():
        bad_v[0, (bv[:, 0] > 0.4) & (bv[:, 1] > 0.9)] += torch.tensor([0.5, 0.0, 0.0])
    bad = L.symmetry_loss(bad_v, bf, mir, num_samples=4000, generator=_gen())
    assert bad.item() > 5 * ok.item()
    bad.backward()
    assert bad_v.grad.abs().sum() > 0


def test_symmetry_loss_batch_chunking_matches_unchunked():
    v, f = _prism_mesh(9)
    vb = torch.stack([v, v * 1.2, v + 0.1])
    rot = L.symmetry_transforms("bowl")[:3]
    a = L.symmetry_loss(vb, f, rot, num_samples=500, generator=_gen(3))
    b = L.symmetry_loss(vb, f, rot, num_samples=500, generator=_gen(3), max_pair_elements=1)
    torch.testing.assert_close(a, b)


def test_uniform_laplacian_and_loss():
    # Tetrahedron: every vertex neighbours the other three.
    v = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    lap = L.uniform_laplacian(f, 4)
    torch.testing.assert_close(lap.sum(1), torch.zeros(4))
    torch.testing.assert_close(torch.diagonal(lap), torch.ones(4))
    assert lap[0, 1].item() == pytest.approx(-1 / 3)
    # Centroid 0 -> L v_i = 4/3 v_i; sum of squares = 16/9 * 12; times N/64 = 4/64.
    expected = 4 / 64 * 16 / 9 * 12
    assert L.laplacian_loss(v[None], lap).item() == pytest.approx(expected, rel=1e-6)
    assert L.laplacian_loss(v[None] + 3.0, lap).item() == pytest.approx(expected, rel=1e-5)  # translation
    assert L.laplacian_loss(torch.full((1, 4, 3), 2.0), lap).item() == pytest.approx(0.0, abs=1e-10)
    # Smooth vs noisy box surface.
    bv, bf = _box_mesh(n=4)
    lap_b = L.uniform_laplacian(bf, bv.shape[0])
    noisy = bv + 0.1 * torch.randn(bv.shape, generator=_gen())
    assert L.laplacian_loss(noisy[None], lap_b) > L.laplacian_loss(bv[None], lap_b)
    # Relative to a rest shape: the rest shape itself (sharp box corners) costs nothing, a rough change does.
    assert L.laplacian_loss(bv[None], lap_b) > 0
    assert L.laplacian_loss(bv[None], lap_b, rest_vertices=bv).item() == pytest.approx(0.0, abs=1e-12)
    assert L.laplacian_loss(noisy[None], lap_b, rest_vertices=bv) > 0


def test_deformation_and_pull_far():
    mean_v = torch.randn(5, 3, generator=_gen())
    assert L.deformation_loss(mean_v.expand(2, 5, 3), mean_v).item() == 0.0
    pred = mean_v.expand(2, 5, 3).clone()
    pred[0, 0, 0] += 2.0  # smooth-L1 (beta 1): 2 - 0.5 = 1.5
    assert L.deformation_loss(pred, mean_v).item() == pytest.approx(1.5 / 30)
    t = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.5]])
    assert L.pull_far_loss(t[:1]).item() == 0.0
    assert L.pull_far_loss(t).item() == pytest.approx(0.25)


def test_synthetic_gt_correspondence_loss():
    b, g, n = 2, 4, 10
    vertices = torch.nn.Parameter(torch.randn(b, n, 3, generator=_gen()) * 0.3)
    gt = torch.randn(b, g, g, 3, generator=_gen(1))
    valid = torch.rand(b, g, g, generator=_gen(2)) > 0.3
    R = _axis_angle_to_R(torch.tensor([[0.2, 0.1, 0.0], [0.0, 0.3, -0.2]]))
    t = torch.tensor([[0.0, 0.0, 0.8], [0.05, 0.0, 1.0]])  # metres
    s = torch.tensor([0.1, 0.15])
    K = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 1]]).expand(b, 3, 3)
    p = s.view(b, 1, 1) * torch.einsum("bij,bnj->bni", R, vertices.detach()) + t[:, None]
    target = L.project_ndc(p, K)
    m0, i0 = L.synthetic_gt_correspondence_loss(gt.clone(), target.clone(), vertices, gt, valid, R, t, K, s)
    assert m0.item() == pytest.approx(0.0, abs=1e-7) and i0.item() == pytest.approx(0.0, abs=1e-6)
    match = torch.nn.Parameter(gt + 0.1)
    imatch = torch.nn.Parameter(target + 0.1)
    m1, i1 = L.synthetic_gt_correspondence_loss(match, imatch, vertices, gt, valid, R, t, K, s)
    assert m1.item() == pytest.approx(0.1 * math.sqrt(3), rel=1e-5)
    assert i1.item() == pytest.approx(0.1 * math.sqrt(2), rel=1e-5)
    (m1 + i1).backward()
    assert vertices.grad is None
    assert match.grad.abs().sum() > 0 and imatch.grad.abs().sum() > 0
    assert match.grad[~valid].abs().sum() == 0  # invalid cells carry no gradient


# ------------------------------------------------------------------------------------------------------------
# weights.py
# ------------------------------------------------------------------------------------------------------------


def test_category_table_matches_the_reference():
    cfg = {c: W.category_config(c) for c in W.CATEGORIES}
    assert cfg["bottle"].weights.cross_cycle == 0.05 and cfg["bowl"].weights.cross_cycle == 0.005
    assert cfg["laptop"].weights.rotation_cycle == 0.01 and cfg["camera"].weights.rotation_cycle == 0.02
    assert cfg["mug"].vert_lr_ratio == 0.01 and cfg["bowl"].cam_lr_ratio == 0.2
    assert not hasattr(cfg["camera"], "rotation_offset")  # single source: cse_train.config.ROTATION_OFFSETS
    assert ROTATION_OFFSETS["camera"] == ((0.2, 0.0, -0.1), (0.0, -0.2, 0.2))
    assert cfg["can"].weights == cfg["bottle"].weights and cfg["can"].settings_from == "bottle"
    assert cfg["can"].symmetry == "y" and cfg["mug"].symmetry == "mirror_x" and cfg["camera"].symmetry is None
    for c in W.CATEGORIES:
        w = cfg[c].weights
        assert (w.mask, w.texture, w.depth, w.symmetry, w.laplacian, w.deform, w.pull_far) == (
            0.15,
            0.05,
            0.1,
            0.5,
            0.002,
            0.4,
            0.01,
        )
        assert L.SYMMETRY_TYPES[c] == cfg[c].symmetry
    with pytest.raises(UnknownCategoryError):
        W.category_config("teapot")
    lrs = W.param_group_lrs("laptop")
    assert lrs["mean_v"] == pytest.approx(1e-6) and lrs["backbone"] == 1e-4 and set(lrs) == set(W.PARAM_GROUPS)


def test_schedules_end_points():
    total = 20000
    for c in W.CATEGORIES:
        peak = W.category_config(c).weights.as_dict()
        w0, w_end, w_mid = W.weights_at(c, 0, total), W.weights_at(c, total, total), W.weights_at(c, total // 2, total)
        assert set(w0) == set(W.LOSS_NAMES)
        for k, w in peak.items():
            if k in W.DECAYING:
                assert (w0[k], w_end[k]) == (pytest.approx(w), pytest.approx(0.1 * w))
            elif k in W.RISING:
                assert (w0[k], w_end[k]) == (pytest.approx(0.1 * w), pytest.approx(w))
            else:
                assert w0[k] == w_end[k] == w_mid[k] == w
            assert w_mid[k] == pytest.approx(0.55 * w) or k not in W.DECAYING + W.RISING
    assert W.weights_at("mug", 10 * total, total)["symmetry"] == pytest.approx(0.05)  # clamped past the end


def test_onecycle_kwargs_build_a_scheduler():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in W.PARAM_GROUPS]
    lrs = W.param_group_lrs("bowl")
    opt = torch.optim.AdamW(
        [{"params": [p], "lr": lrs[n], "name": n} for p, n in zip(params, W.PARAM_GROUPS, strict=True)],
        betas=W.OPTIM.betas,
        weight_decay=W.OPTIM.weight_decay,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, **W.onecycle_kwargs(100, [lrs[n] for n in W.PARAM_GROUPS]))
    assert opt.param_groups[4]["lr"] == pytest.approx(1e-4 / 25)
    for _ in range(99):
        opt.step()
        sched.step()
    assert opt.param_groups[4]["lr"] == pytest.approx(1e-4 / 625, rel=1e-3)


def test_clip_gradients_per_group():
    mean_v = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    shape = [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))]
    pose = [torch.nn.Parameter(torch.zeros(2))]
    feats = [torch.nn.Parameter(torch.zeros(5))]
    for p in mean_v + shape + pose + feats:
        p.grad = torch.full_like(p, 3.0)
    norms = W.clip_gradients({"mean_v": mean_v, "shape": shape, "pose": pose, "features": feats})
    for p in mean_v:
        assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)  # each separately
    assert torch.cat([p.grad for p in shape]).norm().item() == pytest.approx(1.0, rel=1e-5)  # jointly
    assert pose[0].grad.norm().item() == pytest.approx(0.1, rel=1e-5)
    assert feats[0].grad.norm().item() == pytest.approx(3.0 * math.sqrt(5))  # untouched
    assert norms["shape"] == pytest.approx(3.0 * math.sqrt(8), rel=1e-5)
    # The optimizer.param_groups form (dicts with "name") works too.
    pose[0].grad = torch.full((2,), 3.0)
    W.clip_gradients([{"name": "pose", "params": pose}])
    assert pose[0].grad.norm().item() == pytest.approx(0.1, rel=1e-5)


def test_nan_guard_zeroes_all_grads():
    a, b, c = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    a.grad, b.grad = torch.ones(3), torch.tensor([1.0, float("nan"), 2.0])
    assert W.nan_guard([a, b, c]) is True
    assert a.grad.abs().sum() == 0 and b.grad.abs().sum() == 0 and c.grad is None
    a.grad = torch.ones(3)
    assert W.nan_guard(iter([a, b])) is False
    assert a.grad.sum() == 3
    b.grad = torch.tensor([float("inf"), 0.0, 0.0])
    assert W.nan_guard([a, b]) is True and a.grad.sum() == 0


def test_pose_head_gt_loss_is_zero_at_the_label_and_measures_angle_and_relative_offset():
    c, s_ = math.cos(math.radians(60.0)), math.sin(math.radians(60.0))
    R_gt = torch.eye(3).expand(2, 3, 3).clone()
    t_gt = torch.tensor([[0.0, 0.0, 0.6], [0.1, 0.0, 0.8]])  # metres
    scale = torch.tensor([0.05, 0.1])  # metres per canonical unit
    t_head = t_gt / scale[:, None]
    assert float(L.pose_head_gt_loss(R_gt.clone(), t_head.clone(), R_gt, t_gt, scale)) < 1e-9
    R = R_gt.clone()
    R[0] = torch.tensor([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])  # 60 deg: (1 - cos) / 2 = 0.25
    t = t_head.clone()
    t[1, 0] += 0.8  # 0.8 canonical units off at a labelled depth of 8 units: 0.1
    loss = L.pose_head_gt_loss(R.requires_grad_(), t.requires_grad_(), R_gt, t_gt, scale)
    torch.testing.assert_close(loss, torch.tensor((0.25 + 0.1) / 2))
    loss.backward()
    assert R.grad is not None and t.grad is not None and float(t.grad[0].abs().sum()) == 0.0
