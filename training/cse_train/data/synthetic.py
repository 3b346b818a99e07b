"""Synthetic object-centric RGB-D videos of the six categories (numpy + OpenCV; no torch import).

A scene is one target object (a procedural shape of the category from ``core.priors.build_shape``, with
shape parameters sampled from ``SHAPE_PARAM_RANGES``) standing on a textured table in a room, with 0-3
distractors (other categories, boxes or cylinders) placed without interpenetration and sometimes in
front of the target. A hand-held camera orbits the target (elevation 15-60 deg, radius 0.35-0.9 m
scaled to the object's size, smooth jitter of look-at point, radius, elevation and roll) for 20-60
frames. Each frame has an RGB image (procedural solid textures, Lambertian + ambient + a little specular
shading from a random directional light, blur and noise), a depth image with sensor-like noise
(sigma ~ z^2, e.g. 1.5 mm at 0.5 m) and holes (dropout blobs, grazing angles, depth edges, far range;
invalid = 0), an instance mask (0 background, 1 target, 2.. distractors), the intrinsics, and the ground
truth (evaluation only) of every instance.

Frames. World: y up, table top at y = 0, target box centre above the world origin. Object frame = the
frame ``build_shape`` uses (published NOCS-style frame: y up, origin at the box centre). Camera: OpenCV
optical frame. Ground truth per instance: ``p_cam = R @ p_obj + t`` (t = box centre, metres), ``size`` =
box extents (metres).

Splits. Every shape-parameter range is cut into ``N_BANDS`` interleaved bands, each owned by one split
(:func:`param_bands`), so the shapes of ``train``, ``val`` and ``test`` never share a parameter value;
texture seeds are disjoint too (``texture_seed % 3`` = split index).

Shape modes (:data:`SHAPE_MODES`). ``band``: the split's bands of ``SHAPE_PARAM_RANGES`` (the shipped
models' training and ``make eval``'s first splits). ``wide``: the real-world ranges ``SHAPE_PARAM_WIDE``,
whose extensions below and above each band range are cut into interleaved bands the same way, so the splits
stay disjoint. ``outside``: as ``wide`` with at least one parameter in an extension band: shapes no
``band``-trained model has seen (``make eval``'s ``wide`` split).

Determinism: everything is a function of (category, split, seed, shape mode) and the frame index.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cse_pose.core.categories import CATEGORIES, check_category
from cse_pose.core.raster import RasterMesh, rasterize
from cse_train.shapes import SHAPE_PARAM_RANGES, SHAPE_PARAM_WIDE, Mesh, build_shape

from . import wild6d_format as fmt

__all__ = [
    "HANDLE_MIN_FRACTION",
    "HANDLE_MIN_PIXELS",
    "N_BANDS",
    "REF_SIZE",
    "SHAPE_MODES",
    "SPLITS",
    "TEXTURE_FAMILIES",
    "Frame",
    "SceneSpec",
    "extension_bands",
    "generate",
    "param_bands",
    "render_frame",
    "sample_scene",
    "split_of_param",
    "texture_albedo",
    "video_seed",
    "write_list_file",
    "write_video",
]

#: Reference resolution of the sampled intrinsics (fx, fy in 500-620 px at 640 x 480).
REF_SIZE: tuple[int, int] = (640, 480)
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: How shape parameters are drawn (module docstring): the band ranges, the real-world ranges, or outside the band.
SHAPE_MODES: tuple[str, ...] = ("band", "wide", "outside")
#: Bands per shape-parameter range and the split owning each (train 60 %, val 20 %, test 20 %).
N_BANDS = 10
_BAND_OWNER: tuple[str, ...] = ("train", "val", "train", "test", "train", "train", "test", "train", "val", "train")
TEXTURE_FAMILIES: tuple[str, ...] = ("stripes", "checks", "noise", "solid_noise")
#: Raster instance ids of the environment (mapped to 0 in the instance mask).
_TABLE_ID, _ROOM_ID = 1000, 1001
#: Angular resolution of revolved parts of rendered shapes (~1,500-2,800 faces per object).
_RENDER_RESOLUTION = 64
_ELEVATION_RANGE_DEG = (15.0, 60.0)
_RADIUS_RANGE_M = (0.35, 0.9)
#: A mug's handle is visible when at least this fraction of the mug's visible pixels, and at least
#: ``HANDLE_MIN_PIXELS`` (at 640 x 480, scaled with the image area), belong to the handle.
HANDLE_MIN_FRACTION = 0.01
HANDLE_MIN_PIXELS = 20
#: Surface points farther than this (metres) outside the mug body's radius belong to the handle.
_HANDLE_MARGIN_M = 5e-4


# ----------------------------------------------------------------------------------------------------------
# Splits of the shape parameters
# ----------------------------------------------------------------------------------------------------------


def _owned_bands(lo: float, hi: float, split: str) -> list[tuple[float, float]]:
    """The bands of [lo, hi] (cut into ``N_BANDS``, owners ``_BAND_OWNER``) that ``split`` owns."""
    edges = np.linspace(lo, hi, N_BANDS + 1)
    return [(float(edges[b]), float(edges[b + 1])) for b in range(N_BANDS) if _BAND_OWNER[b] == split]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def param_bands(category: str, split: str, wide: bool = False) -> dict[str, list[tuple[float, float]]]:
    """Bands of every shape parameter owned by ``split``: name -> [(low, high), ...].

    Each range of ``SHAPE_PARAM_RANGES[category]`` is cut into ``N_BANDS`` equal bands assigned to the
    splits in the fixed interleaved pattern ``_BAND_OWNER``; bands of different splits share at most an
    end point, so no parameter value is sampled by two splits (up to that measure-zero boundary). With
    ``wide``, the split's :func:`extension_bands` are added.
    """
    check_category(category)
    _check_split(split)
    out = {name: _owned_bands(lo, hi, split) for name, (lo, hi) in SHAPE_PARAM_RANGES[category].items()}
    if wide:
        for name, bands in extension_bands(category, split).items():
            out[name] += bands
    return out


def extension_bands(category: str, split: str) -> dict[str, list[tuple[float, float]]]:
    """Bands owned by ``split`` of the parts of ``SHAPE_PARAM_WIDE`` outside ``SHAPE_PARAM_RANGES``: name ->
    [(low, high), ...] for the parameters with a wider real-world range. The part below and the part above the
    band range are each cut into ``N_BANDS`` bands with the owners ``_BAND_OWNER``."""
    check_category(category)
    _check_split(split)
    out: dict[str, list[tuple[float, float]]] = {}
    for name, (wlo, whi) in SHAPE_PARAM_WIDE[category].items():
        lo, hi = SHAPE_PARAM_RANGES[category][name]
        out[name] = [b for a, z in ((wlo, lo), (hi, whi)) if z > a for b in _owned_bands(a, z, split)]
    return out


def split_of_param(category: str, name: str, value: float) -> str:
    """The split whose band contains ``value`` of parameter ``name`` (raises if outside the real-world range)."""
    lo, hi = SHAPE_PARAM_RANGES[check_category(category)][name]
    wlo, whi = SHAPE_PARAM_WIDE[category].get(name, (lo, hi))
    if not wlo <= value <= whi:
        raise ValueError(f"{category}.{name} = {value} outside its range [{wlo}, {whi}]")
    if value < lo:
        lo, hi = wlo, lo
    elif value > hi:
        lo, hi = hi, whi
    band = min(int((value - lo) / (hi - lo) * N_BANDS), N_BANDS - 1)
    return _BAND_OWNER[band]


def _inside(band: tuple[float, float], rng: np.random.Generator) -> float:
    """A uniform value strictly inside ``band``, so the value's owner is unambiguous."""
    lo, hi = band
    return float(lo + (hi - lo) * rng.uniform(1e-6, 1.0 - 1e-6))


def _sample_params(category: str, split: str, rng: np.random.Generator, shapes: str = "band") -> dict[str, float]:
    """One value per shape parameter: ``band``, uniform over the union of the split's bands (all bands equal);
    ``wide``, uniform over the union of its bands of the real-world range; ``outside``, as ``wide`` but one
    parameter, drawn among those with an extension, uniform over its extension bands."""
    if shapes not in SHAPE_MODES:
        raise ValueError(f"shapes must be one of {SHAPE_MODES}, got {shapes!r}")
    if shapes == "band":  # the draws of the shipped splits, unchanged
        return {name: _inside(bands[int(rng.integers(len(bands)))], rng)
                for name, bands in param_bands(category, split).items()}
    forced = None
    extensions = extension_bands(category, split)
    if shapes == "outside":
        names = sorted(extensions)
        forced = names[int(rng.integers(len(names)))]
    params = {}
    for name, bands in param_bands(category, split, wide=True).items():
        pool = extensions[name] if name == forced else bands
        widths = np.array([hi - lo for lo, hi in pool])
        params[name] = _inside(pool[int(rng.choice(len(pool), p=widths / widths.sum()))], rng)
    return params


# ----------------------------------------------------------------------------------------------------------
# Procedural solid textures
# ----------------------------------------------------------------------------------------------------------


def _random_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> list[float]:
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    return [float(c) for c in colorsys.hsv_to_rgb(h, s, v)]


def _sample_texture(
    rng: np.random.Generator, split: str, scale_m: float, families: Sequence[str] = TEXTURE_FAMILIES
) -> dict[str, Any]:
    """A texture spec (JSON-friendly dict) for a surface of characteristic size ``scale_m``.

    The spec's ``seed`` (which fixes its noise waves) is ``3 * k + split index``: disjoint across splits.
    """
    family = str(families[int(rng.integers(len(families)))])
    n_colors = 3
    colors = [_random_color(rng, (0.05, 0.95), (0.12, 0.95)) for _ in range(n_colors)]
    direction = rng.normal(size=3)
    if rng.uniform() < 0.5:  # label-like bands along the up axis are common on real objects
        direction = np.array([0.0, 1.0, 0.0]) + 0.15 * rng.normal(size=3)
    direction = direction / np.linalg.norm(direction)
    cycles = rng.uniform(2.0, 9.0)  # stripes / checks per object size
    return {
        "family": family,
        "seed": int(3 * int(rng.integers(0, 2**28)) + SPLITS.index(split)),
        "colors": colors,
        "frequency": float(cycles / max(scale_m, 1e-3)),  # cycles per metre
        "direction": [float(x) for x in direction],
        "sharpness": float(rng.uniform(2.0, 30.0)),
        "warp": float(rng.uniform(0.0, 0.6)),
        "detail": float(rng.uniform(0.02, 0.12)),  # amplitude of fine noise
        "specular": float(rng.uniform(0.0, 0.35)),
        "shininess": float(rng.uniform(8.0, 60.0)),
    }


def _noise(
    p: np.ndarray, seed: int, channel: int, frequency: float, footprint: np.ndarray | None = None, n_waves: int = 8
) -> np.ndarray:
    """Smooth deterministic 3D noise: a sum of random plane waves, ~N(0, 0.5).

    Args:
        p: (n, 3) float32 points in metres.
        seed, channel: fix the waves (one texture seed has several independent noise channels).
        frequency: mean cycles per metre.
        footprint: optional (n,) size of a pixel on the surface (metres); waves finer than ~3 pixels
            fade out (cheap anti-aliasing).
    Returns:
        (n,) float32.
    """
    rng = np.random.default_rng([int(seed), int(channel)])
    dirs = rng.normal(size=(n_waves, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = frequency * rng.uniform(0.5, 2.0, size=n_waves)
    w = (dirs * (2 * np.pi * freqs)[:, None]).astype(np.float32)  # (n_waves, 3) radians per metre
    phase = rng.uniform(0, 2 * np.pi, size=n_waves).astype(np.float32)
    arg = p[:, 0:1] * w[:, 0] + p[:, 1:2] * w[:, 1] + p[:, 2:3] * w[:, 2] + phase
    waves = np.sin(arg)
    if footprint is not None:
        waves *= _fade(freqs.astype(np.float32)[None, :] * footprint[:, None])
    return waves.sum(axis=1) * np.float32(1.0 / math.sqrt(n_waves))


def _fade(cycles_per_pixel: np.ndarray) -> np.ndarray:
    """Attenuation of a pattern by its frequency in cycles per pixel: 1 below 0.15, 0 above 0.35."""
    return np.clip((0.35 - cycles_per_pixel) / 0.2, 0.0, 1.0).astype(np.float32)


def texture_albedo(spec: Mapping[str, Any], p: np.ndarray, footprint: np.ndarray | None = None) -> np.ndarray:
    """Albedo of a procedural solid texture at surface points.

    Args:
        spec: texture spec (see ``_sample_texture``): family, seed, colors, frequency, direction, ...
        p: (n, 3) texture-space points in metres (object frame for objects, world for the environment).
        footprint: optional (n,) metres per pixel on the surface; patterns too fine for it are faded to
            their mean colour (anti-aliasing).
    Returns:
        (n, 3) float32 RGB albedo in [0, 1].
    """
    p = np.asarray(p, dtype=np.float32).reshape(-1, 3)
    fp = None if footprint is None else np.asarray(footprint, dtype=np.float32).reshape(-1)
    colors = np.asarray(spec["colors"], dtype=np.float32)
    f, seed, family = float(spec["frequency"]), int(spec["seed"]), spec["family"]
    keep = np.ones(len(p), np.float32) if fp is None else _fade(np.float32(f) * fp)  # pattern visibility
    if family == "solid_noise":
        mix = (0.5 + 0.5 * np.tanh(_noise(p, seed, 0, 0.5 * f, fp)))[:, None]
        out = colors[0] * (1.0 - 0.25 * mix) + 0.25 * mix * colors[1]
    elif family == "stripes":
        d = np.asarray(spec["direction"], dtype=np.float32)
        t = f * (p @ d) + spec["warp"] * _noise(p, seed, 1, 0.5 * f, fp)
        s = np.clip(0.5 + spec["sharpness"] * np.sin(np.float32(2 * np.pi) * t) * 0.5, 0.0, 1.0)
        s = (0.5 + (s - 0.5) * keep)[:, None]
        out = colors[0] * (1 - s) + colors[1] * s
    elif family == "checks":
        q = p * np.float32(f) + np.float32(spec["warp"]) * _noise(p, seed, 1, 0.3 * f, fp)[:, None]
        parity = (np.floor(q).astype(np.int64).sum(axis=1) % 2).astype(np.float32)
        parity = (0.5 + (parity - 0.5) * keep)[:, None]
        out = colors[0] * (1 - parity) + colors[1] * parity
    elif family == "noise":
        n1 = _noise(p, seed, 0, f, fp)
        n2 = _noise(p, seed, 2, 2.5 * f, fp)
        a = (0.5 + 0.5 * np.tanh(spec["sharpness"] * 0.2 * n1))[:, None]
        b = (0.5 + 0.5 * np.tanh(2.0 * n2))[:, None]
        out = colors[0] * (1 - a) + (colors[1] * (1 - b) + colors[2] * b) * a
    else:
        raise ValueError(f"unknown texture family {family!r}")
    detail = np.float32(spec["detail"]) * _noise(p, seed, 3, 4.0 * f + 40.0, fp)
    return np.clip(out * (1.0 + detail[:, None]), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Scene specification
# ----------------------------------------------------------------------------------------------------------


def _rot_y(deg: float) -> np.ndarray:
    r = math.radians(deg)
    c, s = math.cos(r), math.sin(r)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _waves(rng: np.random.Generator, n_channels: int, n_terms: int = 3) -> list[list[list[float]]]:
    """Smooth random signals on t in [0, 1]: per channel [amp, freq (cycles/video), phase], sum |amp| = 1."""
    out = []
    for _ in range(n_channels):
        amps = rng.uniform(0.2, 1.0, size=n_terms)
        amps /= amps.sum()
        freqs = rng.uniform(0.3, 1.5, size=n_terms)
        phases = rng.uniform(0, 2 * np.pi, size=n_terms)
        out.append([[float(a), float(f), float(p)] for a, f, p in zip(amps, freqs, phases, strict=True)])
    return out


def _smooth(waves: list[list[float]], t: float) -> float:
    """Value in [-1, 1] of one smooth channel at time t in [0, 1]."""
    return float(sum(a * math.sin(2 * math.pi * f * t + p) for a, f, p in waves))


@dataclass(frozen=True)
class SceneSpec:
    """Everything that defines one synthetic video (JSON-serialisable through :meth:`to_dict`).

    Attributes:
        category, split, seed: what the scene was sampled from.
        n_frames: video length.
        shape_params: target shape parameters (``SHAPE_PARAM_RANGES`` names).
        size_m: (3,) target box extents in metres (x, y, z of the object frame).
        yaw_deg: target rotation about the world up axis.
        camera: ``fx``, ``fy`` (pixels at 640 x 480), ``dcx``, ``dcy`` (principal point offset from the
            image centre, pixels at 640 x 480).
        trajectory: orbit parameters and smooth jitter waves (see :meth:`camera_pose`).
        target_texture: texture spec of the target.
        distractors: list of dicts ``kind`` ('category' | 'box' | 'cylinder'), ``category``, ``params``,
            ``scale``, ``position`` (world, box centre), ``yaw_deg``, ``size`` (box extents, m), ``texture``.
        table: ``center_xz``, ``size_xz``, ``thickness``, ``texture``.
        room: ``half_x``, ``half_z``, ``floor_y``, ``ceiling_y``, ``wall_texture``, ``floor_texture``.
        light: ``direction`` (world, unit, towards the light), ``ambient``, ``diffuse``, ``color``.
        sensor: depth noise / hole and image noise parameters.
    """

    category: str
    split: str
    seed: int
    n_frames: int
    shape_params: dict[str, float]
    size_m: list[float]
    yaw_deg: float
    camera: dict[str, float]
    trajectory: dict[str, Any]
    target_texture: dict[str, Any]
    distractors: list[dict[str, Any]] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)
    room: dict[str, Any] = field(default_factory=dict)
    light: dict[str, Any] = field(default_factory=dict)
    sensor: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SceneSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(d))

    # -- camera -------------------------------------------------------------------------------------------

    def intrinsics(self, width: int = REF_SIZE[0], height: int = REF_SIZE[1]) -> np.ndarray:
        """(3, 3) K for a ``width`` x ``height`` image (focal lengths scale with the width)."""
        s = width / REF_SIZE[0]
        c = self.camera
        return np.array(
            [
                [c["fx"] * s, 0.0, (width - 1) / 2 + c["dcx"] * s],
                [0.0, c["fy"] * s, (height - 1) / 2 + c["dcy"] * s],
                [0.0, 0.0, 1.0],
            ]
        )

    def object_pose_world(self) -> tuple[np.ndarray, np.ndarray]:
        """Target pose in the world: R (3, 3), t (3,) box centre (it stands on the table at y = 0)."""
        return _rot_y(self.yaw_deg), np.array([0.0, self.size_m[1] / 2, 0.0])

    def _orbit(self, frame_index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Camera centre (world), look-at point (world) and roll (deg) of one frame."""
        tr = self.trajectory
        w = tr["waves"]
        t = frame_index / max(self.n_frames - 1, 1)
        az = math.radians(tr["az0_deg"] + tr["sweep_deg"] * (t + tr["az_wobble"] * _smooth(w[0], t)))
        el = tr["el0_deg"] + tr["el_amp_deg"] * _smooth(w[1], t)
        el = math.radians(float(np.clip(el, *_ELEVATION_RANGE_DEG)))
        r = float(np.clip(tr["radius_m"] * (1 + tr["radius_amp"] * _smooth(w[2], t)), *_RADIUS_RANGE_M))
        roll = tr["roll0_deg"] + tr["roll_amp_deg"] * _smooth(w[3], t)
        centre = self.object_pose_world()[1]
        eye = centre + r * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        jitter = tr["lookat_amp_m"] * np.array([_smooth(w[4], t), 0.5 * _smooth(w[5], t), _smooth(w[6], t)])
        return eye, centre + jitter, roll

    def camera_pose(self, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """World -> camera transform of one frame: ``p_cam = R_cw @ p_world + t_cw``.

        The camera sits on the orbit (elevation/azimuth/radius about the target's box centre), looks at
        the jittered look-at point with the image's down axis towards the world's down, then rolls.
        """
        eye, target, roll = self._orbit(frame_index)
        z = target - eye
        z /= np.linalg.norm(z)
        x = np.cross(np.array([0.0, -1.0, 0.0]), z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R0 = np.stack([x, y, z])
        c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        R_cw = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R0
        return R_cw, -R_cw @ eye

    def camera_centers(self) -> np.ndarray:
        """(n_frames, 3) camera centres in the world."""
        return np.stack([self._orbit(i)[0] for i in range(self.n_frames)])


@dataclass(frozen=True)
class Frame:
    """One rendered frame.

    Attributes:
        rgb: (H, W, 3) uint8 RGB.
        depth_m: (H, W) float32 depth in metres with sensor noise; 0 = invalid (hole / out of range).
        instance_mask: (H, W) uint8; 0 background, 1 target, 2.. distractors (in ``gt`` order).
        K: (3, 3) float64 intrinsics of this resolution.
        gt: per instance (index k -> instance id k + 1) dict ``instance_id``, ``category``, ``R`` (3, 3)
            object -> camera, ``t`` (3,) box centre in metres, ``size`` (3,) box extents in metres; a target
            mug also has ``handle_pixels`` (its handle's visible pixels) and ``handle_visible`` (bool).
        depth_clean_m: (H, W) float32 noise-free rendered depth (0 where nothing is rendered).
        object_coords_m: (H, W, 3) float32 object-frame coordinates (metres) of the visible surface of
            each instance (valid where ``instance_mask > 0``), e.g. a NOCS map for supervision.
    """

    rgb: np.ndarray
    depth_m: np.ndarray
    instance_mask: np.ndarray
    K: np.ndarray
    gt: list[dict[str, Any]]
    depth_clean_m: np.ndarray | None = None
    object_coords_m: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------------
# Meshes
# ----------------------------------------------------------------------------------------------------------


def _grid_box(extents: Sequence[float], n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Closed box (environment slabs, box distractors) centred at 0 with n x n quads per face, outward."""
    e = np.asarray(extents, dtype=np.float64) / 2
    t = np.linspace(-1.0, 1.0, n + 1)
    verts, faces = [], []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        for sign in (-1.0, 1.0):
            uu, vv = np.meshgrid(t, t, indexing="ij")
            p = np.zeros(uu.shape + (3,))
            p[..., axis], p[..., a], p[..., b] = sign, uu, vv
            g = len(verts) * (n + 1) ** 2 + np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
            q = [g[:-1, :-1], g[1:, :-1], g[1:, 1:], g[:-1, 1:]]
            f = np.concatenate(
                [np.stack([q[0], q[1], q[2]], -1).reshape(-1, 3), np.stack([q[0], q[2], q[3]], -1).reshape(-1, 3)]
            )
            if np.cross(np.eye(3)[a], np.eye(3)[b])[axis] * sign < 0:
                f = f[:, ::-1]
            verts.append(p.reshape(-1, 3))
            faces.append(f)
    return np.concatenate(verts) * e, np.concatenate(faces)


@lru_cache(maxsize=64)
def _shape_mesh(category: str, params: tuple[tuple[str, float], ...]) -> Mesh:
    return build_shape(category, dict(params), resolution=_RENDER_RESOLUTION)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N, 3) area-weighted unit vertex normals."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    fn = np.cross(b - a, c - a)
    vn = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class _Body:
    """A rigid textured mesh of the scene: vertices in its own frame, pose in the world."""

    vertices: np.ndarray  # (N, 3) own frame, metres (also its texture space)
    faces: np.ndarray
    normals: np.ndarray  # (N, 3) own frame
    R_w: np.ndarray
    t_w: np.ndarray
    texture: dict[str, Any]
    raster_id: int
    category: str
    size: np.ndarray


def _distractor_mesh(d: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (own frame, metres) and faces of a distractor spec."""
    if d["kind"] == "box":
        return _grid_box(d["size"], 1)
    builder = "can" if d["kind"] == "cylinder" else d["category"]
    mesh = _shape_mesh(builder, tuple(sorted(d["params"].items())))
    return mesh.vertices.astype(np.float64) * d["scale"], mesh.faces


@lru_cache(maxsize=16)
def _scene_bodies_cached(scene_json: str) -> tuple[_Body, ...]:
    return tuple(_build_bodies(SceneSpec.from_dict(json.loads(scene_json))))


def _scene_bodies(scene: SceneSpec) -> tuple[_Body, ...]:
    return _scene_bodies_cached(json.dumps(scene.to_dict(), sort_keys=True))


def _build_bodies(scene: SceneSpec) -> list[_Body]:
    """Target (raster id 1), distractors (2..), table and room of a scene."""
    bodies = []
    mesh = _shape_mesh(scene.category, tuple(sorted(scene.shape_params.items())))
    v = mesh.vertices.astype(np.float64)
    R, t = scene.object_pose_world()
    bodies.append(
        _Body(v, mesh.faces, _vertex_normals(v, mesh.faces), R, t, scene.target_texture, 1, scene.category,
              np.asarray(scene.size_m))
    )
    for k, d in enumerate(scene.distractors):
        dv, df = _distractor_mesh(d)
        bodies.append(
            _Body(dv, df, _vertex_normals(dv, df), _rot_y(d["yaw_deg"]), np.asarray(d["position"], float),
                  d["texture"], 2 + k, d["category"], np.asarray(d["size"]))
        )
    tb = scene.table
    tv, tf = _grid_box([tb["size_xz"][0], tb["thickness"], tb["size_xz"][1]], 6)
    tv = tv + np.array([tb["center_xz"][0], -tb["thickness"] / 2, tb["center_xz"][1]])
    eye3 = np.eye(3)
    bodies.append(_Body(tv, tf, _vertex_normals(tv, tf), eye3, np.zeros(3), tb["texture"], _TABLE_ID, "table",
                        tv.max(0) - tv.min(0)))
    rm = scene.room
    height = rm["ceiling_y"] - rm["floor_y"]
    rv, rf = _grid_box([2 * rm["half_x"], height, 2 * rm["half_z"]], 4)
    rv = rv + np.array([0.0, rm["floor_y"] + height / 2, 0.0])
    rf = rf[:, ::-1]  # seen from inside
    bodies.append(_Body(rv, rf, _vertex_normals(rv, rf), eye3, np.zeros(3), rm["wall_texture"], _ROOM_ID, "room",
                        rv.max(0) - rv.min(0)))
    return bodies


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------


def _scene_rng(category: str, split: str, seed: int) -> np.random.Generator:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, CATEGORIES.index(category), SPLITS.index(split), 17])
    return np.random.default_rng(ss)


def _footprint_radius(size: Sequence[float]) -> float:
    return 0.5 * math.hypot(size[0], size[2])


def _sample_distractor(
    rng: np.random.Generator, category: str, split: str, target_size: np.ndarray, occluder: bool
) -> dict[str, Any]:
    """A distractor's kind, shape, size and texture (the caller fills in ``position`` and ``yaw_deg``).

    ``kind`` 'category' (another category's procedural shape, parameters from the split's bands),
    'box' or 'cylinder' (built with the can builder). ``category`` is the reported category: the other
    category's name, 'box' or 'cylinder'. An occluder's height is fitted later (``_set_height``).
    """
    others = [c for c in CATEGORIES if c != category]
    u = rng.uniform()
    kind = "category" if u < 0.6 else ("box" if (u < 0.8 or category == "can") else "cylinder")
    d: dict[str, Any] = {"kind": kind, "category": kind, "params": {}, "scale": 1.0, "occluder": bool(occluder)}
    if kind == "box":
        size = rng.uniform([0.04, 0.03, 0.04], [0.2, 0.18, 0.2])
    elif kind == "cylinder":
        radius, height = float(rng.uniform(0.02, 0.06)), float(rng.uniform(0.04, 0.2))
        d["params"] = {"radius": radius, "height": height, "rim": 0.002}
        size = _shape_mesh("can", tuple(sorted(d["params"].items()))).extent.astype(np.float64)
    else:
        d["category"] = str(others[int(rng.integers(len(others)))])
        d["params"] = _sample_params(d["category"], split, rng)
        size = _shape_mesh(d["category"], tuple(sorted(d["params"].items()))).extent.astype(np.float64)
    d["size"] = [float(x) for x in size]
    d["texture"] = _sample_texture(rng, split, float(max(size)))
    return d


def _set_height(d: dict[str, Any], height: float) -> None:
    """Give a distractor spec a new height (box / cylinder: stretched; category shape: uniform scale)."""
    size = np.asarray(d["size"], dtype=np.float64)
    if d["kind"] == "box":
        size[1] = height
    elif d["kind"] == "cylinder":
        d["params"]["height"] = float(height)
        size = _shape_mesh("can", tuple(sorted(d["params"].items()))).extent.astype(np.float64)
    else:  # keep real-world proportions within reason: at most 0.5x .. 1.6x the sampled shape
        factor = float(np.clip(height / size[1], 0.5 / d["scale"], 1.6 / d["scale"]))
        d["scale"] = float(d["scale"] * factor)
        size = size * factor
    d["size"] = [float(x) for x in size]


def _support_xz(size: Sequence[float], yaw_deg: float, u: np.ndarray) -> float:
    """Half-extent along the horizontal unit direction ``u`` (x, z) of a box rotated by ``yaw_deg`` about y."""
    R = _rot_y(yaw_deg)
    return 0.5 * (abs(u @ R[[0, 2], 0]) * size[0] + abs(u @ R[[0, 2], 2]) * size[2])


def _occluder_height(eye: np.ndarray, back_xz: np.ndarray, target_h: float, frac: float) -> float:
    """Height an occluder needs so that, seen from the camera centre ``eye``, its edge nearest to the
    target (at ``back_xz``, the target's axis at the origin) hides the lower ``frac`` of the target's
    axis (more of its front face). Side view in the vertical plane through the camera."""
    d_eye = float(np.linalg.norm(eye[[0, 2]]))
    back = float(back_xz @ (eye[[0, 2]] / d_eye))
    q = max(back, 0.0) / max(d_eye - back, 1e-3)
    return (frac * target_h + eye[1] * q) / (1.0 + q)


def _blocks_view(eyes: np.ndarray, target_c: np.ndarray, target_r: float, c: np.ndarray, r: float) -> bool:
    """True if a sphere (c, r) hides most of the target sphere from some camera centre (conservative)."""
    for eye in eyes:
        to_t, to_d = target_c - eye, c - eye
        dt, dd = np.linalg.norm(to_t), np.linalg.norm(to_d)
        if dd < r + 0.08:  # camera would be inside / touching the distractor
            return True
        if dd > dt:
            continue
        ang = math.acos(float(np.clip(to_t @ to_d / (dt * dd), -1, 1)))
        ang_t, ang_d = math.asin(min(1.0, target_r / dt)), math.asin(min(1.0, r / dd))
        if ang < ang_d + 0.3 * ang_t:
            return True
    return False


def sample_scene(
    category: str, split: str, seed: int, frames: tuple[int, int] = (20, 60), shapes: str = "band"
) -> SceneSpec:
    """Sample a scene deterministically from (category, split, seed, shapes).

    Args:
        category: target category (``core.priors.CATEGORIES``).
        split: 'train' | 'val' | 'test' (selects the shape-parameter bands and texture seeds).
        seed: any integer.
        frames: inclusive (min, max) number of frames of the video.
        shapes: the target's shape mode, one of :data:`SHAPE_MODES` (distractors always draw from the bands).
    Returns:
        The :class:`SceneSpec`.
    """
    check_category(category)
    _check_split(split)
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"frames must be (min, max) with 1 <= min <= max, got {frames}")
    rng = _scene_rng(category, split, seed)
    n_frames = int(rng.integers(frames[0], frames[1] + 1))
    params = _sample_params(category, split, rng, shapes)
    size = _shape_mesh(category, tuple(sorted(params.items()))).extent.astype(np.float64)
    diag = float(np.linalg.norm(size))
    camera = {
        "fx": float(rng.uniform(500.0, 620.0)),
        "dcx": float(rng.uniform(-8.0, 8.0)),
        "dcy": float(rng.uniform(-8.0, 8.0)),
    }
    camera["fy"] = float(camera["fx"] * rng.uniform(0.995, 1.005))
    sweep = float(rng.uniform(60.0, 300.0) * rng.choice([-1.0, 1.0]))
    trajectory = {
        "az0_deg": float(rng.uniform(0.0, 360.0)),
        "sweep_deg": sweep,
        "az_wobble": 0.04,
        "el0_deg": float(rng.uniform(20.0, 55.0)),
        "el_amp_deg": float(rng.uniform(2.0, 10.0)),
        "radius_m": float(np.clip(rng.uniform(1.8, 3.0) * diag + 0.05, *_RADIUS_RANGE_M)),
        "radius_amp": float(rng.uniform(0.03, 0.12)),
        "roll0_deg": float(rng.uniform(-6.0, 6.0)),
        "roll_amp_deg": float(rng.uniform(0.5, 4.0)),
        "lookat_amp_m": float(rng.uniform(0.02, 0.12) * diag),
        "waves": _waves(rng, 7),
    }
    target_texture = _sample_texture(rng, split, float(max(size)))
    light_el, light_az = math.radians(rng.uniform(25.0, 85.0)), rng.uniform(0, 2 * np.pi)
    light = {
        "direction": [math.cos(light_el) * math.sin(light_az), math.sin(light_el),
                      math.cos(light_el) * math.cos(light_az)],
        "ambient": float(rng.uniform(0.25, 0.55)),
        "diffuse": float(rng.uniform(0.5, 0.9)),
        "color": [float(x) for x in 1.0 + rng.uniform(-0.08, 0.08, size=3)],
    }
    sensor = {
        "depth_sigma_mm_at_05": float(rng.uniform(1.0, 2.0)),
        "max_range_m": float(rng.uniform(2.5, 4.0)),
        "grazing_cos": float(rng.uniform(0.08, 0.2)),
        "edge_drop": float(rng.uniform(0.3, 0.9)),
        "blobs_per_frame": float(rng.uniform(0.0, 4.0)),
        "blur_sigma_px": float(rng.uniform(0.3, 0.9)),
        "rgb_noise": float(rng.uniform(0.005, 0.02)),
        "exposure": float(rng.uniform(0.85, 1.2)),
    }
    yaw = float(rng.uniform(0.0, 360.0))
    table = {
        "center_xz": [float(x) for x in rng.uniform(-0.25, 0.25, size=2)],
        "size_xz": [float(x) for x in rng.uniform(1.1, 2.0, size=2)],
        "thickness": float(rng.uniform(0.02, 0.05)),
        "texture": _sample_texture(rng, split, 0.3),
    }
    room = {
        "half_x": float(rng.uniform(1.6, 3.0)),
        "half_z": float(rng.uniform(1.6, 3.0)),
        "floor_y": float(-rng.uniform(0.7, 0.8)),
        "ceiling_y": float(rng.uniform(1.7, 2.2)),
        "wall_texture": _sample_texture(rng, split, 1.5, ("noise", "solid_noise", "stripes")),
    }
    scene = SceneSpec(category, split, int(seed), n_frames, params, [float(x) for x in size], yaw, camera,
                      trajectory, target_texture, [], table, room, light, sensor)
    # Distractors: 0-3, placed around the target without interpenetration; sometimes one in front.
    n_distractors = int(rng.choice(4, p=[0.25, 0.3, 0.25, 0.2]))
    eyes = scene.camera_centers()
    target_c = scene.object_pose_world()[1]
    target_r = 0.5 * diag
    placed: list[tuple[np.ndarray, float]] = [(np.zeros(2), _footprint_radius(size))]
    distractors = []
    mid = n_frames // 2
    mid_az = math.radians(trajectory["az0_deg"] + trajectory["sweep_deg"] * mid / max(n_frames - 1, 1))
    for k in range(n_distractors):
        occluder = k == 0 and rng.uniform() < 0.4
        d = _sample_distractor(rng, category, split, size, occluder)
        frac = float(rng.uniform(0.05, 0.4))
        for _ in range(30):
            d["yaw_deg"] = float(rng.uniform(0.0, 360.0))
            if occluder:  # in front of the target as seen from the middle of the video
                u = np.array([math.sin(mid_az), math.cos(mid_az)])
                u = _rot_y(float(rng.uniform(-15.0, 15.0)))[[0, 2]][:, [0, 2]] @ u
                gap = rng.uniform(0.01, 0.05)
                back = _support_xz(size, yaw, u) + gap  # occluder edge nearest to the target
                h = _occluder_height(eyes[mid], back * u, size[1], frac)
                _set_height(d, float(np.clip(h, 0.02, 0.5)))
                # Separated from the target along u (box supports), hence no interpenetration.
                xz = (back + _support_xz(d["size"], d["yaw_deg"], -u)) * u
            else:
                ang = rng.uniform(0, 2 * np.pi)
                xz = (placed[0][1] + _footprint_radius(d["size"]) + rng.uniform(0.02, 0.35)) * np.array(
                    [math.sin(ang), math.cos(ang)]
                )
            rho = _footprint_radius(d["size"])
            others = placed[1:] if occluder else placed
            if any(np.linalg.norm(xz - c) < r + rho + 0.01 for c, r in others):
                continue
            on_table = np.abs(xz - np.asarray(table["center_xz"])) + rho < 0.5 * np.asarray(table["size_xz"])
            if not on_table.all():
                continue
            centre = np.array([xz[0], d["size"][1] / 2, xz[1]])
            sphere_r = 0.5 * float(np.linalg.norm(d["size"]))
            if occluder:
                if np.linalg.norm(eyes - centre, axis=1).min() < sphere_r + 0.08:
                    continue
            elif _blocks_view(eyes, target_c, target_r, centre, sphere_r):
                continue
            d["position"] = [float(x) for x in centre]
            placed.append((xz, rho))
            distractors.append(d)
            break
    return SceneSpec(category, split, int(seed), n_frames, params, [float(x) for x in size], yaw, camera,
                     trajectory, target_texture, distractors, table, room, light, sensor)


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def _frame_rng(scene: SceneSpec, frame_index: int) -> np.random.Generator:
    ss = np.random.SeedSequence(
        [int(scene.seed) & 0xFFFFFFFF, CATEGORIES.index(scene.category), SPLITS.index(scene.split), 29,
         int(frame_index)]
    )
    return np.random.default_rng(ss)


def _depth_holes(
    rng: np.random.Generator, depth: np.ndarray, cos_view: np.ndarray, sensor: Mapping[str, float]
) -> np.ndarray:
    """(H, W) bool: samples the simulated sensor fails to measure."""
    H, W = depth.shape
    holes = depth <= 0
    # Grazing angles: always missing below the threshold, sometimes up to twice it.
    g = sensor["grazing_cos"]
    holes |= cos_view < g
    holes |= (cos_view < 2 * g) & (rng.uniform(size=depth.shape) < 0.3)
    # Depth edges (flying pixels are removed by real sensors' filters): jump > 2 cm + 3 % of z.
    big = np.where(depth > 0, depth, np.float32(100.0))
    dmax = cv2.dilate(depth, np.ones((3, 3), np.uint8))
    dmin = cv2.erode(big, np.ones((3, 3), np.uint8))
    edge = (dmax - dmin) > (0.02 + 0.03 * depth)
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    holes |= edge & (rng.uniform(size=depth.shape) < sensor["edge_drop"])
    # Random dropout blobs (specular / dark / absorbing patches).
    blobs = np.zeros((H, W), np.uint8)
    scale = W / REF_SIZE[0]
    for _ in range(int(rng.poisson(sensor["blobs_per_frame"]))):
        centre = (int(rng.uniform(0, W)), int(rng.uniform(0, H)))
        axes = (max(1, int(rng.uniform(3, 28) * scale)), max(1, int(rng.uniform(3, 18) * scale)))
        cv2.ellipse(blobs, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    holes |= blobs.astype(bool)
    holes |= depth > sensor["max_range_m"]
    return holes


@lru_cache(maxsize=8)
def _view_dirs_cached(key: tuple[float, ...], width: int, height: int) -> np.ndarray:
    fx, fy, cx, cy = key
    uu, vv = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], axis=-1)
    view = (-rays / np.linalg.norm(rays, axis=-1, keepdims=True)).astype(np.float32)
    view.flags.writeable = False
    return view


def _view_dirs(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 unit vectors from the surface seen in each pixel towards the camera."""
    return _view_dirs_cached((K[0, 0], K[1, 1], K[0, 2], K[1, 2]), width, height)


def render_frame(scene: SceneSpec, frame_index: int, width: int = 640, height: int = 480) -> Frame:
    """Render frame ``frame_index`` of ``scene`` at ``width`` x ``height``.

    Returns:
        :class:`Frame` (RGB uint8, noisy depth in metres, instance mask, K, per-instance ground truth).
    """
    if not 0 <= frame_index < scene.n_frames:
        raise IndexError(f"frame {frame_index} outside 0..{scene.n_frames - 1}")
    H, W = int(height), int(width)
    K = scene.intrinsics(W, H)
    R_cw, t_cw = scene.camera_pose(frame_index)
    bodies = _scene_bodies(scene)
    meshes, face_normals = [], []
    for b in bodies:
        R = R_cw @ b.R_w
        t = R_cw @ b.t_w + t_cw
        v_cam = b.vertices @ R.T + t
        n_cam = b.normals @ R.T
        meshes.append(RasterMesh(v_cam, b.faces, np.concatenate([b.vertices, n_cam], axis=1), b.raster_id))
        a, bb, c = (v_cam[b.faces[:, i]] for i in range(3))
        fn = np.cross(bb - a, c - a)
        face_normals.append(fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12))
    res = rasterize(meshes, K, W, H, near=0.02, cull_backfaces=True)
    rng = _frame_rng(scene, frame_index)

    cov = res.covered
    mesh_idx = res.mesh_index
    attr = res.attributes
    p_tex = attr[..., :3]
    n_s = attr[..., 3:6]
    n_s = n_s / np.maximum(np.sqrt((n_s * n_s).sum(-1, keepdims=True)), np.float32(1e-12))
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in face_normals])])
    all_fn = np.concatenate(face_normals).astype(np.float32)
    n_f = np.zeros_like(n_s)
    n_f[cov] = all_fn[offsets[mesh_idx[cov]] + res.face_index[cov]]
    crease = (n_s * n_f).sum(-1) < math.cos(math.radians(35.0))
    normal = np.where(crease[..., None], n_f, n_s)
    # Viewing direction (unit, surface -> camera) from the pixel rays.
    view = _view_dirs(K, W, H)
    cos_v = (normal * view).sum(-1)
    normal = np.where(cos_v[..., None] < 0, -normal, normal)
    cos_v = np.abs(cos_v)

    # Surface size of a pixel (metres), larger at grazing angles: drives texture anti-aliasing.
    footprint = res.depth_m / np.float32(0.5 * (K[0, 0] + K[1, 1])) / np.maximum(cos_v, 0.25).astype(np.float32)
    albedo = np.zeros((H, W, 3), np.float32)
    spec_k = np.zeros((H, W), np.float32)
    shin = np.ones((H, W), np.float32)
    for m, b in enumerate(bodies):
        sel = mesh_idx == m
        if sel.any():
            albedo[sel] = texture_albedo(b.texture, p_tex[sel], footprint[sel])
            spec_k[sel] = b.texture["specular"] if b.raster_id < _TABLE_ID else 0.05
            shin[sel] = b.texture["shininess"]
    light = scene.light
    l_cam = (R_cw @ np.asarray(light["direction"], dtype=np.float64)).astype(np.float32)
    diffuse = np.clip(normal @ l_cam, 0.0, None)
    # Blinn-Phong highlight, evaluated where some specularity exists.
    spec = np.zeros((H, W), np.float32)
    shiny = spec_k > 0
    half = l_cam[None] + view[shiny]
    half /= np.maximum(np.linalg.norm(half, axis=-1, keepdims=True), np.float32(1e-12))
    spec[shiny] = spec_k[shiny] * np.clip((normal[shiny] * half).sum(-1), 0.0, None) ** shin[shiny]
    color = np.asarray(light["color"], np.float32) * np.float32(scene.sensor["exposure"])
    shade = np.float32(light["ambient"]) + np.float32(light["diffuse"]) * diffuse
    img = (albedo * shade[..., None] + spec[..., None]) * color
    img[~cov] = 0.5  # only visible if the room is clipped away
    sigma = scene.sensor["blur_sigma_px"] * W / REF_SIZE[0]
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigmaX=max(sigma, 0.1))
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(scene.sensor["rgb_noise"])
    rgb = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    depth_clean = res.depth_m
    sigma_z = np.float32(scene.sensor["depth_sigma_mm_at_05"] * 1e-3 / 0.25) * depth_clean * depth_clean
    depth = depth_clean + rng.standard_normal(size=depth_clean.shape, dtype=np.float32) * sigma_z
    holes = _depth_holes(rng, depth_clean, cos_v.astype(np.float32), scene.sensor)
    depth = np.where(holes | (depth <= 0), np.float32(0.0), depth).astype(np.float32)

    inst = res.instance_id.copy()
    inst[inst >= _TABLE_ID] = 0
    obj_coords = np.where((inst > 0)[..., None], p_tex, 0.0).astype(np.float32)
    gt = []
    for b in bodies:
        if b.raster_id >= _TABLE_ID:
            continue
        entry = {
            "instance_id": b.raster_id,
            "category": b.category,
            "R": R_cw @ b.R_w,
            "t": R_cw @ b.t_w + t_cw,
            "size": np.asarray(b.size, dtype=np.float64),
        }
        if b.raster_id == 1 and scene.category == "mug":
            entry.update(_mug_handle_gt(scene, b.vertices, p_tex[inst == 1], W * H))
        gt.append(entry)
    return Frame(rgb, depth, inst.astype(np.uint8), K, gt, depth_clean.astype(np.float32), obj_coords)


def _mug_handle_gt(scene: SceneSpec, vertices: np.ndarray, visible_obj_m: np.ndarray, image_area: int
                   ) -> dict[str, Any]:
    """Whether the target mug's handle is visible in a frame (the evaluation scores a mug whose handle is
    hidden as y-symmetric, as NOCS does).

    The mug is a revolved body plus a handle (``shapes``); the body lies within its ``radius`` of its axis,
    so a visible surface point farther out belongs to the handle.

    Args:
        scene: the scene (target shape parameters). vertices: (N, 3) the target mesh, object frame, metres.
        visible_obj_m: (n, 3) object-frame points of the mug's visible pixels (after occlusion).
        image_area: W * H of the frame.
    Returns:
        ``handle_pixels`` (int) and ``handle_visible`` (bool: at least ``HANDLE_MIN_FRACTION`` of the
        visible pixels and ``HANDLE_MIN_PIXELS`` scaled to the image area).
    """
    radius = float(scene.shape_params["radius"])
    axis_x = float(vertices[:, 0].min()) + radius  # the body reaches -radius; the handle points to +x
    p = np.asarray(visible_obj_m, dtype=np.float64)
    radial = np.hypot(p[:, 0] - axis_x, p[:, 2])
    handle = int(np.count_nonzero(radial > radius + _HANDLE_MARGIN_M))
    need = max(HANDLE_MIN_FRACTION * len(p), HANDLE_MIN_PIXELS * image_area / (REF_SIZE[0] * REF_SIZE[1]))
    return {"handle_pixels": handle, "handle_visible": bool(handle >= need)}


# ----------------------------------------------------------------------------------------------------------
# Writing videos in Wild6D's layout
# ----------------------------------------------------------------------------------------------------------


def _json_gt(gt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for g in gt:
        entry = {
            "instance_id": int(g["instance_id"]),
            "category": g["category"],
            "R": np.asarray(g["R"]).tolist(),
            "t": np.asarray(g["t"]).tolist(),
            "size": np.asarray(g["size"]).tolist(),
        }
        if "handle_visible" in g:  # the target mug
            entry["handle_visible"] = bool(g["handle_visible"])
            entry["handle_pixels"] = int(g["handle_pixels"])
        out.append(entry)
    return out


def write_video(
    out_dir: str | Path,
    scene: SceneSpec,
    object_dir: str,
    sequence_dir: str = "00",
    width: int = 640,
    height: int = 480,
    fps: float = 30.0,
    jpeg_quality: int = 92,
) -> Path:
    """Render every frame of ``scene`` and write it in Wild6D's layout under ``out_dir`` (see FORMAT.md).

    Writes ``<out_dir>/<category>/<object_dir>/<sequence_dir>/{metadata, scene.json, images/...}`` and
    ``<out_dir>/pkl_annotations/<category>/<category>-<object_dir>-<sequence_dir>.pkl``.

    Returns:
        The sequence directory.
    """
    seq_dir = Path(out_dir, scene.category, object_dir, sequence_dir)
    (seq_dir / "images").mkdir(parents=True, exist_ok=True)
    K = scene.intrinsics(width, height)
    fmt.write_metadata(seq_dir, K, width, height, fps)
    frames_json, rotations, translations, sizes = [], [], [], []
    for i in range(scene.n_frames):
        fr = render_frame(scene, i, width, height)
        paths = fmt.frame_paths(seq_dir, i)
        cv2.imwrite(str(paths["rgb"]), cv2.cvtColor(fr.rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        cv2.imwrite(str(paths["mask"]), np.where(fr.instance_mask == 1, 255, 0).astype(np.uint8))
        depth_mm = np.round(fr.depth_m * 1000.0)
        depth_mm = np.where((depth_mm > 0) & (depth_mm <= 65535), depth_mm, 0).astype(np.uint16)
        cv2.imwrite(str(paths["depth"]), depth_mm)
        cv2.imwrite(str(paths["instances"]), fr.instance_mask.astype(np.uint16))
        target = fr.gt[0]
        rotations.append(target["R"])
        translations.append(target["t"])
        sizes.append(target["size"])
        frames_json.append({"index": i, "instances": _json_gt(fr.gt)})
    scene_json = {
        "format": "cse_pose_synthetic/1",
        "width": int(width),
        "height": int(height),
        "K": K.tolist(),
        "scene": scene.to_dict(),
        "frames": frames_json,
    }
    (seq_dir / "scene.json").write_text(json.dumps(scene_json))
    fmt.write_gt_pkl(
        fmt.pkl_path(out_dir, scene.category, object_dir, sequence_dir),
        scene.category, object_dir, sequence_dir, list(range(scene.n_frames)), rotations, translations, sizes, K,
    )
    return seq_dir


def video_seed(seed: int, index: int) -> int:
    """Scene seed of video ``index`` of a ``generate(seed=...)`` call."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1)[0])


def _generate_one(job: tuple[str, str, str, int, int, tuple[int, int], int, int, str]) -> str:
    out_dir, category, split, index, seed, frames, width, height, shapes = job
    cv2.setNumThreads(1)
    scene = sample_scene(category, split, video_seed(seed, index), frames, shapes)
    return str(write_video(out_dir, scene, f"{index:05d}", "00", width, height))


def generate(
    out_dir: str | Path,
    category: str,
    split: str,
    n_videos: int,
    frames: tuple[int, int] = (20, 60),
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    workers: int = 1,
    shapes: str = "band",
) -> list[Path]:
    """Generate ``n_videos`` synthetic videos of ``category`` in Wild6D's layout under ``out_dir``.

    Video ``i`` is ``sample_scene(category, split, video_seed(seed, i), frames, shapes)`` written to
    ``<out_dir>/<category>/<i:05d>/00/``; its ground truth goes to ``<out_dir>/pkl_annotations/``. A list
    file ``<out_dir>/<category>_list_all.txt`` (lines ``"<objIdx>_<seqIdx>"`` indexing the sorted
    listings, the reference's format) covers every sequence present afterwards. Deterministic given the
    arguments (``workers`` only changes the speed). Shows a tqdm progress bar.

    Returns:
        The sequence directories, in video order.
    """
    from tqdm import tqdm

    check_category(category)
    _check_split(split)
    if shapes not in SHAPE_MODES:
        raise ValueError(f"shapes must be one of {SHAPE_MODES}, got {shapes!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), category, split, i, int(seed), tuple(frames), int(width), int(height), shapes)
            for i in range(int(n_videos))]
    if workers <= 1:
        results = [_generate_one(j) for j in tqdm(jobs, desc=f"synthetic {category}/{split}", unit="video")]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child inherits the locks other threads held. Seen once with fork: after
        # eval-models had rendered the lit split (threads) both workers of the wide split sat at 0 % CPU before
        # their first video
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_generate_one, jobs), total=len(jobs),
                                desc=f"synthetic {category}/{split}", unit="video"))
    write_list_file(out_dir, category)
    return [Path(r) for r in results]


def write_list_file(out_dir: str | Path, category: str) -> Path:
    """Write ``<out_dir>/<category>_list_all.txt`` indexing every sequence of ``<out_dir>/<category>``."""
    root = Path(out_dir, category)
    objects = sorted(p.name for p in root.iterdir())
    lines = []
    for oi, obj in enumerate(objects):
        if not (root / obj).is_dir():
            continue
        for si, seq in enumerate(sorted(p.name for p in (root / obj).iterdir())):
            if (root / obj / seq / "images").is_dir():
                lines.append(f"{oi}_{si}")
    path = Path(out_dir, f"{category}_list_all.txt")
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path
