"""Tests of cse_train.matchers: flow matcher on a known translation, the DINO pair selection, availability."""

from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch

from cse_train import losses as L
from cse_train import matchers as M

torch.set_num_threads(1)

S, GRID = 128, 32
HAS_TIMM = importlib.util.find_spec("timm") is not None
DINO_WEIGHTS = os.environ.get("CSE_DINO_WEIGHTS", "")


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture in [0,1], [size,size,3] float32."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2.0)
    return (img - img.min()) / (img.max() - img.min())


def _shifted_pair(dx: int, dy: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, tgt) [1,3,S,S] where the content at src pixel p appears at tgt pixel p + (dx, dy)."""
    big = _texture(S + 32, seed)
    o = 16
    src = big[o : o + S, o : o + S]
    tgt = big[o - dy : o - dy + S, o - dx : o - dx + S]

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]

    return to_t(src), to_t(tgt)


def _square_mask(lo: int = 24, hi: int = 104) -> torch.Tensor:
    m = torch.zeros(1, 1, S, S)
    m[..., lo:hi, lo:hi] = 1
    return m


@pytest.mark.parametrize("dx, dy", [(3, -2), (-5, 1), (0, 0)])
def test_flow_matcher_recovers_translation(dx, dy):
    src, tgt = _shifted_pair(dx, dy)
    mask = _square_mask()
    cells, xy, valid = M.FlowMatcher().match(src, tgt, mask, mask, k=200, grid=GRID)
    assert cells.shape == (1, 200) and cells.dtype == torch.long
    assert xy.shape == (1, 200, 2) and valid.shape == (1, 200) and valid.dtype == torch.bool
    assert valid.sum() >= 150
    expected = L.ndc_cell_centers(GRID)[cells[0]] - torch.tensor([dx, dy]) / (S / 2)
    err = (xy[0] - expected).abs().max(-1).values
    half_cell = 1.0 / GRID  # NDC: one cell = 2/GRID
    assert err[valid[0]].max() < half_cell
    # Every selected target cell is on the target mask.
    assert L.downsample_mask(mask, GRID).reshape(-1)[cells[0]].all()


def test_flow_matcher_pairs_feed_the_cross_cycle_loss():
    # One-cell shift (4 px): with one sharp vertex per source cell, following the vertex ids reproduces the
    # flow pairs exactly, so the loss is ~0; a wrong pairing is not.
    cell = S // GRID
    src, tgt = _shifted_pair(cell, 0, seed=1)
    mask = _square_mask()
    cells, xy, valid = M.FlowMatcher().match(src, tgt, mask, mask, k=200, grid=GRID)
    p = GRID * GRID
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    src_cell = (rows * GRID + cols).reshape(-1)
    keep = (cols < GRID - 1).reshape(-1)
    tgt_cell = src_cell + 1
    n = int(keep.sum())
    sim_src = torch.zeros(1, p, n).scatter_(1, src_cell[keep][None, None], 10.0)
    sim_tgt = torch.zeros(1, p, n).scatter_(1, tgt_cell[keep][None, None], 10.0)
    m_src = L.downsample_mask(mask, GRID)
    m_tgt = L.downsample_mask(torch.roll(mask, cell, dims=-1), GRID)
    vis = torch.ones(1, n)
    loss = L.cross_cycle_loss(sim_src, sim_tgt, m_src, m_tgt, vis, vis, cells, xy, valid)
    assert loss.item() < 1e-3
    wrong = L.cross_cycle_loss(sim_src, sim_tgt, m_src, m_tgt, vis, vis, cells, xy + 0.1, valid)
    assert wrong.item() > 0.05


def test_flow_matcher_batch_and_empty_target_mask():
    src, tgt = _shifted_pair(2, 2)
    mask = _square_mask()
    empty = torch.zeros_like(mask)
    src_b, tgt_b = torch.cat([src, src]), torch.cat([tgt, tgt])
    cells, xy, valid = M.FlowMatcher().match(src_b, tgt_b, torch.cat([mask, mask]), torch.cat([mask, empty]), k=50)
    assert cells.shape == (2, 50)
    assert valid[0].sum() > 40 and valid[1].sum() == 0  # nothing on an empty target mask is valid
    with pytest.raises(ValueError):
        M.FlowMatcher().match(src, tgt, mask, mask, k=GRID * GRID + 1, grid=GRID)


def test_select_cycle_consistent_on_shifted_features():
    # Random unit features; the target is the source moved down by one cell. Mutual nearest neighbours
    # are exact, so every selected pair has cycle distance 0 and the right source cell.
    g, c = 16, 32
    torch.manual_seed(0)
    f_src = torch.nn.functional.normalize(torch.randn(1, c, g, g), dim=1)
    f_tgt = torch.roll(f_src, 1, dims=2)
    m_src = torch.zeros(1, g, g, dtype=torch.bool)
    m_src[:, 2:12, 3:13] = True
    m_tgt = torch.roll(m_src, 1, dims=1)
    sim = torch.einsum("bcs,bct->bst", f_src.flatten(2), f_tgt.flatten(2))
    cells, xy, valid = M.select_cycle_consistent(sim, m_src.reshape(1, -1), m_tgt.reshape(1, -1), 60, g)
    assert valid.all()
    expected = L.ndc_cell_centers(g)[cells[0] - g]  # one row up in the source
    torch.testing.assert_close(xy[0], expected)
    # Off-mask target cells are never picked before on-mask ones.
    cells_all, _, valid_all = M.select_cycle_consistent(sim, m_src.reshape(1, -1), m_tgt.reshape(1, -1), 150, g)
    assert valid_all[0, :100].all() and not valid_all[0, 100:].any()


def test_build_matchers_without_dino():
    ms = M.build_matchers(None)
    assert isinstance(ms.cross_time, M.FlowMatcher) and ms.cross_instance is None
    assert not M.FlowMatcher.supports_cross_instance and M.DinoMatcher.supports_cross_instance


@pytest.mark.skipif(HAS_TIMM, reason="timm is installed here, so the missing-package error cannot be checked")
def test_dino_matcher_says_timm_is_missing(tmp_path):
    with pytest.raises(M.MatcherUnavailableError, match="timm"):
        M.DinoMatcher(tmp_path / "dino_deitsmall8_pretrain.pth")
    with pytest.raises(M.MatcherUnavailableError, match="timm"):
        M.build_matchers(tmp_path / "dino_deitsmall8_pretrain.pth")


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (needed for the DINO ViT-S/8 matcher)")
def test_dino_matcher_says_weights_missing(tmp_path):
    with pytest.raises(M.MatcherUnavailableError, match="weights"):
        M.DinoMatcher(tmp_path / "missing.pth")


@pytest.mark.skipif(
    not HAS_TIMM or not os.path.isfile(DINO_WEIGHTS),
    reason="needs timm and the DINO ViT-S/8 weights (set CSE_DINO_WEIGHTS=/path/dino_deitsmall8_pretrain.pth)",
)
def test_dino_matcher_recovers_translation():
    dx, dy = 8, -8  # one DINO patch at S = 256 / grid 32 is 8 px; at S = 128 resized to 256 it is 4 px
    src, tgt = _shifted_pair(dx, dy)
    mask = _square_mask()
    cells, xy, valid = M.DinoMatcher(DINO_WEIGHTS).match(src, tgt, mask, mask, k=200, grid=GRID)
    expected = L.ndc_cell_centers(GRID)[cells[0]] - torch.tensor([dx, dy]) / (S / 2)
    err = (xy[0] - expected).abs().max(-1).values
    assert valid.sum() > 100 and (err[valid[0]] < 2.0 / GRID).float().mean() > 0.8


def test_feature_matcher_on_shifted_features_and_its_options():
    # The network's own features, target = source moved down one cell (at a coarser grid than the matcher's,
    # resampled): the selected pairs point one cell up, as with DINO keys.
    g, c, s = 16, 32, 64
    torch.manual_seed(1)
    f_src = torch.randn(2, c, g, g) * 3.0  # any scale: normalised inside
    f_tgt = torch.roll(f_src, 1, dims=2)
    m_src = torch.zeros(2, 1, s, s)
    m_src[..., 8:48, 12:52] = 1
    m_tgt = torch.roll(m_src, s // g, dims=2)
    matcher = M.FeatureMatcher()
    assert matcher.supports_cross_instance and matcher.uses_model_features
    cells, xy, valid = matcher.match_features(f_src, f_tgt, m_src, m_tgt, k=60, grid=g)
    assert cells.shape == (2, 60) and valid.all()
    torch.testing.assert_close(xy, L.ndc_cell_centers(g)[cells - g])
    with pytest.raises(TypeError, match="match_features"):
        matcher.match(torch.zeros(1, 3, s, s), torch.zeros(1, 3, s, s), m_src[:1], m_tgt[:1])
    with pytest.raises(ValueError):
        matcher.match_features(f_src, f_tgt[:1], m_src, m_tgt)
    # options: features without weights; dino without weights refused; off; unknown refused
    ms = M.build_matchers(None, cross_instance="features")
    assert isinstance(ms.cross_instance, M.FeatureMatcher) and isinstance(ms.cross_time, M.FlowMatcher)
    assert M.build_matchers(None, cross_instance="off").cross_instance is None
    with pytest.raises(M.MatcherUnavailableError, match="dino"):
        M.build_matchers(None, cross_instance="dino")
    with pytest.raises(ValueError):
        M.build_matchers(None, cross_instance="clip")
    from cse_train.__main__ import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    choices = {name: next(a.choices for a in commands[name]._actions if a.dest == "cross_instance")
               for name in ("train", "adapt")}
    assert tuple(choices["train"]) == M.CROSS_INSTANCE_CHOICES and set(choices["adapt"]) < set(choices["train"])
