"""A second renderer for evaluation only: the synthetic scenes, lit and shaded by open3d's offscreen renderer.

``make eval`` scores every model on a second held-out split whose RGB comes from a different renderer than
training's (``synthetic.render_frame``): open3d's physically based offscreen renderer (Filament; on machines
without a GPU it runs on the CPU through Mesa's Vulkan driver with ``OPEN3D_CPU_RENDERING=true``), with a
shadow-casting directional light, an ambient light, specular highlights from per-surface roughness and
reflectance, and surface colours from texture families that training never uses (:data:`LIT_FAMILIES`:
wood rings and marble veins, instead of ``synthetic.TEXTURE_FAMILIES``). It measures how much of the
accuracy survives a change of renderer.

Everything else is the synthetic split's: the scene is ``synthetic.sample_scene`` (shapes of the ``test``
bands, same cameras, clutter and occlusions), and the instance mask, the noisy depth and the ground truth
(including a mug's handle visibility) are those of ``synthetic.render_frame`` for the same frame; only the
RGB differs. The lit renderer's own z-buffer is compared with ours on every frame (``scene.json`` records the
median absolute difference over pixels both render: it checks that the two renderers see the same geometry
from the same camera).

Robustness: open3d's CPU renderer can stall for minutes on a single frame under load, so every video is
rendered by a fresh renderer in a child process (:class:`WatchdogRenderer`); a frame that takes longer than
``frame_timeout_s`` kills the child, is retried once by a fresh one, and is then skipped (not written; the
count is returned and recorded), so generation always finishes.

Determinism: the scene and all colours are functions of (category, seed) and the frame index; the lit
RGB can differ in the last bits between machines (rasterisation and floating point of the driver).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from cse_pose.core.categories import check_category

from . import wild6d_format as fmt
from .synthetic import (
    SceneSpec,
    _frame_rng,
    _json_gt,
    _noise,
    _scene_bodies,
    render_frame,
    sample_scene,
    video_seed,
    write_list_file,
)

__all__ = [
    "LIT_FAMILIES",
    "LitStats",
    "Open3DLitRenderer",
    "WatchdogRenderer",
    "generate_lit",
    "lit_albedo",
    "lit_renderer_available",
    "write_lit_video",
]

#: Texture families of the lit split (none of them is in ``synthetic.TEXTURE_FAMILIES``).
LIT_FAMILIES: tuple[str, ...] = ("wood", "marble")
#: Format tag written to ``scene.json``.
LIT_FORMAT = "cse_pose_lit/1"
#: Raster ids from which a body is part of the environment (``synthetic._TABLE_ID``).
_ENV_ID = 1000
#: Midpoint subdivisions per body kind so that per-vertex colours resolve the patterns (object / environment).
_SUBDIVIDE_OBJECT, _SUBDIVIDE_ENV = 1, 3
#: Sun illuminance (lux) and ambient (indirect) intensity at the camera's default exposure.
_SUN_LUX = (60000.0, 110000.0)
_AMBIENT = (15000.0, 30000.0)


# ----------------------------------------------------------------------------------------------------------
# Texture families of the lit split
# ----------------------------------------------------------------------------------------------------------


def lit_albedo(spec: Mapping[str, Any], p: np.ndarray) -> np.ndarray:
    """Albedo of a lit-split texture at surface points.

    The family is ``LIT_FAMILIES[(seed // 3) % 2]``; the colours, frequency, direction and seed are those of
    the synthetic spec (so the colour distribution matches training's, the pattern does not):

    - ``wood``: concentric rings about an axis along ``direction`` (ring spacing ~ 1 / frequency, warped by
      smooth noise), dark late wood between light early wood, with a fine grain along the axis;
    - ``marble``: a light base with dark veins where a turbulent phase along ``direction`` crosses zero.

    Args:
        spec: synthetic texture spec (``synthetic._sample_texture``).
        p: (n, 3) texture-space points in metres (object frame for objects, world for the environment).
    Returns:
        (n, 3) float32 RGB albedo in [0, 1].
    """
    p = np.asarray(p, dtype=np.float32).reshape(-1, 3)
    seed, f = int(spec["seed"]), float(spec["frequency"])
    colors = np.asarray(spec["colors"], dtype=np.float32)
    d = np.asarray(spec["direction"], dtype=np.float32)
    family = LIT_FAMILIES[(seed // 3) % len(LIT_FAMILIES)]
    if family == "wood":
        rng = np.random.default_rng([seed, 7])
        origin = rng.normal(scale=0.5 / max(f, 1e-3), size=3).astype(np.float32)
        q = p - origin
        radial = np.linalg.norm(q - (q @ d)[:, None] * d[None], axis=1)
        phase = 0.6 * f * radial + 0.8 * _noise(p, seed, 11, 0.3 * f)
        ring = (0.5 + 0.5 * np.sin(np.float32(2 * np.pi) * phase)) ** 4  # thin dark late-wood rings
        grain = 0.06 * _noise(p * np.array([8.0, 8.0, 8.0], np.float32), seed, 12, 2.0 * f)
        light = colors[0] * 0.5 + np.float32([0.45, 0.33, 0.2])  # warm early wood
        dark = light * 0.45
        out = light * (1 - ring[:, None]) + dark * ring[:, None]
        out = out * (1.0 + grain[:, None])
    else:  # marble
        turbulence = sum(np.abs(_noise(p, seed, 20 + o, f * 2.0**o)) / 2.0**o for o in range(3))
        phase = 0.5 * f * (p @ d) + 1.6 * turbulence
        vein = np.exp(-8.0 * np.sin(np.float32(np.pi) * phase) ** 2)
        base = 0.55 * colors[1] + np.float32(0.4)
        out = base * (1 - 0.75 * vein[:, None]) + 0.75 * vein[:, None] * colors[2] * 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# The open3d renderer (runs in a child process)
# ----------------------------------------------------------------------------------------------------------


class FrameRenderer(Protocol):
    """What :class:`WatchdogRenderer` runs in its child: ``factory(width, height)`` -> renderer."""

    def render(self, scene: SceneSpec, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and (H, W) float32 z-buffer depth in metres (0 where nothing is rendered)."""
        ...


def _subdivide(vertices: np.ndarray, faces: np.ndarray, times: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint subdivision (each triangle -> 4, shared edge midpoints); the surface is unchanged."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    for _ in range(times):
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        key = np.sort(edges, axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        mid = len(v) + inv.reshape(3, -1).T  # (F, 3): midpoints of edges 01, 12, 20
        v = np.concatenate([v, 0.5 * (v[uniq[:, 0]] + v[uniq[:, 1]])])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        m01, m12, m20 = mid[:, 0], mid[:, 1], mid[:, 2]
        f = np.concatenate([np.stack([a, m01, m20], 1), np.stack([m01, b, m12], 1), np.stack([m20, m12, c], 1),
                            np.stack([m01, m12, m20], 1)])
    return v, f


class Open3DLitRenderer:
    """open3d ``OffscreenRenderer`` of :class:`~cse_train.data.synthetic.SceneSpec` scenes at one resolution.

    One renderer per process (Filament keeps global state); the scene's geometry is rebuilt when the scene
    changes. Lighting: the scene's light direction as a shadow-casting sun, an ambient light; materials
    ``defaultLit`` with roughness / reflectance from the texture spec's shininess / specular (the room
    neither casts nor receives shadows, so the closed box does not darken everything).
    """

    def __init__(self, width: int, height: int) -> None:
        os.environ.setdefault("OPEN3D_CPU_RENDERING", "true")
        import open3d as o3d  # deferred: heavy, and only this child process needs it

        self._o3d = o3d
        self.width, self.height = int(width), int(height)
        self._r = o3d.visualization.rendering.OffscreenRenderer(self.width, self.height)
        self._scene_key: str | None = None

    def _build(self, scene: SceneSpec) -> None:
        o3d = self._o3d
        rendering = o3d.visualization.rendering
        s3d = self._r.scene
        s3d.clear_geometry()
        rng = np.random.default_rng([int(scene.seed) & 0xFFFFFFFF, 41])
        for b in _scene_bodies(scene):
            env = b.raster_id >= _ENV_ID
            v, f = _subdivide(b.vertices, b.faces, _SUBDIVIDE_ENV if env else _SUBDIVIDE_OBJECT)
            mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v @ b.R_w.T + b.t_w),
                                             o3d.utility.Vector3iVector(f.astype(np.int32)))
            mesh.vertex_colors = o3d.utility.Vector3dVector(lit_albedo(b.texture, v).astype(np.float64))
            mesh.compute_vertex_normals()
            mat = rendering.MaterialRecord()
            mat.shader = "defaultLit"
            shininess = float(b.texture.get("shininess", 20.0))
            mat.base_roughness = float(np.clip(1.0 - shininess / 70.0, 0.15, 0.95)) if not env else 0.8
            mat.base_reflectance = float(np.clip(0.3 + 1.5 * b.texture.get("specular", 0.1), 0.2, 0.8))
            name = f"body{b.raster_id}"
            s3d.add_geometry(name, mesh, mat)
            if b.raster_id == _ENV_ID + 1:  # the room
                s3d.scene.geometry_shadows(name, False, False)
        light = scene.light
        to_light = np.asarray(light["direction"], dtype=np.float64)
        color = np.asarray(light["color"], dtype=np.float32) / max(light["color"])
        sun = float(rng.uniform(*_SUN_LUX)) * light["diffuse"] / 0.7
        s3d.scene.set_sun_light((-to_light).astype(np.float32), color, sun)
        s3d.scene.enable_sun_light(True)
        s3d.scene.enable_indirect_light(True)
        s3d.scene.set_indirect_light_intensity(float(rng.uniform(*_AMBIENT)) * light["ambient"] / 0.4)
        s3d.set_background([0.5, 0.5, 0.5, 1.0])
        self._scene_key = json.dumps(scene.to_dict(), sort_keys=True)

    def render(self, scene: SceneSpec, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``frame_index`` of ``scene``: (H, W, 3) uint8 RGB and (H, W) float32 z-buffer depth (metres,
        0 where nothing is rendered), seen by the scene's camera (same K and pose as ``render_frame``)."""
        if self._scene_key != json.dumps(scene.to_dict(), sort_keys=True):
            self._build(scene)
        K = scene.intrinsics(self.width, self.height)
        R_cw, t_cw = scene.camera_pose(frame_index)
        T_cw = np.eye(4)
        T_cw[:3, :3], T_cw[:3, 3] = R_cw, t_cw
        self._r.setup_camera(K, T_cw, self.width, self.height)
        rgb = np.asarray(self._r.render_to_image())[..., :3].copy()
        z = np.asarray(self._r.render_to_depth_image(z_in_view_space=True), dtype=np.float32).copy()
        z[~np.isfinite(z)] = 0.0
        return rgb.astype(np.uint8), z


# ----------------------------------------------------------------------------------------------------------
# Stall watchdog
# ----------------------------------------------------------------------------------------------------------


def _child_main(conn: Any, factory: Callable[[int, int], FrameRenderer], width: int, height: int) -> None:
    """Child process: build the renderer, say ``ready``, then answer (scene dict, frame index) requests."""
    try:
        renderer = factory(width, height)
        conn.send(("ready", None))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            scene_dict, index = msg
            conn.send(("frame", renderer.render(SceneSpec.from_dict(scene_dict), int(index))))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception as exc:  # reported to the parent, which counts the frame as failed
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class LitStats:
    """Counters of a :class:`WatchdogRenderer` (or summed over videos)."""

    frames: int = 0
    rendered: int = 0
    retried: int = 0
    skipped: int = 0
    render_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, other: LitStats) -> None:
        """Accumulate ``other`` into this one."""
        self.frames += other.frames
        self.rendered += other.rendered
        self.retried += other.retried
        self.skipped += other.skipped
        self.render_s += other.render_s
        self.errors += other.errors


class WatchdogRenderer:
    """Renders frames through ``factory(width, height)`` in a child process, guarded by timeouts.

    A frame that exceeds ``frame_timeout_s`` (a fresh child's start and first frame, which compiles the shaders:
    ``start_timeout_s`` each), or a child that dies or raises, kills the child;
    the frame is retried once by a fresh child and then skipped (:meth:`render` returns None). Use one per
    video (fresh renderer) and :meth:`close` it (or use it as a context manager).
    """

    def __init__(self, width: int, height: int, factory: Callable[[int, int], FrameRenderer] = Open3DLitRenderer,
                 frame_timeout_s: float = 60.0, start_timeout_s: float = 120.0, context: str = "spawn") -> None:
        self.width, self.height = int(width), int(height)
        self.factory = factory
        self.frame_timeout_s, self.start_timeout_s = float(frame_timeout_s), float(start_timeout_s)
        self._ctx = mp.get_context(context)
        self._proc: Any = None
        self._conn: Any = None
        self._fresh = False
        self.stats = LitStats()

    def __enter__(self) -> WatchdogRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> bool:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child_main, args=(child, self.factory, self.width, self.height),
                                       daemon=True)
        try:
            self._proc.start()
        finally:
            child.close()
        self._conn = parent
        reply = self._receive(self.start_timeout_s)
        self._fresh = True
        return reply is not None and reply[0] == "ready"

    def _receive(self, timeout_s: float) -> tuple[str, Any] | None:
        try:
            if self._conn.poll(timeout_s):
                reply = self._conn.recv()
                if reply[0] == "error":
                    self.stats.errors.append(str(reply[1]))
                    return None
                return reply
        except (EOFError, OSError):
            pass
        return None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.pid is not None:  # started
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5.0)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        """Stop the child (politely, then by force)."""
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(5.0)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def render(self, scene: SceneSpec, frame_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """RGB and z-buffer of one frame (see :class:`FrameRenderer`), or None when both tries failed."""
        self.stats.frames += 1
        t0 = time.perf_counter()
        for attempt in range(2):
            if attempt:
                self.stats.retried += 1
            if self._proc is None or not self._proc.is_alive():
                self._kill()
                if not self._start():
                    self._kill()
                    continue
            try:
                self._conn.send((scene.to_dict(), int(frame_index)))
            except (OSError, BrokenPipeError):
                self._kill()
                continue
            # A fresh child's first frame also compiles the renderer's shaders: it gets the start timeout.
            reply = self._receive(self.start_timeout_s if self._fresh else self.frame_timeout_s)
            self._fresh = False
            if reply is not None and reply[0] == "frame":
                self.stats.rendered += 1
                self.stats.render_s += time.perf_counter() - t0
                return reply[1]
            self._kill()  # stalled, died or raised: a fresh child for the retry / the next frame
        self.stats.skipped += 1
        self.stats.render_s += time.perf_counter() - t0
        return None


# ----------------------------------------------------------------------------------------------------------
# Writing videos
# ----------------------------------------------------------------------------------------------------------


def _sensor_rgb(scene: SceneSpec, frame_index: int, rgb: np.ndarray) -> np.ndarray:
    """The synthetic sensor's blur and noise applied to a lit render (same parameters, own noise draw)."""
    rng = np.random.default_rng([*(_frame_rng(scene, frame_index).integers(0, 2**31, size=2)), 43])
    img = rgb.astype(np.float32) / 255.0
    sigma = scene.sensor["blur_sigma_px"] * rgb.shape[1] / 640.0
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 0.1))
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(scene.sensor["rgb_noise"])
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_lit_video(out_dir: str | Path, scene: SceneSpec, object_dir: str, sequence_dir: str = "00",
                    width: int = 640, height: int = 480, fps: float = 30.0, frame_timeout_s: float = 60.0,
                    factory: Callable[[int, int], FrameRenderer] = Open3DLitRenderer) -> LitStats:
    """Render ``scene`` with a fresh :class:`WatchdogRenderer` and write it in Wild6D's layout (as
    ``synthetic.write_video``: same files, same ground truth; the RGB is the lit render's).

    Skipped frames (both tries stalled or failed) are not written (the readers index frames by their mask
    files); the pkl annotation holds every frame. ``scene.json`` adds ``renderer``, ``skipped_frames`` and
    per frame ``lit_depth_mad_mm`` (median |lit z-buffer - our depth| over pixels both render).

    Returns:
        The video's :class:`LitStats`.
    """
    seq_dir = Path(out_dir, scene.category, object_dir, sequence_dir)
    (seq_dir / "images").mkdir(parents=True, exist_ok=True)
    K = scene.intrinsics(width, height)
    fmt.write_metadata(seq_dir, K, width, height, fps)
    frames_json, rotations, translations, sizes, skipped = [], [], [], [], []
    with WatchdogRenderer(width, height, factory, frame_timeout_s) as renderer:
        for i in range(scene.n_frames):
            fr = render_frame(scene, i, width, height)
            target = fr.gt[0]
            rotations.append(target["R"])
            translations.append(target["t"])
            sizes.append(target["size"])
            entry: dict[str, Any] = {"index": i, "instances": _json_gt(fr.gt)}
            lit = renderer.render(scene, i)
            if lit is None:
                skipped.append(i)
                entry["skipped"] = True
            else:
                rgb, z_lit = lit
                both = (z_lit > 0) & (fr.depth_clean_m > 0)
                mad = float(np.median(np.abs(z_lit[both] - fr.depth_clean_m[both]))) if both.any() else -1.0
                entry["lit_depth_mad_mm"] = 1000.0 * mad
                paths = fmt.write_frame(seq_dir, i, _sensor_rgb(scene, i, rgb), fr.instance_mask == 1, fr.depth_m)
                cv2.imwrite(str(paths["instances"]), fr.instance_mask.astype(np.uint16))
            frames_json.append(entry)
        stats = renderer.stats
    scene_json = {"format": LIT_FORMAT, "renderer": "open3d OffscreenRenderer (defaultLit, sun + ambient)",
                  "width": int(width), "height": int(height), "K": K.tolist(), "scene": scene.to_dict(),
                  "skipped_frames": skipped, "frames": frames_json}
    (seq_dir / "scene.json").write_text(json.dumps(scene_json))
    fmt.write_gt_pkl(fmt.pkl_path(out_dir, scene.category, object_dir, sequence_dir), scene.category, object_dir,
                     sequence_dir, list(range(scene.n_frames)), rotations, translations, sizes, K)
    return stats


def generate_lit(out_dir: str | Path, category: str, n_videos: int, frames: tuple[int, int] = (12, 12),
                 width: int = 640, height: int = 480, seed: int = 0, split: str = "test", workers: int = 1,
                 frame_timeout_s: float = 60.0, progress: bool = True) -> LitStats:
    """Lit videos of ``category`` under ``<out_dir>/<category>/<i:05d>/00`` (as ``synthetic.generate``: video
    ``i`` is ``sample_scene(category, split, video_seed(seed, i), frames)``, so the same arguments give the
    same scenes as the synthetic split, rendered differently). ``workers`` videos render at a time (threads,
    each driving its own renderer process). Returns the summed :class:`LitStats`."""
    from tqdm import tqdm

    check_category(category)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> LitStats:
        scene = sample_scene(category, split, video_seed(seed, i), tuple(frames))
        return write_lit_video(out_dir, scene, f"{i:05d}", "00", width, height, frame_timeout_s=frame_timeout_s)

    total = LitStats()
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for s in tqdm(pool.map(one, range(int(n_videos))), total=int(n_videos), desc=f"lit {category}/{split}",
                      unit="video", disable=not progress):
            total.add(s)
    write_list_file(out_dir, category)
    return total


def lit_renderer_available(timeout_s: float = 120.0) -> tuple[bool, str]:
    """Whether open3d's offscreen renderer starts and renders here (tried in a child process, so a missing
    driver or a hang cannot take this process down). Returns (ok, reason)."""
    try:
        import open3d  # noqa: F401
    except ImportError as exc:
        return False, f"open3d is not installed ({exc})"
    # (the bowl test scene 0 stalled the renderer on every try on an idle machine, where this one renders in ~10 s
    # including the renderer's start: some scenes stall it, which is what the per-frame watchdog is for)
    scene = sample_scene("mug", "test", 0, (1, 1))
    with WatchdogRenderer(160, 120, Open3DLitRenderer, frame_timeout_s=timeout_s, start_timeout_s=timeout_s) as r:
        out = r.render(scene, 0)
        errors = list(r.stats.errors)
    if out is None:
        why = "; ".join(errors) or f"no frame within {timeout_s:.0f} s"
        return False, f"open3d's OffscreenRenderer did not render ({why})"
    return True, "ok"
