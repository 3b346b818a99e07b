"""Architecture configuration of the CSE network (model facts only; loss weights live elsewhere).

Every size here comes from the reference implementation (docs/reference.md §1, §2.2–2.4, §3.6). Three named
presets exist:

- ``paper``: S = 256 crop, G = 64 correspondence grid (the published model).
- ``small``: S = 128 crop, G = 32 grid and a half-width ResNet-18 (channels 32-64-128-256; 3.8 M
  parameters instead of 14.6 M): CPU real time, and six categories fit the 60 MiB budget of ``models/``.
  It cannot load ImageNet ResNet-18 weights (those need the full widths of ``paper``).
- ``tiny``: ``small`` at a quarter of ResNet-18's widths (16-32-64-128; trunk 0.7 M parameters instead of 2.8 M),
  the student of ``cse_train.distill``: one crop's trunk ~0.6 instead of ~3 ms on one CPU thread.

Both keep S / G = 4, so the pixel features come from the stride-4 decoder level; any S / G in
{4, 8, 16, 32} is accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "CONFIGS",
    "ROTATION_OFFSETS",
    "ModelConfig",
    "config_from_dict",
    "get_config",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and constants of the CSE network.

    Attributes:
        name: preset name (free text for custom configs).
        crop_size: S, side of the square RGB crop in pixels (multiple of 32).
        grid_size: G, side of the correspondence grid (S / G must be 4, 8, 16 or 32).
        feat_dim: C, dimension of the pixel and vertex embeddings (``n_corr_feat``).
        code_dim: dimension of the shape code (``codedim``).
        tau: softmax temperature for both correspondence directions (``tau_img = tau_mesh``).
        mlp_hidden: width of the deformation MLP's first three layers.
        mlp_hidden2: width of the deformation MLP's fourth layer.
        deform_ratio: multiplier of the zero-mean offset, ``pred_v = mean_v + ratio * delta``.
        resnet_widths: channels of ResNet-18 layer1..layer4.
        resnet_blocks: BasicBlocks per ResNet stage.
        decoder_slope: LeakyReLU negative slope of the decoder and pose-head blocks.
        stn_hidden: width of the mesh encoder's STN point layer.
        pose_hidden: width of the pose regressor's rotation stack.
        pose_layers: number of Linear + LeakyReLU layers before the 6D output.
        depth_offset: added to the raw z translation (canonical units).
        trans_xy_scale: multiplier of the raw x, y translation.
        confidence_alpha: ``conf = exp(-alpha * e)`` with e in NDC.
        mask_fill: similarity given to cells outside the mask.
        imagenet_mean: RGB normalisation mean (inside the model/graph).
        imagenet_std: RGB normalisation std.
    """

    name: str = "paper"
    crop_size: int = 256
    grid_size: int = 64
    feat_dim: int = 64
    code_dim: int = 64
    tau: float = 10.0
    mlp_hidden: int = 256
    mlp_hidden2: int = 128
    deform_ratio: float = 1.0
    resnet_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    resnet_blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    decoder_slope: float = 0.1
    stn_hidden: int = 128
    pose_hidden: int = 128
    pose_layers: int = 3
    depth_offset: float = 5.0
    trans_xy_scale: float = 0.1
    confidence_alpha: float = 5.0
    mask_fill: float = -1e5
    imagenet_mean: tuple[float, float, float] = field(default=_IMAGENET_MEAN)
    imagenet_std: tuple[float, float, float] = field(default=_IMAGENET_STD)

    def __post_init__(self) -> None:
        # Normalise sequences to tuples (configs read back from checkpoints/JSON carry lists).
        for name in ("resnet_widths", "resnet_blocks", "imagenet_mean", "imagenet_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.crop_size <= 0 or self.crop_size % 32 != 0:
            raise ValueError(f"crop_size must be a positive multiple of 32, got {self.crop_size}")
        if self.grid_size <= 0 or self.crop_size % self.grid_size != 0:
            raise ValueError(f"grid_size {self.grid_size} must divide crop_size {self.crop_size}")
        if self.stride not in (4, 8, 16, 32):
            raise ValueError(f"crop_size / grid_size must be 4, 8, 16 or 32, got {self.stride}")
        if len(self.resnet_widths) != 4 or len(self.resnet_blocks) != 4:
            raise ValueError("resnet_widths and resnet_blocks need 4 entries (layer1..layer4)")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")

    @property
    def stride(self) -> int:
        """Downsampling factor S / G of the correspondence grid (the decoder output level)."""
        return self.crop_size // self.grid_size

    @property
    def num_cells(self) -> int:
        """P = G * G, number of correspondence cells."""
        return self.grid_size * self.grid_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict (tuples kept), suitable for checkpoints and JSON."""
        return asdict(self)


CONFIGS: dict[str, ModelConfig] = {
    "paper": ModelConfig(name="paper", crop_size=256, grid_size=64),
    "small": ModelConfig(name="small", crop_size=128, grid_size=32, resnet_widths=(32, 64, 128, 256)),
    "tiny": ModelConfig(name="tiny", crop_size=128, grid_size=32, resnet_widths=(16, 32, 64, 128)),
}

# Reference per-category 6D-rotation offsets (x_offset, y_offset) of the pose regressor (docs/reference.md §3.6).
# Categories without an entry (e.g. "can") use zeros.
ROTATION_OFFSETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "bottle": ((0.1, 0.0, 0.0), (0.0, 0.1, -0.1)),
    "bowl": ((0.2, 0.0, 0.0), (0.0, -0.2, 0.2)),
    "camera": ((0.2, 0.0, -0.1), (0.0, -0.2, 0.2)),
    "laptop": ((0.2, 0.0, 0.0), (0.0, -0.2, 0.2)),
    "mug": ((0.1, 0.0, 0.0), (0.0, -0.1, 0.1)),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """Return the named preset (``paper``, ``small`` or ``tiny``), optionally with fields replaced.

    Raises:
        KeyError: unknown preset name (the message lists the known ones).
    """
    try:
        cfg = CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}") from None
    return replace(cfg, **overrides) if overrides else cfg


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a :class:`ModelConfig` from :meth:`ModelConfig.to_dict` output; unknown keys are rejected."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    return ModelConfig(**data)
