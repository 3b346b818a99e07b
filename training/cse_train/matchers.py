"""2-D matchers for the cross-instance / cross-time cycle loss (docs/reference.md §3.5 and §D7).

A matcher gives the backward (2-D) map of the 4-step cycle: for a (src, tgt) image pair it picks ``k`` target
grid cells and, for each, a matched source location. :func:`cse_train.losses.cross_cycle_loss` consumes the
result. Interface (:meth:`Matcher.match`)::

    tgt_cells  [B,k] long   row-major index of the target cell on the ``grid x grid`` matcher grid
    src_xy_ndc [B,k,2]      matched source location, NDC (x = column, y = row, cell j centre (j+.5)/(g/2)-1)
    valid      [B,k] bool   which pairs the loss may use

Implementations:

- :class:`DinoMatcher`: the reference's matcher, DINO ViT-S/8 keys of block 9 (frozen), mutual nearest
  neighbours with a round-trip check, the ``k`` most cycle-consistent target cells. Works for cross-time and
  cross-instance pairs. Needs the ``timm`` package and the ``dino_deitsmall8_pretrain.pth`` weights file.
- :class:`FlowMatcher`: weight-free fallback for **cross-time** pairs only (two frames of one video): OpenCV
  Farnebäck dense optical flow forward and backward, forward-backward cycle check, the ``k`` most
  cycle-consistent target cells on both masks.

- :class:`FeatureMatcher`: weight-free **cross-instance** matcher from the CSE network's *own* image features
  (detached; the reference's selection, :func:`select_cycle_consistent`). Ours, a deviation from the
  reference: its DINO features are fixed and were learned on ImageNet, ours are the ones being trained (the
  cycle check keeps only mutually consistent pairs, but a feature the network gets wrong on both instances
  can still be selected). For users without the DINO weights; opt in with ``train --cross-instance features``.

Optical flow does not relate two different objects. Without DINO (weights or ``timm`` missing) and without
``features``, the cross-instance cycle term is skipped: :func:`build_matchers` returns ``cross_instance=None``
to say so, and the train loop drops that term (cross-time still runs).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import downsample_mask, ndc_cell_centers

__all__ = [
    "CROSS_INSTANCE_CHOICES",
    "DinoMatcher",
    "FeatureMatcher",
    "FlowMatcher",
    "Matcher",
    "MatcherSet",
    "MatcherUnavailableError",
    "build_matchers",
    "select_cycle_consistent",
]

_FAR = 1e5  # cycle distance given to cells that cannot be selected (reference value)
#: ``build_matchers(cross_instance=...)`` values.
CROSS_INSTANCE_CHOICES: tuple[str, ...] = ("auto", "dino", "features", "off")


class MatcherUnavailableError(RuntimeError):
    """A matcher cannot be built here (missing package or weights file); the message says what is missing."""


class Matcher(ABC):
    """2-D (src, tgt) matcher; ``supports_cross_instance``: whether pairs of different objects are valid;
    ``uses_model_features``: it matches the network's own image features (:meth:`FeatureMatcher.match_features`,
    which the train loop calls instead of :meth:`match`)."""

    supports_cross_instance: bool = False
    uses_model_features: bool = False

    @abstractmethod
    def match(
        self,
        src_rgb: Tensor,
        tgt_rgb: Tensor,
        src_mask: Tensor,
        tgt_mask: Tensor,
        k: int = 200,
        grid: int = 32,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Select ``k`` target cells and their source locations.

        Args:
            src_rgb: [B,3,S,S] source crops in [0,1].
            tgt_rgb: [B,3,S,S] target crops in [0,1].
            src_mask: [B,1,S,S] source object masks (non-zero = object).
            tgt_mask: [B,1,S,S] target object masks.
            k: number of pairs per image pair (reference ``pretrain_k`` = 200).
            grid: matcher grid side (reference 32).

        Returns:
            (tgt_cells [B,k] long, src_xy_ndc [B,k,2] float32, valid [B,k] bool), on ``src_rgb.device``.
        """


def _check_inputs(src_rgb: Tensor, tgt_rgb: Tensor, src_mask: Tensor, tgt_mask: Tensor, k: int, grid: int) -> None:
    if src_rgb.dim() != 4 or src_rgb.shape != tgt_rgb.shape or src_rgb.shape[1] != 3:
        raise ValueError(
            f"src_rgb and tgt_rgb must both be [B,3,S,S], got {tuple(src_rgb.shape)}, {tuple(tgt_rgb.shape)}"
        )
    b, _, h, w = src_rgb.shape
    if h != w:
        raise ValueError(f"crops must be square, got {h}x{w}")
    for name, m in (("src_mask", src_mask), ("tgt_mask", tgt_mask)):
        if m.shape[0] != b or m.shape[-2:] != (h, w):
            raise ValueError(f"{name} must be [B,1,S,S] matching the crops, got {tuple(m.shape)}")
    if not 0 < k <= grid * grid:
        raise ValueError(f"k must be in [1, grid*grid={grid * grid}], got {k}")


def select_cycle_consistent(
    sim: Tensor, src_mask: Tensor, tgt_mask: Tensor, k: int, grid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's pair selection from a cell similarity (docs/reference.md §3.5).

    ``sim`` is masked to -1e5 unless both cells are on their objects; ``bw[t] = argmax_s sim[s, t]``,
    ``fw[s] = argmax_t sim[s, t]``; cycle distance ``|| grid[fw[bw[t]]] - grid[t] ||`` (NDC), 1e5 for target
    cells off the mask; the ``k`` target cells with the smallest distance are kept (no threshold).

    Args:
        sim: [B,p,p] similarity, ``sim[b, s, t]`` between source cell s and target cell t (p = grid*grid).
        src_mask: [B,p] bool, source cells on the object.
        tgt_mask: [B,p] bool, target cells on the object.
        k: pairs to keep.
        grid: grid side.

    Returns:
        (tgt_cells [B,k] long, src_xy_ndc [B,k,2] = grid[bw[t]], valid [B,k] = target cell on its mask and the
        source mask not empty).
    """
    both = src_mask.unsqueeze(2) & tgt_mask.unsqueeze(1)
    s = sim.masked_fill(~both, -_FAR)
    bw = s.argmax(dim=1)  # [B,p]: best src per tgt
    fw = s.argmax(dim=2)  # [B,p]: best tgt per src
    g = ndc_cell_centers(grid, device=sim.device, dtype=torch.float32)
    round_trip = torch.gather(fw, 1, bw)  # [B,p] tgt index after tgt -> src -> tgt
    dist = torch.linalg.vector_norm(g[round_trip] - g.unsqueeze(0), dim=-1)
    dist = dist.masked_fill(~tgt_mask, _FAR)
    tgt_cells = torch.topk(dist, k, dim=1, largest=False).indices  # [B,k]
    src_xy = g[torch.gather(bw, 1, tgt_cells)]
    valid = torch.gather(tgt_mask, 1, tgt_cells) & src_mask.any(dim=1, keepdim=True)
    return tgt_cells, src_xy, valid


class DinoMatcher(Matcher):
    """DINO ViT-S/8 matcher (the reference's, docs/reference.md §3.5).

    The crops are resized to ``8 * grid`` pixels (256 for grid 32, as the reference), fed **without** ImageNet
    normalisation (reference quirk; ``imagenet_normalize=True`` to change it), and the keys of block ``block``
    (6 heads x 64 = 384-d per patch, not normalised) give a ``grid x grid`` feature map. Pairs come from
    :func:`select_cycle_consistent` on the key dot products; masks are legacy-nearest downsampled.

    Args:
        weights_path: ``dino_deitsmall8_pretrain.pth`` (the official DINO ViT-S/8 backbone state dict).
        device: where the ViT runs.
        block: transformer block whose attention keys are used (reference 9).
        imagenet_normalize: normalise the input (the reference does not).
        chunk: images per ViT forward.

    Raises:
        MatcherUnavailableError: ``timm`` is not importable, or the weights file is missing/unreadable.
    """

    supports_cross_instance = True

    def __init__(
        self,
        weights_path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        block: int = 9,
        imagenet_normalize: bool = False,
        chunk: int = 64,
    ) -> None:
        try:
            import timm
        except ImportError as exc:
            raise MatcherUnavailableError(
                "DinoMatcher needs the Python package 'timm' (DINO ViT-S/8 backbone), which is not "
                "installed; install it (pip install timm) or train without the DINO matcher (cross-time "
                "pairs then use FlowMatcher and the cross-instance cycle term is skipped)"
            ) from exc
        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise MatcherUnavailableError(
                f"DinoMatcher needs the DINO ViT-S/8 weights file (dino_deitsmall8_pretrain.pth); not found: {path}"
            )
        self.device = torch.device(device)
        self.block = block
        self.imagenet_normalize = imagenet_normalize
        self.chunk = chunk
        model = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True)
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("teacher", "student", "model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        missing, _ = model.load_state_dict(state, strict=False)
        needed = [m for m in missing if m.startswith(("blocks.", "patch_embed.", "pos_embed", "cls_token"))]
        if needed:
            raise MatcherUnavailableError(f"{path} is not a DINO ViT-S/8 state dict (missing {needed[:4]} ...)")
        if block >= len(model.blocks):
            raise ValueError(f"block {block} out of range (model has {len(model.blocks)})")
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._keys: Tensor | None = None
        self.model.blocks[block].attn.qkv.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._keys = output

    @torch.no_grad()
    def features(self, rgb: Tensor, grid: int) -> Tensor:
        """Block-``block`` attention keys per patch: [B,3,S,S] in [0,1] -> [B,384,grid,grid]."""
        x = rgb.to(self.device, torch.float32)
        size = 8 * grid
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if self.imagenet_normalize:
            mean = x.new_tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            std = x.new_tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
            x = (x - mean) / std
        attn = self.model.blocks[self.block].attn
        heads = attn.num_heads
        prefix = getattr(self.model, "num_prefix_tokens", 1)
        out = []
        for start in range(0, x.shape[0], self.chunk):
            self.model.forward_features(x[start : start + self.chunk])
            qkv = self._keys
            assert qkv is not None
            b, tokens, _ = qkv.shape
            keys = qkv.reshape(b, tokens, 3, heads, -1)[:, :, 1].reshape(b, tokens, -1)[:, prefix:]
            out.append(keys.transpose(1, 2).reshape(b, -1, grid, grid))
        self._keys = None
        return torch.cat(out, 0)

    @torch.no_grad()
    def match(self, src_rgb, tgt_rgb, src_mask, tgt_mask, k=200, grid=32):
        _check_inputs(src_rgb, tgt_rgb, src_mask, tgt_mask, k, grid)
        b = src_rgb.shape[0]
        f_src = self.features(src_rgb, grid).flatten(2)  # [B,C,p]
        f_tgt = self.features(tgt_rgb, grid).flatten(2)
        sim = torch.einsum("bcs,bct->bst", f_src, f_tgt)
        m_src = downsample_mask(src_mask, grid).reshape(b, -1).to(sim.device)
        m_tgt = downsample_mask(tgt_mask, grid).reshape(b, -1).to(sim.device)
        cells, xy, valid = select_cycle_consistent(sim, m_src, m_tgt, k, grid)
        dev = src_rgb.device
        return cells.to(dev), xy.to(dev), valid.to(dev)


class FlowMatcher(Matcher):
    """Weight-free cross-time matcher from OpenCV Farnebäck dense optical flow (ours; no reference).

    Per pair (CPU, uint8 grey images): flow ``F_ts`` from target to source (target pixel ``p`` is seen at
    ``p + F_ts(p)`` in the source) and ``F_st`` back. Per target cell (block average of ``F_ts`` over the
    cell, i.e. the flow of the cell centre ``c``): source location ``q = c + F_ts(c)``, cycle error
    ``e = || q + F_st(q) - c ||`` in pixels (``F_st`` bilinearly sampled at q). The ``k`` target cells on the
    target mask with the smallest ``e`` are returned; a pair is valid when the target cell is on the target
    mask, ``q`` lies in the image and on the source mask (nearest), and ``e <= max_cycle_error_cells`` cells.

    Only for two frames of the same video (``supports_cross_instance = False``): flow does not relate two
    different objects, so cross-instance pairs have no weight-free matcher and that loss term is skipped.

    Args:
        max_cycle_error_cells: validity threshold on the forward-backward error, in grid cells (0.5 default).
        pyr_scale, levels, winsize, iterations, poly_n, poly_sigma: ``cv2.calcOpticalFlowFarneback`` settings.
    """

    supports_cross_instance = False

    def __init__(
        self,
        max_cycle_error_cells: float = 0.5,
        pyr_scale: float = 0.5,
        levels: int = 4,
        winsize: int = 15,
        iterations: int = 3,
        poly_n: int = 5,
        poly_sigma: float = 1.2,
    ) -> None:
        self.max_cycle_error_cells = max_cycle_error_cells
        self._params = (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, 0)

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Dense flow [S,S,2] (dx, dy) px such that pixel p of ``a`` is at ``p + flow(p)`` in ``b``."""
        return cv2.calcOpticalFlowFarneback(a, b, None, *self._params)

    @staticmethod
    def _gray(rgb: Tensor) -> np.ndarray:
        img = (rgb.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)

    def _pair(
        self, src: np.ndarray, tgt: np.ndarray, m_src: np.ndarray, m_tgt_grid: np.ndarray, grid: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pair -> (src location px [p,2], cycle error px [p], src location valid [p]) per target cell."""
        size = src.shape[0]
        flow_ts = self._flow(tgt, src)
        flow_st = self._flow(src, tgt)
        cell = size / grid
        centres = (np.arange(grid, dtype=np.float32) + 0.5) * cell - 0.5  # pixel-index coordinates
        cx, cy = np.meshgrid(centres, centres)  # [g,g], x = column
        f_cell = cv2.resize(flow_ts, (grid, grid), interpolation=cv2.INTER_AREA)  # block mean of the flow
        qx, qy = cx + f_cell[..., 0], cy + f_cell[..., 1]
        back = cv2.remap(
            flow_st,
            qx.astype(np.float32),
            qy.astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        err = np.hypot(qx + back[..., 0] - cx, qy + back[..., 1] - cy)
        inside = (qx >= -0.5) & (qx <= size - 0.5) & (qy >= -0.5) & (qy <= size - 0.5)
        ix = np.clip(np.rint(qx), 0, size - 1).astype(np.int64)
        iy = np.clip(np.rint(qy), 0, size - 1).astype(np.int64)
        on_src = inside & (m_src[iy, ix] > 0)
        q = np.stack([qx, qy], -1).reshape(-1, 2)
        return q, err.reshape(-1), on_src.reshape(-1) & m_tgt_grid.reshape(-1)

    @torch.no_grad()
    def match(self, src_rgb, tgt_rgb, src_mask, tgt_mask, k=200, grid=32):
        _check_inputs(src_rgb, tgt_rgb, src_mask, tgt_mask, k, grid)
        b, _, size, _ = src_rgb.shape
        m_tgt = downsample_mask(tgt_mask, grid).reshape(b, -1).cpu()
        m_src_full = (src_mask.reshape(b, size, size) > 0.5).cpu().numpy()
        max_err_px = self.max_cycle_error_cells * size / grid
        cells, xys, valids = [], [], []
        for i in range(b):
            q, err, ok = self._pair(
                self._gray(src_rgb[i]), self._gray(tgt_rgb[i]), m_src_full[i], m_tgt[i].numpy(), grid
            )
            dist = torch.from_numpy(np.where(m_tgt[i].numpy(), err, _FAR).astype(np.float32))
            sel = torch.topk(dist, k, largest=False).indices
            sel_np = sel.numpy()
            xy_ndc = (q[sel_np] + 0.5) / (size / 2.0) - 1.0
            cells.append(sel)
            xys.append(torch.from_numpy(xy_ndc.astype(np.float32)))
            valids.append(torch.from_numpy(ok[sel_np] & (err[sel_np] <= max_err_px)))
        dev = src_rgb.device
        return torch.stack(cells).to(dev), torch.stack(xys).to(dev), torch.stack(valids).to(dev)


class FeatureMatcher(Matcher):
    """Cross-instance matcher on the CSE network's own image features (ours; see the module docstring).

    Per pair: cosine similarity of the detached, unit-normalised per-cell image features (resampled bilinearly
    to the matcher grid when the network's grid differs), then the reference's mutual-nearest-neighbour cycle
    selection of the ``k`` most consistent target cells (:func:`select_cycle_consistent`).
    """

    supports_cross_instance = True
    uses_model_features = True

    def match(self, src_rgb, tgt_rgb, src_mask, tgt_mask, k=200, grid=32):
        raise TypeError("FeatureMatcher matches the network's own features: call match_features(f_src, f_tgt, ...)")

    @torch.no_grad()
    def match_features(
        self, f_src: Tensor, f_tgt: Tensor, src_mask: Tensor, tgt_mask: Tensor, k: int = 200, grid: int = 32
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Like :meth:`Matcher.match`, from features instead of crops.

        Args:
            f_src, f_tgt: [B,C,G,G] image features of the source and target crops (any scale; normalised here).
            src_mask, tgt_mask: [B,1,S,S] object masks of the crops.
            k, grid: as :meth:`Matcher.match`.
        """
        if f_src.dim() != 4 or f_src.shape != f_tgt.shape:
            raise ValueError(f"features must both be [B,C,G,G], got {tuple(f_src.shape)}, {tuple(f_tgt.shape)}")
        b = f_src.shape[0]
        if src_mask.shape[0] != b or tgt_mask.shape != src_mask.shape:
            raise ValueError(f"masks must be [B,1,S,S] for B={b}, got {tuple(src_mask.shape)}, {tuple(tgt_mask.shape)}")
        if not 0 < k <= grid * grid:
            raise ValueError(f"k must be in [1, grid*grid={grid * grid}], got {k}")
        feats = []
        for f in (f_src, f_tgt):
            f = f.detach().float()
            if f.shape[-1] != grid:
                f = F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
            feats.append(F.normalize(f.flatten(2), dim=1))  # [B,C,p]
        sim = torch.einsum("bcs,bct->bst", feats[0], feats[1])
        m_src = downsample_mask(src_mask, grid).reshape(b, -1).to(sim.device)
        m_tgt = downsample_mask(tgt_mask, grid).reshape(b, -1).to(sim.device)
        return select_cycle_consistent(sim, m_src, m_tgt, k, grid)


@dataclass(frozen=True)
class MatcherSet:
    """Matchers for the two pair kinds; ``cross_instance`` is None when that loss term must be skipped."""

    cross_time: Matcher
    cross_instance: Matcher | None


def build_matchers(dino_weights_path: str | os.PathLike[str] | None = None, device: str = "cpu",
                   cross_instance: str = "auto") -> MatcherSet:
    """The cross-time and cross-instance matchers.

    Cross-time: DINO when a weights path is given (the reference), else Farnebäck flow. Cross-instance
    (``cross_instance``): ``auto`` = DINO when a weights path is given, else none (the term is skipped);
    ``dino`` = DINO (needs the weights path); ``features`` = :class:`FeatureMatcher`; ``off`` = none.

    Raises:
        MatcherUnavailableError: DINO was asked for (a weights path, or ``dino``) but ``timm`` or the file is
            missing (an explicit request is not silently downgraded).
        ValueError: unknown ``cross_instance``.
    """
    if cross_instance not in CROSS_INSTANCE_CHOICES:
        raise ValueError(f"cross_instance must be one of {CROSS_INSTANCE_CHOICES}, got {cross_instance!r}")
    if cross_instance == "dino" and dino_weights_path is None:
        raise MatcherUnavailableError("cross_instance 'dino' needs the DINO ViT-S/8 weights file (--dino-weights)")
    dino = DinoMatcher(dino_weights_path, device=device) if dino_weights_path is not None else None
    instance: Matcher | None = {"auto": dino, "dino": dino, "features": FeatureMatcher(), "off": None}[cross_instance]
    return MatcherSet(cross_time=dino if dino is not None else FlowMatcher(), cross_instance=instance)
