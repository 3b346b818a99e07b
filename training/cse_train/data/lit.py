"""A second renderer for evaluation only: the synthetic scenes, lit and shaded by a different rasteriser.

``make eval`` scores every model on a second held-out split whose RGB comes from a different renderer than
training's (``synthetic.render_frame``). Two are available (:data:`LIT_RENDERERS`):

- ``tiny`` (default): pybullet's TinyRenderer, a CPU rasteriser of its own (not ours) with ambient, diffuse and
  specular lighting from the scene's light and a shadow map, surface colours baked into per-triangle texture
  atlases (:class:`TinyLitRenderer`); ~0.2 s a 640x480 frame on one core.
- ``open3d``: open3d's physically based offscreen renderer (Filament) with a shadow-casting sun, an ambient
  light and per-surface roughness / reflectance (:class:`Open3DLitRenderer`). Without a GPU it runs through
  Mesa's CPU Vulkan driver (``OPEN3D_CPU_RENDERING=true``), where on a 2-core machine the first frame of a
  video of our scenes took 5-9 s and most later frames none within 40-200 s; use it where a GPU driver is present.

Both colour surfaces with texture families that training never uses (:data:`LIT_FAMILIES`: wood rings and
marble veins, instead of ``synthetic.TEXTURE_FAMILIES``). The split measures how much of the accuracy
survives a change of renderer.

Everything else is the synthetic split's: the scene is ``synthetic.sample_scene`` (shapes of the ``test``
bands, same cameras, clutter and occlusions), and the instance mask, the noisy depth and the ground truth
(including a mug's handle visibility) are those of ``synthetic.render_frame`` for the same frame; only the
RGB differs. The lit renderer's own z-buffer is compared with ours on every frame (``scene.json`` records the
median absolute difference over pixels both render: it checks that the two renderers see the same geometry
from the same camera).

Robustness: a renderer can stall (open3d's CPU renderer, for minutes on a single frame), so every video is
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
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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
    _vertex_normals,
    render_frame,
    sample_scene,
    video_seed,
    write_list_file,
)

__all__ = [
    "LIT_FAMILIES",
    "LIT_RENDERERS",
    "LitStats",
    "Open3DLitRenderer",
    "TinyLitRenderer",
    "WatchdogRenderer",
    "check_lit_renderer",
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
# The open3d renderer (runs in a child process; see LIT_RENDERERS)
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
# pybullet's TinyRenderer (the default: a CPU rasteriser with its own lighting and shadow map)
# ----------------------------------------------------------------------------------------------------------

#: Texels per triangle side in the baked albedo atlases (objects / environment), and midpoint subdivisions of
#: the environment's triangles before baking (a texel is then ~8 mm on the table: 6 cm legs, 8 texels).
_TEXELS_OBJECT, _TEXELS_ENV, _SUBDIVIDE_ENV_TINY = 6, 8, 2
#: Corners whose smooth normal is further than this from the face normal get the face normal (box edges).
_CREASE_COS = float(np.cos(np.radians(40.0)))
#: Near / far planes of the TinyRenderer projection (metres); the light sits this far from the world origin (on
#: the table, inside the room), towards the scene's light direction.
_NEAR_M, _FAR_M, _LIGHT_DISTANCE_M = 0.02, 12.0, 1.5


def _baked_mesh(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, texture: Mapping[str, Any],
                texels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One mesh with its albedo baked into a per-triangle atlas (every triangle owns a ``texels`` square).

    Corners are unshared (3 per face) so that every corner has its own UV; a corner keeps its smooth normal
    unless that is more than 40 degrees from its face's (box edges stay sharp). The atlas texel at
    (i, j) of a face's square holds the albedo at ``A + i/(t-1) (B - A) + j/(t-1) (C - A)``, which lies
    outside the triangle for i + j > t - 1 (the procedural textures are defined everywhere).

    Args:
        vertices: (N, 3) body-frame vertices (metres; also the texture space); faces: (F, 3) indices;
        normals: (N, 3) smooth body-frame normals; texture: the body's synthetic texture spec.
    Returns:
        corners (3F, 3) body frame, corner normals (3F, 3), UVs (3F, 2) in [0, 1], atlas (S, S, 3) uint8 RGB.
    """
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    face_n = np.cross(b - a, c - a)
    face_n /= np.maximum(np.linalg.norm(face_n, axis=1, keepdims=True), 1e-12)
    corner_n = np.asarray(normals, np.float64)[f]  # (F, 3, 3)
    sharp = (corner_n * face_n[:, None]).sum(-1) < _CREASE_COS
    corner_n[sharp] = np.broadcast_to(face_n[:, None], corner_n.shape)[sharp]
    n_faces, t = len(f), int(texels)
    cols = int(np.ceil(np.sqrt(n_faces)))
    size = cols * t
    col, row = np.arange(n_faces) % cols, np.arange(n_faces) // cols
    # Texel sample points of every face's square, evaluated in one call.
    s = np.arange(t) / (t - 1)
    si, sj = np.meshgrid(s, s, indexing="xy")  # (t, t): si along the atlas' x, sj along its y
    pts = a[:, None, None] + si[None, ..., None] * (b - a)[:, None, None] + sj[None, ..., None] * (c - a)[:, None, None]
    albedo = lit_albedo(texture, pts.reshape(-1, 3)).reshape(n_faces, t, t, 3)
    atlas = np.zeros((cols * t, cols * t, 3), np.float32)
    atlas_view = atlas.reshape(cols, t, cols, t, 3).transpose(0, 2, 1, 3, 4)  # (row, col, y, x, 3)
    atlas_view[row, col] = albedo
    # UVs at the centres of the corner texels of the face's square (u along x; v counted from the image top).
    x0, y0 = col * t + 0.5, row * t + 0.5
    u = np.stack([x0, x0 + t - 1, x0], axis=1) / size
    w = np.stack([y0, y0, y0 + t - 1], axis=1) / size
    uv = np.stack([u, 1.0 - w], axis=-1).reshape(-1, 2)
    return (np.stack([a, b, c], axis=1).reshape(-1, 3), corner_n.reshape(-1, 3), uv,
            (np.clip(atlas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _import_quietly(module: str) -> Any:
    """Import ``module`` with file descriptors 1 and 2 on /dev/null (pybullet prints its build date on import;
    an import error still raises)."""
    import importlib
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved, null = [os.dup(1), os.dup(2)], os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        return importlib.import_module(module)
    finally:
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        os.close(null)


class TinyLitRenderer:
    """pybullet's ``ER_TINY_RENDERER`` of :class:`~cse_train.data.synthetic.SceneSpec` scenes: a CPU
    rasteriser independent of ours, with its own Phong-style lighting (ambient, diffuse, specular from the
    scene's light and each surface's specular strength) and a shadow map from the scene's light direction.
    Surface colours are the :data:`LIT_FAMILIES` textures baked into a per-triangle atlas (:func:`_baked_mesh`).
    About 0.1-0.2 s a 640x480 frame on one core. The room is drawn in a second pass
    without shadows (a closed box around the light would otherwise shadow everything) and composited by depth.
    """

    def __init__(self, width: int, height: int) -> None:
        pybullet = _import_quietly("pybullet")  # deferred: only the renderer's (child) process needs it

        self._pb = pybullet
        self.width, self.height = int(width), int(height)
        self._client = pybullet.connect(pybullet.DIRECT)
        self._tmp_dir = tempfile.TemporaryDirectory(prefix="cse_lit_")  # the baked atlases (PNG for pybullet)
        self._tmp = Path(self._tmp_dir.name)
        self._scene_key: str | None = None
        self._room_body = -1  # drawn in its own pass
        self._bodies: list[int] = []  # everything else
        self._light: dict[str, Any] = {}

    def _add_body(self, body: Any, texels: int, name: str) -> int:
        pb, c = self._pb, self._client
        corners, normals, uv, atlas = _baked_mesh(body.vertices, body.faces, body.normals, body.texture, texels)
        png = self._tmp / f"{name}.png"
        cv2.imwrite(str(png), atlas[..., ::-1])
        spec = float(body.texture.get("specular", 0.1)) if body.raster_id < _ENV_ID else 0.05
        shape = pb.createVisualShape(
            pb.GEOM_MESH, vertices=(corners @ body.R_w.T + body.t_w).tolist(),
            indices=np.arange(len(corners)).tolist(), normals=(normals @ body.R_w.T).tolist(), uvs=uv.tolist(),
            rgbaColor=[1, 1, 1, 1], specularColor=[spec, spec, spec], physicsClientId=c)
        uid = pb.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, physicsClientId=c)
        pb.changeVisualShape(uid, -1, textureUniqueId=pb.loadTexture(str(png), physicsClientId=c),
                             physicsClientId=c)
        return uid

    def _build(self, scene: SceneSpec) -> None:
        self._pb.resetSimulation(physicsClientId=self._client)
        self._bodies, self._room_body = [], -1
        for b in _scene_bodies(scene):
            if b.raster_id >= _ENV_ID:  # large flat triangles: subdivide so that the atlas resolves the pattern
                v, f = _subdivide(b.vertices, b.faces, _SUBDIVIDE_ENV_TINY)
                b = replace(b, vertices=v, faces=f, normals=_vertex_normals(v, f))
            uid = self._add_body(b, _TEXELS_ENV if b.raster_id >= _ENV_ID else _TEXELS_OBJECT, f"b{b.raster_id}")
            if b.raster_id == _ENV_ID + 1:
                self._room_body = uid
            else:
                self._bodies.append(uid)
        light = scene.light
        rng = np.random.default_rng([int(scene.seed) & 0xFFFFFFFF, 41])
        self._light = {
            "lightDirection": [float(x) for x in light["direction"]],  # towards the light
            "lightColor": [float(x) / max(light["color"]) for x in light["color"]],
            "lightDistance": _LIGHT_DISTANCE_M,
            "lightAmbientCoeff": float(light["ambient"]),
            "lightDiffuseCoeff": float(light["diffuse"]),
            "lightSpecularCoeff": float(rng.uniform(0.3, 0.7)),
        }
        self._scene_key = json.dumps(scene.to_dict(), sort_keys=True)

    def _pass(self, view: list[float], proj: list[float], shadow: bool) -> tuple[np.ndarray, np.ndarray]:
        pb = self._pb
        _, _, rgba, zbuf, _ = pb.getCameraImage(self.width, self.height, viewMatrix=view, projectionMatrix=proj,
                                                renderer=pb.ER_TINY_RENDERER, shadow=int(shadow),
                                                physicsClientId=self._client, **self._light)
        rgb = np.reshape(np.asarray(rgba, np.uint8), (self.height, self.width, 4))[..., :3]
        d = np.reshape(np.asarray(zbuf, np.float64), (self.height, self.width))
        z = (_FAR_M * _NEAR_M / (_FAR_M - (_FAR_M - _NEAR_M) * d)).astype(np.float32)
        z[d >= 1.0] = 0.0
        return rgb, z

    def _visible(self, uids: list[int], on: bool) -> None:
        """Show or hide bodies (hidden ones are moved far below the scene, out of both passes' views)."""
        for uid in uids:
            self._pb.resetBasePositionAndOrientation(uid, [0.0, 0.0 if on else -1e3, 0.0], [0, 0, 0, 1],
                                                     physicsClientId=self._client)

    def render(self, scene: SceneSpec, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`FrameRenderer.render`: (H, W, 3) uint8 RGB and (H, W) float32 z-buffer (metres, 0 = none)."""
        if self._scene_key != json.dumps(scene.to_dict(), sort_keys=True):
            self._build(scene)
        W, H = self.width, self.height
        K = scene.intrinsics(W, H)
        R_cw, t_cw = scene.camera_pose(frame_index)
        T_cw = np.eye(4)
        T_cw[:3, :3], T_cw[:3, 3] = R_cw, t_cw
        view = np.diag([1.0, -1.0, -1.0, 1.0]) @ T_cw  # OpenCV camera -> OpenGL camera (y up, looking down -z)
        # TinyRenderer's image rows sit one pixel off OpenCV's: with cy + 1 its z-buffer equals ours to 0.0 mm
        # (median over a 160x120 frame), 3 mm without.
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2] + 1.0
        n, f = _NEAR_M, _FAR_M
        proj = np.array([[2 * fx / W, 0, 1 - 2 * cx / W, 0], [0, 2 * fy / H, 2 * cy / H - 1, 0],
                         [0, 0, -(f + n) / (f - n), -2 * f * n / (f - n)], [0, 0, -1, 0]])
        view_l, proj_l = view.T.reshape(-1).tolist(), proj.T.reshape(-1).tolist()  # column-major
        self._visible([self._room_body], False)
        rgb, z = self._pass(view_l, proj_l, shadow=True)
        self._visible([self._room_body], True)
        self._visible(self._bodies, False)
        rgb_room, z_room = self._pass(view_l, proj_l, shadow=False)
        self._visible(self._bodies, True)
        room = (z == 0) | ((z_room > 0) & (z_room < z))
        rgb = np.where(room[..., None], rgb_room, rgb)
        z = np.where(room, z_room, z)
        return np.ascontiguousarray(rgb), z.astype(np.float32)


#: The lit split's renderers: name -> (class run in the watchdog's child, description written to scene.json,
#: the module it needs).
#: ``tiny`` is the default: open3d's Filament renderer on Mesa's CPU driver (no GPU) took 5-9 s for the first frame
#: of a video of our scenes and rendered most later frames not within 40-200 s on a 2-core machine; it stays
#: available for machines with a GPU driver.
LIT_RENDERERS: dict[str, tuple[Callable[[int, int], FrameRenderer], str, str]] = {
    "tiny": (TinyLitRenderer, "pybullet TinyRenderer (diffuse + specular, shadow map, baked texture atlas)",
             "pybullet"),
    "open3d": (Open3DLitRenderer, "open3d OffscreenRenderer (defaultLit, sun + ambient)", "open3d"),
}


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

    def __init__(self, width: int, height: int, factory: Callable[[int, int], FrameRenderer] = TinyLitRenderer,
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
                    renderer: str = "tiny", factory: Callable[[int, int], FrameRenderer] | None = None) -> LitStats:
    """Render ``scene`` with a fresh :class:`WatchdogRenderer` and write it in Wild6D's layout (as
    ``synthetic.write_video``: same files, same ground truth; the RGB is the lit render's).

    ``renderer`` names one of :data:`LIT_RENDERERS`; ``factory`` (tests) replaces its class.

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
    name = check_lit_renderer(renderer)
    with WatchdogRenderer(width, height, factory or LIT_RENDERERS[name][0], frame_timeout_s) as watchdog:
        for i in range(scene.n_frames):
            fr = render_frame(scene, i, width, height)
            target = fr.gt[0]
            rotations.append(target["R"])
            translations.append(target["t"])
            sizes.append(target["size"])
            entry: dict[str, Any] = {"index": i, "instances": _json_gt(fr.gt)}
            lit = watchdog.render(scene, i)
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
        stats = watchdog.stats
    scene_json = {"format": LIT_FORMAT, "renderer": LIT_RENDERERS[name][1],
                  "width": int(width), "height": int(height), "K": K.tolist(), "scene": scene.to_dict(),
                  "skipped_frames": skipped, "frames": frames_json}
    (seq_dir / "scene.json").write_text(json.dumps(scene_json))
    fmt.write_gt_pkl(fmt.pkl_path(out_dir, scene.category, object_dir, sequence_dir), scene.category, object_dir,
                     sequence_dir, list(range(scene.n_frames)), rotations, translations, sizes, K)
    return stats


def generate_lit(out_dir: str | Path, category: str, n_videos: int, frames: tuple[int, int] = (12, 12),
                 width: int = 640, height: int = 480, seed: int = 0, split: str = "test", workers: int = 1,
                 frame_timeout_s: float = 60.0, progress: bool = True, renderer: str = "tiny",
                 shapes: str = "band") -> LitStats:
    """Lit videos of ``category`` under ``<out_dir>/<category>/<i:05d>/00`` (as ``synthetic.generate``: video
    ``i`` is ``sample_scene(category, split, video_seed(seed, i), frames, shapes)``, so the same arguments give the
    same scenes as the synthetic split, rendered differently) by ``renderer`` (:data:`LIT_RENDERERS`).
    ``workers`` videos render at a time (threads, each driving its own renderer process). Returns the summed
    :class:`LitStats`."""
    from tqdm import tqdm

    check_category(category)
    check_lit_renderer(renderer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> LitStats:
        scene = sample_scene(category, split, video_seed(seed, i), tuple(frames), shapes)
        return write_lit_video(out_dir, scene, f"{i:05d}", "00", width, height, frame_timeout_s=frame_timeout_s,
                               renderer=renderer)

    total = LitStats()
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for s in tqdm(pool.map(one, range(int(n_videos))), total=int(n_videos), desc=f"lit {category}/{split}",
                      unit="video", disable=not progress):
            total.add(s)
    write_list_file(out_dir, category)
    return total


def check_lit_renderer(name: str) -> str:
    """``name`` if it is a key of :data:`LIT_RENDERERS`, else ValueError."""
    if name not in LIT_RENDERERS:
        raise ValueError(f"lit renderer must be one of {sorted(LIT_RENDERERS)}, got {name!r}")
    return name


def lit_renderer_available(timeout_s: float = 120.0, renderer: str = "tiny") -> tuple[bool, str]:
    """Whether ``renderer`` (:data:`LIT_RENDERERS`) starts and renders here (tried in a child process, so a
    missing driver or a hang cannot take this process down). Returns (ok, reason)."""
    factory, what, module = LIT_RENDERERS[check_lit_renderer(renderer)]
    try:
        _import_quietly(module)
    except ImportError as exc:
        return False, f"{module} is not installed ({exc})"
    # (with open3d on Mesa's CPU driver, some scenes stall the renderer for minutes on an idle 2-core machine,
    # where this one renders in ~10 s including the renderer's start: what the per-frame watchdog is for)
    scene = sample_scene("mug", "test", 0, (1, 1))
    with WatchdogRenderer(160, 120, factory, frame_timeout_s=timeout_s, start_timeout_s=timeout_s) as r:
        out = r.render(scene, 0)
        errors = list(r.stats.errors)
    if out is None:
        why = "; ".join(errors) or f"no frame within {timeout_s:.0f} s"
        return False, f"{what} did not render ({why})"
    return True, "ok"
